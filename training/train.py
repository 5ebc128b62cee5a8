"""Train one model of the `models` section, selected on the validation split (training/settings.py: the recipe).

The checkpoint with the best validation mAP is kept (`best.pt`, with per-label decision
thresholds chosen on the same validation scores; the test split is never looked at
here), and training stops after `train.patience` epochs without improvement.

Two ways to feed a model, one entry point:
- CPU default: heads train on the backbone features that the features stage cached once
  (pooled vectors; feature maps for csra heads), with the cached mirror images as
  augmentation (a backbone forward per image per epoch does not fit a 2-core CPU; see
  training/features.py). The basic CNN always trains from pixels, at the small
  `image_size` its params entry sets.
- `train.finetune: true` (the paper's setting, for a GPU): the backbone is fine-tuned
  end to end from pixels (training/feeds.py), with augmentations; bf16 autocast
  (`train.precision`) and channels-last on CUDA. `train.compile` adds torch.compile.
  Under torchrun, training runs on N processes (training/distributed.py);
  `train.batch_size` is per process.

An interrupted run continues with `--resume` (training/resume.py).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import random
import sys
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from common.cli import InputError, StageParser, report_user_errors
from common.feature_shards import CachedFeatures, extracted_precision, read_features
from common.settings import crawl_folder, load_section
from dvclive import Live
from training.backbones import create_backbone
from training.checkpoint import build_trained_module, load_checkpoint, save_checkpoint
from training.clicks import SHRINK, click_thresholds, thresholds_json
from training.data import main_index, read_dataset, read_label_graph, read_label_subset, target_matrix
from training.device import adam, compile_for_training, pick_device, prepare
from training.distributed import SINGLE, World, close_world, from_main, init_world, rank_seed, wrap
from training.engine import Batches, feature_batches, mirrored_mean, predict_probs, train_one_epoch, validation_metrics
from training.feeds import StageInputs, cached_pixel_feeds, file_feeds
from training.metrics import f1_thresholds
from training.models import ModelSpec, StyleNet, feature_array, graph_classifiers
from training.resume import RESUMABLE_SETTINGS, configuration_changes, forget_logged_epochs
from training.schedule import LinearWarmup, few_steps_warning, lr_factor, steps_per_epoch
from training.settings import FeatureSettings, TrainSettings, load_model_spec

PIXEL_MEAN = PIXEL_STD = (0.5, 0.5, 0.5)  # the basic CNN's normalisation (trained from scratch)


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


@dataclass
class Setup:
    """Everything one training run needs: the module, its optimizer, and batch factories per split."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    meta: dict[str, Any]
    train_batches: Callable[[torch.Generator], Batches]  # a fresh shuffle per epoch
    val_scores: Callable[
        [nn.Module], tuple[np.ndarray, np.ndarray]
    ]  # a model's validation probabilities (test-time flip where train.tta_flip) and the targets
    n_train: int  # training images (all ranks together)
    val_main: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # main label index per val row


def setup(
    name: str,
    spec: ModelSpec,
    settings: TrainSettings,
    paths: argparse.Namespace,
    device: torch.device,
    world: World = SINGLE,
) -> Setup:
    """Build the model, optimizer and data feeds for `spec` from the stage inputs."""
    labels = read_label_subset(paths.label_subset)
    graph = read_label_graph(paths.graph, labels)
    table = read_dataset(paths.dataset, labels)
    targets = torch.from_numpy(target_matrix(table["labels"], labels))
    split = {s: np.array(table["split"] == s, dtype=bool) for s in ("train", "val")}
    for s, mask in split.items():
        if not mask.any():
            raise InputError(f"{paths.dataset}: the {s} split is empty; training needs train and val images")
    inputs = StageInputs(
        table, targets, split, torch.from_numpy(graph.embeddings), torch.from_numpy(graph.adjacency_norm)
    )
    meta: dict[str, Any] = {"name": name, "spec": asdict(spec), "labels": labels,
                            "embedding_dim": graph.embeddings.shape[1], "gcn_hidden": settings.gcn_hidden,
                            "finetuned": False, "train": asdict(settings), "processes": world.size}  # fmt: skip
    make = _pixel_setup if spec.kind == "cnn" or settings.finetune else _feature_setup
    run = make(spec, settings, paths, inputs, meta, device, world)
    run.val_main = main_index(table["main_style"][split["val"]], labels)
    return run


