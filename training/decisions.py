"""Which model serves, and how its probabilities become decisions: read from the select stage's `data/selection.json`.

Two rules per model, each a per-label probability threshold:
- `present`: the labels `predict` calls present (best F1);
- `pre_tick`: the sub-styles a pre-annotation ticks (fewest expert clicks, training/clicks.py;
  +inf: never pre-ticked).
Heads on cached features get both fitted out of fold by the select stage; a model the
selection did not score (trained from pixels), or any model before the select stage has
run, falls back to the rules its checkpoint fitted on the validation split.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.cli import InputError
from training.checkpoint import CHECKPOINT_REMEDY, best_model, decision_thresholds
from training.clicks import thresholds_from_json

DEFAULT_SELECTION = Path("data/selection.json")


@dataclass(frozen=True)
class DecisionRules:
    present: np.ndarray  # (C,) predict's "present" cut per label
    pre_tick: np.ndarray  # (C,) pre-annotation cut per label (inf: never)
    source: str  # where they were fitted, for reports


def read_selection(path: Path) -> dict[str, Any] | None:
    """The select stage's output, or None when it has not run; InputError naming the file when it is damaged."""
    try:
        selection = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: cannot read the model selection ({error}); re-run it: dvc repro select") from None
    if not isinstance(selection, dict) or not {"chosen", "models"} <= selection.keys():
        raise InputError(f"{path}: not a model selection (no 'chosen' and 'models'); re-run it: dvc repro select")
    return selection


def decision_rules(name: str, checkpoint: dict[str, Any], selection: dict[str, Any] | None) -> DecisionRules:
    """The model's rules: out of fold where the selection scored it on the same labels, else the checkpoint's."""
    entry = (selection or {}).get("models", {}).get(name)
    if entry is not None and selection is not None and selection.get("labels") == checkpoint["meta"]["labels"]:
        return DecisionRules(
            np.asarray(entry["f1_thresholds"], dtype=np.float64),
            thresholds_from_json(entry["click_thresholds"]),
            f"out of fold over {selection['images']} train and validation images",
        )
    saved = checkpoint.get("click_thresholds")
    pre_tick = thresholds_from_json(saved) if saved is not None else decision_thresholds(checkpoint)
    return DecisionRules(decision_thresholds(checkpoint), pre_tick, "validation split")


def chosen_model(models_dir: Path, selection_path: Path = DEFAULT_SELECTION) -> tuple[str, Path, str]:
    """(name, best.pt, why) of the model `--model best` means: the select stage's choice, or before it has run, the
    highest validation mAP."""
    selection = read_selection(selection_path)
    if selection is None:
        name, path = best_model(models_dir)
        return (
            name,
            path,
            f"highest validation mAP in {models_dir}; {selection_path} not found: the select stage has not run",
        )
    path = Path(models_dir) / selection["chosen"] / "best.pt"
    if not path.is_file():
        raise InputError(f"{path}: the model {selection_path} chose is not there; {CHECKPOINT_REMEDY}")
    return selection["chosen"], path, f"chosen out of fold, {selection_path}"
