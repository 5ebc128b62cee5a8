"""Pixel cache: built once per batch, read back bit-exact, upright and RGB."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from common.pixel_shards import PixelStore
from demo.crawl import generate
from pipeline.ingest import ingest
from pipeline.pixel_cache import (
    PixelCacheSettings,
    UnreadableImage,
    build_cache,
    cropped_share,
    decode_into,
    height_for,
    load_resized,
    main,
)

SETTINGS = PixelCacheSettings(height=64, width=48, workers=1)


def catalog_of(crawl, tmp_path, ingest_settings):
    return ingest(crawl, tmp_path / "ingest-cache", ingest_settings)[0].to_pandas()[["image_id", "path", "batch"]]


def test_cache_reads_back_bit_exact(tmp_path, demo_crawl, ingest_settings):
    catalog = catalog_of(demo_crawl, tmp_path, ingest_settings)
    assert build_cache(catalog, demo_crawl, tmp_path / "pixels", SETTINGS) == (2, len(catalog))
    store = PixelStore(tmp_path / "pixels")
    ids = list(catalog["image_id"][::-1])  # any order
    pixels = store.get(ids)
    assert pixels.shape == (len(ids), 64, 48, 3) and pixels.dtype == np.uint8
    for image, path in zip(pixels, catalog["path"][::-1], strict=True):
        assert np.array_equal(image, load_resized(demo_crawl / path, 64, 48))


def test_new_batch_builds_only_its_shard_and_a_new_size_rebuilds_all(
    tmp_path, demo_crawl, tiny_demo, style_names, ingest_settings
):
    out = tmp_path / "pixels"
    build_cache(catalog_of(demo_crawl, tmp_path, ingest_settings), demo_crawl, out, SETTINGS)
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.npy")}
    generate(dataclasses.replace(tiny_demo, batches=3), style_names, demo_crawl, tmp_path / "exports")
    catalog = catalog_of(demo_crawl, tmp_path, ingest_settings)
    shards, decoded = build_cache(catalog, demo_crawl, out, SETTINGS)
    assert (shards, decoded) == (1, int((catalog["batch"] == "batch-003").sum()))
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.npy") if p.name in before} == before
    (out / ".batch-001.npy.x81kd.tmp").write_bytes(
        b"left by a killed write"
    )  # the cache persists: nothing else would remove it
    assert build_cache(catalog, demo_crawl, out, SETTINGS) == (0, 0)
    assert not list(out.glob(".*"))
    assert build_cache(catalog, demo_crawl, out, dataclasses.replace(SETTINGS, height=32)) == (3, len(catalog))


def test_exif_rotation_and_cmyk_are_stored_upright_rgb(tmp_path):
    upright = Image.new("RGB", (60, 80), (0, 0, 255))
    upright.paste((255, 0, 0), (0, 0, 60, 40))  # red top half, blue bottom half
    exif = Image.Exif()
    exif[0x0112] = 6
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "rotated.jpg", quality=95, exif=exif)
    upright.convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    for name in ("rotated.jpg", "cmyk.jpg"):
        pixels = load_resized(tmp_path / name, 32, 24).astype(int)
        assert pixels[2, 12, 0] > 200 and pixels[2, 12, 2] < 60, f"{name}: top should be red"
        assert pixels[-3, 12, 2] > 200 and pixels[-3, 12, 0] < 60, f"{name}: bottom should be blue"


def test_an_image_damaged_after_ingest_names_the_file_and_leaves_its_shard_as_it_was(
    tmp_path, demo_crawl, ingest_settings
):
    out = tmp_path / "pixels"
    catalog = catalog_of(demo_crawl, tmp_path, ingest_settings)
    build_cache(catalog, demo_crawl, out, SETTINGS)
    last_batch = catalog.sort_values(["batch", "image_id"])["batch"].iloc[-1]
    shard_files = {p.name: p.read_bytes() for p in out.glob(f"{last_batch}.*")}
    damaged = demo_crawl / catalog.loc[catalog["batch"] == last_batch, "path"].iloc[0]
    damaged.write_bytes(damaged.read_bytes()[:300])  # truncated after ingest
    with pytest.raises(UnreadableImage, match=re.escape(str(damaged))):
        build_cache(
            catalog, demo_crawl, out, dataclasses.replace(SETTINGS, height=32, workers=2)
        )  # a new size rebuilds every shard
    assert {p.name: p.read_bytes() for p in out.glob(f"{last_batch}.*")} == shard_files
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # no temp file left behind


def test_a_catalog_image_gone_since_ingest_stops_the_stage_with_one_line(tmp_path, capsys):
    catalog = pd.DataFrame({"image_id": ["id0"], "path": ["gone.jpg"], "batch": "b1", "width": 240, "height": 320})
    catalog.to_parquet(tmp_path / "catalog.parquet")
    assert (
        main(
            [
                "--catalog",
                str(tmp_path / "catalog.parquet"),
                "--crawl-dir",
                str(tmp_path),
                "--out",
                str(tmp_path / "pixels"),
            ]
        )
        == 2
    )
    [line] = capsys.readouterr().err.splitlines()
    assert (
        line.startswith(
            f"pixel_cache: error: {tmp_path / 'gone.jpg'}: cannot decode it for the pixel cache (FileNotFoundError"
        )
        and "`dvc repro`" in line
    )


def test_any_decode_error_names_the_file_and_its_cause(tmp_path, monkeypatch):
    Image.new("RGB", (64, 48), (200, 30, 30)).save(tmp_path / "photo.jpg")

    def corrupt_tiff_decoder(*args):
        raise TypeError("expected str, bytes or os.PathLike object")  # what a corrupt TIFF made Pillow raise in fuzzing

    monkeypatch.setattr("pipeline.pixel_cache.load_resized", corrupt_tiff_decoder)
    with pytest.raises(
        UnreadableImage, match=re.escape(f"{tmp_path / 'photo.jpg'}: cannot decode it for the pixel cache (TypeError: ")
    ):
        decode_into((0, tmp_path / "photo.jpg"), tmp_path / "shard.npy", header_bytes=0, height=32, width=24)


def test_pictures_ingest_admitted_beyond_pillows_bomb_limit_are_cached_and_the_limit_comes_back(tmp_path, monkeypatch):
    Image.new("RGB", (64, 48), (200, 30, 30)).save(tmp_path / "photo.png")
    shard = tmp_path / "shard.npy"
    header_bytes = np.lib.format.open_memmap(shard, mode="w+", dtype=np.uint8, shape=(1, 32, 24, 3)).offset
    monkeypatch.setattr(
        Image, "MAX_IMAGE_PIXELS", 100
    )  # 64 x 48 is a "bomb" to Pillow now; ingest.max_pixels admits it
    decode_into((0, tmp_path / "photo.png"), shard, header_bytes=header_bytes, height=32, width=24)
    assert (np.load(shard)[0] == (200, 30, 30)).all()
    assert Image.MAX_IMAGE_PIXELS == 100


@pytest.mark.slow
def test_importing_the_pipeline_keeps_pillows_bomb_guard_for_other_pictures():
    """predict opens arbitrary photos: no pipeline module may switch Pillow's guard off for the whole process."""
    code = (
        "from PIL import Image; default = Image.MAX_IMAGE_PIXELS; "
        "import training.predict, training.train, pipeline.ingest, pipeline.pixel_cache; "
        "print(Image.MAX_IMAGE_PIXELS == default)"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=Path(__file__).parents[1], capture_output=True, text=True, check=True
    )
    assert run.stdout.strip() == "True"


