"""Pillow's decompression-bomb guard, lifted only where ingest's own guard has vetted the pictures."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from PIL import Image


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
