"""Near-duplicate search at scale: a catalog of --images hashes in batches of --batch, searched whole, then one new
batch.

Usage: python benchmarks/bench_near_duplicate_search.py [--images 200000] [--batch 10000] [--distance 8] [--workers 0]

Synthetic 64-bit hashes (random, with every tenth image a copy of an earlier one with 1-8 bits flipped), grouped in
crawl batches like a catalog. Timed with pipeline/near_duplicates.py, the code ingest runs:
  full       every batch searched (empty cache: a first ingest, or a new distance);
  again      nothing new (every batch's pairs read from the cache);
  new batch  one more batch of --batch images: only it is searched, against the whole catalog.
Peak memory is the process's resident peak. Extrapolated to 1.2 million images: the full search grows with the
square of the catalog, a new batch with the catalog. Numbers are printed, never asserted.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.near_duplicates import catalog_near_duplicates  # noqa: E402


def synthetic(images: int, batch: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**63, size=images, dtype=np.uint64)
    copies = np.arange(10, images, 10)
    sources = rng.integers(0, copies)
    flips = [
        np.bitwise_or.reduce(
            np.left_shift(np.uint64(1), rng.choice(64, size=rng.integers(1, 9), replace=False).astype(np.uint64))
        )
        for _ in copies
    ]
    hashes[copies] = hashes[sources] ^ np.array(flips, dtype=np.uint64)
    return pd.DataFrame({"image_id": [f"{i:016x}" for i in range(images)],
                         "batch": [f"batch-{i // batch:05d}" for i in range(images)],
                         "dhash": pd.array(hashes, dtype="UInt64")})  # fmt: skip


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200_000, help="catalog images before the new batch")
    parser.add_argument("--batch", type=int, default=10_000, help="images per crawl batch")
    parser.add_argument("--distance", type=int, default=8, help="ingest.near_duplicate_distance")
    parser.add_argument("--workers", type=int, default=0, help="threads (0: one per CPU core)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    catalog = synthetic(args.images + args.batch, args.batch, args.seed)
    before = catalog.iloc[: args.images]
    cache = Path(tempfile.mkdtemp(prefix="bench-near-"))
    rows = []
    try:
        for name, table in (
            ("full", before),
            ("again (nothing new)", before),
            (f"new batch of {args.batch:,}", catalog),
        ):
            start = time.perf_counter()
            pairs, searched = catalog_near_duplicates(table, cache, args.distance, args.workers)
            rows.append((name, time.perf_counter() - start, searched, len(pairs), peak_mib()))
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    cores = args.workers or os.cpu_count()
    print(f"{args.images:,} images in batches of {args.batch:,}, distance {args.distance}, {cores} threads\n")
    print("| run | seconds | images searched | pairs | peak MiB (process) |\n|---|---|---|---|---|")
    for name, seconds, searched, n_pairs, peak in rows:
        print(f"| {name} | {seconds:.1f} | {searched:,} | {n_pairs:,} | {peak:.0f} |")
    full, new = rows[0][1], rows[2][1]
    scale = 1_200_000 / args.images
    print(
        f"\nat 1.2 M images (extrapolated): full search ~{full * scale**2 / 60:.0f} min on {cores} cores; "
        f"a new batch of {args.batch:,} ~{new * scale:.0f} s; new batch / full here: {new / full:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
