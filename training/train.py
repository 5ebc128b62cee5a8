"""Train one model of the `models` section: the paper's recipe, selected on the validation split.

Recipe (paper section 4.2): Adam, lr 1e-4 for the pretrained backbone and 1e-3 for the
heads and the GCN, sigmoid + binary cross-entropy; our additions: the rates scaled with
the batch (`train.lr_scaling`) and reached by a linear warm-up (`train.warmup_epochs`).
The checkpoint with the best validation mAP is kept (`best.pt`; the test split is never
looked at here), and training stops after `train.patience` epochs without improvement.

Two ways to feed a model, one entry point:
- CPU default: linear and ML-GCN heads train on the pooled backbone features that the
  features stage cached once (a backbone forward per image per epoch does not fit a
  2-core CPU; see training/features.py). The basic CNN always trains from pixels, at
  the small `image_size` its params entry sets.
- `train.finetune: true` (the paper's setting, for a GPU): the backbone is fine-tuned
  end to end from pixels, with augmentations; bf16 autocast (`train.precision`) and
  channels-last on CUDA.

Pixels come from the image files (PIL decode + augment per image in DataLoader workers;
the default) or, with `train.cached_pixels: true`, from the pixel cache stage's uint8
shards (`--pixel-cache`): whole batches are copied from pinned memory to the device and
cropped, flipped and normalised there (training/gpu_augment.py). PIL cannot decode fast
enough to feed one GPU (notes section 5). `train.compile` adds torch.compile (the model,
and on the cache path the per-pixel augmentation after the crop, fused into one kernel). The
training loop itself never waits for the device: the loss is summed on the device and
read once per epoch. Under torchrun, training runs on N processes (training/distributed.py);
`train.batch_size` is per process.

`last.pt` is written after every epoch (atomically), after the epoch's dvclive rows. After
an interruption, run the same command with `--resume`: each epoch re-seeds from (seed,
epoch), so the resumed run ends in the same state as an uninterrupted one, and dvclive
rows of epochs that last.pt does not hold are dropped, so each epoch is logged once. The
checkpoint records every train setting and the number of processes; a resume under other
ones is refused, except for RESUMABLE_SETTINGS (how long and how fast, not what is trained).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import reprlib
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from dvclive import Live
from torch import nn
from torch.utils.data import BatchSampler, DataLoader
from torchvision.transforms import v2
from tqdm import tqdm

from pipeline.atomic import atomic_path
from pipeline.cli import InputError, report_user_errors
from pipeline.pixel_cache import PixelStore
from pipeline.settings import ParamsError, load_section, read_params_file
from training.backbones import create_backbone
from training.checkpoint import build_trained_module, load_checkpoint, save_checkpoint
from training.data import (
    CachedPixelBatches,
    ImageDataset,
    device_train_augment,
    eval_transform,
    read_dataset,
    read_label_graph,
    read_label_subset,
    target_matrix,
    train_transform,
)
from training.device import PRECISIONS, adam, autocast, compile_for_training, pick_device, prepare, to_device
from training.distributed import SINGLE, World, close_world, from_main, init_world, rank_seed, shard, wrap
from training.features import FeatureSettings, extracted_precision
from training.gpu_augment import eval_batch
from training.metrics import mean_average_precision, topk_hits
from training.models import ModelSpec, StyleNet

PIXEL_MEAN = PIXEL_STD = (0.5, 0.5, 0.5)  # the basic CNN's normalisation (trained from scratch)
Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
REFERENCE_BATCH = 32  # the batch size the paper's learning rates (lr_backbone, lr_head) go with
LR_SCALINGS = ("none", "sqrt", "linear")
# What --resume may change (names as configuration_changes writes them): how long training goes
# on and how fast it runs. workers and compile change random draws (file path) or rounding, so
# changing them makes the resumed run differ from an uninterrupted one, but not what it trains.
RESUMABLE_SETTINGS = frozenset({"train.epochs", "train.patience", "train.workers", "train.compile", "spec.epochs"})


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
    cached_pixels: bool  # pixel training reads the pixel cache and augments on the device, instead of decoding files with PIL
    compile: bool  # torch.compile the training forward and backward (and the device-side augmentation's per-pixel tail)
    lr_scaling: str  # none | sqrt | linear: scale both learning rates with the global batch / REFERENCE_BATCH
    precision: str  # bf16: autocast on CUDA, fp32 on the CPU; bf16-all: on the CPU too (CPUs with native bf16); fp32: full precision everywhere (the reference code's)
    warmup_epochs: float  # learning rates rise linearly from ~0 over this many epochs (0: the paper's constant rates from the first step)

    def __post_init__(self) -> None:
        if self.lr_scaling not in LR_SCALINGS:
            raise ParamsError(f"train.lr_scaling {self.lr_scaling!r} is not one of {LR_SCALINGS} (params.yaml)")
        if self.precision not in PRECISIONS:
            raise ParamsError(f"train.precision {self.precision!r} is not one of {PRECISIONS} (params.yaml)")
        if self.warmup_epochs < 0:
            raise ParamsError(f"train.warmup_epochs must be >= 0, not {self.warmup_epochs} (params.yaml)")


def lr_factor(rule: str, global_batch: int) -> float:
    """Multiplier of the paper's learning rates for `global_batch` images per optimizer step.

    "sqrt" is the square-root rule for Adam (Malladi et al. 2022); "linear" is the
    SGD rule (Goyal et al. 2017), which for Adam overshoots: at batch 256 it would
    fine-tune the pretrained backbone at 8e-4.
    """
    ratio = global_batch / REFERENCE_BATCH
    return {"none": 1.0, "sqrt": math.sqrt(ratio), "linear": ratio}[rule]


@dataclass(frozen=True)
class LinearWarmup:
    """Learning rates that rise linearly over a run's first `steps` optimizer steps, then stay at each group's rate.

    Adam moves every weight by about its learning rate on its first steps, whatever the
    gradient's size. Under a freshly initialised GCN head on a pretrained backbone that
    overshoots: one step at the paper's rates took the CCP fine-tuning loss from 1.28 to
    9.8, more at large batches with scaled rates (README, 'Learning rates with larger batches').
    """

    base_lrs: tuple[float, ...]  # each parameter group's rate after warm-up
    steps: int
    steps_per_epoch: int

    def setter(self, optimizer: torch.optim.Optimizer, epoch: int) -> Callable[[int], None] | None:
        """Sets the rates before batch i of `epoch`; None when warm-up ended before this epoch (the rates stay where its last step left them)."""
        first = epoch * self.steps_per_epoch
        if first >= self.steps:
            return None

        def set_rates(batch: int) -> None:
            factor = min(1.0, (first + batch + 1) / self.steps)
            for group, lr in zip(optimizer.param_groups, self.base_lrs, strict=True):
                group["lr"] = lr * factor

        return set_rates


def steps_per_epoch(n_train: int, batch_size: int, world: World) -> int:
    """Optimizer steps per epoch on each rank (shard() gives every rank ceil(n / ranks) rows)."""
    return math.ceil(math.ceil(n_train / world.size) / batch_size)


MIN_FINETUNE_STEPS = 20  # per epoch; README, 'How large a batch: enough steps per epoch'


def few_steps_warning(steps: int, n_train: int, global_batch: int) -> str | None:
    """A warning when fine-tuning takes too few optimizer steps per epoch to match the small-batch loop's accuracy.

    On the CCP benchmark (1,142 training photos, 12 epochs) batch 128, 9 steps an epoch, lost
    3-5 mAP points against batch 16 (3.3 and 3.6 in two seeds since the device crops match
    torchvision's; 2 with a 4-epoch warm-up); batch 32, 36 steps, lost none measurable. Adam's first steps overshoot under
    the new GCN head, and a run with few steps spends a large share of them recovering.
    """
    if steps >= MIN_FINETUNE_STEPS:
        return None
    return (f"fine-tuning at a global batch of {global_batch} takes {steps} optimizer steps per epoch on {n_train} training images; "
            f"below {MIN_FINETUNE_STEPS} the CCP benchmark lost accuracy (3-5 mAP points at 9 steps): lower train.batch_size "
            f"to at most {max(1, n_train // MIN_FINETUNE_STEPS)} or train more epochs (README, 'How large a batch')")


class TrainingDiverged(RuntimeError):
    """The training loss stopped being a finite number; nothing of the diverged epoch is written."""


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
    raw = read_params_file(params)
    if not isinstance(raw.get("models"), dict) or not raw["models"]:
        raise ParamsError(f"{params}: section 'models' is missing or empty")
    known = {field.name for field in fields(ModelSpec)}
    for name, entry in raw["models"].items():
        if not isinstance(entry, dict) or not entry.keys() <= known or "kind" not in entry:
            unknown = sorted(entry.keys() - known) if isinstance(entry, dict) else []
            raise ParamsError(f"{params}: models.{name} must be a mapping with 'kind' and at most {sorted(known)}" + (f"; unknown {unknown}" if unknown else ""))
    return {name: ModelSpec(**entry) for name, entry in raw["models"].items()}


def seed_everything(seed: int, world: World = SINGLE) -> torch.Generator:
    """Seed every RNG a training epoch draws from; returns a generator for shuffling, the same on every rank.

    The global RNGs (augmentations in the main process, dropout) get this rank's own seed
    (`rank_seed`: `seed` itself on rank 0 and in a single process).
    """
    own = rank_seed(seed, world)
    random.seed(own)
    np.random.seed(own % 2**32)
    torch.manual_seed(own)
    return torch.Generator().manual_seed(seed)


def feature_batches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator | None, mirrored: torch.Tensor | None = None, world: World = SINGLE
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches of cached features: shuffled (this rank's shard) when a generator is given, each row mirrored with probability 1/2."""
    order = shard(torch.randperm(len(x), generator=generator), world) if generator is not None else torch.arange(len(x))
    if mirrored is not None and generator is not None:
        flip = torch.rand(len(x), generator=generator) < 0.5
        x = torch.where(flip[:, None], mirrored, x)
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        yield x[index], y[index]


def train_one_epoch(
    model: nn.Module, batches: Batches, optimizer: torch.optim.Optimizer, device: torch.device, desc: str | None, precision: str = "bf16", set_rates: Callable[[int], None] | None = None
) -> float:
    """One pass of BCE-with-logits training; returns the mean loss per (image, label).

    The loss sum stays on the device (float64, as exact as summing Python floats) and is
    read once at the end: a `.item()` per batch would stall the GPU every step.
    `desc` None hides the progress bar (ranks other than 0). `set_rates(i)`, if given,
    runs before the i-th optimizer step (learning-rate warm-up).
    """
    model.train()
    criterion = nn.BCEWithLogitsLoss(reduction="sum")
    total, count, n_labels = torch.zeros((), dtype=torch.float64, device=device), 0, 1
    for step, (inputs, targets) in enumerate(tqdm(batches, desc=desc, unit="batch", leave=False, disable=None if desc else True)):
        inputs, targets = to_device(inputs, device), targets.to(device, non_blocking=True)
        with autocast(device, precision):
            logits = model(inputs)
        loss = criterion(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        (loss / len(targets)).backward()
        if set_rates is not None:
            set_rates(step)
        optimizer.step()
        total += loss.detach()
        count, n_labels = count + len(targets), targets.shape[1]
    return total.item() / max(count, 1) / n_labels


@torch.inference_mode()
def predict_probs(model: nn.Module, batches: Batches, device: torch.device, precision: str = "bf16") -> tuple[np.ndarray, np.ndarray]:
    """Sigmoid scores and targets of every batch, as (N, C) arrays."""
    model.eval()
    probs, targets = [], []
    for inputs, y in batches:
        with autocast(device, precision):
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
    n_train: int  # training images (all ranks together)


@dataclass(frozen=True)
class StageInputs:
    """What every model reads from the curation outputs, in dataset row order."""

    table: pd.DataFrame
    targets: torch.Tensor  # (N, C) 0/1
    split: dict[str, np.ndarray]  # split name -> row mask
    embeddings: torch.Tensor  # (C, d) word vectors
    adjacency: torch.Tensor  # (C, C) the graph stage's adjacency_norm


def setup(name: str, spec: ModelSpec, settings: TrainSettings, paths: argparse.Namespace, device: torch.device, world: World = SINGLE) -> Setup:
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
    meta: dict[str, Any] = {"name": name, "spec": asdict(spec), "labels": labels, "embedding_dim": graph.embeddings.shape[1], "gcn_hidden": settings.gcn_hidden, "finetuned": False,
                            "train": asdict(settings), "processes": world.size}  # fmt: skip
    make = _pixel_setup if spec.kind == "cnn" or settings.finetune else _feature_setup
    return make(spec, settings, paths, inputs, meta, device, world)


def _feature_setup(spec: ModelSpec, settings: TrainSettings, paths: argparse.Namespace, inputs: StageInputs, meta: dict[str, Any], device: torch.device, world: World) -> Setup:
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
    extracted_in = extracted_precision(features)
    if extracted_in != settings.precision:
        raise InputError(f"{paths.features}: features extracted in {extracted_in}, but train.precision is {settings.precision}; re-run the features stage (dvc repro features)")
    meta |= {"feature_dim": x.shape[1], "features_precision": extracted_in} | {key: features[key] for key in ("backbone", "weights", "image_size", "mean", "std")}
    model = prepare(build_trained_module(meta), device)
    _load_graph(model, spec, inputs)
    optimizer = adam([{"params": model.parameters(), "lr": settings.lr_head * lr_factor(settings.lr_scaling, settings.batch_size * world.size)}], device)
    xt, yt, xv, yv = x[split["train"]], targets[split["train"]], x[split["val"]], targets[split["val"]]
    return Setup(
        model, optimizer, meta,
        train_batches=lambda g: feature_batches(xt, yt, settings.batch_size, g, mirrored, world),
        val_batches=lambda: feature_batches(xv, yv, 4 * settings.batch_size, None),
        n_train=len(xt),
    )  # fmt: skip


def _pixel_setup(spec: ModelSpec, settings: TrainSettings, paths: argparse.Namespace, inputs: StageInputs, meta: dict[str, Any], device: torch.device, world: World) -> Setup:
    """The basic CNN, or a backbone fine-tuned end to end (train.finetune), fed augmented pixels."""
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
    factor = lr_factor(settings.lr_scaling, settings.batch_size * world.size)
    groups = [{"params": model.head.parameters(), "lr": settings.lr_head * factor}, {"params": model.body.parameters(), "lr": settings.lr_backbone * factor}] if body is not None else [{"params": model.parameters(), "lr": settings.lr_head * factor}]
    feeds = _cached_pixel_feeds if settings.cached_pixels else _file_feeds
    train_batches, val_batches = feeds(inputs, paths, settings, (size, mean, std), device, world)
    return Setup(model, adam(groups, device), meta, train_batches, val_batches, int(inputs.split["train"].sum()))


Norm = tuple[int, tuple[float, ...], tuple[float, ...]]  # input size, mean, std
Feeds = tuple[Callable[[torch.Generator], Batches], Callable[[], Batches]]


def _file_feeds(inputs: StageInputs, paths: argparse.Namespace, settings: TrainSettings, norm: Norm, device: torch.device, world: World) -> Feeds:
    """Batches decoded from the image files with PIL and augmented per image in DataLoader workers."""
    files = [paths.crawl_dir / p for p in inputs.table["path"]]

    def subset(s: str, transform: v2.Compose) -> ImageDataset:
        return ImageDataset([f for f, keep in zip(files, inputs.split[s]) if keep], inputs.targets[inputs.split[s]].numpy(), transform, vetted=True)

    train_set, val_set = subset("train", train_transform(*norm)), subset("val", eval_transform(*norm))
    loader = dict(batch_size=settings.batch_size, num_workers=settings.workers, pin_memory=device.type == "cuda", persistent_workers=False)

    def train_batches(g: torch.Generator) -> Batches:
        sampler = shard(torch.randperm(len(train_set), generator=g), world).tolist()
        return DataLoader(train_set, sampler=sampler, generator=g, worker_init_fn=partial(reseed_worker_for_rank, world=world), **loader)

    return train_batches, lambda: DataLoader(val_set, **loader)


def reseed_worker_for_rank(worker_id: int, world: World) -> None:
    """DataLoader worker_init_fn: this rank's own augmentations (the loader seeded its workers from the shuffle generator that all ranks share)."""
    torch.manual_seed(rank_seed(torch.initial_seed(), world))


def _cached_pixel_feeds(inputs: StageInputs, paths: argparse.Namespace, settings: TrainSettings, norm: Norm, device: torch.device, world: World) -> Feeds:
    """uint8 batches from the pixel cache, copied from pinned memory and augmented on `device`.

    Each epoch's device-side crops and flips come from a generator seeded by the epoch's
    generator, so a resumed run draws the same augmentations as an uninterrupted one.
    """
    store = PixelStore(paths.pixel_cache)
    height, width = next(iter(store.shards.values())).shape[1:3]
    if min(height, width) < norm[0]:
        warnings.warn(f"the pixel cache holds {height}x{width} pictures, smaller than the {norm[0]} px input: training upsamples them; set pixel_cache.height/width >= {norm[0]} and rebuild it", stacklevel=2)
    ids = inputs.table["image_id"].astype(str).to_numpy()

    def subset(s: str) -> CachedPixelBatches:
        return CachedPixelBatches(store, list(ids[inputs.split[s]]), inputs.targets[inputs.split[s]].numpy())

    train_set, val_set = subset("train"), subset("val")
    load = partial(cached_pixel_loader, batch_size=settings.batch_size, workers=settings.workers, device=device)

    def train_batches(g: torch.Generator) -> Batches:
        order = shard(torch.randperm(len(train_set), generator=g), world)
        augment_seed = rank_seed(int(torch.randint(2**62, (), generator=g)), world)
        augment = device_train_augment(*norm, generator=torch.Generator(device).manual_seed(augment_seed), fused=settings.compile)
        return on_device(load(train_set, order), device, augment)

    return train_batches, lambda: on_device(load(val_set, torch.arange(len(val_set))), device, partial(eval_batch, size=norm[0], mean=norm[1], std=norm[2]))


def cached_pixel_loader(dataset: CachedPixelBatches, order: torch.Tensor, batch_size: int, workers: int, device: torch.device) -> DataLoader:
    """uint8 batches of `dataset` in `order`, gathered by `workers` processes, pinned for asynchronous copies on CUDA."""
    sampler = BatchSampler(order.tolist(), batch_size, drop_last=False)
    return DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=workers, pin_memory=device.type == "cuda")


def on_device(batches: Batches, device: torch.device, augment: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Copy each uint8 pixel batch to `device` and augment it there; targets stay where they are.

    On CUDA the copy of the next batch is issued on a side stream before this one is handed
    out, so it runs during this batch's training step. On the compute stream it would queue
    behind the step and leave the GPU idle while ~100 MB (128 pictures at 448 px) cross PCIe.
    """
    if device.type != "cuda":
        for pixels, targets in batches:
            yield augment(pixels.to(device)), targets
        return
    copies, compute = torch.cuda.Stream(device), torch.cuda.current_stream(device)

    def upload(pixels: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event]:
        with torch.cuda.stream(copies):
            on_gpu = pixels.to(device, non_blocking=True)  # asynchronous: the loader pinned `pixels`
            return on_gpu, copies.record_event()

    def handed_out(pixels: torch.Tensor, copied: torch.cuda.Event, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        compute.wait_event(copied)  # this batch's copy only, not the next one's
        pixels.record_stream(compute)  # its memory is not reused before the step has read it
        return augment(pixels), targets

    pending = None  # (pixels, copied, targets) of the batch uploaded but not yet handed out
    for pixels, targets in batches:
        uploaded = (*upload(pixels), targets)
        if pending is not None:
            yield handed_out(*pending)
        pending = uploaded
    if pending is not None:
        yield handed_out(*pending)


def _load_graph(head: nn.Module, spec: ModelSpec, inputs: StageInputs) -> None:
    """Fill a GCN head's buffers with the graph stage's word vectors and normalised adjacency (identity for the ablation)."""
    if spec.kind == "gcn":
        head.embeddings.copy_(inputs.embeddings)
        head.adjacency.copy_(torch.eye(len(inputs.adjacency)) if spec.adjacency == "identity" else inputs.adjacency)


def train(name: str, spec: ModelSpec, settings: TrainSettings, paths: argparse.Namespace, resume: bool, world: World = SINGLE) -> dict[str, Any]:
    """Run (or continue) the training loop; returns the final loop state.

    Under several processes every rank validates on the whole validation split and
    adopts rank 0's figures, so all ranks stop at the same epoch; rank 0 writes, and
    logs the training loss of its own shard.
    """
    device = pick_device(world.local_rank)
    seed_everything(settings.seed)  # the initial weights
    run = setup(name, spec, settings, paths, device, world)
    last, best = paths.out_dir / "last.pt", paths.out_dir / "best.pt"
    per_epoch = steps_per_epoch(run.n_train, settings.batch_size, world)
    warmup = LinearWarmup(tuple(group["lr"] for group in run.optimizer.param_groups), round(settings.warmup_epochs * per_epoch), per_epoch)
    if settings.finetune and world.main and (message := few_steps_warning(per_epoch, run.n_train, settings.batch_size * world.size)):
        warnings.warn(message, stacklevel=2)
    state = {"epoch": 0, "best_map": -1.0, "best_epoch": -1, "bad_epochs": 0}
    if resume:
        checkpoint = load_checkpoint(last)
        if "train" not in checkpoint["meta"]:
            raise InputError(f"{last} was written by an older stylegraph that did not record its training settings, so resuming it cannot be checked; rerun without --resume to train from scratch (it overwrites {last})")
        if changes := configuration_changes(checkpoint["meta"], run.meta):
            raise InputError(
                f"{last} was written by a run with other settings: {', '.join(changes)}. Rerun without --resume to train from scratch "
                f"(it overwrites {last}), or restore those settings (params.yaml, the number of torchrun processes) to continue it; "
                f"only {', '.join(sorted(RESUMABLE_SETTINGS))} may change on --resume"
            )
        run.model.load_state_dict(checkpoint["model"])
        run.optimizer.load_state_dict(checkpoint["optimizer"])
        state = checkpoint["state"]
        if world.main:
            forget_logged_epochs(paths.live_dir, state["epoch"])
    net = wrap(run.model, device, world)  # shares run.model's parameters; checkpoints store run.model's state_dict
    net = compile_for_training(net) if settings.compile else net
    epochs = spec.epochs or settings.epochs
    with StageLive(str(paths.live_dir), resume=resume, dvcyaml=False, save_dvc_exp=False) if world.main else contextlib.nullcontext() as live:
        for epoch in range(state["epoch"], epochs):
            if state["bad_epochs"] >= settings.patience:
                break
            generator = seed_everything(settings.seed * 1000 + epoch, world)
            desc = f"{name} epoch {epoch + 1}/{epochs}" if world.main else None
            train_loss = train_one_epoch(net, run.train_batches(generator), run.optimizer, device, desc, settings.precision, warmup.setter(run.optimizer, epoch))
            _stop_if_diverged(name, from_main(train_loss, world), epoch, last)
            val = from_main(validation_metrics(*predict_probs(run.model, run.val_batches(), device, settings.precision)), world)
            improved = val["mAP"] > state["best_map"]
            state = state | ({"best_map": val["mAP"], "best_epoch": epoch, "bad_epochs": 0} if improved else {"bad_epochs": state["bad_epochs"] + 1}) | {"epoch": epoch + 1}
            if live is not None:
                if improved:
                    save_checkpoint({"meta": run.meta, "model": run.model.state_dict(), "epoch": epoch + 1, "val": val}, best)
                _log_epoch(live, epoch, train_loss, val)  # before last.pt holds the epoch: rows of a kill in between are dropped on --resume
                save_checkpoint({"meta": run.meta, "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(), "state": state}, last)
                print(f"{name} epoch {epoch + 1}: train loss {train_loss:.4f}, val mAP {val['mAP']:.4f}, val top2_all {val['top2_all']:.4f}")
        if live is not None:
            live.summary["best/epoch"] = state["best_epoch"] + 1
            live.summary["best/val_mAP"] = state["best_map"]
    return state


def configuration_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """'name saved -> current' for each recorded setting in which a checkpoint's meta and this run's differ, RESUMABLE_SETTINGS aside.

    Names are meta keys, with those of the nested sections spelled section.key (train.lr_head, spec.kind);
    a nested setting that only repeats a top-level one's change (train.gcn_hidden, gcn_hidden) is named once.
    """
    was, now = _flat(saved), _flat(current)
    changed = {name: (was.get(name), now.get(name)) for name in (was.keys() | now.keys()) - RESUMABLE_SETTINGS if was.get(name) != now.get(name)}
    repeats = {name for name, change in changed.items() if changed.get(name.partition(".")[2]) == change}
    return [f"{name} {reprlib.repr(old)} -> {reprlib.repr(new)}" for name, (old, new) in sorted(changed.items()) if name not in repeats]


def _flat(meta: dict[str, Any]) -> dict[str, Any]:
    """meta with its nested sections (train, spec) spread into section.key entries."""
    flat: dict[str, Any] = {}
    for key, value in meta.items():
        flat |= {f"{key}.{k}": v for k, v in value.items()} if isinstance(value, dict) else {key: value}
    return flat


def forget_logged_epochs(live_dir: Path, first: int) -> None:
    """Drop the rows of epochs >= `first` from every dvclive metric history in `live_dir`.

    An epoch is logged just before last.pt records it; a run killed in between leaves rows
    of an epoch that the resumed run trains and logs again.
    """
    for history in sorted((live_dir / "plots" / "metrics").rglob("*.tsv")):
        header, *rows = history.read_text(encoding="utf-8").splitlines(keepends=True)
        step = header.rstrip("\r\n").split("\t").index("step")
        kept = [row for row in rows if int(row.split("\t")[step]) < first]
        if len(kept) < len(rows):
            with atomic_path(history) as tmp:
                tmp.write_text(header + "".join(kept), encoding="utf-8")


def _stop_if_diverged(name: str, train_loss: float, epoch: int, last: Path) -> None:
    """Raise before a NaN or infinite loss reaches a checkpoint: further epochs would only overwrite last.pt with NaN weights."""
    if not math.isfinite(train_loss):
        raise TrainingDiverged(
            f"{name}: the training loss is {train_loss} in epoch {epoch + 1}; nothing of this epoch was saved ({last} holds the epoch before). "
            "Try a longer train.warmup_epochs, lower learning rates (train.lr_scaling: none, train.lr_head) or train.precision: fp32 and rerun "
            "without --resume (a checkpoint of other settings is refused), or train.compile: false and rerun with --resume to continue from the last good epoch."
        )


def _log_epoch(live: Live, epoch: int, train_loss: float, val: dict[str, float]) -> None:
    live.step = epoch
    live.log_metric("train/loss", train_loss)
    for key, value in val.items():
        live.log_metric(f"val/{key}", value)
    live.next_step()


def run(args: argparse.Namespace) -> int:
    """Train (or --resume) the model that --model names; returns the exit status."""
    specs = load_model_specs(args.params)
    if args.model not in specs:
        raise ParamsError(f"unknown model {args.model!r}; params.yaml 'models' has {sorted(specs)}")
    settings = load_section(TrainSettings, "train", args.params)
    world = init_world()
    try:
        state = train(args.model, specs[args.model], settings, args, args.resume, world)
    finally:
        close_world(world)
    if world.main:
        print(f"{args.model}: best val mAP {state['best_map']:.4f} at epoch {state['best_epoch'] + 1} -> {args.out_dir / 'best.pt'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.splitlines()[0], epilog="The stage's full command line is in dvc.yaml.")
    parser.add_argument("--model", required=True, help="model name: a key of the 'models' section of params.yaml")
    parser.add_argument("--dataset", type=Path, required=True, help="curated dataset (data/dataset.parquet)")
    parser.add_argument("--label-subset", type=Path, required=True, help="class order (data/label_subset.json)")
    parser.add_argument("--graph", type=Path, required=True, help="label graph with adjacency_norm and embeddings (data/label_graph.npz)")
    parser.add_argument("--features", type=Path, required=True, help="cached backbone features (data/features.npz); read by heads unless train.finetune")
    parser.add_argument("--crawl-dir", type=Path, required=True, help="folder the dataset's image paths are relative to (crawl.dir); read by pixel training")
    parser.add_argument("--out-dir", type=Path, required=True, help="folder for last.pt (every epoch) and best.pt (best validation mAP)")
    parser.add_argument("--live-dir", type=Path, required=True, help="dvclive folder: per-epoch metrics and plots")
    parser.add_argument("--pixel-cache", type=Path, default=Path("data/pixels"), help="pixel cache folder (the pixel_cache stage writes data/pixels); read by pixel training when train.cached_pixels")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file with 'train', 'features' and 'models' sections")
    parser.add_argument("--resume", action="store_true", help="continue from OUT_DIR/last.pt after an interruption")
    args = parser.parse_args(argv)
    return report_user_errors("train", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
