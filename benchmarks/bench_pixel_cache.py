"""Pixel cache benchmark on real street photos (../shared/datasets/ccp/photos).

Prints, measured in this one process:
  1. baseline: what a PIL DataLoader does per image (full decode, EXIF, RGB, resize), on
     1 core and on all cores (a process pool): the ceiling the cache build is held to;
  2. the cache build (draft-mode decode + resize + write), 1 worker and all cores;
  3. reading a random mini-batch back from the memory-mapped cache.
Shared machines are noisy: every rate is the best of --repeats runs, baselines and builds
taking turns, so a slow spell hits both.

Usage: python benchmarks/bench_pixel_cache.py [--photos DIR] [--height 448 --width 448]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from pipeline.images import content_id
from pipeline.pixel_cache import PixelCacheSettings, PixelStore, build_cache

DEFAULT_PHOTOS = Path(__file__).resolve().parents[1].parent / "shared/datasets/ccp/photos"


def pil_decode_resize(path: Path, height: int, width: int) -> None:
    with Image.open(path) as image:
        ImageOps.fit(ImageOps.exif_transpose(image).convert("RGB"), (width, height), Image.Resampling.BILINEAR)


def baseline_rate(paths: list[Path], height: int, width: int, workers: int) -> float:
    """images/s of PIL decode + resize alone (nothing stored) on `workers` processes."""
    work = partial(pil_decode_resize, height=height, width=width)
    start = time.perf_counter()
    if workers == 1:
        list(map(work, paths))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            list(pool.map(work, paths, chunksize=8))
    return len(paths) / (time.perf_counter() - start)


def build_rate(catalog: pd.DataFrame, photos: Path, out: Path, settings: PixelCacheSettings) -> float:
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    build_cache(catalog, photos, out, settings)
    return len(catalog) / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS, help="folder of JPEG photos")
    parser.add_argument("--height", type=int, default=448, help="cached height (px)")
    parser.add_argument("--width", type=int, default=448, help="cached width (px)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each measurement; the best counts")
    args = parser.parse_args()
    if not args.photos.is_dir():
        print(f"bench_pixel_cache: {args.photos} not found; needs the shared CCP photos", file=sys.stderr)
        return 2
    paths = sorted(args.photos.glob("*.jpg"))
    catalog = pd.DataFrame({"image_id": [content_id(p.read_bytes()) for p in paths], "path": [p.name for p in paths]})
    catalog = catalog.drop_duplicates("image_id").assign(batch=lambda d: [f"b{i // 400:02d}" for i in range(len(d))])
    cores = os.cpu_count() or 1
    print(f"{len(catalog)} photos, cache {args.height}x{args.width}, {cores} CPU cores, best of {args.repeats}")
    with tempfile.TemporaryDirectory() as tmp:
        best: dict[str, float] = {}
        for _ in range(args.repeats):
            for workers in (1, cores):
                rates = {
                    f"pil{workers}": baseline_rate(paths, args.height, args.width, workers),
                    f"build{workers}": build_rate(catalog, args.photos, Path(tmp) / f"w{workers}", PixelCacheSettings(height=args.height, width=args.width, workers=workers)),
                }
                best |= {key: max(rate, best.get(key, 0.0)) for key, rate in rates.items()}
        print(f"[1] baseline: PIL full decode + resize, 1 core          {best['pil1']:8.1f} images/s")
        print(f"[1] baseline: PIL full decode + resize, {cores} processes    {best[f'pil{cores}']:8.1f} images/s  (the ceiling)")
        print(f"[2] cache build, 1 worker                              {best['build1']:8.1f} images/s  ({best['build1'] / best['pil1']:.2f}x PIL on 1 core)")
        print(f"[2] cache build, {cores} workers                             {best[f'build{cores}']:8.1f} images/s  ({best[f'build{cores}'] / best[f'pil{cores}']:.2f}x PIL on {cores} processes)")
        store = PixelStore(Path(tmp) / f"w{cores}")
        ids = list(catalog["image_id"])
        rng = np.random.default_rng(0)
        start = time.perf_counter()
        for _ in range(20):
            store.get(list(rng.choice(ids, 128, replace=False)))
        print(f"[3] read back: random batches of 128                {20 * 128 / (time.perf_counter() - start):8.1f} images/s")
        size = sum(p.stat().st_size for p in (Path(tmp) / f"w{cores}").glob("*.npy"))
        print(f"    store: {size / 1e6:.0f} MB for {len(catalog)} images = {size / len(catalog) * 10_000 / 1e9:.2f} GB per 10,000 images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
