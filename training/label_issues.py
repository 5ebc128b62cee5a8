"""Label-issues stage: rank the expert labels a model trained without them disagrees with most.

Out-of-fold probabilities: the labelled images of the train and validation splits are cut
into `folds` folds; for each, a fresh head of the chosen model (`label_issues.model`, or
the one with the best validation mAP) trains on the other folds' cached features with
that model's recipe and epoch count, then scores the held-out fold (with the test-time
flip where the model uses it). Every image is thus scored by a model that never saw its
labels. The test split stays out: fixing its labels where a model disagrees would bend
the test set towards the model and flatter every later evaluation.

Each (image, label) cell gets a label quality, self-confidence (Northcutt et al. 2021;
its multi-label form: Thyagarajan et al. 2023, "Identifying incorrect annotations in
multi-label classification data"): the probability the model gives to what the experts
said, p where they named the label and 1 - p where they did not; the lowest qualities
are the likeliest errors. (Dividing by the label's usual quality, so that a style the
model scores low everywhere is not flagged wholesale, found fewer planted errors on CCP
and on the demo: benchmarks/bench_label_issues.py, docs/expert-time.md.) Kinds: a
missing label (not named, the model is confident it is there), an extra sub-style
(named, the model is confident it is not) and a wrong main style (the main style is the
extra one). Tag taxonomies without a main label get
missing and extra. The `max_rows` most suspicious cells go to `data/label_issues.parquet`
with the experts' and the model's view of the image, and the top of the list to
`reports/label_issues.md`; `python -m annotation push --review data/label_issues.parquet`
sends the most suspicious images to the review project.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from pipeline.atomic import atomic_path, outputs_together, write_json, write_parquet
from pipeline.cli import InputError, report_user_errors
from pipeline.settings import Settings, load_section, setting
from training.checkpoint import (
    best_model,
    build_trained_module,
    called_present,
    decision_thresholds,
    load_checkpoint,
    scores_mirrored,
    trained_precision,
)
from training.data import main_index, read_dataset, read_label_subset, target_matrix
from training.device import adam, pick_device, prepare
from training.distributed import SINGLE
from training.engine import feature_batches, mirrored_mean, predict_probs, train_one_epoch
from training.features import feature_array, read_features
from training.losses import AsymmetricLoss, make_loss
from training.models import ModelSpec
from training.schedule import LinearWarmup, lr_factor, steps_per_epoch

CHECKED_SPLITS = ("train", "val")
ISSUE_COLUMNS = {
    "rank": "int64", "image_id": "string", "batch": "string", "path": "string", "split": "string", "label": "string",
    "kind": "string", "score": "float64", "model_probability": "float64", "experts_main": "string",
    "experts_labels": "object", "model_main": "string", "model_labels": "object",
}  # fmt: skip


@dataclass(frozen=True)
class LabelIssueSettings(Settings):
    section = "label_issues"
    model: str = setting(
        "a `models` entry on cached features whose recipe the out-of-fold heads copy, or best (highest validation mAP)"
    )
    folds: int = setting("out-of-fold: each image is scored by a head trained on the other folds", interval="[2, inf)")
    seed: int = setting("fold assignment and head initialisation")
    max_rows: int = setting(
        "the most suspicious (image, label) cells kept in data/label_issues.parquet", interval="[1, inf)"
    )


def chosen_checkpoint(models_dir: Path, model: str) -> tuple[str, dict[str, Any]]:
    """(name, checkpoint) of the model whose recipe the folds copy; it must be a head on cached features."""
    name, path = best_model(models_dir, heads_only=True) if model == "best" else (model, models_dir / model / "best.pt")
    checkpoint = load_checkpoint(path)
    meta = checkpoint["meta"]
    if meta["spec"]["kind"] == "cnn" or meta["finetuned"]:
        raise InputError(
            f"label_issues.model {name!r} trains from pixels; the label-issue folds train heads on cached features: "
            "name a head model (params.yaml)"
        )
    return name, checkpoint


def assign_folds(n: int, folds: int, seed: int) -> np.ndarray:
    """Fold number of each of `n` images: a seeded shuffle cut into `folds` near-equal parts."""
    order = np.random.default_rng(seed).permutation(n)
    fold = np.empty(n, dtype=np.int64)
    fold[order] = np.arange(n) % folds
    return fold


def fresh_head(checkpoint: dict[str, Any], seed: int) -> nn.Module:
    """An untrained head of the checkpoint's model, with its label graph (buffers) as trained."""
    torch.manual_seed(seed)
    head = build_trained_module(checkpoint["meta"])
    with torch.no_grad():
        for name, buffer in head.named_buffers():
            buffer.copy_(checkpoint["model"][name])
    return head


