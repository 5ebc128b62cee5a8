"""Every kind of bad file gets a reject reason a person can act on; good files are measured right."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from unittest.mock import Mock

import numpy as np
import pytest
from PIL import Image

import common.images as images_module
from common.images import content_id, difference_hash, inspect_image
from demo.crawl import decompression_bomb_png
from training.data import load_rgb


def jpeg(size=(120, 160), colour=(200, 30, 30), mode="RGB", quality=90, **save) -> bytes:
    buf = io.BytesIO()
    img = Image.new("RGB", size, colour)
    for x in range(0, size[0], 10):  # some structure, so hashes and decoders have work
        img.paste((x * 2 % 255, 80, 160), (x, 0, x + 5, size[1]))
    img.convert(mode).save(buf, "JPEG", quality=quality, **save)
    return buf.getvalue()


def png_with_exif_chunk(payload: bytes) -> bytes:
    """A valid PNG carrying an eXIf chunk with `payload` (a correct chunk CRC, whatever the payload)."""
    buf = io.BytesIO()
    Image.new("RGB", (80, 80), (10, 200, 30)).save(buf, "PNG")
    data = buf.getvalue()
    chunk = struct.pack(">I", len(payload)) + b"eXIf" + payload + struct.pack(">I", zlib.crc32(b"eXIf" + payload))
    at = data.index(b"IDAT") - 4
    return data[:at] + chunk + data[at:]


def tiff_with_rational_strip_offsets() -> bytes:
    """A TIFF whose StripOffsets entry is typed RATIONAL: Pillow's load() raises TypeError on it."""
    buf = io.BytesIO()
    Image.new("RGB", (80, 80), (90, 140, 200)).save(buf, "TIFF")
    data = bytearray(buf.getvalue())
    ifd = struct.unpack_from("<I", data, 4)[0]
    for entry in range(ifd + 2, ifd + 2 + 12 * struct.unpack_from("<H", data, ifd)[0], 12):
        if struct.unpack_from("<H", data, entry)[0] == 273:  # StripOffsets
            struct.pack_into("<H", data, entry + 2, 5)  # type LONG -> RATIONAL
    return bytes(data)


def jpeg_with_text_orientation() -> bytes:
    """A JPEG whose EXIF orientation tag holds the text 'six' (Pillow cannot write that itself)."""
    ifd = struct.pack(">HHHI", 1, 0x0112, 2, 4) + b"six\x00" + struct.pack(">I", 0)  # one ASCII entry, then no next IFD
    return jpeg(size=(160, 120), exif=b"Exif\x00\x00MM\x00\x2a" + struct.pack(">I", 8) + ifd)


