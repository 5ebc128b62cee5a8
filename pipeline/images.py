"""Decode-check one image file: the only place that opens crawl images during ingest.

Every file gets one full decode (a header check misses truncated and corrupt
JPEGs), EXIF orientation applied, and two hashes: SHA-256 of the bytes (the
stable image id) and a 64-bit difference hash of the pixels (near duplicates).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_ID_HEX_CHARS = 16  # 64 bits of SHA-256: collision odds ~1e-8 at 1.2 M images

# Pillow's global bomb guard is replaced by the per-call `max_pixels` check in inspect_image,
# which runs on the header before any pixel is decoded and names the params.yaml setting.
Image.MAX_IMAGE_PIXELS = None


def content_id(data: bytes) -> str:
    """Stable image id: the first 16 hex digits of the SHA-256 of the file bytes."""
    return hashlib.sha256(data).hexdigest()[:IMAGE_ID_HEX_CHARS]


def difference_hash(image: Image.Image) -> int:
    """64-bit dHash: is each pixel brighter than its right neighbour, on a 9x8 grey thumbnail."""
    grey = np.asarray(image.convert("L").resize((9, 8), Image.Resampling.BOX), dtype=np.int16)
    bits = (grey[:, 1:] > grey[:, :-1]).ravel()
    return int(np.packbits(bits).view(">u8")[0])


@dataclass(frozen=True)
class Inspected:
    """What ingest records of a file: either the image facts, or why it was rejected."""

    image_id: str | None
    bytes: int
    reason: str | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None
    mode: str | None = None
    orientation: int | None = None
    dhash: int | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None


def inspect_image(path: Path, min_side: int, max_pixels: int) -> Inspected:
    """Fully decode `path`; never raises for bad content, returns a reject reason instead."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return Inspected(image_id=None, bytes=0, reason=f"unreadable file: {exc.strerror or exc}")
    image_id = content_id(data)
    size = len(data)

    def reject(reason: str) -> Inspected:
        return Inspected(image_id=image_id, bytes=size, reason=reason)

    if size == 0:
        return reject("empty file (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > max_pixels:
            return reject(
                f"decompression bomb guard: {width}x{height} = {width * height:,} pixels "
                f"exceeds ingest.max_pixels = {max_pixels:,}"
            )
        image.load()
    except UnidentifiedImageError:
        return reject("not an image: Pillow recognises no image format in the bytes")
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        text = str(exc)
        kind = "truncated image" if "truncated" in text.lower() else "corrupt image data"
        return reject(f"{kind}: {text}")

    orientation = int(image.getexif().get(0x0112, 1) or 1)
    fmt, mode = image.format, image.mode
    try:
        image = ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError) as exc:  # broken EXIF is a broken file
        return reject(f"corrupt EXIF orientation: {exc}")
    width, height = image.size
    if min(width, height) < min_side:
        return reject(f"too small: {width}x{height} px, ingest.min_side = {min_side}")
    return Inspected(
        image_id=image_id,
        bytes=size,
        width=width,
        height=height,
        format=fmt,
        mode=mode,
        orientation=orientation,
        dhash=difference_hash(image),
    )
