"""Train and compare every model of params.yaml on REAL street photos (Clothing Co-Parsing), and print the table.

Usage: python benchmarks/bench_ccp_models.py [--ccp ../shared/datasets/ccp] [--work-dir /tmp/stylegraph-ccp]
                                             [--top-k 10] [--drop-tags skin,hair] [--backbone tf_efficientnet_lite2]
                                             [--image-size 260] [--models linear,csra] [--seeds 3] [--reuse-features]

The CCP garment tags (taxonomies/ccp_garments.yaml) go through the project's own
stages: the tag-CSV importer, the split stage (stable 70/10/20, top-K labels), the
graph stage (train-split co-occurrence, GloVe 50-d), then the features, train and
evaluate stages with the `features`, `train`, `models` and `evaluate` sections of
params.yaml (the offline ImageNet EfficientNet-Lite0 by default). 'skin' and 'hair' are
on nearly every photo and would make Top-k recall trivial, so they are dropped by
default. Every model trains under --seeds seeds (train.seed, +1, ...), each evaluated on
the test split; the summary gives mean ± sd over seeds and each model's mAP minus the
baseline's (evaluate.baseline) with the first seed's paired bootstrap interval. Models
are chosen on the validation split only. Numbers are printed, never asserted; the full
reports land in the work dir.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from annotation.importers import import_tag_csv
from pipeline import graph, split
from pipeline.images import content_id
from pipeline.taxonomy import load_taxonomy
from training import evaluate, features, train
from training.settings import load_model_specs

ROOT = Path(__file__).resolve().parents[1]


def run_stage(name: str, main: Callable[[list[str]], int], argv: list[str]) -> None:
    """Run a stage's command line; stop the benchmark when it fails (the stage printed why), so no later step reads stale outputs."""
    if status := main(argv):
        raise SystemExit(f"{name} failed with exit status {status}; its message is above")


def stage_inputs(ccp: Path, work: Path, drop: set[str]) -> tuple[Path, Path, Path]:
    """image_labels, catalog and a taxonomy without the dropped tags, as the curation stages expect them."""
    photos = ccp / "photos"
    taxonomy_path = ROOT / "taxonomies" / "ccp_garments.yaml"
    imported = import_tag_csv(ccp / "labels.csv", load_taxonomy(taxonomy_path), photos)
    rows, rejects = imported.tables()
    if len(rejects):
        print(f"importer rejected {len(rejects)} rows, e.g. {rejects.iloc[0].to_dict()}")
    files = {content_id(p.read_bytes()): p.name for p in sorted(photos.iterdir())}
    labels = pd.DataFrame({
        "image_id": rows["image_id"],
        "main_style": pd.Series([None] * len(rows), dtype="string"),
        "sub_styles": [[t for t in tags if t not in drop] for tags in rows["sub_styles"]],
        "needs_review": False,
    })  # fmt: skip
    catalog = pd.DataFrame({"image_id": rows["image_id"], "path": [files[i] for i in rows["image_id"]], "batch": "ccp"})
    raw = yaml.safe_load(taxonomy_path.read_text(encoding="utf-8"))
    raw["labels"] = [label for label in raw["labels"] if label["name"] not in drop]
    paths = work / "image_labels.parquet", work / "catalog.parquet", work / "taxonomy.yaml"
    labels.to_parquet(paths[0])
    catalog.to_parquet(paths[1])
    paths[2].write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return paths


