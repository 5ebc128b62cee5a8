"""Train and compare every model of params.yaml on REAL street photos (Clothing Co-Parsing), and print the table.

Usage: python benchmarks/bench_ccp_models.py [--ccp ../shared/datasets/ccp] [--work-dir /tmp/stylegraph-ccp]
                                             [--top-k 10] [--drop-tags skin,hair] [--image-size 160]

The CCP garment tags (taxonomies/ccp_garments.yaml) go through the project's own
stages: the tag-CSV importer, the split stage (stable 70/10/20, top-K labels), the
graph stage (train-split co-occurrence, GloVe 50-d), then the features, train and
evaluate stages with the `features`, `train`, `models` and `evaluate` sections of
params.yaml (the offline ImageNet EfficientNet-Lite0 by default). 'skin' and 'hair' are
on nearly every photo and would make Top-k recall trivial, so they are dropped by
default. Numbers are printed, never asserted; the full report lands in the work dir.
"""

from __future__ import annotations

import argparse
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import yaml

from annotation.importers import import_tag_csv
from pipeline import graph, split
from pipeline.images import content_id
from pipeline.taxonomy import load_taxonomy
from training import evaluate, features, train

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


def write_params(work: Path, taxonomy: Path, top_k: int, image_size: int | None) -> Path:
    """The project's params with the benchmark's taxonomy, label subset size and (optionally) input size."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["taxonomy"] = str(taxonomy)
    params["split"]["top_k"] = top_k
    if image_size:
        params["features"]["image_size"] = image_size
    path = work / "params.yaml"
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ccp", type=Path, default=ROOT.parent / "shared" / "datasets" / "ccp", help="folder with photos/ and labels.csv")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/stylegraph-ccp"), help="where every intermediate file and the report go")
    parser.add_argument("--top-k", type=int, default=10, help="label subset: the K most frequent tags (split.top_k)")
    parser.add_argument("--drop-tags", default="skin,hair", help="comma-separated tags removed before anything else")
    parser.add_argument("--image-size", type=int, default=None, help="override features.image_size (px)")
    args = parser.parse_args()
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def timed(name: str, main: Callable[[list[str]], int], argv: list[str]) -> None:
        start = time.perf_counter()
        run_stage(name, main, argv)
        timings[name] = time.perf_counter() - start

    labels, catalog, taxonomy = stage_inputs(args.ccp, work, {t for t in args.drop_tags.split(",") if t})
    params = write_params(work, taxonomy, args.top_k, args.image_size)
    data = {name: work / name for name in ("dataset.parquet", "label_subset.json", "label_graph.npz", "features.npz")}
    (work / "splits.parquet").unlink(missing_ok=True)
    stage_argv = curation_argv(work, labels, catalog, params)
    timed("split", split.main, stage_argv["split"])
    timed("graph", graph.main, stage_argv["graph"])
    common = ["--dataset", str(data["dataset.parquet"]), "--label-subset", str(data["label_subset.json"]), "--crawl-dir", str(args.ccp / "photos")]
    shutil.rmtree(work / "features_cache", ignore_errors=True)  # time a full extraction, not a cache read
    timed("features", features.main, [*common, "--out", str(data["features.npz"]), "--cache-dir", str(work / "features_cache"), "--params", str(params)])
    for model in train.load_model_specs(params):
        timed(f"train@{model}", train.main, [*common, "--model", model, "--graph", str(data["label_graph.npz"]), "--features", str(data["features.npz"]),
                                             "--out-dir", str(work / "models" / model), "--live-dir", str(work / "dvclive" / model), "--params", str(params)])  # fmt: skip
    report = work / "evaluation.md"
    timed("evaluate", evaluate.main, [*common, "--features", str(data["features.npz"]), "--models-dir", str(work / "models"),
                                      "--report", str(report), "--metrics", str(work / "evaluation.json"), "--params", str(params)])  # fmt: skip
    text = report.read_text(encoding="utf-8")
    print("\n" + text.split("## Top-2 all-recall per label")[0])
    print("| stage | seconds |\n|---|---|\n" + "\n".join(f"| {name} | {seconds:.1f} |" for name, seconds in timings.items()))
    print(f"\nfull report: {report}")


if __name__ == "__main__":
    main()
