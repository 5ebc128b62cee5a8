"""Evaluate stage: every trained model on the test split, side by side, shaped like the paper's Tables 3-5.

Each model's `best.pt` (its epoch chosen on the validation split) is scored once on the
test split, the way it was selected (with the test-time flip where train.tta_flip).
Reported: Top-k any/all-recall (k = 1, 2, 3), Top-n all-recall (n = the image's own
label count) and mAP with bootstrap 95% intervals; the ceiling of Top-k all-recall
where images carry more than k labels; CF1/OF1 at probability 0.5 and at the per-label
thresholds chosen on the validation split; the per-label Top-2 all-recall table,
per-class AP; expert clicks: what correcting each model's pre-annotations costs against
an empty form, overall and per label (training/clicks.py), by the rule `push` uses; the
model the select stage chose out of fold, with its scores; and paired bootstrap
intervals of every model minus the baseline (`evaluate.baseline`), so a gap inside the
noise reads as such.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from common.atomic import atomic_path, outputs_together, write_json
from common.cli import InputError, StageParser, report_user_errors
from common.feature_shards import extracted_precision, read_features
from common.settings import ParamsError, Settings, crawl_folder, load_section, setting
from training.checkpoint import build_trained_module, load_checkpoint, pixel_model, scores_mirrored, trained_precision
from training.clicks import correction_clicks, empty_form_clicks
from training.clicks import summary as click_summary
from training.data import ImageDataset, main_index, read_dataset, read_label_subset, target_matrix
from training.decisions import DecisionRules, decision_rules, read_selection
from training.device import pick_device, prepare
from training.engine import feature_batches, mirrored_mean, predict_probs
from training.metrics import (
    OWN_COUNT_COLUMN,
    PAPER_COLUMNS,
    TOP_K,
    all_recall_ceiling,
    bootstrap_interval,
    evaluate_scores,
    mean_average_precision,
    topk_hits,
)
from training.models import ModelSpec, feature_array
from training.settings import load_model_specs

FEATURE_SETTINGS = (
    "backbone",
    "weights",
    "image_size",
)  # features-file meta a head's checkpoint copies; precision is compared too
COLUMN_TITLES = {
    "top1_any": "T1 any",
    "top2_all": "T2 all",
    "top2_any": "T2 any",
    "top3_all": "T3 all",
    "top3_any": "T3 any",
    OWN_COUNT_COLUMN: "Tn all",
    "mAP": "mAP",
}
DIFFERENCE_COLUMNS = ("top1_any", "top2_all", OWN_COUNT_COLUMN)  # paired differences against the baseline, besides mAP
UNINFORMATIVE_CEILING = 0.5  # a Top-k all-recall whose ceiling is below this is flagged as saying little


# pipeline.split.SPLITS, spelled out: importing the split stage would make evaluate re-run when its code changes.
EVALUATED_SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class EvaluateSettings(Settings):
    section = "evaluate"
    split: str = setting("the split the report is computed on (read once, here)", choices=EVALUATED_SPLITS)
    bootstrap: int = setting("resamples for the 95% bootstrap intervals", interval="[1, inf)")
    seed: int = setting("seed of the bootstrap resampling")
    baseline: str = setting("the `models` entry every other model is compared with (paired differences and intervals)")


@dataclass
class TestSet:
    table: Any  # pandas rows of the evaluated split, dataset order
    targets: np.ndarray
    main: np.ndarray
    labels: list[str]


HEAD_KINDS = {
    "linear": "linear head",
    "gcn": "ML-GCN classifiers",
    "gcn_residual": "linear head + ML-GCN classifiers (graph residual)",
}


def describe(checkpoint: dict[str, Any]) -> str:
    """One line saying what a model is, for the report."""
    meta = checkpoint["meta"]
    spec = ModelSpec(**meta["spec"])
    if spec.kind == "cnn":
        return f"basic CNN from scratch, {meta['image_size']} px"
    head = HEAD_KINDS[spec.kind] + (
        " (identity adjacency: no graph)" if spec.kind != "linear" and spec.adjacency == "identity" else ""
    )
    pooling = (
        f"CSRA attention ({spec.heads} head{'s' * (spec.heads > 1)}, lambda {spec.lam:g})"
        if spec.spatial
        else f"global {spec.pooling} pool"
    )
    how = "fine-tuned" if meta["finetuned"] else "frozen, cached features"
    loss = spec.loss or meta.get("train", {}).get("loss", "bce")
    flip = ", test-time flip" if scores_mirrored(meta) else ""
    return f"{meta['backbone']} @ {meta['image_size']} px ({how}), {pooling}, {head}, {loss.upper()} loss{flip}"


def test_probs(
    checkpoint: dict[str, Any], test: TestSet, features: Path, crawl_dir: Path, batch_size: int = 64
) -> np.ndarray:
    """(N, C) test probabilities, scored as the model was selected: heads read the cached features, pixel models read
    the images."""
    meta = checkpoint["meta"]
    if meta["labels"] != test.labels:
        raise InputError(
            f"model {meta['name']}: trained on labels {meta['labels']}, the label subset is now {test.labels}; retrain "
            "it"
        )
    device, precision, mirror = pick_device(), trained_precision(meta), scores_mirrored(meta)
    targets = torch.from_numpy(test.targets)
    if meta["spec"]["kind"] == "cnn" or meta["finetuned"]:
        model, transform = pixel_model(checkpoint)
        dataset = ImageDataset([crawl_dir / p for p in test.table["path"]], test.targets, transform, vetted=True)
        return predict_probs(
            prepare(model, device), DataLoader(dataset, batch_size=batch_size), device, precision, mirror=mirror
        )[0]
    cached = read_features(
        features, list(test.table["image_id"]), feature_array(ModelSpec(**meta["spec"])), mirrored=mirror
    )
    check_features_fit(meta, cached.meta, features)
    if mirror and cached.mirrored is None:
        raise InputError(
            f"{features}: holds no mirrored features, but model {meta['name']} was selected with the test-time flip "
            "(train.tta_flip); re-run the features stage with features.flip: true (dvc repro)"
        )
    head = prepare(build_trained_module(meta), device)
    head.load_state_dict(checkpoint["model"])

    def score(x: torch.Tensor) -> np.ndarray:
        return predict_probs(head, feature_batches(x, targets, batch_size, None), device, precision)[0]

    return mirrored_mean(score, cached.x, cached.mirrored)


def check_features_fit(meta: dict[str, Any], features_meta: dict[str, Any], features: Path) -> None:
    """Refuse cached features extracted otherwise than those a head was trained on (another backbone, weights, size or
    precision)."""
    trained = {key: meta[key] for key in FEATURE_SETTINGS} | {
        "precision": meta.get("features_precision", trained_precision(meta))
    }
    cached = {key: features_meta.get(key) for key in FEATURE_SETTINGS} | {
        "precision": extracted_precision(features_meta)
    }
    differences = [f"{key} {cached[key]!r} (model: {trained[key]!r})" for key in trained if cached[key] != trained[key]]
    if differences:
        raise InputError(
            f"{features}: features of {', '.join(differences)}, not those model {meta['name']} was trained on; re-run "
            "the features stage and the training (dvc repro)"
        )


def paired_differences(
    probs: dict[str, np.ndarray], baseline: str, test: TestSet, settings: EvaluateSettings
) -> list[dict]:
    """Each other model minus `baseline`: DIFFERENCE_COLUMNS and mAP, with paired bootstrap 95% intervals (same
    resampled images)."""
    rows = []
    base_hits = topk_hits(probs[baseline], test.targets)
    for name, p in probs.items():
        if name == baseline:
            continue
        hits = topk_hits(p, test.targets)
        row: dict[str, Any] = {"other": name}  # and (difference, interval low, interval high) per column
        for column in DIFFERENCE_COLUMNS:
            diff = hits[column].astype(float) - base_hits[column]

            def mean_gain(idx: np.ndarray, d: np.ndarray = diff) -> float:
                return float(d[idx].mean())

            interval = bootstrap_interval(mean_gain, len(diff), settings.bootstrap, settings.seed)
            row[column] = (float(diff.mean()), *interval)

        def map_gap(idx: np.ndarray, other: np.ndarray = p) -> float:
            return mean_average_precision(other[idx], test.targets[idx]) - mean_average_precision(
                probs[baseline][idx], test.targets[idx]
            )

        gap = mean_average_precision(p, test.targets) - mean_average_precision(probs[baseline], test.targets)
        row["mAP"] = (gap, *bootstrap_interval(map_gap, len(p), settings.bootstrap, settings.seed, around=gap))
        rows.append(row)
    return rows


def _pct(value: float | None) -> str:
    return "—" if value is None or not np.isfinite(value) else f"{100 * value:.2f}"


def _ci(entry: dict[str, float]) -> str:
    return f"{_pct(entry['value'])} [{_pct(entry['ci_low'])}, {_pct(entry['ci_high'])}]"


def _signed(triple: tuple[float, float, float]) -> str:
    value, low, high = (100 * v for v in triple)
    verdict = "" if low > 0 or high < 0 else " (interval contains 0)"
    return f"{value:+.2f} [{low:+.2f}, {high:+.2f}]{verdict}"


def ceiling_lines(targets: np.ndarray) -> list[str]:
    """What Top-k all-recall can reach on these images, and a warning where it says little (most images carry more than
    k labels)."""
    ceilings = {k: all_recall_ceiling(targets, k) for k in TOP_K[1:]}
    lines = [
        f"Images carry {targets.sum(axis=1).mean():.1f} labels on average, so Top-k all-recall cannot exceed the share "
        "with at most k: "
        + ", ".join(f"k = {k}: {_pct(c)}" for k, c in ceilings.items())
        + ". Tn all is all-recall at k = each image's own number of labels (its labels are exactly its n highest "
        "scores)."
    ]
    n_true = targets.sum(axis=1)
    for k, ceiling in ceilings.items():
        if ceiling < UNINFORMATIVE_CEILING:
            lines.append(
                f"**T{k} all says little here**: {_pct(float((n_true > k).mean()))} % of the images carry more than "
                f"{k} labels; compare models on Tn all and mAP."
            )
    return lines


def _selection_scores(name: str, results: dict[str, dict], choice: Choice) -> str:
    scores = f"validation mAP {_pct(results[name]['val_mAP'])}"
    if name in choice.out_of_fold:
        mean, sd = choice.out_of_fold[name]
        scores = f"out-of-fold mAP {_pct(mean)} ± {_pct(sd)}, " + scores
    return scores


def click_lines(results: dict[str, dict], test: TestSet) -> list[str]:
    """The expert-clicks section: per model against the empty form, then per label."""
    names = list(results)
    first = results[names[0]]["clicks"]
    lines = [
        "## Expert clicks",
        "",
        f"An empty form costs {first['empty_form_per_image']:.2f} clicks per image here (the main style, where the "
        "taxonomy has one, and each sub-style). Correcting a pre-annotation costs one click for a wrong main style "
        "and one per wrongly ticked or missing sub-style. `push` pre-selects the most probable label as main style "
        "and ticks each sub-style at its fewest-clicks threshold (docs/expert-time.md); the F1 rule (ticking at the "
        "best-F1 thresholds) is shown for comparison. Below 100 % the pre-annotation saves the expert clicks.",
        "",
        "| model | clicks, % of empty form | clicks per image | pre-annotation exactly right | F1 rule: clicks, % "
        "| rule fitted on |",
        "|---|---|---|---|---|---|",
    ]
    for name in names:
        clicks, f1_rule = results[name]["clicks"], results[name]["clicks_f1_rule"]
        lines.append(
            f"| {name} | {_pct(clicks['ratio'])} | {clicks['clicks_per_image']:.2f} | {_pct(clicks['exactly_right'])} "
            f"| {_pct(f1_rule['ratio'])} | {results[name]['rules_source']} |"
        )
    lines += ["", "Clicks per label (the empty form's in the second column):", ""]
    lines += ["| label | empty form | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for label, row in first["per_label"].items():
        cells = [str(results[n]["clicks"]["per_label"][label]["clicks"]) for n in names]
        lines.append(f"| {label} | {row['empty_form']} | " + " | ".join(cells) + " |")
    return lines


def render_report(
    results: dict[str, dict],
    descriptions: dict[str, str],
    differences: list[dict],
    choice: Choice,
    test: TestSet,
    settings: EvaluateSettings,
) -> str:
    """The Markdown comparison report."""
    names = list(results)
    n_pos = test.targets.sum(axis=0).astype(int)
    lines = [
        f"# Evaluation: {settings.split} split, {len(test.targets)} images, {len(test.labels)} labels",
        "",
        "Each model's epoch was chosen on the validation split (best validation mAP); each is scored once here. "
        f"Percent; brackets: bootstrap 95% intervals ({settings.bootstrap} resamples of the images). "
        "Top-k any-recall: at least one true label among the k highest scores; Top-k all-recall: the main label and "
        "every sub label among them (an image with more than k labels is a miss; tied scores count against the model). "
        "A resample that repeats images lifts AP (a repeated positive raises the precision at its rank), so mAP "
        "intervals, and those of mAP differences, are shifted by the resamples' mean bias to centre on the estimate.",
        "",
        "## Models",
        "",
        *[f"- **{name}**: {descriptions[name]}; {_selection_scores(name, results, choice)}" for name in names],
        "",
        f"**Chosen: {choice.chosen}** ({choice.why}). The validation split alone would choose "
        f"{choice.validation_choice}. `python -m training.predict --model best` and "
        "`python -m annotation push --model best` use the chosen model.",
        "",
        *click_lines(results, test),
        "",
        "## Top-k recall and mAP (paper Tables 3-4)",
        "",
        *ceiling_lines(test.targets),
        "",
        "CF1/OF1: labels called present at probability 0.5; (thr): at each label's best-F1 threshold (out of fold "
        "for heads, on the validation split for pixel models), as `predict` calls them present. Clicks: what "
        "correcting the model's pre-annotations costs, in % of an empty form's clicks (section below).",
        "",
        "| model | " + " | ".join(COLUMN_TITLES.values()) + " | clicks | CF1 | OF1 | CF1 (thr) | OF1 (thr) |",
        "|---|" + "---|" * (len(COLUMN_TITLES) + 5),
    ]
    for name in names:
        summary, f1, tuned = results[name]["summary"], results[name]["f1"], results[name]["f1_val_thresholds"]
        lines.append(
            f"| {name} | "
            + " | ".join(_ci(summary[c]) for c in COLUMN_TITLES)
            + f" | {_pct(results[name]['clicks']['ratio'])}"
            + f" | {_pct(f1['CF1'])} | {_pct(f1['OF1'])} | {_pct(tuned['CF1'])} | {_pct(tuned['OF1'])} |"
        )
    if differences:
        titles = [COLUMN_TITLES[c] for c in (*DIFFERENCE_COLUMNS, "mAP")]
        lines += ["", f"## Each model minus {settings.baseline} (paired bootstrap 95% intervals, points)", ""]
        lines += ["| model | " + " | ".join(f"Δ {t}" for t in titles) + " |", "|---|" + "---|" * len(titles)]
        lines += [
            f"| {d['other']} | " + " | ".join(_signed(d[c]) for c in (*DIFFERENCE_COLUMNS, "mAP")) + " |"
            for d in differences
        ]
    lines += [
        "",
        "## Top-2 all-recall per label (paper Table 5)",
        "",
        "Images grouped by main label (by carried label for tag sets without one).",
        "",
    ]
    lines += ["| label | support | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    per_label = {name: {row["label"]: row for row in results[name]["per_label_top2_all"]} for name in names}
    for label in test.labels:
        support = per_label[names[0]][label]["support"]
        lines.append(
            f"| {label} | {support} | " + " | ".join(_pct(per_label[n][label]["top2_all"]) for n in names) + " |"
        )
    lines += [
        "",
        "## Average precision per label",
        "",
        "A label with no positive test image has no AP (—) and is left out of mAP.",
        "",
    ]
    lines += ["| label | positives | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for c, label in enumerate(test.labels):
        lines.append(
            f"| {label} | {n_pos[c]} | " + " | ".join(_pct(results[n]["per_class_ap"][label]) for n in names) + " |"
        )
    return "\n".join(lines) + "\n"


def metrics_json(
    results: dict[str, dict], differences: list[dict], choice: Choice, test: TestSet, settings: EvaluateSettings
) -> dict:
    """The numbers `dvc metrics diff` compares: headline metrics per model with interval bounds, the chosen model,
    differences from the baseline."""
    ceilings = {f"top{k}_all": round(all_recall_ceiling(test.targets, k), 6) for k in TOP_K}
    out: dict[str, Any] = {"split": settings.split, "n_images": len(test.targets), "chosen_model": choice.chosen,
                           "validation_choice": choice.validation_choice,
                           "baseline": settings.baseline, "all_recall_ceiling": ceilings, "models": {}}  # fmt: skip
    for name, result in results.items():
        entry = {key: round(value["value"], 6) for key, value in result["summary"].items()}
        entry |= {
            f"{key}_ci_{end}": round(value[f"ci_{end}"], 6)
            for key, value in result["summary"].items()
            for end in ("low", "high")
        }
        entry |= {key: round(result["f1"][key], 6) for key in ("CF1", "OF1")} | {
            f"{key}_val_thr": round(result["f1_val_thresholds"][key], 6) for key in ("CF1", "OF1")
        }
        entry["val_mAP"] = round(result["val_mAP"], 6)
        entry |= {
            "clicks_ratio": round(result["clicks"]["ratio"], 6),
            "clicks_per_image": round(result["clicks"]["clicks_per_image"], 6),
            "preannotation_exactly_right": round(result["clicks"]["exactly_right"], 6),
            "clicks_ratio_f1_rule": round(result["clicks_f1_rule"]["ratio"], 6),
        }
        out["models"][name] = entry
    for d in differences:
        out["models"][d["other"]] |= {
            f"{key}_minus_baseline{suffix}": round(value, 6)
            for key in (*DIFFERENCE_COLUMNS, "mAP")
            for suffix, value in zip(("", "_ci_low", "_ci_high"), d[key], strict=True)
        }
    return out


def evaluate(specs: dict[str, ModelSpec], args: argparse.Namespace, settings: EvaluateSettings) -> tuple[str, dict]:
    """Score every model; returns the Markdown report and the metrics JSON."""
    if settings.baseline not in specs:
        raise ParamsError(
            f"evaluate.baseline {settings.baseline!r} is not a model of params.yaml (models: {sorted(specs)})"
        )
    labels = read_label_subset(args.label_subset)
    table = read_dataset(args.dataset, labels)
    table = table[table["split"] == settings.split].reset_index(drop=True)
    if table.empty:
        raise InputError(f"{args.dataset}: the {settings.split} split is empty")
    test = TestSet(table, target_matrix(table["labels"], labels), main_index(table["main_style"], labels), labels)
    selection = read_selection(args.selection)
    empty = empty_form_clicks(test.targets, test.main)
    probs, results, descriptions = {}, {}, {}
    for name in specs:
        checkpoint = load_checkpoint(args.models_dir / name / "best.pt")
        probs[name] = test_probs(checkpoint, test, args.features, crawl_folder(args.crawl_dir, args.params))
        rules = decision_rules(name, checkpoint, selection)
        results[name] = evaluate_scores(
            probs[name], test.targets, test.main, labels, settings.bootstrap, settings.seed, rules.present
        )
        results[name] |= expert_clicks(probs[name], rules, test, empty) | {"val_mAP": float(checkpoint["val"]["mAP"])}
        descriptions[name] = describe(checkpoint)
        print(
            f"{name}: "
            + ", ".join(
                f"{c} {100 * results[name]['summary'][c]['value']:.2f}"
                for c in (*PAPER_COLUMNS, OWN_COUNT_COLUMN, "mAP")
            )
            + f", clicks {100 * results[name]['clicks']['ratio']:.0f} % of an empty form's"
        )
    choice = model_choice(selection, results)
    differences = paired_differences(probs, settings.baseline, test, settings)
    return render_report(results, descriptions, differences, choice, test, settings), metrics_json(
        results, differences, choice, test, settings
    )


def expert_clicks(probs: np.ndarray, rules: DecisionRules, test: TestSet, empty: Any) -> dict[str, Any]:
    """Clicks to correct the pre-annotations `push` makes (fewest-clicks rule), and those the F1 rule would make."""
    return {
        "clicks": click_summary(correction_clicks(probs, rules.pre_tick, test.targets, test.main), empty, test.labels),
        "clicks_f1_rule": click_summary(
            correction_clicks(probs, rules.present, test.targets, test.main), empty, test.labels
        ),
        "rules_source": rules.source,
    }


@dataclass(frozen=True)
class Choice:
    """The model `--model best` serves and why, with the out-of-fold scores it was chosen on."""

    chosen: str
    why: str
    validation_choice: str
    out_of_fold: dict[str, tuple[float, float]]  # model -> (mean out-of-fold mAP, its sd across folds)


def model_choice(selection: dict[str, Any] | None, results: dict[str, dict]) -> Choice:
    """The select stage's choice; before it has run (or if it chose a model not evaluated here) the highest validation
    mAP."""
    validation = max(results, key=lambda n: results[n]["val_mAP"])
    if selection is None or selection["chosen"] not in results:
        return Choice(validation, "highest validation mAP; no out-of-fold selection", validation, {})
    scores = {name: (entry["oof_mAP"], entry["oof_mAP_sd"]) for name, entry in selection["models"].items()}
    return Choice(selection["chosen"], selection["why"], validation, scores)


def run(args: argparse.Namespace) -> int:
    """Score every model and write the report and metrics; returns the exit status."""
    settings = load_section(EvaluateSettings, "evaluate", args.params)
    report, metrics = evaluate(load_model_specs(args.params), args, settings)
    with outputs_together():
        with atomic_path(args.report) as tmp:
            tmp.write_text(report, encoding="utf-8")
        write_json(metrics, args.metrics)
    print(
        f"evaluate: {len(metrics['models'])} models on {metrics['n_images']} {settings.split} images -> {args.report}, "
        f"{args.metrics}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = StageParser(
        "evaluate",
        prog="python -m training.evaluate",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("--dataset", type=Path, help="curated dataset (data/dataset.parquet)")
    parser.add_argument("--label-subset", type=Path, help="class order (data/label_subset.json)")
    parser.add_argument(
        "--features",
        type=Path,
        help="cached backbone features (data/features.npz), for models trained on them",
    )
    parser.add_argument(
        "--crawl-dir",
        type=Path,
        help="folder the dataset's image paths are relative to, for pixel models",
    )
    parser.add_argument(
        "--models-dir",
        type=Path,
        help="folder with <model>/best.pt for every entry of the 'models' section",
    )
    parser.add_argument(
        "--selection",
        type=Path,
        help="the select stage's choice and out-of-fold thresholds (data/selection.json)",
    )
    parser.add_argument("--report", type=Path, help="Markdown comparison report to write")
    parser.add_argument("--metrics", type=Path, help="JSON metrics to write (dvc metrics diff)")
    parser.add_argument(
        "--params", type=Path, default=Path("params.yaml"), help="params file with 'models' and 'evaluate' sections"
    )
    args = parser.parse_args(argv)
    return report_user_errors("evaluate", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
