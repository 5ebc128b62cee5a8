"""Decoding policy shared by every stage that opens pictures: which pixel modes are accepted, and where Pillow's bomb guard is lifted.

A module of its own (Pillow only), so the training stages that decode pictures depend
on this policy (dvc.yaml deps) and not on ingest's implementation (pipeline/images.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from PIL import Image

EXIF_ORIENTATION = 0x0112  # the EXIF tag of how a picture is to be turned for display

# Modes whose 8-bit channels `convert("RGB")` maps faithfully (the pixel cache and the
# difference hash rely on it). 16- and 32-bit modes (I;16, I, F) are clipped to 0-255
# (a 16-bit PNG turns almost white, a float TIFF black), LAB has no conversion to grey.
SUPPORTED_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"})


def unsupported_mode_reason(mode: str) -> str:
    """Why a picture whose mode is not in SUPPORTED_MODES is refused, and how to convert it."""
    return (
        f"unsupported pixel mode {mode}: 16-bit, 32-bit and LAB pictures lose their colours in 8-bit RGB; "
        "convert the file to 8-bit RGB (e.g. `magick in.tif -depth 8 out.png`) and put it back in the batch"
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
