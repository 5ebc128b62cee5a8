"""Label-issues stage: rank the expert labels a model trained without them disagrees with most.

Out-of-fold probabilities: the select stage has scored every labelled train and
validation image with heads that never saw its labels (training/out_of_fold.py); this
stage reads those of `label_issues.model` (best: the model the select stage chose), so no
head is trained twice. The test split stays out: fixing its labels where a model
disagrees would bend the test set towards the model and flatter every later evaluation.

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

from common.atomic import atomic_path, outputs_together, write_json, write_parquet
from common.cli import InputError, StageParser, report_user_errors
from common.settings import Settings, load_section, setting
from common.tables import read_table
from training.checkpoint import called_present
from training.data import main_index, read_dataset, read_label_subset, target_matrix
from training.decisions import read_selection

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
        "a `models` entry on cached features whose out-of-fold scores (select stage) rank the labels, or best (the "
        "model the select stage chose)"
    )
    max_rows: int = setting(
        "the most suspicious (image, label) cells kept in data/label_issues.parquet", interval="[1, inf)"
    )


def out_of_fold_scores(
    selection: dict[str, Any], scores_path: Path, model: str, image_ids: pd.Series
) -> tuple[str, np.ndarray, np.ndarray]:
    """(model name, (N, C) out-of-fold probabilities of `image_ids`, its best-F1 thresholds) from the select stage."""
    name = selection["chosen"] if model == "best" else model
    if name not in selection["models"]:
        raise InputError(
            f"label_issues.model {name!r} has no out-of-fold scores: the select stage scores heads on cached features "
            f"({', '.join(sorted(selection['models'])) or 'none trained'}); name one of them, or best (params.yaml)"
        )
    scores = read_table(scores_path, columns=["model", "image_id", "probs"])
    rows = scores[scores["model"] == name].set_index("image_id")["probs"]
    missing = image_ids[~image_ids.isin(rows.index)]
    if len(missing):
        raise InputError(
            f"{scores_path}: no out-of-fold scores for {len(missing)} train and validation images (e.g. "
            f"{missing.iloc[0]}); re-run the select stage (dvc repro select)"
        )
    probs = np.stack([np.asarray(p, dtype=np.float64) for p in rows.loc[image_ids]])
    return name, probs, np.asarray(selection["models"][name]["f1_thresholds"], dtype=np.float64)


def label_quality(probs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(N, C) self-confidence: the probability the model gives to what the experts said about each cell."""
    return np.where(targets > 0, probs, 1 - probs)


def neighbour_quality(features: np.ndarray, targets: np.ndarray, k: int, block: int = 1024) -> np.ndarray:
    """(N, C) how far each cell's given value agrees with the labels of the image's `k` nearest neighbours (cosine
    similarity of pooled features, itself excluded): the share of neighbours that carry the label where the experts
    named it, that do not where they did not, Laplace-smoothed ((agreeing + 1) / (k + 2), so that no cell is a flat 0)
    (training-free, as SimiFeat, Zhu et al. 2022). Memory: `block` rows of similarities at a time."""
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    agreement = np.empty(targets.shape, dtype=np.float64)
    k = min(k, len(features) - 1)
    for start in range(0, len(unit), block):
        similar = unit[start : start + block] @ unit.T
        rows = np.arange(len(similar))
        similar[rows, start + rows] = -np.inf
        nearest = np.argpartition(-similar, k - 1, axis=1)[:, :k]
        agreement[start : start + block] = targets[nearest].sum(axis=1)
    agreeing = np.where(targets > 0, agreement, k - agreement)
    return (agreeing + 1) / (k + 2)


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


def report(issues: pd.DataFrame, name: str, n_images: int, folds: int, top: int = 20) -> str:
    """Markdown: how many cells of each kind lead the list, and its top rows."""
    lines = [
        "# Likely label errors",
        "",
        f"{n_images} labelled images of the train and validation splits, each scored by a head of `{name}` trained on "
        f"the other {folds - 1} of {folds} folds (the select stage's). Score: -log of the probability the model "
        "gives to the experts' answer (self-confidence); the list is `data/label_issues.parquet`. "
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
    selection = read_selection(args.selection)
    if selection is None:
        raise InputError(f"{args.selection}: not found; run the select stage first (dvc repro select)")
    if selection["labels"] != labels:
        raise InputError(
            f"{args.selection}: made for labels {selection['labels']}, the label subset is now {labels}; re-run it "
            "(dvc repro)"
        )
    name, probs, thresholds = out_of_fold_scores(selection, args.out_of_fold, settings.model, table["image_id"])
    targets = target_matrix(table["labels"], labels)
    issues = rank_issues(table, labels, probs, targets, thresholds, settings.max_rows)
    by_kind = issues.head(100)["kind"].value_counts()
    metrics = {"model": name, "images": len(table), "folds": selection["folds"], "rows": len(issues),
               "top_100_by_kind": {str(k): int(v) for k, v in by_kind.items()}}  # fmt: skip
    return issues, report(issues, name, len(table), selection["folds"]), metrics


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
    parser = StageParser(
        "label_issues",
        prog="python -m training.label_issues",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("--dataset", type=Path, help="curated dataset (data/dataset.parquet)")
    parser.add_argument("--label-subset", type=Path, help="class order (data/label_subset.json)")
    parser.add_argument(
        "--out-of-fold",
        type=Path,
        help="the select stage's out-of-fold scores (data/out_of_fold.parquet)",
    )
    parser.add_argument("--selection", type=Path, help="the select stage's choice and thresholds (data/selection.json)")
    parser.add_argument("--out", type=Path, help="ranked suspicions to write (data/label_issues.parquet)")
    parser.add_argument("--report", type=Path, help="Markdown summary to write (reports/label_issues.md)")
    parser.add_argument("--metrics", type=Path, help="JSON metrics to write (metrics/label_issues.json)")
    parser.add_argument(
        "--params", type=Path, default=Path("params.yaml"), help="params file with a 'label_issues' section"
    )
    args = parser.parse_args(argv)
    return report_user_errors("label_issues", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
