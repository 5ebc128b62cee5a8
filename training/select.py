"""Select stage: choose the model `--model best` serves, and every model's decision rules, on out-of-fold scores.

The validation split alone is too small to choose on (162 photos on CCP: it preferred a
model that was 1.3 mAP worse on the test split). So every head on cached features is
scored out of fold over the labelled train and validation images (training/out_of_fold.py,
`select.folds` folds), and:

- **the model**: the one with the highest mean out-of-fold mAP across folds, unless a
  model with fewer parameters is within noise of it (its per-fold mAP deficit, paired
  fold by fold, is under two standard errors): then the smallest such model, and the
  report says so. The train-split checkpoint of the chosen model is what is served.
- **its thresholds**: per label, the F1-best probability cut (`predict`'s "present" list)
  and the click-optimal pre-annotation cut (training/clicks.py), fitted on the
  out-of-fold scores of ~10x the validation split's images.

Models trained from pixels (the basic CNN, fine-tuned models) cannot be refitted per fold
on the CPU; they keep their validation-split thresholds and take part in the choice only
when no head was trained (then by validation mAP). The test split is not read here.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from common.atomic import outputs_together, write_json, write_parquet
from common.cli import InputError, StageParser, report_user_errors
from common.feature_shards import read_features
from common.groups import near_duplicate_groups
from common.settings import Problem, Settings, load_section, setting
from common.tables import read_table
from training.checkpoint import build_trained_module, load_checkpoint
from training.clicks import SHRINK, click_thresholds, correction_clicks, empty_form_clicks, thresholds_json
from training.data import main_index, read_dataset, read_label_subset, target_matrix
from training.metrics import average_precision, f1_thresholds, mean_average_precision
from training.models import ModelSpec, feature_array
from training.out_of_fold import assign_folds, out_of_fold_probs
from training.settings import load_model_specs

SCORED_SPLITS = ("train", "val")
NOISE_STANDARD_ERRORS = 2.0


@dataclass(frozen=True)
class SelectSettings(Settings):
    section = "select"
    folds: int = setting(
        "out-of-fold: each train and validation image is scored by a head trained on the other folds",
        interval="[2, inf)",
    )
    seed: int = setting("fold assignment and fold-head initialisation")
    candidates: list[str] = setting(
        "the `models` entries `--model best` may serve, each scored out of fold; [] = every head on cached features "
        "(ablations need not be: each candidate costs about two trainings of itself)"
    )

    def rules(self) -> Iterator[Problem]:
        if not isinstance(self.candidates, list) or not all(isinstance(name, str) for name in self.candidates):
            yield "candidates", f"must be a list of model names, not {self.candidates!r}"


@dataclass
class Scored:
    """One model's out-of-fold result."""

    probs: np.ndarray  # (N, C)
    fold_map: np.ndarray  # (k,) mAP of each held-out fold
    parameters: int
    val_map: float

    @property
    def mean_map(self) -> float:
        return float(np.nanmean(self.fold_map))


def head_checkpoints(
    models_dir: Path, names: list[str], candidates: list[str]
) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    """({name: checkpoint} of the candidate heads on cached features, {name: validation mAP} of every model)."""
    if unknown := sorted(set(candidates) - set(names)):
        raise InputError(f"select.candidates names {unknown}, not models of params.yaml ({', '.join(names)})")
    heads, val_maps = {}, {}
    for name in names:
        checkpoint = load_checkpoint(models_dir / name / "best.pt")
        val_maps[name] = float(checkpoint["val"]["mAP"])
        pixels = checkpoint["meta"]["spec"]["kind"] == "cnn" or checkpoint["meta"]["finetuned"]
        if not pixels and (not candidates or name in candidates):
            heads[name] = checkpoint
    return heads, val_maps


def parameter_count(checkpoint: dict[str, Any]) -> int:
    """Trainable parameters of a checkpoint's head: the measure of 'simpler' when two models are within noise."""
    with torch.device("meta"):
        return sum(p.numel() for p in build_trained_module(checkpoint["meta"]).parameters())


def fold_maps(probs: np.ndarray, targets: np.ndarray, fold: np.ndarray) -> np.ndarray:
    """mAP of each held-out fold."""
    return np.array([mean_average_precision(probs[fold == k], targets[fold == k]) for k in range(int(fold.max()) + 1)])


