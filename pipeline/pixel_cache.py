"""Pixel cache stage: decode every catalog image ONCE into a resized uint8 store.

A GPU trains ResNet-50 at 448 px faster (~1,400 images/s) than PIL decodes
full-size SNS photos on 16 cores (~500 images/s, notes §5), so a trainer that
decodes JPEGs every epoch starves the GPU. This stage keeps decoded, resized
pixels in memory-mappable shards, one per crawl batch:

    <out>/<batch>.npy      uint8 (N, height, width, 3), `np.load(..., mmap_mode="r")`
    <out>/<batch>.parquet  image_id, row  (row index into the .npy)
    <out>/<batch>.json     the shard's height, width and a digest of its image ids

A shard is rebuilt only when its batch's images or the size change, so a new
crawl batch costs one new shard. Photos are scaled to cover height x width and
centre-cropped (aspect kept, no padding); JPEGs are decoded with Pillow's draft
mode straight to the smallest DCT scale that still covers the target, the
cheapest correct decode. Size: height x width x 3 bytes per image, e.g.
10,000 images at 448 x 448 = 6.0 GB, at 320 x 240 = 2.3 GB.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps
from tqdm import tqdm

from common.atomic import atomic_path, remove_leftover_temporaries, write_json, write_parquet
from common.cli import InputError, StageParser, report_user_errors
from common.decoding import EXIF_ORIENTATION, pillow_bomb_guard_lifted, to_rgb
from common.processes import worker_pool
from common.settings import DEFAULT_PARAMS, Settings, crawl_folder, load_section, setting
from common.tables import read_table


class UnreadableImage(InputError):
    """A catalog image the pixel cache cannot decode (most likely changed or damaged after ingest)."""


@dataclass(frozen=True)
class PixelCacheSettings(Settings):
    section = "pixel_cache"
    height: int = setting(
        "cached image height (px): images are scaled to cover, then centre-cropped", interval="[1, inf)"
    )
    width: int = setting("cached image width (px); height x width x 3 bytes per image", interval="[1, inf)")
    workers: int = setting("decode processes; 0 = one per CPU core", interval="[0, inf)")


def load_resized(path: Path, height: int, width: int) -> np.ndarray:
    """(height, width, 3) uint8 pixels: EXIF-upright, RGB, scaled to cover, centre-cropped.

    Each step runs only when it changes something: `exif_transpose` and `convert` copy the
    whole picture even when it is already upright RGB, about 8% of the time per photo.
    """
    with Image.open(path) as image:
        side = max(height, width)
        image.draft("RGB", (side, side))  # JPEG only: decode at a reduced DCT scale that still covers the target
        picture: Image.Image = image
        if image.getexif().get(EXIF_ORIENTATION, 1) != 1:
            picture = ImageOps.exif_transpose(picture)
        if picture.mode != "RGB":
            picture = to_rgb(picture)
        return np.asarray(ImageOps.fit(picture, (width, height), Image.Resampling.BILINEAR))


def ids_digest(image_ids: list[str]) -> str:
    return hashlib.sha256("\n".join(image_ids).encode()).hexdigest()[:16]


def shard_is_current(out_dir: Path, batch: str, image_ids: list[str], settings: PixelCacheSettings) -> bool:
    meta_path = out_dir / f"{batch}.json"
    if not (meta_path.exists() and (out_dir / f"{batch}.npy").exists() and (out_dir / f"{batch}.parquet").exists()):
        return False
    meta = json.loads(meta_path.read_text())
    return meta == {
        "height": settings.height,
        "width": settings.width,
        "images": len(image_ids),
        "ids_digest": ids_digest(image_ids),
    }


def decode_into(task: tuple[int, Path], shard: Path, header_bytes: int, height: int, width: int) -> None:
    """Decode one image and write it as row `task[0]` of the `.npy` file `shard`.

    Workers write the pixels themselves: sending each decoded picture back to the parent
    (pickled through a pipe, then copied into the shard) made the build about 1.45x
    slower on 2 cores. `os.pwrite` rather than a memory map: it fills the page cache without
    first faulting in zeroed pages (0.15 vs 0.20 ms per 448 x 448 row; docs/speed.md, "Measured: pixel
    cache build"). Opening the file per image costs microseconds against milliseconds of
    decoding, and leaves no descriptor behind in a worker.
    """
    row, path = task
    try:
        with pillow_bomb_guard_lifted():  # every catalog image passed ingest's max_pixels
            pixels = load_resized(path, height, width)
    except MemoryError:
        raise  # the machine, not the file
    except Exception as exc:  # Pillow's decoders raise many types (SyntaxError, TypeError, ...) on bad bytes
        raise UnreadableImage(
            f"{path}: cannot decode it for the pixel cache ({type(exc).__name__}: {exc}). Ingest decoded it, so it has "
            "most likely changed or gone since: re-run the pipeline (`dvc repro`) so ingest checks it again; if this "
            "error comes back, take the file out of its crawl batch"
        ) from exc
    fd = os.open(shard, os.O_WRONLY)
    try:
        written = os.pwrite(fd, pixels.data, header_bytes + row * pixels.nbytes)
    finally:
        os.close(fd)
    if written != pixels.nbytes:
        raise OSError(f"{shard}: wrote {written} of {pixels.nbytes} bytes of row {row} ({path}); is the disk full?")


def build_shard(
    out_dir: Path,
    batch: str,
    rows: pd.DataFrame,
    crawl_dir: Path,
    settings: PixelCacheSettings,
    pool: ProcessPoolExecutor | None,
) -> None:
    """Decode a batch's images into `<batch>.npy` (written through a temp file, then renamed)."""
    paths = [crawl_dir / p for p in rows["path"]]
    with atomic_path(out_dir / f"{batch}.npy") as tmp:
        shape = (len(paths), settings.height, settings.width, 3)
        header_bytes = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape).offset
        decode = partial(
            decode_into, shard=tmp, header_bytes=header_bytes, height=settings.height, width=settings.width
        )
        done = pool.map(decode, enumerate(paths), chunksize=8) if pool else map(decode, enumerate(paths))
        for _ in tqdm(done, total=len(paths), desc=f"pixels {batch}", unit="img", leave=False, disable=None):
            pass
    image_ids = list(rows["image_id"])
    write_parquet(
        pd.DataFrame({"image_id": image_ids, "row": np.arange(len(image_ids), dtype=np.int64)}),
        out_dir / f"{batch}.parquet",
    )
    write_json(
        {
            "height": settings.height,
            "width": settings.width,
            "images": len(image_ids),
            "ids_digest": ids_digest(image_ids),
        },
        out_dir / f"{batch}.json",
    )


