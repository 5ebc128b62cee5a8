"""Train one model of the `models` section: the paper's recipe, selected on the validation split.

Recipe (paper section 4.2): Adam, lr 1e-4 for the pretrained backbone and 1e-3 for the
heads and the GCN, sigmoid + binary cross-entropy. The checkpoint with the best
validation mAP is kept (`best.pt`; the test split is never looked at here), and training
stops after `train.patience` epochs without improvement.

Two ways to feed a model, one entry point:
- CPU default: linear and ML-GCN heads train on the pooled backbone features that the
  features stage cached once (a backbone forward per image per epoch does not fit a
  2-core CPU; see training/features.py). The basic CNN always trains from pixels, at
  the small `image_size` its params entry sets.
- `train.finetune: true` (the paper's setting, for a GPU): the backbone is fine-tuned
  end to end from pixels, with augmentations; bf16 autocast and channels-last on CUDA.

`last.pt` is written after every epoch (atomically). After an interruption, run the
same command with `--resume`: each epoch re-seeds from (seed, epoch), so the resumed run
ends in the same state as an uninterrupted one.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml
from dvclive import Live
from torch import nn
from torch.utils.data import DataLoader
from torchvision.transforms import v2
from tqdm import tqdm

from pipeline.settings import load_section
from training.backbones import create_backbone
from training.checkpoint import build_trained_module, load_checkpoint, save_checkpoint
from training.data import (
    ImageDataset,
    InputError,
    eval_transform,
    read_dataset,
    read_label_graph,
    read_label_subset,
    target_matrix,
    train_transform,
)
from training.device import autocast, pick_device, prepare, to_device
from training.features import FeatureSettings
from training.metrics import mean_average_precision, topk_hits
from training.models import ModelSpec, StyleNet

PIXEL_MEAN = PIXEL_STD = (0.5, 0.5, 0.5)  # the basic CNN's normalisation (trained from scratch)
Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class TrainSettings:
    seed: int
    epochs: int
    patience: int  # early stopping: epochs without a better validation mAP
    batch_size: int
    lr_backbone: float  # Adam lr of pretrained backbone weights (fine-tuning)
    lr_head: float  # Adam lr of the heads, the GCN and the basic CNN
    gcn_hidden: int  # width of the GCN's hidden layer
    finetune: bool  # fine-tune the backbone from pixels (GPU) instead of training heads on cached features
    workers: int  # DataLoader processes for pixel training


class StageLive(Live):
    """dvclive that only writes its files (metrics.json, plots/metrics/*.tsv), which dvc.yaml declares.

    Its own DVC integration (dvc.yaml edits, saving experiments) is off anyway
    (dvcyaml=False, save_dvc_exp=False); skipping it also avoids a dvclive 3.49 crash in
    a git repository without commits (a fresh `git init` + `dvc repro`: scm.get_rev
    raises before dvclive checks for commits).
    """

    def _init_dvc(self) -> None:
        self._dvc_file = "dvc.yaml"


def load_model_specs(params: Path) -> dict[str, ModelSpec]:
    """The `models` section: model name -> ModelSpec."""
    raw = yaml.safe_load(params.read_text(encoding="utf-8")) or {}
    if not isinstance(raw.get("models"), dict) or not raw["models"]:
        raise InputError(f"{params}: section 'models' is missing or empty")
    return {name: ModelSpec(**entry) for name, entry in raw["models"].items()}


def seed_everything(seed: int) -> torch.Generator:
    """Seed every RNG a training epoch draws from; returns a generator for shuffling."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def feature_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator | None, mirrored: torch.Tensor | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches of cached features: shuffled when a generator is given, each row mirrored with probability 1/2."""
    order = torch.randperm(len(x), generator=generator) if generator is not None else torch.arange(len(x))
    if mirrored is not None and generator is not None:
        flip = torch.rand(len(x), generator=generator) < 0.5
        x = torch.where(flip[:, None], mirrored, x)
    for start in range(0, len(x), batch_size):
        index = order[start : start + batch_size]
        yield x[index], y[index]


def train_one_epoch(model: nn.Module, batches: Batches, optimizer: torch.optim.Optimizer, device: torch.device, desc: str) -> float:
    """One pass of BCE-with-logits training; returns the mean loss per (image, label)."""
    model.train()
    criterion = nn.BCEWithLogitsLoss(reduction="sum")
    total, count = 0.0, 0
    for inputs, targets in tqdm(batches, desc=desc, unit="batch", leave=False, disable=None):
        inputs, targets = to_device(inputs, device), targets.to(device)
        with autocast(device):
            logits = model(inputs)
        loss = criterion(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        (loss / len(targets)).backward()
        optimizer.step()
        total, count = total + loss.item(), count + len(targets)
    return total / max(count, 1) / targets.shape[1]


@torch.inference_mode()
def predict_probs(model: nn.Module, batches: Batches, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Sigmoid scores and targets of every batch, as (N, C) arrays."""
    model.eval()
    probs, targets = [], []
    for inputs, y in batches:
        with autocast(device):
            logits = model(to_device(inputs, device))
        probs.append(torch.sigmoid(logits.float()).cpu().numpy())
        targets.append(y.numpy())
    return np.concatenate(probs), np.concatenate(targets)


def validation_metrics(probs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    eps = 1e-7
    clipped = np.clip(probs, eps, 1 - eps)
    bce = float(-np.mean(targets * np.log(clipped) + (1 - targets) * np.log(1 - clipped)))
    metrics = {"loss": bce, "mAP": mean_average_precision(probs, targets)}
    return metrics | {name: float(hits.mean()) for name, hits in topk_hits(probs, targets).items()}


@dataclass
class Setup:
    """Everything one training run needs: the module, its optimizer, and batch factories per split."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    meta: dict[str, Any]
    train_batches: Callable[[torch.Generator], Batches]  # a fresh shuffle per epoch
    val_batches: Callable[[], Batches]


@dataclass(frozen=True)
class StageInputs:
    """What every model reads from the curation outputs, in dataset row order."""

    table: pd.DataFrame
    targets: torch.Tensor  # (N, C) 0/1
    split: dict[str, np.ndarray]  # split name -> row mask
    embeddings: torch.Tensor  # (C, d) word vectors
    adjacency: torch.Tensor  # (C, C) the graph stage's adjacency_norm


def setup(name: str, spec: ModelSpec, settings: TrainSettings, paths: argparse.Namespace, device: torch.device) -> Setup:
    """Build the model, optimizer and data feeds for `spec` from the stage inputs."""
    labels = read_label_subset(paths.label_subset)
    graph = read_label_graph(paths.graph, labels)
    table = read_dataset(paths.dataset, labels)
    targets = torch.from_numpy(target_matrix(table["labels"], labels))
    split = {s: np.array(table["split"] == s, dtype=bool) for s in ("train", "val")}
    for s, mask in split.items():
        if not mask.any():
            raise InputError(f"{paths.dataset}: the {s} split is empty; training needs train and val images")
    inputs = StageInputs(table, targets, split, torch.from_numpy(graph.embeddings), torch.from_numpy(graph.adjacency_norm))
    meta: dict[str, Any] = {"name": name, "spec": asdict(spec), "labels": labels, "embedding_dim": graph.embeddings.shape[1], "gcn_hidden": settings.gcn_hidden, "finetuned": False}
    make = _pixel_setup if spec.kind == "cnn" or settings.finetune else _feature_setup
    return make(spec, settings, paths, inputs, meta, device)


def _feature_setup(spec: ModelSpec, settings: TrainSettings, paths: argparse.Namespace, inputs: StageInputs, meta: dict[str, Any], device: torch.device) -> Setup:
    """A head on the cached pooled features (mirrored copies of the training rows when cached)."""
    table, targets, split = inputs.table, inputs.targets, inputs.split
    npz = np.load(paths.features, allow_pickle=False)
    features = json.loads(str(npz["meta"]))
    row = {image_id: i for i, image_id in enumerate(npz["image_id"])}
    missing = [i for i in table["image_id"] if i not in row]
    if missing:
        raise InputError(f"{paths.features}: no features for {len(missing)} dataset images (e.g. {missing[0]}); re-run the features stage")
    x = torch.from_numpy(npz[spec.pooling][[row[i] for i in table["image_id"]]])
    mirrored = None
    if f"{spec.pooling}_flip" in npz:
        flip_row = {image_id: i for i, image_id in enumerate(npz["flip_image_id"])}
        mirrored = torch.from_numpy(npz[f"{spec.pooling}_flip"][[flip_row[i] for i in table["image_id"][split["train"]]]])
    meta |= {"feature_dim": x.shape[1]} | {key: features[key] for key in ("backbone", "weights", "image_size", "mean", "std")}
    model = prepare(build_trained_module(meta), device)
    _load_graph(model, spec, inputs)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr_head)
    xt, yt, xv, yv = x[split["train"]], targets[split["train"]], x[split["val"]], targets[split["val"]]
    return Setup(
        model, optimizer, meta,
        train_batches=lambda g: feature_batches(xt, yt, settings.batch_size, g, mirrored),
        val_batches=lambda: feature_batches(xv, yv, 4 * settings.batch_size, None),
    )  # fmt: skip


def _pixel_setup(spec: ModelSpec, settings: TrainSettings, paths: argparse.Namespace, inputs: StageInputs, meta: dict[str, Any], device: torch.device) -> Setup:
    """The basic CNN, or a backbone fine-tuned end to end (train.finetune), fed augmented pixels."""
    table, targets, split = inputs.table, inputs.targets, inputs.split
    files = [paths.crawl_dir / p for p in table["path"]]
    if spec.kind == "cnn":
        size, mean, std, body = spec.image_size, PIXEL_MEAN, PIXEL_STD, None
        meta |= {"backbone": None, "weights": None}
    else:
        features = load_section(FeatureSettings, "features", paths.params)
        backbone = create_backbone(features.backbone, features.weights)
        size, mean, std, body = features.image_size, backbone.mean, backbone.std, backbone.body
        meta |= {"feature_dim": backbone.dim, "backbone": features.backbone, "weights": features.weights, "finetuned": True}
    meta |= {"image_size": size, "mean": mean, "std": std}
    model = build_trained_module(meta, body)
    _load_graph(model.head if isinstance(model, StyleNet) else model, spec, inputs)
    model = prepare(model, device)
    groups = [{"params": model.head.parameters(), "lr": settings.lr_head}, {"params": model.body.parameters(), "lr": settings.lr_backbone}] if body is not None else [{"params": model.parameters(), "lr": settings.lr_head}]
    optimizer = torch.optim.Adam(groups)

    def subset(s: str, transform: v2.Compose) -> ImageDataset:
        return ImageDataset([f for f, keep in zip(files, split[s]) if keep], targets[split[s]].numpy(), transform)

    train_set, val_set = subset("train", train_transform(size, mean, std)), subset("val", eval_transform(size, mean, std))
    loader = dict(batch_size=settings.batch_size, num_workers=settings.workers, pin_memory=device.type == "cuda", persistent_workers=False)
    return Setup(
        model, optimizer, meta,
        train_batches=lambda g: DataLoader(train_set, shuffle=True, generator=g, **loader),
        val_batches=lambda: DataLoader(val_set, **loader),
    )  # fmt: skip


def _load_graph(head: nn.Module, spec: ModelSpec, inputs: StageInputs) -> None:
    """Fill a GCN head's buffers with the graph stage's word vectors and normalised adjacency (identity for the ablation)."""
    if spec.kind == "gcn":
        head.embeddings.copy_(inputs.embeddings)
        head.adjacency.copy_(torch.eye(len(inputs.adjacency)) if spec.adjacency == "identity" else inputs.adjacency)


def train(name: str, spec: ModelSpec, settings: TrainSettings, paths: argparse.Namespace, resume: bool) -> dict[str, Any]:
    """Run (or continue) the training loop; returns the final loop state."""
    device = pick_device()
    seed_everything(settings.seed)  # the initial weights
    run = setup(name, spec, settings, paths, device)
    last, best = paths.out_dir / "last.pt", paths.out_dir / "best.pt"
    state = {"epoch": 0, "best_map": -1.0, "best_epoch": -1, "bad_epochs": 0}
    if resume:
        checkpoint = load_checkpoint(last)
        if checkpoint["meta"] != run.meta:
            raise InputError(f"{last} was written for another configuration ({checkpoint['meta']['spec']}, labels {checkpoint['meta']['labels']}); rerun without --resume")
        run.model.load_state_dict(checkpoint["model"])
        run.optimizer.load_state_dict(checkpoint["optimizer"])
        state = checkpoint["state"]
    epochs = spec.epochs or settings.epochs
    with StageLive(str(paths.live_dir), resume=resume, dvcyaml=False, save_dvc_exp=False) as live:
        live.step = state["epoch"]
        for epoch in range(state["epoch"], epochs):
            if state["bad_epochs"] >= settings.patience:
                break
            generator = seed_everything(settings.seed * 1000 + epoch)
            train_loss = train_one_epoch(run.model, run.train_batches(generator), run.optimizer, device, f"{name} epoch {epoch + 1}/{epochs}")
            val = validation_metrics(*predict_probs(run.model, run.val_batches(), device))
            if val["mAP"] > state["best_map"]:
                state |= {"best_map": val["mAP"], "best_epoch": epoch, "bad_epochs": 0}
                save_checkpoint({"meta": run.meta, "model": run.model.state_dict(), "epoch": epoch + 1, "val": val}, best)
            else:
                state["bad_epochs"] += 1
            state["epoch"] = epoch + 1
            save_checkpoint({"meta": run.meta, "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(), "state": state}, last)
            live.log_metric("train/loss", train_loss)
            for key, value in val.items():
                live.log_metric(f"val/{key}", value)
            live.next_step()
            print(f"{name} epoch {epoch + 1}: train loss {train_loss:.4f}, val mAP {val['mAP']:.4f}, val top2_all {val['top2_all']:.4f}")
        live.summary["best/epoch"] = state["best_epoch"] + 1
        live.summary["best/val_mAP"] = state["best_map"]
    return state


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model name: a key of the 'models' section of params.yaml")
    parser.add_argument("--dataset", type=Path, required=True, help="curated dataset (data/dataset.parquet)")
    parser.add_argument("--label-subset", type=Path, required=True, help="class order (data/label_subset.json)")
    parser.add_argument("--graph", type=Path, required=True, help="label graph with adjacency_norm and embeddings (data/label_graph.npz)")
    parser.add_argument("--features", type=Path, required=True, help="cached backbone features (data/features.npz); read by heads unless train.finetune")
    parser.add_argument("--crawl-dir", type=Path, required=True, help="folder the dataset's image paths are relative to (crawl.dir); read by pixel training")
    parser.add_argument("--out-dir", type=Path, required=True, help="folder for last.pt (every epoch) and best.pt (best validation mAP)")
    parser.add_argument("--live-dir", type=Path, required=True, help="dvclive folder: per-epoch metrics and plots")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file with 'train', 'features' and 'models' sections")
    parser.add_argument("--resume", action="store_true", help="continue from OUT_DIR/last.pt after an interruption")
    args = parser.parse_args(argv)
    specs = load_model_specs(args.params)
    if args.model not in specs:
        parser.error(f"unknown model {args.model!r}; params.yaml 'models' has {sorted(specs)}")
    settings = load_section(TrainSettings, "train", args.params)
    state = train(args.model, specs[args.model], settings, args, args.resume)
    print(f"{args.model}: best val mAP {state['best_map']:.4f} at epoch {state['best_epoch'] + 1} -> {args.out_dir / 'best.pt'}")


if __name__ == "__main__":
    main()