def saved(picture: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    picture.save(buf, fmt)
    return buf.getvalue()


def inspect_bytes(tmp_path: Path, data: bytes, name="x.jpg", max_pixels=10_000_000):
    path = tmp_path / name
    path.write_bytes(data)
    return inspect_image(path, max_pixels=max_pixels)


@pytest.mark.parametrize(
    ("make", "reason_start"),
    [
        (lambda: b"", "empty file"),
        (lambda: b"<html>403 Forbidden</html>", "not an image"),
        (lambda: jpeg()[: len(jpeg()) // 2], "truncated image (OSError): image file is truncated"),
        (lambda: png_with_exif_chunk(b"garbage, not TIFF"), "corrupt image data (SyntaxError): not a TIFF file"),
        (tiff_with_rational_strip_offsets, "corrupt image data (TypeError): 'IFDRational' object"),
    ],
    ids=["empty", "html-as-jpg", "truncated", "garbage-exif", "tiff-typeerror"],
)
def test_bad_files_are_rejected_with_a_reason(tmp_path, make, reason_start):
    result = inspect_bytes(tmp_path, make())
    assert result.reason is not None and result.reason.startswith(reason_start), result.reason


def test_an_error_anywhere_in_the_inspection_is_a_reject_but_running_out_of_memory_is_not(tmp_path, monkeypatch):
    monkeypatch.setattr(
        images_module, "difference_hash", Mock(side_effect=ValueError("conversion from LAB to L not supported"))
    )
    assert (
        inspect_bytes(tmp_path, jpeg()).reason
        == "corrupt image data (ValueError): conversion from LAB to L not supported"
    )
    monkeypatch.setattr(images_module, "difference_hash", Mock(side_effect=MemoryError()))
    with pytest.raises(MemoryError):
        inspect_bytes(tmp_path, jpeg())


def test_corrupt_scan_data_is_rejected_not_decoded_as_garbage(tmp_path, demo_crawl):
    result = inspect_image(demo_crawl / "batch-001" / "corrupt_0001.jpg", max_pixels=10**8)
    assert result.reason is not None and "corrupt image data" in result.reason


def test_bomb_is_measured_from_the_header_without_decoding(tmp_path):
    # 40,000 x 40,000 pixels of 1-bit data would need ~1.6 GB to decode; only the header is read.
    result = inspect_bytes(tmp_path, decompression_bomb_png(40_000), max_pixels=89_478_485)
    assert (result.reason, result.header_only, result.width, result.height, result.dhash) == (
        None,
        True,
        40_000,
        40_000,
        None,
    )


def test_ingest_max_pixels_not_pillows_limit_decides_and_pillows_limit_comes_back(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 160 x 120 is a "bomb" to Pillow now
    result = inspect_bytes(
        tmp_path, saved(Image.new("RGB", (160, 120), "white"), "PNG"), name="x.png", max_pixels=20_000
    )
    assert (result.reason, result.header_only, result.width, result.height) == (None, False, 160, 120)
    assert Image.MAX_IMAGE_PIXELS == 100


def test_exif_rotation_is_applied_before_measuring(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: stored 160 wide x 120 high, shown 120 x 160
    result = inspect_bytes(tmp_path, jpeg(size=(160, 120), exif=exif))
    assert result.reason is None and not result.header_only
    assert (result.width, result.height, result.orientation) == (120, 160, 6)


def test_an_orientation_tag_holding_text_leaves_the_picture_as_stored(tmp_path):
    result = inspect_bytes(tmp_path, jpeg_with_text_orientation())
    assert result.reason is None and (result.width, result.height, result.orientation) == (160, 120, 1)


def test_cmyk_photo_is_accepted_and_its_mode_recorded(tmp_path):
    result = inspect_bytes(tmp_path, jpeg(mode="CMYK"))
    assert result.reason is None and result.mode == "CMYK" and result.format == "JPEG"


@pytest.mark.parametrize(
    ("picture", "fmt", "expected"),
    [
        (
            Image.fromarray(np.array([[0, 257 * 100, 65535, 40_000]], np.uint16)),
            "PNG",
            [0, 100, 255, 156],
        ),  # I;16: / 257, not clipped
        (
            Image.fromarray(np.array([[0, 257 * 100, 65535, 40_000]], np.int32)),
            "TIFF",
            [0, 100, 255, 156],
        ),  # I within 16 bits: the same
        (
            Image.fromarray(np.array([[-100, 0, 100, 410]], np.int32)),
            "TIFF",
            [0, 50, 100, 255],
        ),  # I beyond: stretched min..max
        (
            Image.fromarray(np.array([[0.0, 0.5, 1.0, 0.2]], np.float32)),
            "TIFF",
            [0, 128, 255, 51],
        ),  # F within 0-1: * 255
    ],
    ids=["16-bit-png", "32-bit-int-tiff", "32-bit-int-wide-tiff", "float-tiff"],
)
def test_wide_grey_pictures_are_scaled_to_8_bit_not_clipped(tmp_path, picture, fmt, expected):
    path = tmp_path / f"x.{fmt.lower()}"
    path.write_bytes(saved(picture.resize((64, 64), Image.Resampling.NEAREST), fmt))
    result = inspect_image(path, max_pixels=10**8)
    assert result.reason is None and result.width == 64
    rgb = np.asarray(load_rgb(path))
    assert rgb.shape == (64, 64, 3) and (rgb[0, ::16, 0].tolist(), rgb[0, ::16, 1].tolist()) == (expected, expected)


def test_lab_pictures_go_through_a_colour_conversion(tmp_path):
    lab = Image.new("LAB", (64, 64), (128, 128, 128))  # L* 50, a* 0, b* 0: neutral mid grey
    lab.paste((255, 128, 128), (0, 0, 32, 64))  # L* 100: white
    path = tmp_path / "x.tiff"
    path.write_bytes(saved(lab, "TIFF"))
    assert inspect_image(path, max_pixels=10**8).reason is None
    rgb = np.asarray(load_rgb(path))
    assert rgb[0, 40].tolist() == [119, 119, 119], (
        "sRGB of L* 50 is 119 (a plain 8-bit reading would give 128 and tinted channels)"
    )
    assert rgb[0, 0].tolist() in ([254, 255, 254], [255, 255, 255])


@pytest.mark.slow
def test_training_applies_the_decoding_policy_without_importing_ingests_code():
    """Training stages depend on common/decoding.py (dvc.yaml deps), not on ingest's common/images.py; ingest uses
    the same policy."""
    code = (
        "import sys, training.predict, training.features, training.train, training.evaluate; print('common.images' "
        "in sys.modules); import common.decoding as d, common.images as i; print(i.SUPPORTED_MODES is "
        "d.SUPPORTED_MODES and i.unsupported_mode_reason is d.unsupported_mode_reason)"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=Path(__file__).parents[1], capture_output=True, text=True, check=True
    )
    assert run.stdout.split() == ["False", "True"]


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
