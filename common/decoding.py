"""Decoding policy shared by every stage that opens pictures: which pixel modes are accepted, how they become RGB, and
where Pillow's bomb guard is lifted.

A module of its own (Pillow and numpy only), so the training stages that decode pictures depend
on this policy (dvc.yaml deps) and not on ingest's implementation (common/images.py).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import cast

import numpy as np
from PIL import Image, ImageCms

EXIF_ORIENTATION = 0x0112  # the EXIF tag of how a picture is to be turned for display

# Modes whose 8-bit channels `convert("RGB")` maps faithfully.
EIGHT_BIT_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"})
# Modes `to_rgb` converts with care: Pillow's own convert would clip 16- and 32-bit values to 0-255 (a 16-bit PNG
# turns almost white, a float TIFF black).
WIDE_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
SUPPORTED_MODES = EIGHT_BIT_MODES | WIDE_MODES | {"LAB"}


def unsupported_mode_reason(mode: str) -> str:
    """Why a picture whose mode is not in SUPPORTED_MODES is refused, and how to convert it."""
    return (
        f"unsupported pixel mode {mode}: convert the file to 8-bit RGB (e.g. `magick in.tif -depth 8 out.png`) and put "
        "it back in the batch"
    )


def wide_to_8bit(values: np.ndarray, mode: str) -> np.ndarray:
    """Grey levels of a 16-bit, 32-bit integer or float picture scaled (never clipped) to 0-255.

    16-bit modes and 32-bit integers within 0-65535 (how Pillow may open a 16-bit PNG) divide by 257, so 65535 is 255;
    floats within 0-1 multiply by 255; anything else is stretched from its own minimum to its maximum.
    """
    values = values.astype(np.float64)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if mode.startswith("I;16") or (mode == "I" and low >= 0 and high <= 65535):
        scaled = values / 257
    elif mode == "F" and low >= 0 and high <= 1:
        scaled = values * 255
    else:
        scaled = (values - low) * (255 / (high - low)) if high > low else np.zeros_like(values)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def to_rgb(image: Image.Image) -> Image.Image:
    """The picture in 8-bit RGB: 16- and 32-bit grey scaled (`wide_to_8bit`), LAB through a colour conversion
    (LittleCMS, to sRGB)."""
    if image.mode in WIDE_MODES:
        return Image.fromarray(wide_to_8bit(np.asarray(image), image.mode), mode="L").convert("RGB")
    if image.mode == "LAB":
        return cast(Image.Image, ImageCms.applyTransform(image, _lab_to_srgb()))  # a new image: None only when inPlace
    return image.convert("RGB")


@functools.cache
def _lab_to_srgb() -> ImageCms.ImageCmsTransform:
    return ImageCms.buildTransformFromOpenProfiles(
        ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB"
    )


@contextmanager
def pillow_bomb_guard_lifted() -> Iterator[None]:
    """Pillow's decompression-bomb guard off for the block, for pictures that ingest vets.

    Ingest's own guard is the `max_pixels` check in inspect_image: it reads the header
    before any pixel is decoded and names the params.yaml setting, which may admit more
    than Pillow's fixed ~179 MP. Pillow's guard is process-wide, so it is lifted only
    around these decodes: a process that also opens other pictures (predict on arbitrary
    photos) keeps it.
    """
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved
