"""Which pre-annotation rule saves the expert most clicks: rules compared on the select stage's out-of-fold scores,
chosen without the test split, then confirmed on it.

Usage: python benchmarks/bench_click_rule.py [--work-dir /tmp/stylegraph-ccp] [--model csra]
       python benchmarks/bench_click_rule.py --project .     # the demo, after `make demo`

Reads a run of benchmarks/bench_ccp_models.py (each seed-*/ folder: models, selection.json,
out_of_fold.parquet) or a project after `dvc repro`. For every rule it counts the clicks to
correct the pre-annotations (training/clicks.py) in % of an empty form's:
- out of fold ("nested"): the rule is fitted on all folds but one of the out-of-fold scores
  and counted on the held-out fold, so a rule that fits its data too closely pays for it;
  this column chooses the shrinkage of the fewest-clicks cut (`training.clicks.SHRINK`);
- on the test split, with the rule fitted on all out-of-fold scores (as the select stage
  fits it).
Rules: tick nothing (the main style only), the most probable label only, one cut for all
labels (0.5), the best-F1 cuts of the validation split (the earlier rule), and the
fewest-clicks cuts shrunk by 0, 5, 20, 50 and 200 pseudo-positives towards the pooled cut.
Numbers are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from training.checkpoint import load_checkpoint
from training.clicks import NEVER, click_thresholds, correction_clicks, empty_form_clicks
from training.data import main_index, read_dataset, read_label_subset, target_matrix
from training.evaluate import TestSet, test_probs

Rule = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]  # (probs, targets, main) of the fit -> thresholds
SHRINKS = (0, 5, 20, 50, 200)


def rules(validation_f1: np.ndarray) -> dict[str, Rule]:
    def constant(value: float) -> Rule:
        return lambda p, t, m: np.full(p.shape[1], value)

    def shrunk(shrink: float) -> Rule:
        return lambda p, t, m: click_thresholds(p, t, m, shrink)

    return {
        "main style only (tick nothing)": constant(NEVER),
        "one cut for all labels: 0.5": constant(0.5),
        "best F1 per label (validation split; the earlier rule)": lambda p, t, m: validation_f1,
    } | {f"fewest clicks, shrink {s}": shrunk(s) for s in SHRINKS}


def top1_clicks(probs: np.ndarray, targets: np.ndarray, main: np.ndarray) -> int:
    """Ticking only the most probable label (tag sets: as a tag; with main styles it is the main style, no tick)."""
    if (main >= 0).any():
        return correction_clicks(probs, np.full(probs.shape[1], NEVER), targets, main).total
    top = (probs >= probs.max(axis=1, keepdims=True)).astype(np.float64)
    return correction_clicks(top, np.full(probs.shape[1], 0.5), targets, main).total


def nested_ratio(rule: Rule, probs: np.ndarray, targets: np.ndarray, main: np.ndarray, fold: np.ndarray) -> float:
    clicks = 0
    for k in np.unique(fold):
        fit, held = fold != k, fold == k
        cuts = rule(probs[fit], targets[fit], main[fit])
        clicks += correction_clicks(probs[held], cuts, targets[held], main[held]).total
    return clicks / empty_form_clicks(targets, main).total


def one_run(models: Path, selection_path: Path, scores_path: Path, dataset: Path, subset: Path, features: Path,
            crawl: Path, model: str | None) -> pd.DataFrame:  # fmt: skip
    selection = json.loads(selection_path.read_text(encoding="utf-8"))
    name = model or selection["chosen"]
    labels = read_label_subset(subset)
    table = read_dataset(dataset, labels)
    scores = pd.read_parquet(scores_path).query("model == @name").set_index("image_id")
    fitted = table[table["image_id"].isin(scores.index)].reset_index(drop=True)
    probs = np.stack(scores.loc[fitted["image_id"], "probs"].to_numpy())
    fold = scores.loc[fitted["image_id"], "fold"].to_numpy()
    targets, main = target_matrix(fitted["labels"], labels), main_index(fitted["main_style"], labels)
    test_rows = table[table["split"] == "test"].reset_index(drop=True)
    test = TestSet(test_rows, target_matrix(test_rows["labels"], labels), main_index(test_rows["main_style"], labels),
                   labels)  # fmt: skip
    checkpoint = load_checkpoint(models / name / "best.pt")
    p_test = test_probs(checkpoint, test, features, crawl)
    empty_test = empty_form_clicks(test.targets, test.main).total
    rows = []
    for rule_name, rule in rules(np.asarray(checkpoint["thresholds"])).items():
        cuts = rule(probs, targets, main)
        rows.append({"model": name, "rule": rule_name, "nested": nested_ratio(rule, probs, targets, main, fold),
                     "test": correction_clicks(p_test, cuts, test.targets, test.main).total / empty_test})  # fmt: skip
    rows.append({"model": name, "rule": "most probable label only",
                 "nested": top1_clicks(probs, targets, main) / empty_form_clicks(targets, main).total,
                 "test": top1_clicks(p_test, test.targets, test.main) / empty_test})  # fmt: skip
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/stylegraph-ccp"), help="bench_ccp_models.py's")
    parser.add_argument("--ccp", type=Path, default=Path(__file__).resolve().parents[2] / "shared/datasets/ccp")
    parser.add_argument("--project", type=Path, default=None, help="a project after dvc repro (the demo) instead")
    parser.add_argument("--model", default=None, help="the model whose scores the rules cut (default: the chosen one)")
    args = parser.parse_args()
    if args.project is not None:
        root = args.project
        runs = [one_run(root / "models", root / "data/selection.json", root / "data/out_of_fold.parquet",
                        root / "data/dataset.parquet", root / "data/label_subset.json", root / "data/features.npz",
                        root / "data/crawl", args.model)]  # fmt: skip
    else:
        work = args.work_dir
        runs = [one_run(seed / "models", seed / "selection.json", seed / "out_of_fold.parquet",
                        work / "dataset.parquet", work / "label_subset.json", work / "features.npz",
                        args.ccp / "photos", args.model) for seed in sorted(work.glob("seed-*"))]  # fmt: skip
    table = pd.concat(runs, ignore_index=True)
    summary = table.groupby("rule", sort=False).agg(
        models=("model", lambda m: ", ".join(sorted(set(m)))),
        nested=("nested", lambda v: f"{100 * v.mean():.1f} ± {100 * v.std(ddof=1) if len(v) > 1 else 0:.1f}"),
        test=("test", lambda v: f"{100 * v.mean():.1f} ± {100 * v.std(ddof=1) if len(v) > 1 else 0:.1f}"),
    )
    print(f"clicks to correct the pre-annotations, % of an empty form's; {len(runs)} run(s), mean ± sd\n")
    print("| rule | model | out of fold (nested) | test split |\n|---|---|---|---|")
    for rule, row in summary.iterrows():
        print(f"| {rule} | {row['models']} | {row['nested']} | {row['test']} |")
    shrinks = table[table["rule"].str.startswith("fewest clicks")].groupby("rule", sort=False)["nested"].mean()
    print(f"\nchosen out of fold: {shrinks.idxmin()}")


if __name__ == "__main__":
    main()