def write_params(work: Path, taxonomy: Path, args: argparse.Namespace, seed: int, maps: bool) -> Path:
    """The project's params with the benchmark's taxonomy, label subset size, backbone, input size, training seed and (for csra heads) feature maps."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["taxonomy"] = str(taxonomy)
    params["split"]["top_k"] = args.top_k
    params["features"] |= {"maps": maps} | ({"backbone": args.backbone} if args.backbone else {}) | ({"image_size": args.image_size} if args.image_size else {})
    params["train"]["seed"] = seed
    if args.models:
        params["models"] = {name: params["models"][name] for name in args.models.split(",")}
    path = work / f"params-seed{seed}.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return path


def curation_argv(work: Path, labels: Path, catalog: Path, params: Path) -> dict[str, list[str]]:
    """Command lines of the split and graph stages, writing dataset, label subset and label graph into `work`."""
    return {
        "split": ["--labels", str(labels), "--catalog", str(catalog), "--splits", str(work / "splits.parquet"),
                  "--dataset", str(work / "dataset.parquet"), "--subset", str(work / "label_subset.json"), "--params", str(params)],
        "graph": ["--dataset", str(work / "dataset.parquet"), "--subset", str(work / "label_subset.json"), "--out", str(work / "label_graph.npz"),
                  "--plot", str(work / "label_graph.png"), "--params", str(params)],
    }  # fmt: skip


SUMMARY_COLUMNS = {"val_mAP": "val mAP", "top1_any": "T1 any", "top2_all": "T2 all", "topn_all": "Tn all", "mAP": "mAP", "CF1_val_thr": "CF1 (val thr)"}


def seed_summary(runs: list[dict]) -> str:
    """Markdown: each model's metrics as mean ± sd over the training seeds, and its mAP minus the baseline's per seed."""
    first, n = runs[0], len(runs)
    lines = [f"## {n} training seeds: mean ± sd (test split, {first['n_images']} images; val mAP on the validation split)", "",
             "| model | " + " | ".join(SUMMARY_COLUMNS.values()) + f" | Δ mAP vs {first['baseline']} (mean ± sd; seed 1's paired 95% interval) |",
             "|---|" + "---|" * (len(SUMMARY_COLUMNS) + 1)]  # fmt: skip
    for name in first["models"]:
        values = {key: [100 * run["models"][name][key] for run in runs] for key in SUMMARY_COLUMNS}
        cells = [f"{np.mean(v):.2f} ± {np.std(v, ddof=1) if n > 1 else 0:.2f}" for v in values.values()]
        if name == first["baseline"]:
            cells.append("—")
        else:
            gaps, one = [100 * run["models"][name]["mAP_minus_baseline"] for run in runs], first["models"][name]
            cells.append(f"{np.mean(gaps):+.2f} ± {np.std(gaps, ddof=1) if n > 1 else 0:.2f} ([{100 * one['mAP_minus_baseline_ci_low']:+.2f}, {100 * one['mAP_minus_baseline_ci_high']:+.2f}])")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    val = {name: np.mean([run["models"][name]["val_mAP"] for run in runs]) for name in first["models"]}
    chosen = max(val, key=val.get)
    lines += ["", f"Chosen on the validation split (highest mean validation mAP): **{chosen}**, test mAP "
              f"{np.mean([100 * run['models'][chosen]['mAP'] for run in runs]):.2f}. "
              f"Each seed's own choice: {', '.join(run['chosen_model'] for run in runs)}."]  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ccp", type=Path, default=ROOT.parent / "shared" / "datasets" / "ccp", help="folder with photos/ and labels.csv")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/stylegraph-ccp"), help="where every intermediate file and the report go")
    parser.add_argument("--top-k", type=int, default=10, help="label subset: the K most frequent tags (split.top_k)")
    parser.add_argument("--drop-tags", default="skin,hair", help="comma-separated tags removed before anything else")
    parser.add_argument("--backbone", default=None, help="override features.backbone (training/backbones.py)")
    parser.add_argument("--image-size", type=int, default=None, help="override features.image_size (px)")
    parser.add_argument("--models", default=None, help="comma-separated model names of params.yaml to train (default: all)")
    parser.add_argument("--seeds", type=int, default=3, help="train every model under this many seeds (train.seed, +1, ...): mean ± sd")
    parser.add_argument("--reuse-features", action="store_true", help="keep the features cache of an earlier run (default: extract everything, to time it)")
    args = parser.parse_args()
    if not (args.ccp / "labels.csv").is_file() or not (args.ccp / "photos").is_dir():
        raise SystemExit(f"bench_ccp_models: {args.ccp} does not hold the CCP dataset (labels.csv and photos/); pass its folder with --ccp")
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def timed(name: str, main: Callable[[list[str]], int], argv: list[str]) -> None:
        start = time.perf_counter()
        run_stage(name, main, argv)
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - start

    labels, catalog, taxonomy = stage_inputs(args.ccp, work, {t for t in args.drop_tags.split(",") if t})
    base_seed = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))["train"]["seed"]
    probe = write_params(work, taxonomy, args, base_seed, maps=False)
    maps = any(spec.spatial for spec in load_model_specs(probe).values())
    seeds = [base_seed + i for i in range(args.seeds)]
    params = {seed: write_params(work, taxonomy, args, seed, maps) for seed in seeds}
    data = {name: work / name for name in ("dataset.parquet", "label_subset.json", "label_graph.npz", "features.npz")}
    (work / "splits.parquet").unlink(missing_ok=True)
    stage_argv = curation_argv(work, labels, catalog, params[base_seed])
    timed("split", split.main, stage_argv["split"])
    timed("graph", graph.main, stage_argv["graph"])
    common = ["--dataset", str(data["dataset.parquet"]), "--label-subset", str(data["label_subset.json"]), "--crawl-dir", str(args.ccp / "photos")]
    if not args.reuse_features:
        shutil.rmtree(work / "features_cache", ignore_errors=True)  # time a full extraction, not a cache read
    timed("features", features.main, [*common, "--out", str(data["features.npz"]), "--cache-dir", str(work / "features_cache"), "--params", str(params[base_seed])])
    runs = []
    for seed in seeds:
        out = work / f"seed-{seed}"
        for model in load_model_specs(params[seed]):
            timed(f"train@{model}", train.main, [*common, "--model", model, "--graph", str(data["label_graph.npz"]), "--features", str(data["features.npz"]),
                                                 "--out-dir", str(out / "models" / model), "--live-dir", str(out / "dvclive" / model), "--params", str(params[seed])])  # fmt: skip
        timed("evaluate", evaluate.main, [*common, "--features", str(data["features.npz"]), "--models-dir", str(out / "models"),
                                          "--report", str(out / "evaluation.md"), "--metrics", str(out / "evaluation.json"), "--params", str(params[seed])])  # fmt: skip
        runs.append(json.loads((out / "evaluation.json").read_text(encoding="utf-8")))
    report = (work / f"seed-{base_seed}" / "evaluation.md").read_text(encoding="utf-8")
    summary = seed_summary(runs)
    (work / "summary.md").write_text(summary, encoding="utf-8")
    print(f"\n# First seed ({base_seed})\n\n" + report.split("## Top-2 all-recall per label")[0])
    print(summary)
    print(f"| stage | seconds (all {len(seeds)} seeds) |\n|---|---|\n" + "\n".join(f"| {name} | {seconds:.1f} |" for name, seconds in timings.items()))
    print(f"\nfull reports: {work}/seed-*/evaluation.md; summary: {work / 'summary.md'}")


if __name__ == "__main__":
    main()