def build_cache(catalog: pd.DataFrame, crawl_dir: Path, out_dir: Path, settings: PixelCacheSettings) -> tuple[int, int]:
    """Bring the cache in step with the catalog; returns (shards rebuilt, images decoded)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_leftover_temporaries(out_dir)
    catalog = catalog.sort_values(["batch", "image_id"], ignore_index=True)
    batches = {str(b): rows for b, rows in catalog.groupby("batch", sort=True)}
    for stale in {p.stem for p in out_dir.iterdir() if p.suffix in (".npy", ".parquet", ".json")} - set(batches):
        for suffix in (".npy", ".parquet", ".json"):
            (out_dir / f"{stale}{suffix}").unlink(missing_ok=True)
    todo = {
        b: rows for b, rows in batches.items() if not shard_is_current(out_dir, b, list(rows["image_id"]), settings)
    }
    workers = settings.workers or os.cpu_count() or 1
    pool = worker_pool(workers) if workers > 1 and todo else None
    try:
        for batch, rows in todo.items():
            build_shard(out_dir, batch, rows, crawl_dir, settings, pool)
    finally:
        if pool:
            pool.shutdown()
    return len(todo), sum(len(rows) for rows in todo.values())


def upright_sizes(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Widths and heights of photos as shown (EXIF orientation applied), from their headers alone."""
    sizes = []
    for path in paths:
        with Image.open(path) as image:
            turned = image.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8)  # shown rotated by 90 degrees
            sizes.append(image.size[::-1] if turned else image.size)
    return np.array([w for w, _ in sizes], dtype=float), np.array([h for _, h in sizes], dtype=float)


def height_for(widths: np.ndarray, heights: np.ndarray, width: int) -> int:
    """The cache height (even) that gives photos of the median height/width ratio their whole frame at `width`."""
    return 2 * round(width * float(np.median(heights / widths)) / 2)


def cropped_share(widths: np.ndarray, heights: np.ndarray, settings: PixelCacheSettings) -> float:
    """Median share of a photo's area that scaling to cover height x width and centre-cropping cuts off."""
    photo, cache = heights / widths, settings.height / settings.width
    return float(np.median(1 - np.minimum(photo, cache) / np.maximum(photo, cache)))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = StageParser("pixel_cache", prog="python -m pipeline.pixel_cache", description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="params.yaml (sections crawl, pixel_cache)")
    parser.add_argument("--catalog", type=Path, help="image catalog from the ingest stage")
    parser.add_argument("--crawl-dir", type=Path, help="folder of crawl batches")
    parser.add_argument("--out", type=Path, help="output folder of shards (persisted across runs)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return report_user_errors("pixel_cache", lambda: run(args))


def run(args: argparse.Namespace) -> int:
    settings = load_section(PixelCacheSettings, "pixel_cache", args.params)
    crawl_dir = crawl_folder(args.crawl_dir, args.params)
    catalog = read_table(
        args.catalog, columns=["image_id", "path", "batch", "width", "height"]
    )  # upright sizes (ingest)
    widths, heights = catalog["width"].to_numpy(float), catalog["height"].to_numpy(float)
    if len(catalog) and (lost := cropped_share(widths, heights, settings)) > 0.05:
        print(
            f"pixel_cache: warning: the cache's {settings.height}x{settings.width} frame cuts {lost:.0%} off a typical "
            "photo (centre crop), which training then never sees; for these photos set pixel_cache.height: "
            f"{height_for(widths, heights, settings.width)} (at width {settings.width})",
            file=sys.stderr,
        )
    shards, decoded = build_cache(catalog, crawl_dir, args.out, settings)
    size_gb = len(catalog) * settings.height * settings.width * 3 / 1e9
    print(
        f"pixel_cache: {decoded} images decoded into {shards} new shard(s); {len(catalog)} images, {size_gb:.2f} GB at "
        f"{settings.height}x{settings.width}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