def out_of_fold_probs(
    checkpoint: dict[str, Any],
    x: torch.Tensor,
    mirrored: torch.Tensor | None,
    targets: np.ndarray,
    fold: np.ndarray,
    seed: int,
) -> np.ndarray:
    """(N, C) probabilities, each row from a head trained on the other folds with the checkpoint's recipe for as many
    epochs as it took to its best."""
    meta, device = checkpoint["meta"], pick_device()
    train, precision, mirror = meta["train"], trained_precision(meta), scores_mirrored(meta)
    spec = ModelSpec(**meta["spec"])
    loss = make_loss(
        spec.loss or train.get("loss", "bce"),
        AsymmetricLoss(train.get("asl_gamma_neg", 4.0), train.get("asl_gamma_pos", 0.0), train.get("asl_clip", 0.05)),
    )
    epochs, batch = int(checkpoint.get("epoch", 1)), int(train["batch_size"])
    y = torch.from_numpy(targets)
    probs = np.zeros(targets.shape, dtype=np.float64)
    for k in tqdm(range(int(fold.max()) + 1), desc="label_issues folds", unit="fold", disable=None):
        fit, held = torch.from_numpy(fold != k), torch.from_numpy(fold == k)
        head = prepare(fresh_head(checkpoint, seed + k), device)
        optimizer = adam(
            [{"params": head.parameters(), "lr": train["lr_head"] * lr_factor(train["lr_scaling"], batch)}], device
        )
        per_epoch = steps_per_epoch(int(fit.sum()), batch, SINGLE)
        warmup = LinearWarmup(
            (optimizer.param_groups[0]["lr"],), round(train.get("warmup_epochs", 0) * per_epoch), per_epoch
        )
        generator = torch.Generator().manual_seed(seed + k)
        for epoch in range(epochs):
            batches = feature_batches(x[fit], y[fit], batch, generator, mirrored[fit] if mirrored is not None else None)
            train_one_epoch(head, batches, optimizer, device, None, precision, warmup.setter(optimizer, epoch), loss)

        def score(features: torch.Tensor, head: nn.Module = head, held: torch.Tensor = held) -> np.ndarray:
            return predict_probs(head, feature_batches(features, y[held], 4 * batch, None), device, precision)[0]

        probs[held.numpy()] = mirrored_mean(score, x[held], mirrored[held] if mirror and mirrored is not None else None)
    return probs


