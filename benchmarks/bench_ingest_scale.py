"""Ingest at scale: --images small synthetic photos in batches of --batch, ingested whole, then one more small batch.

Usage: python benchmarks/bench_ingest_scale.py [--images 200000] [--batch 10000] [--added 200]
           [--work-dir /tmp/bench-ingest-scale]

The photos are 64x80 JPEGs of random colour blocks (each its own dHash; a few hundred bytes), so the figures show
what ingest itself costs per file (listing, decoding, hashing, the catalog, the near-duplicate search at the
default distance), not what decoding large photos costs (benchmarks/bench_ingest.py measures that on real ones).
Each run is a fresh process (`python -m pipeline.ingest`), so its peak memory is its own; the new batch is printed
against the first ingest of the same run. Extrapolated to 1.2 million images. Numbers are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def write_batch(folder: Path, count: int, start: int, rng: np.random.Generator) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + count):
        blocks = rng.integers(0, 256, size=(8, 10, 3), dtype=np.uint8)
        Image.fromarray(blocks).resize((80, 64), Image.Resampling.NEAREST).save(folder / f"{i:07d}.jpg", quality=85)


def timed_ingest(work: Path) -> tuple[float, float, dict]:
    """(seconds, peak MiB of the ingest process, its metrics)."""
    out = work / "out"
    command = [sys.executable, "-m", "pipeline.ingest", "--crawl-dir", str(work / "crawl"),
               "--cache-dir", str(out / "cache"), "--catalog", str(out / "catalog.parquet"),
               "--rejects", str(out / "rejects.csv"), "--near-duplicates", str(out / "near.parquet"),
               "--metrics", str(out / "metrics.json")]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return seconds, max(peak, before) / 1024, json.loads((out / "metrics.json").read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200_000, help="photos in the crawl at first")
    parser.add_argument("--batch", type=int, default=10_000, help="photos per crawl batch")
    parser.add_argument("--added", type=int, default=200, help="photos of the batch that arrives afterwards")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/bench-ingest-scale"), help="emptied first")
    args = parser.parse_args()
    shutil.rmtree(args.work_dir, ignore_errors=True)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for n, first in enumerate(range(0, args.images, args.batch)):
        write_batch(args.work_dir / "crawl" / f"batch-{n:04d}", min(args.batch, args.images - first), first, rng)
    print(f"wrote {args.images:,} photos in {time.perf_counter() - start:.0f} s")
    rows = [("all batches, empty cache", *timed_ingest(args.work_dir))]
    write_batch(args.work_dir / "crawl" / "batch-9999", args.added, args.images, rng)
    rows.append((f"one more batch of {args.added:,}", *timed_ingest(args.work_dir)))
    print(
        "\n| run | seconds | vs first ingest | peak MiB (high-water mark of the runs so far) | decoded | "
        "near-duplicate search: images |\n|---|---|---|---|---|---|"
    )
    for name, seconds, peak, metrics in rows:
        print(
            f"| {name} | {seconds:.1f} | {seconds / rows[0][1]:.3f} | {peak:.0f} | {metrics['decoded']:,} | "
            f"{metrics.get('near_duplicate_searched', 0):,} |"
        )
    scale = 1_200_000 / args.images
    print(
        f"\nat 1.2 M images, extrapolated linearly: first ingest ~{rows[0][1] * scale / 60:.0f} min, a small new batch "
        f"~{rows[1][1] * scale:.0f} s; the near-duplicate search inside the first run grows with the square of the "
        "catalog instead (bench_near_duplicate_search.py)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
