"""Ingest benchmark on real street photos (../shared/datasets/ccp/photos).

Prints, measured in this one process on this machine:
  1. the floor: one full PIL decode per file, single core (nothing can ingest faster per core);
  2. ingest throughput (decode check + EXIF + hashes + catalog), 1 worker and all cores;
  3. adding a 100-image batch to a 1,600-image catalog vs rebuilding the catalog from scratch.

Usage: python benchmarks/bench_ingest.py [--photos DIR] [--workers N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageOps

from common.settings import IngestSettings
from pipeline.ingest import ingest

DEFAULT_PHOTOS = Path(__file__).resolve().parents[1].parent / "shared/datasets/ccp/photos"


def decode_floor(paths: list[Path]) -> float:
    start = time.perf_counter()
    for path in paths:
        with Image.open(path) as image:
            image.load()
    return len(paths) / (time.perf_counter() - start)


def lay_out_batches(photos: list[Path], root: Path, per_batch: int, name: str) -> None:
    for n, start in enumerate(range(0, len(photos), per_batch)):
        batch = root / f"{name}-{n + 1:02d}"
        batch.mkdir(parents=True)
        for photo in photos[start : start + per_batch]:
            os.symlink(photo, batch / photo.name)


def timed_ingest(crawl: Path, cache: Path, settings: IngestSettings) -> tuple[float, int]:
    start = time.perf_counter()
    _, _, _, counts = ingest(crawl, cache, settings)
    return time.perf_counter() - start, counts.decoded


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--photos", type=Path, default=DEFAULT_PHOTOS, help="folder of JPEG photos (default: the CCP street photos)"
    )
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="decode processes for the multi-core runs"
    )
    args = parser.parse_args()
    if not args.photos.is_dir():
        print(f"bench_ingest: {args.photos} not found; this benchmark needs the shared CCP photos", file=sys.stderr)
        return 2
    photos = sorted(args.photos.glob("*.jpg"))
    print(f"{len(photos)} photos from {args.photos}; {os.cpu_count()} CPU cores; workers={args.workers}")

    floor = decode_floor(photos)
    print(f"\n[1] floor: full PIL decode, 1 core           {floor:8.1f} images/s")

    settings_1 = IngestSettings(workers=1, min_side=64, max_pixels=89_478_485, near_duplicate_distance=2)
    settings_n = IngestSettings(**{**settings_1.__dict__, "workers": args.workers})
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        lay_out_batches(photos, tmp / "all", per_batch=400, name="batch")
        for label, settings in (("1 worker", settings_1), (f"{args.workers} workers", settings_n)):
            seconds, decoded = timed_ingest(tmp / "all", tmp / f"cache-{settings.workers}", settings)
            rate = decoded / seconds
            print(f"[2] ingest, {label:<12} {decoded} files in {seconds:6.2f} s  {rate:8.1f} images/s  "
                  f"({rate / floor:.2f}x the 1-core decode floor)")  # fmt: skip

        # [3] 1,600 images already ingested, then a 100-image batch arrives.
        old, new = photos[:1600], photos[1600:]
        crawl = tmp / "grow"
        lay_out_batches(old, crawl, per_batch=400, name="batch")
        fresh = crawl / "batch-05"
        fresh.mkdir()
        for photo in new:
            os.symlink(photo, fresh / photo.name)
        for photo in photos[: 100 - len(new)]:  # top up with mirrored re-encodes: new images, same kind of work
            ImageOps.mirror(Image.open(photo)).save(fresh / f"mirrored_{photo.name}", quality=90)
        staged = tmp / "staged-batch-05"
        shutil.move(fresh, staged)
        timed_ingest(crawl, tmp / "grow-cache", settings_n)  # the existing 1,600-image catalog
        shutil.move(staged, fresh)
        incremental, decoded_inc = timed_ingest(crawl, tmp / "grow-cache", settings_n)
        rebuild, decoded_full = timed_ingest(crawl, tmp / "rebuild-cache", settings_n)
        print(f"\n[3] add a {decoded_inc}-image batch to a {len(old)}-image catalog: {incremental:6.2f} s "
              f"(decoded {decoded_inc})")  # fmt: skip
        print(f"    full rebuild of all {decoded_full} images:              {rebuild:6.2f} s")
        print(
            f"    incremental / rebuild = {incremental / rebuild:.3f}  (rebuild is {rebuild / incremental:.1f}x the "
            "cost)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