def test_the_cache_frame_that_fits_the_photos_and_what_another_frame_cuts_off():
    widths, heights = np.array([550.0, 550.0, 1080.0]), np.array([830.0, 830.0, 1350.0])  # street photos: 2:3 mostly
    assert height_for(widths, heights, 240) == 362  # 240 * 830 / 550 = 362.2
    assert cropped_share(widths, heights, PixelCacheSettings(height=320, width=240, workers=1)) == pytest.approx(
        1 - (320 / 240) / (830 / 550)
    )
    assert cropped_share(widths, heights, PixelCacheSettings(height=362, width=240, workers=1)) < 0.01
    assert cropped_share(widths, heights, PixelCacheSettings(height=240, width=240, workers=1)) == pytest.approx(
        1 - 550 / 830
    )  # square: the top and bottom go


def test_the_stage_warns_when_its_frame_crops_the_photos_and_names_the_height_that_fits(tmp_path, capsys):
    for i in range(3):
        Image.new("RGB", (200, 300), (i * 60, 90, 120)).save(tmp_path / f"p{i}.jpg")  # 2:3 street-photo shape
    catalog = pd.DataFrame(
        {
            "image_id": [f"id{i}" for i in range(3)],
            "path": [f"p{i}.jpg" for i in range(3)],
            "batch": "b1",
            "width": 200,
            "height": 300,
        }
    )
    catalog.to_parquet(tmp_path / "catalog.parquet")
    assert (
        main(
            [
                "--catalog",
                str(tmp_path / "catalog.parquet"),
                "--crawl-dir",
                str(tmp_path),
                "--out",
                str(tmp_path / "pixels"),
            ]
        )
        == 0
    )  # params.yaml: 320 x 240
    warning = capsys.readouterr().err
    assert (
        "320x240 frame cuts 11% off a typical photo" in warning
        and "set pixel_cache.height: 360 (at width 240)" in warning
    )