def label_quality(probs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(N, C) self-confidence: the probability the model gives to what the experts said about each cell."""
    return np.where(targets > 0, probs, 1 - probs)


def issue_kinds(targets: np.ndarray, main: np.ndarray) -> np.ndarray:
    """(N, C) kind of the error each cell would be: missing, extra sub-style or wrong main style (tag sets: missing or
    extra)."""
    kinds = np.where(targets > 0, "extra sub-style" if (main >= 0).any() else "extra", "missing").astype(
        object
    )  # object: a fixed-width str array would cut longer kinds
    rows = np.flatnonzero(main >= 0)
    kinds[rows, main[rows]] = "wrong main style"
    return kinds


def rank_issues(
    table: pd.DataFrame,
    labels: list[str],
    probs: np.ndarray,
    targets: np.ndarray,
    thresholds: np.ndarray,
    max_rows: int,
) -> pd.DataFrame:
    """The `max_rows` least plausible cells, most suspicious first, with both views of each image."""
    quality = label_quality(probs, targets)
    kinds = issue_kinds(targets, main_index(table["main_style"], labels))
    order = np.argsort(quality, axis=None, kind="stable")[:max_rows]
    rows, cols = np.unravel_index(order, quality.shape)
    label_array = np.array(labels)
    picked = table.iloc[rows]
    return pd.DataFrame({
        "rank": np.arange(1, len(rows) + 1),
        "image_id": picked["image_id"].to_numpy(), "batch": picked["batch"].to_numpy(),
        "path": picked["path"].to_numpy(), "split": picked["split"].to_numpy(),
        "label": label_array[cols], "kind": kinds[rows, cols], "score": -np.log(np.maximum(quality[rows, cols], 1e-12)),
        "model_probability": probs[rows, cols], "experts_main": picked["main_style"].to_numpy(),
        "experts_labels": [list(v) for v in picked["labels"]], "model_main": label_array[probs[rows].argmax(axis=1)],
        "model_labels": [called_present(probs[r], thresholds, labels) for r in rows],
    }).astype(ISSUE_COLUMNS)  # fmt: skip


def report(issues: pd.DataFrame, name: str, n_images: int, settings: LabelIssueSettings, top: int = 20) -> str:
    """Markdown: how many cells of each kind lead the list, and its top rows."""
    lines = [
        "# Likely label errors",
        "",
        f"{n_images} labelled images of the train and validation splits, each scored by a head of `{name}` trained on "
        f"the other {settings.folds - 1} of {settings.folds} folds. Score: -log of the probability the model gives to "
        "the experts' answer (self-confidence); the list is `data/label_issues.parquet`. "
        "`python -m annotation push --review data/label_issues.parquet --top 50` sends the most suspicious images to "
        "the review project.",
        "",
        "| kind | in the top 100 |",
        "|---|---|",
        *[f"| {kind} | {count} |" for kind, count in issues.head(100)["kind"].value_counts().items()],
        "",
        f"## The {min(top, len(issues))} most suspicious",
        "",
        "| rank | image | label | kind | model p | experts | model |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in issues.head(top).itertuples():
        lines.append(
            f"| {row.rank} | {row.path} | {row.label} | {row.kind} | {row.model_probability:.2f} | "
            f"{', '.join(row.experts_labels)} | {', '.join(row.model_labels) or '—'} |"
        )
    return "\n".join(lines) + "\n"


def find_issues(args: argparse.Namespace, settings: LabelIssueSettings) -> tuple[pd.DataFrame, str, dict]:
    """(ranked issues, Markdown report, metrics) for the labelled train and validation images."""
    labels = read_label_subset(args.label_subset)
    table = read_dataset(args.dataset, labels)
    table = table[table["split"].isin(CHECKED_SPLITS)].reset_index(drop=True)
    if len(table) < settings.folds:
        raise InputError(
            f"{args.dataset}: {len(table)} labelled train and validation images, fewer than label_issues.folds = "
            f"{settings.folds}"
        )
    name, checkpoint = chosen_checkpoint(args.models_dir, settings.model)
    if checkpoint["meta"]["labels"] != labels:
        raise InputError(
            f"model {name}: trained on labels {checkpoint['meta']['labels']}, the label subset is now {labels}; "
            "retrain it (dvc repro)"
        )
    cached = read_features(
        args.features, list(table["image_id"]), feature_array(ModelSpec(**checkpoint["meta"]["spec"])), mirrored=True
    )
    targets = target_matrix(table["labels"], labels)
    probs = out_of_fold_probs(
        checkpoint,
        cached.x,
        cached.mirrored,
        targets,
        assign_folds(len(table), settings.folds, settings.seed),
        settings.seed,
    )
    issues = rank_issues(table, labels, probs, targets, decision_thresholds(checkpoint), settings.max_rows)
    by_kind = issues.head(100)["kind"].value_counts()
    metrics = {"model": name, "images": len(table), "folds": settings.folds, "rows": len(issues),
               "top_100_by_kind": {str(k): int(v) for k, v in by_kind.items()}}  # fmt: skip
    return issues, report(issues, name, len(table), settings), metrics


def run(args: argparse.Namespace) -> int:
    settings = load_section(LabelIssueSettings, "label_issues", args.params)
    issues, text, metrics = find_issues(args, settings)
    with outputs_together():
        write_parquet(issues, args.out)
        with atomic_path(args.report) as tmp:
            tmp.write_text(text, encoding="utf-8")
        write_json(metrics, args.metrics)
    print(
        f"label_issues: {metrics['images']} images, {len(issues)} most suspicious (image, label) cells -> {args.out}, "
        f"{args.report}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.label_issues",
        description=__doc__.splitlines()[0],
        epilog="The stage's full command line is in dvc.yaml.",
    )
    parser.add_argument("--dataset", type=Path, required=True, help="curated dataset (data/dataset.parquet)")
    parser.add_argument("--label-subset", type=Path, required=True, help="class order (data/label_subset.json)")
    parser.add_argument("--features", type=Path, required=True, help="cached backbone features (data/features.npz)")
    parser.add_argument(
        "--models-dir", type=Path, required=True, help="folder with <model>/best.pt: the recipe the folds copy"
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="ranked suspicions to write (data/label_issues.parquet)"
    )
    parser.add_argument(
        "--report", type=Path, required=True, help="Markdown summary to write (reports/label_issues.md)"
    )
    parser.add_argument("--metrics", type=Path, required=True, help="JSON metrics to write (metrics/label_issues.json)")
    parser.add_argument(
        "--params", type=Path, default=Path("params.yaml"), help="params file with a 'label_issues' section"
    )
    args = parser.parse_args(argv)
    return report_user_errors("label_issues", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