def within_noise(top: np.ndarray, other: np.ndarray) -> bool:
    """Whether `other`'s per-fold mAP trails `top`'s by less than NOISE_STANDARD_ERRORS standard errors of the paired
    fold differences."""
    gap = top - other
    error = gap.std(ddof=1) / np.sqrt(len(gap)) if len(gap) > 1 else 0.0
    return bool(gap.mean() <= NOISE_STANDARD_ERRORS * error)


def choose(scored: dict[str, Scored]) -> tuple[str, str, str]:
    """(chosen model, top model by mean out-of-fold mAP, why): the smallest model within noise of the top one."""
    top = max(scored, key=lambda name: scored[name].mean_map)
    near = [name for name in scored if within_noise(scored[top].fold_map, scored[name].fold_map)]
    chosen = min(near, key=lambda name: (scored[name].parameters, -scored[name].mean_map))
    if chosen == top:
        why = "highest mean out-of-fold mAP"
    else:
        why = (
            f"within noise of {top} (the highest mean out-of-fold mAP, "
            f"{100 * scored[top].mean_map:.2f} against {100 * scored[chosen].mean_map:.2f}) with fewer parameters "
            f"({scored[chosen].parameters:,} against {scored[top].parameters:,})"
        )
    return chosen, top, why


def model_entry(
    result: Scored,
    targets: np.ndarray,
    main: np.ndarray,
    empty: int,
    top: Scored,
    checkpoint_thresholds: list[float] | None,
) -> dict[str, Any]:
    """What selection.json keeps of one model: its out-of-fold scores and the decision rules fitted on them (`empty`:
    the empty form's clicks on these images)."""
    clicks = click_thresholds(result.probs, targets, main, SHRINK)
    f1_validation = np.asarray(checkpoint_thresholds or [0.5] * targets.shape[1])
    return {
        "oof_mAP": result.mean_map,
        "oof_mAP_sd": float(np.nanstd(result.fold_map, ddof=1)),
        "fold_mAP": result.fold_map.tolist(),
        "val_mAP": result.val_map,
        "parameters": result.parameters,
        "within_noise_of_top": within_noise(top.fold_map, result.fold_map),
        "per_label_ap": [None if np.isnan(v) else float(v) for v in average_precision(result.probs, targets)],
        "f1_thresholds": f1_thresholds(result.probs, targets).tolist(),
        "click_thresholds": thresholds_json(clicks),
        "oof_clicks_ratio": correction_clicks(result.probs, clicks, targets, main).total / empty,
        "oof_clicks_ratio_validation_f1": correction_clicks(result.probs, f1_validation, targets, main).total / empty,
    }


def select(args: argparse.Namespace, settings: SelectSettings) -> tuple[pd.DataFrame, dict[str, Any], dict[str, Any]]:
    """(out-of-fold scores table, selection.json, metrics) for the models of params.yaml."""
    labels = read_label_subset(args.label_subset)
    table = read_dataset(args.dataset, labels)
    table = table[table["split"].isin(SCORED_SPLITS)].reset_index(drop=True)
    if len(table) < settings.folds:
        raise InputError(
            f"{args.dataset}: {len(table)} labelled train and validation images, fewer than select.folds = "
            f"{settings.folds}"
        )
    heads, val_maps = head_checkpoints(args.models_dir, list(load_model_specs(args.params)), settings.candidates)
    for name, checkpoint in heads.items():
        if checkpoint["meta"]["labels"] != labels:
            raise InputError(
                f"model {name}: trained on labels {checkpoint['meta']['labels']}, the label subset is now {labels}; "
                "retrain it (dvc repro)"
            )
    targets, main = target_matrix(table["labels"], labels), main_index(table["main_style"], labels)
    pairs = read_table(args.near_duplicates, columns=["image_id_a", "image_id_b"])
    fold = assign_folds(targets, near_duplicate_groups(table["image_id"], pairs), settings.folds, settings.seed)
    scored = score_out_of_fold(heads, args.features, table, targets, fold, settings.seed)
    if not scored:
        chosen = top = max(val_maps, key=lambda name: val_maps[name])
        why = "highest validation mAP (no head on cached features to score out of fold)"
    else:
        chosen, top, why = choose(scored)
    empty = empty_form_clicks(targets, main).total
    models = {
        name: model_entry(result, targets, main, empty, scored[top], heads[name].get("thresholds"))
        for name, result in scored.items()
    }
    selection = {"labels": labels, "images": len(table), "folds": settings.folds, "chosen": chosen, "why": why,
                 "top_by_oof_mAP": top, "validation_choice": max(heads or val_maps, key=lambda n: val_maps[n]),
                 "models": models}  # fmt: skip
    scores = pd.concat(
        [
            pd.DataFrame(
                {
                    "model": name,
                    "image_id": table["image_id"],
                    "split": table["split"],
                    "fold": fold,
                    "probs": list(result.probs),
                }
            )
            for name, result in scored.items()
        ]  # fmt: skip
        or [pd.DataFrame(columns=["model", "image_id", "split", "fold", "probs"])],
        ignore_index=True,
    )
    metrics = {"chosen": chosen, "validation_choice": selection["validation_choice"]} | {
        f"{name}_oof_mAP": round(entry["oof_mAP"], 6) for name, entry in models.items()
    }
    return scores, selection, metrics


