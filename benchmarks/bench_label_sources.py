"""K-Fashion at scale: reading a 100,000-file K-Fashion folder in full vs after 1,000 new files arrive.

Usage: python benchmarks/bench_label_sources.py [--files 100000] [--added 1000] [--work-dir /tmp/bench-label-sources]

Writes --files synthetic K-Fashion label files shaped like the samples in
../shared/datasets/kfashion-samples (the real file's keys and nesting, random styles of
the project's taxonomy; a minimal file of the same label path where the samples are
absent) and a catalog naming one photo per file. Then, each phase in a fresh process
(so its peak memory is its own), the labels stage's reader (annotation/sources.py):
  full     the folder read with an empty cache: every file parsed (what every run cost
           before the per-folder cache);
  again    nothing changed: every file found in the cache;
  added    --added new files: only they are parsed.
Printed: wall seconds, peak resident memory, rows, and each phase against the full read.
Numbers are printed, never asserted.
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import random
import resource
import shutil
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from annotation.kfashion import KF_LABEL_PATH  # noqa: E402
from annotation.sources import read_label_sources  # noqa: E402
from common.taxonomy import load_taxonomy  # noqa: E402

SAMPLE = ROOT.parent / "shared" / "datasets" / "kfashion-samples" / "100026.json"
TAXONOMY = ROOT / "taxonomies" / "kfashion_styles.yaml"


def template() -> dict:
    """A real K-Fashion file's structure where the samples are at hand, else the label path alone."""
    if SAMPLE.is_file():
        return json.loads(SAMPLE.read_text(encoding="utf-8"))
    node: dict = {}
    cursor = node
    for key in KF_LABEL_PATH[:-1]:
        cursor = cursor.setdefault(key, {})
    return node


def write_files(folder: Path, stems: range, korean: list[str], rng: random.Random) -> None:
    base = template()
    folder.mkdir(parents=True, exist_ok=True)
    for stem in stems:
        label = copy.deepcopy(base)
        node = label
        for key in KF_LABEL_PATH[:-1]:
            node = node[key]
        main, sub = rng.sample(korean, 2)
        node[KF_LABEL_PATH[-1]] = [{KF_LABEL_PATH[-1]: main, "서브스타일": sub if rng.random() < 0.5 else ""}]
        (folder / f"{stem}.json").write_text(json.dumps(label, ensure_ascii=False), encoding="utf-8")


def synthetic_catalog(stems: range) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "image_id": [f"{s:016x}" for s in stems],
            "sources": [[{"batch": "kfashion", "file": f"{s}.jpg"}] for s in stems],
        }
    )


def phase(label_dir: Path, catalog_path: Path, cache_dir: Path, result: multiprocessing.Queue) -> None:
    start = time.perf_counter()
    imported = read_label_sources(
        label_dir, label_dir / "no-crawl", pd.read_parquet(catalog_path), load_taxonomy(TAXONOMY), cache_dir
    )
    seconds = time.perf_counter() - start
    result.put(
        (seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, len(imported.rows), len(imported.rejects))
    )


def measure(label_dir: Path, catalog_path: Path, cache_dir: Path) -> tuple[float, float, int, int]:
    """(seconds, peak MiB, rows, rejects) of one read, in a fresh process."""
    context = multiprocessing.get_context("spawn")
    result = context.Queue()
    process = context.Process(target=phase, args=(label_dir, catalog_path, cache_dir, result))
    process.start()
    got = result.get()
    process.join()
    return got


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=100_000, help="K-Fashion files in the folder at first")
    parser.add_argument("--added", type=int, default=1_000, help="new files that arrive afterwards")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=Path("/tmp/bench-label-sources"),
        help="where the synthetic folder and caches go (emptied first)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    shutil.rmtree(args.work_dir, ignore_errors=True)
    labels, cache = args.work_dir / "labels", args.work_dir / "cache"
    korean = sorted(load_taxonomy(TAXONOMY).by_korean())
    rng = random.Random(args.seed)
    first, added = (
        range(1_000_000, 1_000_000 + args.files),
        range(1_000_000 + args.files, 1_000_000 + args.files + args.added),
    )
    start = time.perf_counter()
    write_files(labels / "kfashion", first, korean, rng)
    print(
        f"wrote {args.files:,} files ({'sample-shaped' if SAMPLE.is_file() else 'minimal'}) in "
        f"{time.perf_counter() - start:.1f} s"
    )
    catalog_path = args.work_dir / "catalog.parquet"
    synthetic_catalog(range(first.start, added.stop)).to_parquet(catalog_path)

    rows = [("full (empty cache)", *measure(labels, catalog_path, cache))]
    rows.append(("again (nothing new)", *measure(labels, catalog_path, cache)))
    write_files(labels / "kfashion", added, korean, rng)
    rows.append((f"added {args.added:,} files", *measure(labels, catalog_path, cache)))
    shutil.rmtree(cache)
    rows.append((f"full, {args.files + args.added:,} files (empty cache)", *measure(labels, catalog_path, cache)))

    full = rows[-1][1]
    print("\n| phase | seconds | vs full read | peak MiB | rows | rejects |\n|---|---|---|---|---|---|")
    for name, seconds, peak, n_rows, n_rejects in rows:
        print(f"| {name} | {seconds:.2f} | {seconds / full:.3f} | {peak:.0f} | {n_rows:,} | {n_rejects:,} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