def _checked_features(path: Path, image_ids: list[str], spec: ModelSpec, settings: TrainSettings) -> CachedFeatures:
    """The cached features a head of `spec` reads, refused when they lack the mirrored rows train.tta_flip scores with
    or were extracted in another precision than train.precision."""
    cached = read_features(path, image_ids, feature_array(spec), mirrored=True)
    if settings.tta_flip and cached.mirrored is None:
        raise InputError(
            f"{path}: holds no mirrored features, which train.tta_flip scores with; set features.flip: true "
            "(params.yaml) or train.tta_flip: false, and dvc repro"
        )
    extracted_in = extracted_precision(cached.meta)
    if extracted_in != settings.precision:
        raise InputError(
            f"{path}: features extracted in {extracted_in}, but train.precision is {settings.precision}; "
            "re-run the features stage (dvc repro features)"
        )
    return cached


def _feature_setup(
    spec: ModelSpec,
    settings: TrainSettings,
    paths: argparse.Namespace,
    inputs: StageInputs,
    meta: dict[str, Any],
    device: torch.device,
    world: World,
) -> Setup:
    """A head on the cached features (pooled vectors, or feature maps for csra); their mirrored copies augment training
    and serve the test-time flip."""
    targets, split = inputs.targets, inputs.split
    cached = _checked_features(paths.features, list(inputs.table["image_id"]), spec, settings)
    meta |= {"feature_dim": cached.x.shape[1], "features_precision": extracted_precision(cached.meta)} | {
        key: cached.meta[key] for key in ("backbone", "weights", "image_size", "mean", "std")
    }
    model = prepare(build_trained_module(meta), device)
    _load_graph(model, spec, inputs)
    optimizer = adam(
        [
            {
                "params": model.parameters(),
                "lr": settings.lr_head * lr_factor(settings.lr_scaling, settings.batch_size * world.size),
            }
        ],
        device,
    )

    def rows(s: str, mirrored: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        return cached.x[split[s]], cached.mirrored[split[s]] if mirrored and cached.mirrored is not None else None

    (xt, mt), (xv, mv), yt, yv = (
        rows("train", True),
        rows("val", settings.tta_flip),
        targets[split["train"]],
        targets[split["val"]],
    )

    def val_scores(model: nn.Module) -> tuple[np.ndarray, np.ndarray]:
        def score(x: torch.Tensor) -> np.ndarray:
            return predict_probs(
                model, feature_batches(x, yv, 4 * settings.batch_size, None), device, settings.precision
            )[0]

        return mirrored_mean(score, xv, mv), yv.numpy()

    return Setup(
        model,
        optimizer,
        meta,
        train_batches=lambda g: feature_batches(xt, yt, settings.batch_size, g, mt, world),
        val_scores=val_scores,
        n_train=len(xt),
    )


def _pixel_setup(
    spec: ModelSpec,
    settings: TrainSettings,
    paths: argparse.Namespace,
    inputs: StageInputs,
    meta: dict[str, Any],
    device: torch.device,
    world: World,
) -> Setup:
    """The basic CNN, or a backbone fine-tuned end to end (train.finetune), fed augmented pixels."""
    if spec.kind == "cnn":
        size, mean, std, body = spec.image_size, PIXEL_MEAN, PIXEL_STD, None
        meta |= {"backbone": None, "weights": None}
    else:
        features = load_section(FeatureSettings, "features", paths.params)
        backbone = create_backbone(features.backbone, features.weights)
        size, mean, std, body = features.image_size, backbone.mean, backbone.std, backbone.body
        meta |= {
            "feature_dim": backbone.dim,
            "backbone": features.backbone,
            "weights": features.weights,
            "finetuned": True,
        }
    meta |= {"image_size": size, "mean": mean, "std": std}
    model = build_trained_module(meta, body)
    _load_graph(model.head if isinstance(model, StyleNet) else model, spec, inputs)
    model = prepare(model, device)
    factor = lr_factor(settings.lr_scaling, settings.batch_size * world.size)
    groups = (
        [
            {"params": model.head.parameters(), "lr": settings.lr_head * factor},
            {"params": model.body.parameters(), "lr": settings.lr_backbone * factor},
        ]
        if isinstance(model, StyleNet)  # a backbone body: fine-tuning
        else [{"params": model.parameters(), "lr": settings.lr_head * factor}]
    )
    feeds = cached_pixel_feeds if settings.cached_pixels else file_feeds
    train_batches, val_batches = feeds(inputs, paths, settings, (size, mean, std), device, world)

    def val_scores(model: nn.Module) -> tuple[np.ndarray, np.ndarray]:
        return predict_probs(model, val_batches(), device, settings.precision, mirror=settings.tta_flip)

    return Setup(model, adam(groups, device), meta, train_batches, val_scores, int(inputs.split["train"].sum()))


def _load_graph(head: nn.Module, spec: ModelSpec, inputs: StageInputs) -> None:
    """Fill a graph head's buffers with the graph stage's word vectors and normalised adjacency (identity for the
    ablation)."""
    if (gcn := graph_classifiers(head)) is not None:
        gcn.embeddings.copy_(inputs.embeddings)
        gcn.adjacency.copy_(torch.eye(len(inputs.adjacency)) if spec.adjacency == "identity" else inputs.adjacency)


@dataclass(frozen=True)
class LoopState:
    """Where the epoch loop stands; `last.pt` stores it (as a dict) for `--resume`."""

    epoch: int = 0  # epochs done
    best_map: float = -1.0
    best_epoch: int = -1
    bad_epochs: int = 0  # epochs since the best, for early stopping

    def after(self, epoch: int, val_map: float) -> LoopState:
        """The state once `epoch` (0-based) scored `val_map` on validation."""
        if val_map > self.best_map:
            return LoopState(epoch + 1, val_map, epoch, 0)
        return replace(self, epoch=epoch + 1, bad_epochs=self.bad_epochs + 1)


def train(
    name: str, spec: ModelSpec, settings: TrainSettings, paths: argparse.Namespace, resume: bool, world: World = SINGLE
) -> dict[str, Any]:
    """Run (or continue) the training loop; returns the final loop state (as `last.pt` stores it).

    Under several processes every rank validates on the whole validation split and
    adopts rank 0's figures, so all ranks stop at the same epoch; rank 0 writes, and
    logs the training loss of its own shard.
    """
    device = pick_device(world.local_rank)
    seed_everything(settings.seed)  # the initial weights
    run = setup(name, spec, settings, paths, device, world)
    last, best = paths.out_dir / "last.pt", paths.out_dir / "best.pt"
    per_epoch = steps_per_epoch(run.n_train, settings.batch_size, world)
    warmup = LinearWarmup(
        tuple(group["lr"] for group in run.optimizer.param_groups), round(settings.warmup_epochs * per_epoch), per_epoch
    )
    if (
        settings.finetune
        and world.main
        and (message := few_steps_warning(per_epoch, run.n_train, settings.batch_size * world.size))
    ):
        warnings.warn(message, stacklevel=2)
    state = resumed_state(run, last, paths.live_dir, world) if resume else LoopState()
    net = wrap(run.model, device, world)  # shares run.model's parameters; checkpoints store run.model's state_dict
    net = compile_for_training(net) if settings.compile else net
    epochs, loss = spec.epochs or settings.epochs, settings.loss_function(spec)
    with (
        StageLive(str(paths.live_dir), resume=resume, dvcyaml=False, save_dvc_exp=False)
        if world.main
        else contextlib.nullcontext() as live
    ):
        for epoch in range(state.epoch, epochs):
            if state.bad_epochs >= settings.patience:
                break
            generator = seed_everything(settings.seed * 1000 + epoch, world)
            desc = f"{name} epoch {epoch + 1}/{epochs}" if world.main else None
            batches = run.train_batches(generator)
            set_rates = warmup.setter(run.optimizer, epoch)
            train_loss = train_one_epoch(net, batches, run.optimizer, device, desc, settings.precision, set_rates, loss)
            _stop_if_diverged(name, from_main(train_loss, world), epoch, last)
            val_probs, val_targets = run.val_scores(run.model)
            val = from_main(validation_metrics(val_probs, val_targets), world)
            improved, state = val["mAP"] > state.best_map, state.after(epoch, val["mAP"])
            if live is not None:
                if improved:
                    save_best(run, epoch, val, val_probs, val_targets, best)
                _log_epoch(live, epoch, train_loss, val)  # before last.pt holds the epoch: --resume drops later rows
                save_checkpoint({"meta": run.meta, "model": run.model.state_dict(),
                                 "optimizer": run.optimizer.state_dict(), "state": asdict(state)}, last)  # fmt: skip
                print(f"{name} epoch {epoch + 1}: train loss {train_loss:.4f}, val mAP {val['mAP']:.4f}, val top2_all "
                      f"{val['top2_all']:.4f}")  # fmt: skip
        if live is not None:
            live.summary["best/epoch"] = state.best_epoch + 1
            live.summary["best/val_mAP"] = state.best_map
    return asdict(state)


def resumed_state(run: Setup, last: Path, live_dir: Path, world: World) -> LoopState:
    """Load `last.pt` into the model and optimizer, after checking it was written under the same settings; its loop
    state. Epochs logged after it was written are dropped from the dvclive logs."""
    checkpoint = load_checkpoint(last)
    if "train" not in checkpoint["meta"]:
        raise InputError(
            f"{last} was written by an older stylegraph that did not record its training settings, so resuming it "
            f"cannot be checked; rerun without --resume to train from scratch (it overwrites {last})"
        )
    if changes := configuration_changes(checkpoint["meta"], run.meta):
        raise InputError(
            f"{last} was written by a run with other settings: {', '.join(changes)}. Rerun without --resume to "
            f"train from scratch (it overwrites {last}), or restore those settings (params.yaml, the number of "
            f"torchrun processes) to continue it; only {', '.join(sorted(RESUMABLE_SETTINGS))} may change on "
            "--resume"
        )
    run.model.load_state_dict(checkpoint["model"])
    run.optimizer.load_state_dict(checkpoint["optimizer"])
    state = LoopState(**checkpoint["state"])
    if world.main:
        forget_logged_epochs(live_dir, state.epoch)
    return state


def save_best(
    run: Setup, epoch: int, val: dict[str, float], val_probs: np.ndarray, val_targets: np.ndarray, best: Path
) -> None:
    """`best.pt`: the model of the best validation mAP so far, with the decision thresholds fitted on its validation
    scores (best F1; fewest expert clicks)."""
    clicks = click_thresholds(val_probs, val_targets, run.val_main, SHRINK)
    save_checkpoint({"meta": run.meta, "model": run.model.state_dict(), "epoch": epoch + 1, "val": val,
                     "thresholds": f1_thresholds(val_probs, val_targets).tolist(),
                     "click_thresholds": thresholds_json(clicks)}, best)  # fmt: skip


def _stop_if_diverged(name: str, train_loss: float, epoch: int, last: Path) -> None:
    """Raise before a NaN or infinite loss reaches a checkpoint: further epochs would only overwrite last.pt with NaN
    weights."""
    if not math.isfinite(train_loss):
        raise TrainingDiverged(
            f"{name}: the training loss is {train_loss} in epoch {epoch + 1}; nothing of this epoch was saved ({last} "
            "holds the epoch before). Try a longer train.warmup_epochs, lower learning rates (train.lr_scaling: none, "
            "train.lr_head) or train.precision: fp32 and rerun without --resume (a checkpoint of other settings is "
            "refused), or train.compile: false and rerun with --resume to continue from the last good epoch."
        )


def _log_epoch(live: Live, epoch: int, train_loss: float, val: dict[str, float]) -> None:
    live.step = epoch
    live.log_metric("train/loss", train_loss)
    for key, value in val.items():
        live.log_metric(f"val/{key}", value)
    live.next_step()


def run(args: argparse.Namespace) -> int:
    """Train (or --resume) the model that --model names; returns the exit status."""
    spec = load_model_spec(args.params, args.model)
    settings = load_section(TrainSettings, "train", args.params)
    args.crawl_dir = crawl_folder(args.crawl_dir, args.params)  # pixel models read the images
    world = init_world()
    try:
        state = train(args.model, spec, settings, args, args.resume, world)
    finally:
        close_world(world)
    if world.main:
        print(
            f"{args.model}: best val mAP {state['best_map']:.4f} at epoch {state['best_epoch'] + 1} -> "
            f"{args.out_dir / 'best.pt'}"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = StageParser(
        "train",
        prog="python -m training.train",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("--model", help="model name: a key of the 'models' section of params.yaml")
    parser.add_argument("--dataset", type=Path, help="curated dataset (data/dataset.parquet)")
    parser.add_argument("--label-subset", type=Path, help="class order (data/label_subset.json)")
    parser.add_argument(
        "--graph",
        type=Path,
        help="label graph with adjacency_norm and embeddings (data/label_graph.npz)",
    )
    parser.add_argument(
        "--features",
        type=Path,
        help="cached backbone features (data/features.npz); read by heads unless train.finetune",
    )
    parser.add_argument(
        "--crawl-dir",
        type=Path,
        help="folder the dataset's image paths are relative to (crawl.dir); read by pixel training",
    )
    parser.add_argument(
        "--out-dir", type=Path, help="folder for last.pt (every epoch) and best.pt (best validation mAP)"
    )
    parser.add_argument("--live-dir", type=Path, help="dvclive folder: per-epoch metrics and plots")
    parser.add_argument(
        "--pixel-cache",
        type=Path,
        help="pixel cache folder (the pixel_cache stage writes data/pixels); read by pixel training when "
        "train.cached_pixels",
    )
    parser.add_argument(
        "--params",
        type=Path,
        default=Path("params.yaml"),
        help="params file with 'train', 'features' and 'models' sections",
    )
    parser.add_argument("--resume", action="store_true", help="continue from OUT_DIR/last.pt after an interruption")
    args = parser.parse_args(argv)
    return report_user_errors("train", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
