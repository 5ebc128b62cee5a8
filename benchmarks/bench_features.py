"""Features-stage benchmark on real street photos: a new crawl batch vs the whole history.

Prints, measured in this one process on this machine:
  1. the features stage over the history (batches of 100 photos) with an empty cache;
  2. the same stage once a 100-photo batch has arrived: only the new batch is extracted;
  3. the stage over history + new batch from scratch (what every batch cost before the
     cache), and the ratio of (2) to it.
Every photo's mirror image is extracted too (features.flip). With --maps the cache keeps
the last feature maps (fp16) as well, and the cache's size per 10,000 images is printed.

Usage: python benchmarks/bench_features.py [--photos DIR] [--history N] [--backbone NAME] [--image-size PX] [--maps]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from training.features import FeatureCounts, write_features
from training.settings import FeatureSettings

DEFAULT_PHOTOS = Path(__file__).resolve().parents[1].parent / "shared/datasets/ccp/photos"
BATCH = 100


def dataset_of(photos: list[Path]) -> pd.DataFrame:
    """A dataset table (as the split stage writes it) of `photos`, 100 per crawl batch, 7 in 10 in the training
    split."""
    return pd.DataFrame({
        "image_id": [p.stem for p in photos],
        "path": [p.name for p in photos],
        "batch": [f"batch-{i // BATCH + 1:03d}" for i in range(len(photos))],
        "split": ["train" if i % 10 < 7 else "test" for i in range(len(photos))],
        "main_style": "street",
        "labels": [["street"]] * len(photos),
    })  # fmt: skip


def timed_stage(photos: list[Path], work: Path, cache: Path, settings: FeatureSettings) -> tuple[float, FeatureCounts]:
    dataset_of(photos).to_parquet(work / "dataset.parquet")
    start = time.perf_counter()
    counts = write_features(
        work / "dataset.parquet",
        work / "label_subset.json",
        photos[0].parent,
        work / "features.npz",
        cache,
        settings,
        "bf16",
    )
    return time.perf_counter() - start, counts


def report(step: str, seconds: float, counts: FeatureCounts) -> None:
    print(
        f"{step:<44} {seconds:7.1f} s  ({counts.extracted} + {counts.extracted_flips} mirrored extracted of "
        f"{counts.images} images)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--photos", type=Path, default=DEFAULT_PHOTOS, help="folder of JPEG photos (default: the CCP street photos)"
    )
    parser.add_argument(
        "--history", type=int, default=800, help="photos already in the dataset before the new batch arrives"
    )
    parser.add_argument(
        "--backbone",
        default="tf_efficientnet_lite0",
        help="features.backbone (resnet50 needs its weights offline: see docs/models.md, Backbones)",
    )
    parser.add_argument(
        "--image-size", type=int, default=160, help="features.image_size in px (params.yaml's default: 160)"
    )
    parser.add_argument(
        "--maps", action="store_true", help="features.maps: also cache the last feature maps (fp16), as csra heads need"
    )
    args = parser.parse_args()
    if not args.photos.is_dir():
        print(f"bench_features: {args.photos} not found; this benchmark needs the shared CCP photos", file=sys.stderr)
        return 2
    photos = sorted(args.photos.glob("*.jpg"))[: args.history + BATCH]
    settings = FeatureSettings(
        backbone=args.backbone,
        weights="imagenet",
        image_size=args.image_size,
        batch_size=32,
        workers=0,
        flip=True,
        maps=args.maps,
    )
    print(
        f"{len(photos)} photos from {args.photos}; {os.cpu_count()} CPU cores, {torch.get_num_threads()} torch "
        f"threads; {args.backbone} @ {args.image_size} px, maps {args.maps}"
    )
    with tempfile.TemporaryDirectory() as tmp_name:
        work = Path(tmp_name)
        (work / "label_subset.json").write_text(json.dumps({"labels": ["street"], "top_k": 1}))
        seconds, counts = timed_stage(photos[: args.history], work, work / "cache", settings)
        report(f"[1] history ({args.history} photos), empty cache", seconds, counts)
        incremental, counts = timed_stage(photos, work, work / "cache", settings)
        report(f"[2] + a {BATCH}-photo batch, from the cache", incremental, counts)
        rebuild, counts = timed_stage(photos, work, work / "scratch", settings)
        report(f"[3] all {len(photos)} photos from scratch", rebuild, counts)
        cache_bytes = sum(f.stat().st_size for f in (work / "scratch").iterdir())
    print(
        f"\nnew batch / from scratch: {incremental / rebuild:.3f} (the batch is {BATCH / len(photos):.3f} of the "
        "photos)"
    )
    print(
        f"features cache: {cache_bytes / 2**20:.1f} MiB for {len(photos)} images and their mirror images = "
        f"{cache_bytes / len(photos) * 10_000 / 2**30:.2f} GiB per 10,000 images"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
