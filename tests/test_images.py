"""Every kind of bad file gets a reject reason a person can act on; good files are measured right."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.demo_crawl import decompression_bomb_png
from pipeline.images import content_id, difference_hash, inspect_image


def jpeg(size=(120, 160), colour=(200, 30, 30), mode="RGB", quality=90, **save) -> bytes:
    buf = io.BytesIO()
    img = Image.new("RGB", size, colour)
    for x in range(0, size[0], 10):  # some structure, so hashes and decoders have work
        img.paste((x * 2 % 255, 80, 160), (x, 0, x + 5, size[1]))
    img.convert(mode).save(buf, "JPEG", quality=quality, **save)
    return buf.getvalue()


def inspect_bytes(tmp_path: Path, data: bytes, name="x.jpg", min_side=64, max_pixels=10_000_000):
    path = tmp_path / name
    path.write_bytes(data)
    return inspect_image(path, min_side=min_side, max_pixels=max_pixels)


@pytest.mark.parametrize(
    ("make", "reason_start"),
    [
        (lambda: b"", "empty file"),
        (lambda: b"<html>403 Forbidden</html>", "not an image"),
        (lambda: jpeg()[: len(jpeg()) // 2], "truncated image"),
        (lambda: jpeg(size=(40, 300)), "too small: 40x300 px"),
        (lambda: decompression_bomb_png(30_000), "decompression bomb guard: 30000x30000"),
    ],
    ids=["empty", "html-as-jpg", "truncated", "tiny", "bomb"],
)
def test_bad_files_are_rejected_with_a_reason(tmp_path, make, reason_start):
    result = inspect_bytes(tmp_path, make())
    assert not result.ok
    assert result.reason.startswith(reason_start), result.reason


def test_corrupt_scan_data_is_rejected_not_decoded_as_garbage(tmp_path, demo_crawl):
    result = inspect_image(demo_crawl / "batch-001" / "corrupt_0001.jpg", min_side=64, max_pixels=10**8)
    assert result.reason is not None and "corrupt image data" in result.reason


def test_bomb_is_rejected_from_the_header_without_decoding(tmp_path):
    # 40,000 x 40,000 pixels of 1-bit data would need ~200 MB to decode; the check is on the header.
    result = inspect_bytes(tmp_path, decompression_bomb_png(40_000), max_pixels=89_478_485)
    assert "exceeds ingest.max_pixels = 89,478,485" in result.reason


def test_exif_rotation_is_applied_before_measuring(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: stored 160 wide x 120 high, shown 120 x 160
    result = inspect_bytes(tmp_path, jpeg(size=(160, 120), exif=exif))
    assert result.ok and (result.width, result.height, result.orientation) == (120, 160, 6)


def test_cmyk_photo_is_accepted_and_its_mode_recorded(tmp_path):
    result = inspect_bytes(tmp_path, jpeg(mode="CMYK"))
    assert result.ok and result.mode == "CMYK" and result.format == "JPEG"


def test_image_id_is_the_content_hash(tmp_path):
    data = jpeg()
    assert inspect_bytes(tmp_path, data).image_id == content_id(data)
    assert inspect_bytes(tmp_path, data, name="copy.jpg").image_id == content_id(data)


def smooth_picture(phase: float) -> Image.Image:
    y, x = np.mgrid[0:160, 0:120] / 20.0
    grey = 127 + 60 * np.sin(x * 1.3 + phase) + 60 * np.cos(y * 0.9 + 2 * phase)
    return Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8)).convert("RGB")


def test_difference_hash_survives_recompression_but_not_another_picture():
    original = smooth_picture(0.0)
    buf = io.BytesIO()
    original.save(buf, "JPEG", quality=40)
    resaved = Image.open(buf)
    smaller = original.resize((60, 80))
    other = smooth_picture(1.7)
    h = difference_hash(original)
    assert bin(difference_hash(resaved) ^ h).count("1") <= 2
    assert bin(difference_hash(smaller) ^ h).count("1") <= 4
    assert bin(difference_hash(other) ^ h).count("1") > 10
