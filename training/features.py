"""Features stage: run the pretrained backbone ONCE over every dataset image and cache pooled features.

Why: on a 2-core CPU, EfficientNet-Lite0 infers ~30 images/s at 224 px but trains at
~7.5 (ResNet-50: 11 and 2.5; notes section 6). Fine-tuning a backbone per model does
not fit the demo's 10-minute budget; one forward pass over the dataset does, and the
linear, ML-GCN and ablation heads then train on the cached vectors in seconds. Both
global-max and global-average pooled vectors are stored, so the pooling ablation needs
no second pass. A horizontally mirrored copy of each TRAINING image is stored too
(`flip`): the one augmentation that survives caching. Full fine-tuning (the paper's
setting, for a GPU) is `train.finetune: true` and does not read this file.

The backbone runs in `train.precision` (params.yaml's train section), the precision the
heads are trained, evaluated and used for prediction in: predict runs backbone and head
together under it, so features of any other precision would make evaluate score a model
other than the one predict runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from pipeline.atomic import atomic_path
from pipeline.cli import report_user_errors
from pipeline.settings import ParamsError, load_section, read_params_file
from training.backbones import Backbone, create_backbone
from training.data import ImageDataset, eval_transform, read_dataset, read_label_subset
from training.device import PRECISIONS, autocast, pick_device, prepare, to_device
from training.models import global_pool


@dataclass(frozen=True)
class FeatureSettings:
    backbone: str  # a name in training.backbones.BACKBONES
    weights: str  # "imagenet", a state_dict file, or "none"
    image_size: int  # input side in px (plain resize to a square, as the reference evaluates)
    batch_size: int
    workers: int  # DataLoader processes decoding images; 0 = in the main process
    flip: bool  # also store features of mirrored training images


def training_precision(params: Path) -> str:
    """train.precision of the params file: the precision features are extracted in (see the module docstring)."""
    train = read_params_file(params).get("train")
    if not isinstance(train, dict) or "precision" not in train:
        raise ParamsError(f"{params}: train.precision is missing; the features stage extracts in the precision the heads are trained in")
    if train["precision"] not in PRECISIONS:
        raise ParamsError(f"{params}: train.precision {train['precision']!r} is not one of {PRECISIONS}")
    return str(train["precision"])


def extracted_precision(features_meta: dict) -> str:
    """The precision a features file was extracted in; "bf16" (autocast's default then) for files written before it was recorded."""
    return features_meta.get("precision", "bf16")


@torch.inference_mode()
def extract(backbone: Backbone, paths: list[Path], settings: FeatureSettings, precision: str, mirror: bool = False) -> dict[str, np.ndarray]:
    """Global-max and global-average pooled backbone features of `paths` (optionally mirrored), the backbone run in `precision` (train.precision)."""
    device = pick_device()
    body = prepare(backbone.body, device).eval()
    dataset = ImageDataset(paths, np.zeros((len(paths), 0), dtype=np.float32), eval_transform(settings.image_size, backbone.mean, backbone.std), vetted=True)
    loader = DataLoader(dataset, batch_size=settings.batch_size, num_workers=settings.workers)
    pooled: dict[str, list[np.ndarray]] = {"max": [], "avg": []}
    for images, _ in tqdm(loader, desc="features (mirrored)" if mirror else "features", unit="batch", disable=None):
        images = to_device(images.flip(-1) if mirror else images, device)
        with autocast(device, precision):
            maps = body(images).float()
        for pooling in pooled:
            pooled[pooling].append(global_pool(maps, pooling).cpu().numpy())
    return {pooling: np.concatenate(chunks) if chunks else np.zeros((0, backbone.dim), np.float32) for pooling, chunks in pooled.items()}


def write_features(dataset_path: Path, label_subset: Path, crawl_dir: Path, out: Path, settings: FeatureSettings, precision: str) -> int:
    """Extract and save features of every dataset image in `precision` (train.precision); returns the number of images.

    `meta` records the backbone, its weights, normalisation and the precision: a head
    trained on these features gets the same backbone back at prediction time, and
    evaluate refuses features that do not match a model.
    """
    table = read_dataset(dataset_path, read_label_subset(label_subset))
    paths = [crawl_dir / p for p in table["path"]]
    backbone = create_backbone(settings.backbone, settings.weights)
    arrays = extract(backbone, paths, settings, precision)
    train = (table["split"] == "train").to_numpy()
    if settings.flip:
        mirrored = extract(backbone, [p for p, t in zip(paths, train) if t], settings, precision, mirror=True)
        arrays |= {"max_flip": mirrored["max"], "avg_flip": mirrored["avg"], "flip_image_id": table["image_id"][train].to_numpy(dtype=str)}
    meta = asdict(settings) | {"mean": backbone.mean, "std": backbone.std, "precision": precision}
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, image_id=table["image_id"].to_numpy(dtype=str), meta=json.dumps(meta), **arrays)
    return len(table)


def run(args: argparse.Namespace) -> int:
    """Extract and write the features file; returns the exit status."""
    settings, precision = load_section(FeatureSettings, "features", args.params), training_precision(args.params)
    n = write_features(args.dataset, args.label_subset, args.crawl_dir, args.out, settings, precision)
    print(f"features: {n} images, backbone {settings.backbone} @ {settings.image_size} px, {precision} -> {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.features", description=__doc__.splitlines()[0], epilog="The stage's full command line is in dvc.yaml.")
    parser.add_argument("--dataset", type=Path, required=True, help="curated dataset (data/dataset.parquet)")
    parser.add_argument("--label-subset", type=Path, required=True, help="label subset JSON (checks the dataset's labels)")
    parser.add_argument("--crawl-dir", type=Path, required=True, help="folder the dataset's image paths are relative to (crawl.dir)")
    parser.add_argument("--out", type=Path, required=True, help="features file to write (.npz)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file with a 'features' section and train.precision")
    args = parser.parse_args(argv)
    return report_user_errors("features", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