def score_out_of_fold(
    heads: dict[str, dict[str, Any]],
    features: Path,
    table: pd.DataFrame,
    targets: np.ndarray,
    fold: np.ndarray,
    seed: int,
) -> dict[str, Scored]:
    """Every head scored out of fold, with its per-fold mAP and size, in `heads`' order. Heads that read the same
    array of the features file (pooled vectors, feature maps) are scored one after another, so each array is read
    once and only one is in memory."""
    arrays = {name: feature_array(ModelSpec(**checkpoint["meta"]["spec"])) for name, checkpoint in heads.items()}
    scored = {}
    for array, names in itertools.groupby(sorted(heads, key=lambda name: arrays[name]), key=arrays.__getitem__):
        cached = read_features(features, list(table["image_id"]), array, mirrored=True)
        for name in names:
            checkpoint = heads[name]
            probs = out_of_fold_probs(checkpoint, cached.x, cached.mirrored, targets, fold, seed, f"select: {name}")
            scored[name] = Scored(
                probs, fold_maps(probs, targets, fold), parameter_count(checkpoint), float(checkpoint["val"]["mAP"])
            )
    return {name: scored[name] for name in heads}


def render(selection: dict[str, Any]) -> str:
    """One line per model for the terminal: mean out-of-fold mAP with its spread, validation mAP, clicks."""
    lines = [f"select: {selection['images']} train and validation images, {selection['folds']} folds"]
    for name, entry in sorted(selection["models"].items(), key=lambda item: -item[1]["oof_mAP"]):
        lines.append(
            f"  {name}: out-of-fold mAP {100 * entry['oof_mAP']:.2f} ± {100 * entry['oof_mAP_sd']:.2f}, validation "
            f"{100 * entry['val_mAP']:.2f}; pre-annotation clicks {100 * entry['oof_clicks_ratio']:.0f} % of an "
            "empty form's"
        )
    lines.append(
        f"  chosen: {selection['chosen']}, {selection['why']} (validation alone would choose "
        f"{selection['validation_choice']})"
    )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    settings = load_section(SelectSettings, "select", args.params)
    scores, selection, metrics = select(args, settings)
    with outputs_together():
        write_parquet(scores, args.out_of_fold)
        write_json(selection, args.out)
        write_json(metrics, args.metrics)
    print(render(selection))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = StageParser(
        "select",
        prog="python -m training.select",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("--dataset", type=Path, help="curated dataset (data/dataset.parquet)")
    parser.add_argument("--label-subset", type=Path, help="class order (data/label_subset.json)")
    parser.add_argument("--features", type=Path, help="cached backbone features (data/features.npz)")
    parser.add_argument(
        "--near-duplicates",
        type=Path,
        help="near-duplicate pairs (data/ingest/near_duplicates.parquet): a group stays in one fold",
    )
    parser.add_argument("--models-dir", type=Path, help="folder with <model>/best.pt for every model")
    parser.add_argument("--out-of-fold", type=Path, help="out-of-fold scores to write (data/out_of_fold.parquet)")
    parser.add_argument("--out", type=Path, help="the choice and every model's thresholds (data/selection.json)")
    parser.add_argument("--metrics", type=Path, help="JSON metrics to write (metrics/selection.json)")
    parser.add_argument(
        "--params", type=Path, default=Path("params.yaml"), help="params file with 'select' and 'models' sections"
    )
    args = parser.parse_args(argv)
    return report_user_errors("select", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
