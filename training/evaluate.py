"""Evaluate stage: every trained model on the test split, side by side, shaped like the paper's Tables 3-5.

Each model's `best.pt` (chosen on the validation split) is scored once on the test
split. Reported: Top-k any/all-recall (k = 1, 2, 3) and mAP with bootstrap 95%
intervals, CF1/OF1 at probability 0.5, the per-label Top-2 all-recall table, per-class
AP, and paired bootstrap intervals of the difference between ML-GCN and every other
model (the ablations included), so a gap inside the noise reads as such.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from pipeline.atomic import atomic_path, write_json
from pipeline.cli import InputError, report_user_errors
from pipeline.settings import load_section
from training.checkpoint import build_trained_module, load_checkpoint, pixel_model, trained_precision
from training.data import ImageDataset, main_index, read_dataset, read_label_subset, target_matrix
from training.device import pick_device, prepare
from training.features import extracted_precision
from training.metrics import PAPER_COLUMNS, bootstrap_interval, evaluate_scores, mean_average_precision, topk_hits
from training.models import ModelSpec
from training.train import feature_batches, load_model_specs, predict_probs

FEATURE_SETTINGS = ("backbone", "weights", "image_size")  # features-file meta a head's checkpoint copies; precision is compared too
COLUMN_TITLES = {"top1_any": "T1 any", "top2_all": "T2 all", "top2_any": "T2 any", "top3_all": "T3 all", "top3_any": "T3 any", "mAP": "mAP"}


@dataclass(frozen=True)
class EvaluateSettings:
    split: str  # the split the report is computed on
    bootstrap: int  # resamples for the 95% intervals
    seed: int


@dataclass
class TestSet:
    table: Any  # pandas rows of the evaluated split, dataset order
    targets: np.ndarray
    main: np.ndarray
    labels: list[str]


def describe(checkpoint: dict[str, Any]) -> str:
    """One line saying what a model is, for the report."""
    meta = checkpoint["meta"]
    spec = ModelSpec(**meta["spec"])
    if spec.kind == "cnn":
        return f"basic CNN from scratch, {meta['image_size']} px"
    head = "linear head" if spec.kind == "linear" else f"ML-GCN ({'label graph' if spec.adjacency == 'graph' else 'identity adjacency: no graph'})"
    how = "fine-tuned" if meta["finetuned"] else "frozen, cached features"
    return f"{meta['backbone']} @ {meta['image_size']} px ({how}), global {spec.pooling} pool, {head}"


def test_probs(checkpoint: dict[str, Any], test: TestSet, features: Path, crawl_dir: Path, batch_size: int = 64) -> np.ndarray:
    """(N, C) test probabilities: heads read the cached features, pixel models read the images."""
    meta = checkpoint["meta"]
    if meta["labels"] != test.labels:
        raise InputError(f"model {meta['name']}: trained on labels {meta['labels']}, the label subset is now {test.labels}; retrain it")
    device, precision = pick_device(), trained_precision(meta)
    targets = torch.from_numpy(test.targets)
    if meta["spec"]["kind"] == "cnn" or meta["finetuned"]:
        model, transform = pixel_model(checkpoint)
        dataset = ImageDataset([crawl_dir / p for p in test.table["path"]], test.targets, transform, vetted=True)
        return predict_probs(prepare(model, device), DataLoader(dataset, batch_size=batch_size), device, precision)[0]
    npz = np.load(features, allow_pickle=False)
    check_features_fit(meta, json.loads(str(npz["meta"])), features)
    row = {image_id: i for i, image_id in enumerate(npz["image_id"])}
    missing = [i for i in test.table["image_id"] if i not in row]
    if missing:
        raise InputError(f"{features}: no features for {len(missing)} test images (e.g. {missing[0]}); re-run the features stage")
    x = torch.from_numpy(npz[meta["spec"]["pooling"]][[row[i] for i in test.table["image_id"]]])
    head = build_trained_module(meta)
    head.load_state_dict(checkpoint["model"])
    return predict_probs(prepare(head, device), feature_batches(x, targets, batch_size, None), device, precision)[0]


def check_features_fit(meta: dict[str, Any], features_meta: dict[str, Any], features: Path) -> None:
    """Refuse cached features extracted otherwise than those a head was trained on (another backbone, weights, size or precision)."""
    trained = {key: meta[key] for key in FEATURE_SETTINGS} | {"precision": meta.get("features_precision", trained_precision(meta))}
    cached = {key: features_meta.get(key) for key in FEATURE_SETTINGS} | {"precision": extracted_precision(features_meta)}
    differences = [f"{key} {cached[key]!r} (model: {trained[key]!r})" for key in trained if cached[key] != trained[key]]
    if differences:
        raise InputError(f"{features}: features of {', '.join(differences)}, not those model {meta['name']} was trained on; re-run the features stage and the training (dvc repro)")


def paired_differences(probs: dict[str, np.ndarray], reference: str, test: TestSet, settings: EvaluateSettings) -> list[dict]:
    """reference minus each other model: T2 all-recall and mAP, with paired bootstrap 95% intervals (same resampled images)."""
    rows = []
    ref_hits = topk_hits(probs[reference], test.targets)["top2_all"]
    for name, p in probs.items():
        if name == reference:
            continue
        hits = topk_hits(p, test.targets)["top2_all"]
        diff_hits = ref_hits.astype(float) - hits
        t2 = bootstrap_interval(lambda idx: diff_hits[idx].mean(), len(hits), settings.bootstrap, settings.seed)

        def map_gap(idx: np.ndarray, other: np.ndarray = p) -> float:
            return mean_average_precision(probs[reference][idx], test.targets[idx]) - mean_average_precision(other[idx], test.targets[idx])

        gap = mean_average_precision(probs[reference], test.targets) - mean_average_precision(p, test.targets)
        map_interval = bootstrap_interval(map_gap, len(hits), settings.bootstrap, settings.seed, around=gap)
        rows.append({"other": name, "top2_all": (float(diff_hits.mean()), *t2), "mAP": (gap, *map_interval)})
    return rows


def _pct(value: float | None) -> str:
    return "—" if value is None or not np.isfinite(value) else f"{100 * value:.2f}"


def _ci(entry: dict[str, float]) -> str:
    return f"{_pct(entry['value'])} [{_pct(entry['ci_low'])}, {_pct(entry['ci_high'])}]"


def _signed(triple: tuple[float, float, float]) -> str:
    value, low, high = (100 * v for v in triple)
    verdict = "" if low > 0 or high < 0 else " (interval contains 0)"
    return f"{value:+.2f} [{low:+.2f}, {high:+.2f}]{verdict}"


def render_report(results: dict[str, dict], descriptions: dict[str, str], differences: list[dict], reference: str | None, test: TestSet, settings: EvaluateSettings) -> str:
    """The Markdown comparison report."""
    names = list(results)
    n_pos = test.targets.sum(axis=0).astype(int)
    lines = [
        f"# Evaluation: {settings.split} split, {len(test.targets)} images, {len(test.labels)} labels",
        "",
        "Every model was selected on the validation split (best validation mAP) and scored once here. "
        f"Percent; brackets: bootstrap 95% intervals ({settings.bootstrap} resamples of the images). "
        "Top-k any-recall: at least one true label among the k highest scores; Top-k all-recall: the main label and every sub label among them "
        "(an image with more than k labels is a miss; tied scores count against the model). "
        "A resample that repeats images lifts AP (a repeated positive raises the precision at its rank), so mAP intervals, "
        "and those of mAP differences, are shifted by the resamples' mean bias to centre on the estimate.",
        "",
        "## Models",
        "",
        *[f"- **{name}**: {descriptions[name]}" for name in names],
        "",
        "## Top-k recall and mAP (paper Tables 3-4)",
        "",
        "| model | " + " | ".join(COLUMN_TITLES.values()) + " | CF1 | OF1 |",
        "|---|" + "---|" * (len(COLUMN_TITLES) + 2),
    ]
    for name in names:
        summary, f1 = results[name]["summary"], results[name]["f1"]
        lines.append(f"| {name} | " + " | ".join(_ci(summary[c]) for c in COLUMN_TITLES) + f" | {_pct(f1['CF1'])} | {_pct(f1['OF1'])} |")
    if reference is not None and differences:
        lines += ["", f"## {reference} minus each other model (paired bootstrap 95% intervals, points)", "", "| other model | Δ T2 all | Δ mAP |", "|---|---|---|"]
        lines += [f"| {d['other']} | {_signed(d['top2_all'])} | {_signed(d['mAP'])} |" for d in differences]
    lines += ["", "## Top-2 all-recall per label (paper Table 5)", "", "Images grouped by main label (by carried label for tag sets without one).", ""]
    lines += ["| label | support | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    per_label = {name: {row["label"]: row for row in results[name]["per_label_top2_all"]} for name in names}
    for label in test.labels:
        support = per_label[names[0]][label]["support"]
        lines.append(f"| {label} | {support} | " + " | ".join(_pct(per_label[n][label]["top2_all"]) for n in names) + " |")
    lines += ["", "## Average precision per label", "", "A label with no positive test image has no AP (—) and is left out of mAP.", ""]
    lines += ["| label | positives | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for c, label in enumerate(test.labels):
        lines.append(f"| {label} | {n_pos[c]} | " + " | ".join(_pct(results[n]["per_class_ap"][label]) for n in names) + " |")
    return "\n".join(lines) + "\n"


def metrics_json(results: dict[str, dict], test: TestSet, settings: EvaluateSettings) -> dict:
    """The numbers `dvc metrics diff` compares: headline metrics per model, with interval bounds."""
    out: dict[str, Any] = {"split": settings.split, "n_images": len(test.targets), "models": {}}
    for name, result in results.items():
        entry = {key: round(value["value"], 6) for key, value in result["summary"].items()}
        entry |= {f"{key}_ci_{end}": round(value[f"ci_{end}"], 6) for key, value in result["summary"].items() for end in ("low", "high")}
        entry |= {key: round(result["f1"][key], 6) for key in ("CF1", "OF1")}
        out["models"][name] = entry
    return out


def evaluate(specs: dict[str, ModelSpec], args: argparse.Namespace, settings: EvaluateSettings) -> tuple[str, dict]:
    """Score every model; returns the Markdown report and the metrics JSON."""
    labels = read_label_subset(args.label_subset)
    table = read_dataset(args.dataset, labels)
    table = table[table["split"] == settings.split].reset_index(drop=True)
    if table.empty:
        raise InputError(f"{args.dataset}: the {settings.split} split is empty")
    test = TestSet(table, target_matrix(table["labels"], labels), main_index(table["main_style"], labels), labels)
    probs, results, descriptions = {}, {}, {}
    for name in specs:
        checkpoint = load_checkpoint(args.models_dir / name / "best.pt")
        probs[name] = test_probs(checkpoint, test, args.features, args.crawl_dir)
        results[name] = evaluate_scores(probs[name], test.targets, test.main, labels, settings.bootstrap, settings.seed)
        descriptions[name] = describe(checkpoint)
        print(f"{name}: " + ", ".join(f"{c} {100 * results[name]['summary'][c]['value']:.2f}" for c in (*PAPER_COLUMNS, "mAP")))
    reference = next((n for n, s in specs.items() if s.kind == "gcn" and s.adjacency == "graph"), None)
    differences = paired_differences(probs, reference, test, settings) if reference else []
    return render_report(results, descriptions, differences, reference, test, settings), metrics_json(results, test, settings)


def run(args: argparse.Namespace) -> int:
    """Score every model and write the report and metrics; returns the exit status."""
    settings = load_section(EvaluateSettings, "evaluate", args.params)
    report, metrics = evaluate(load_model_specs(args.params), args, settings)
    with atomic_path(args.report) as tmp:
        tmp.write_text(report, encoding="utf-8")
    write_json(metrics, args.metrics)
    print(f"evaluate: {len(metrics['models'])} models on {metrics['n_images']} {settings.split} images -> {args.report}, {args.metrics}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.splitlines()[0], epilog="The stage's full command line is in dvc.yaml.")
    parser.add_argument("--dataset", type=Path, required=True, help="curated dataset (data/dataset.parquet)")
    parser.add_argument("--label-subset", type=Path, required=True, help="class order (data/label_subset.json)")
    parser.add_argument("--features", type=Path, required=True, help="cached backbone features (data/features.npz), for models trained on them")
    parser.add_argument("--crawl-dir", type=Path, required=True, help="folder the dataset's image paths are relative to, for pixel models")
    parser.add_argument("--models-dir", type=Path, required=True, help="folder with <model>/best.pt for every entry of the 'models' section")
    parser.add_argument("--report", type=Path, required=True, help="Markdown comparison report to write")
    parser.add_argument("--metrics", type=Path, required=True, help="JSON metrics to write (dvc metrics diff)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file with 'models' and 'evaluate' sections")
    args = parser.parse_args(argv)
    return report_user_errors("evaluate", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
