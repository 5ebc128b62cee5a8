"""Pixel cache benchmark on real street photos (../shared/datasets/ccp/photos).

Two photo sets: the CCP photos as they are (about 550 x 830), and a copy of some of them
scaled up to the SNS size of the issue (1080 x 1350, re-encoded as JPEG quality 90; real
content, but smoother than a camera's, so a little cheaper to decode). For each, measured
in this one process, all on 1 core and on all cores (a process pool):
  1. baseline A, a PIL DataLoader's work per image: full decode, EXIF transpose, RGB
     convert, resize (each step copying the picture, as a DataLoader's calls do);
  2. baseline B, the ceiling: the cache's own decode (`load_resized`: JPEG draft mode,
     copies only when they change something) with nothing stored;
  3. the cache build (decode + write into the shard), compared with both;
  4. reading random mini-batches back from the memory-mapped cache.
Shared machines are noisy: every rate is the best of --repeats runs, the measurements
taking turns, so a slow spell hits all of them.

Usage: python benchmarks/bench_pixel_cache.py [--photos DIR] [--height 448 --width 448]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from common.images import content_id
from common.pixel_shards import PixelStore
from pipeline.pixel_cache import PixelCacheSettings, build_cache, load_resized

DEFAULT_PHOTOS = Path(__file__).resolve().parents[1].parent / "shared/datasets/ccp/photos"
SNS_SIZE = (1080, 1350)


def dataloader_decode_resize(path: Path, height: int, width: int) -> None:
    """Baseline A: what a PIL DataLoader does with one photo (nothing stored)."""
    with Image.open(path) as image:
        ImageOps.fit(ImageOps.exif_transpose(image).convert("RGB"), (width, height), Image.Resampling.BILINEAR)


def decode_only(path: Path, height: int, width: int) -> None:
    """Baseline B: the cache's decode with nothing stored."""
    load_resized(path, height, width)


def decode_rate(
    work: Callable[[Path, int, int], None], paths: list[Path], height: int, width: int, workers: int
) -> float:
    """images/s of `work` over `paths` on `workers` processes."""
    task = partial(work, height=height, width=width)
    start = time.perf_counter()
    if workers == 1:
        list(map(task, paths))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            list(pool.map(task, paths, chunksize=8))
    return len(paths) / (time.perf_counter() - start)


def build_rate(catalog: pd.DataFrame, photos: Path, out: Path, settings: PixelCacheSettings) -> float:
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    build_cache(catalog, photos, out, settings)
    return len(catalog) / (time.perf_counter() - start)


def catalog_of(paths: list[Path]) -> pd.DataFrame:
    """Photos as a catalog of 400-image crawl batches (one shard each)."""
    catalog = pd.DataFrame({"image_id": [content_id(p.read_bytes()) for p in paths], "path": [p.name for p in paths]})
    return catalog.drop_duplicates("image_id").assign(batch=lambda d: [f"b{i // 400:02d}" for i in range(len(d))])


def write_sns_sized(paths: list[Path], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    for path in paths:
        with Image.open(path) as image:
            ImageOps.fit(image.convert("RGB"), SNS_SIZE, Image.Resampling.LANCZOS).save(out / path.name, quality=90)
    return [out / p.name for p in paths]


def bench_photo_set(name: str, paths: list[Path], height: int, width: int, repeats: int, work_dir: Path) -> None:
    """Print baselines A and B, the cache build against both, and the read-back rate for one photo set."""
    photos, catalog, cores = paths[0].parent, catalog_of(paths), os.cpu_count() or 1
    with Image.open(paths[0]) as first:
        print(
            f"\n{name}: {len(catalog)} photos ({first.size[0]} x {first.size[1]}), cache {height}x{width}, best of "
            f"{repeats}"
        )
    best: dict[str, float] = {}
    for _ in range(repeats):
        for workers in (1, cores):
            settings = PixelCacheSettings(height=height, width=width, workers=workers)
            rates = {
                f"A{workers}": decode_rate(dataloader_decode_resize, paths, height, width, workers),
                f"B{workers}": decode_rate(decode_only, paths, height, width, workers),
                f"build{workers}": build_rate(catalog, photos, work_dir / f"w{workers}", settings),
            }
            best |= {key: max(rate, best.get(key, 0.0)) for key, rate in rates.items()}
    for workers in (1, cores):
        where = "1 core" if workers == 1 else f"{cores} processes"
        build, a, b = best[f"build{workers}"], best[f"A{workers}"], best[f"B{workers}"]
        print(
            f"  {where:>12}: A DataLoader-style PIL {a:7.1f} images/s | B decode only {b:7.1f} | "
            f"cache build {build:7.1f} = {build / a:.2f}x A, {build / b:.2f}x B"
        )
    store = PixelStore(work_dir / f"w{cores}")
    ids, rng = list(catalog["image_id"]), np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(20):
        store.get(list(rng.choice(ids, min(128, len(ids)), replace=False)))
    print(f"  read back, random batches of 128: {20 * min(128, len(ids)) / (time.perf_counter() - start):.0f} images/s")
    size = sum(p.stat().st_size for p in (work_dir / f"w{cores}").glob("*.npy"))
    print(
        f"  store: {size / 1e6:.0f} MB for {len(catalog)} images = {size / len(catalog) * 10_000 / 1e9:.2f} GB per "
        "10,000 images"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS, help="folder of JPEG photos")
    parser.add_argument("--height", type=int, default=448, help="cached height (px)")
    parser.add_argument("--width", type=int, default=448, help="cached width (px)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each measurement; the best counts")
    parser.add_argument(
        "--sns-photos",
        type=int,
        default=400,
        help=f"photos scaled up to {SNS_SIZE[0]} x {SNS_SIZE[1]} for the second set (0: skip it)",
    )
    args = parser.parse_args()
    if not args.photos.is_dir():
        print(f"bench_pixel_cache: {args.photos} not found; needs the shared CCP photos", file=sys.stderr)
        return 2
    paths = sorted(args.photos.glob("*.jpg"))
    print(f"{os.cpu_count()} CPU cores")
    with tempfile.TemporaryDirectory() as tmp:
        bench_photo_set("CCP photos as they are", paths, args.height, args.width, args.repeats, Path(tmp) / "ccp")
        if args.sns_photos:
            sns = write_sns_sized(paths[: args.sns_photos], Path(tmp) / "sns-photos")
            bench_photo_set(
                f"CCP photos scaled up to SNS size {SNS_SIZE[0]} x {SNS_SIZE[1]}",
                sns,
                args.height,
                args.width,
                args.repeats,
                Path(tmp) / "sns",
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
