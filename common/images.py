"""Decode-check one image file: the only place that opens crawl images during ingest.

Every file gets one full decode (a header check misses truncated and corrupt
JPEGs), EXIF orientation applied, and two hashes: SHA-256 of the bytes (the
stable image id) and a 64-bit difference hash of the pixels (near duplicates).

What is recorded here are facts of the bytes alone. The limits of params.yaml
(ingest.min_side, ingest.max_pixels) are applied by ingest on every run, so that
changing them needs no new decode; the one exception is the decompression-bomb
guard, which must stop a decode before it starts (see `inspect_image`).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from common.decoding import (
    EIGHT_BIT_MODES,
    EXIF_ORIENTATION,
    SUPPORTED_MODES,
    pillow_bomb_guard_lifted,
    to_rgb,
    unsupported_mode_reason,
)

IMAGE_ID_HEX_CHARS = 16  # 64 bits of SHA-256: collision odds ~1e-8 at 1.2 M images


def content_id(data: bytes) -> str:
    """Stable image id: the first 16 hex digits of the SHA-256 of the file bytes."""
    return hashlib.sha256(data).hexdigest()[:IMAGE_ID_HEX_CHARS]


def difference_hash(image: Image.Image) -> int:
    """64-bit dHash: is each pixel brighter than its right neighbour, on a 9x8 grey thumbnail."""
    grey = np.asarray(
        (image if image.mode in EIGHT_BIT_MODES else to_rgb(image)).convert("L").resize((9, 8), Image.Resampling.BOX),
        dtype=np.int16,
    )
    bits = (grey[:, 1:] > grey[:, :-1]).ravel()
    return int(np.packbits(bits).view(">u8")[0])


def applied_orientation(image: Image.Image) -> int:
    """The EXIF orientation `ImageOps.exif_transpose` acts on (2-8), else 1.

    Any other value (missing, text, out of range) leaves the picture as stored, in
    exif_transpose and in the pixel cache alike, so it is recorded as 1.
    """
    value = image.getexif().get(EXIF_ORIENTATION, 1)
    return int(value) if value in range(2, 9) else 1


def decode_error_reason(exc: Exception) -> str:
    """Reject reason for a file Pillow failed on, naming the exception so the cause can be looked up."""
    text = str(exc)
    kind = "truncated image" if "truncated" in text.lower() else "corrupt image data"
    return f"{kind} ({type(exc).__name__}): {text}"


@dataclass(frozen=True)
class Inspected:
    """What ingest records of a file: the image facts, or why its bytes are unusable.

    `header_only` is True when the image has more than `max_pixels` pixels: its pixels
    were not decoded, width and height are the stored (not upright) size from the header.
    """

    image_id: str | None
    bytes: int
    reason: str | None = None
    header_only: bool = False
    width: int | None = None
    height: int | None = None
    format: str | None = None
    mode: str | None = None
    orientation: int | None = None
    dhash: int | None = None


def inspect_image(path: Path, max_pixels: int) -> Inspected:
    """Fully decode `path`; never raises for bad content, returns a reject reason instead.

    An image of more than `max_pixels` pixels is not decoded (its header is measured
    only): ingest rejects it as a decompression bomb unless ingest.max_pixels is raised.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        return Inspected(image_id=None, bytes=0, reason=f"unreadable file: {exc.strerror or exc}")
    image_id = content_id(data)
    if not data:
        return Inspected(image_id=image_id, bytes=0, reason="empty file (0 bytes)")
    try:
        with pillow_bomb_guard_lifted():
            return _decode(data, image_id, max_pixels)
    except UnidentifiedImageError:
        return Inspected(
            image_id=image_id, bytes=len(data), reason="not an image: Pillow recognises no image format in the bytes"
        )
    except MemoryError:
        raise  # the machine, not the file: max_pixels bounds what one image may need
    except Exception as exc:  # Pillow's decoders raise many types (SyntaxError, TypeError, ...) on untrusted bytes
        return Inspected(image_id=image_id, bytes=len(data), reason=decode_error_reason(exc))


def _decode(data: bytes, image_id: str, max_pixels: int) -> Inspected:
    """The facts of an image file's bytes; raises whatever Pillow raises on bad data."""
    image = Image.open(io.BytesIO(data))
    header = Inspected(
        image_id=image_id, bytes=len(data), width=image.width, height=image.height, format=image.format, mode=image.mode
    )
    if image.width * image.height > max_pixels:
        return replace(header, header_only=True)
    if image.mode not in SUPPORTED_MODES:
        return replace(header, reason=unsupported_mode_reason(image.mode))
    image.load()
    orientation = applied_orientation(image)
    upright = ImageOps.exif_transpose(image)
    return replace(
        header, width=upright.width, height=upright.height, orientation=orientation, dhash=difference_hash(upright)
    )
