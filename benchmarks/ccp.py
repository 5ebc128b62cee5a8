"""What the CCP benchmarks share: the real street photos (Clothing Co-Parsing) put through the project's own stages.

The CCP garment tags (taxonomies/ccp_garments.yaml) go through the tag-CSV importer, the
split stage (stable 70/10/20, top-K labels), the graph stage (train-split co-occurrence,
GloVe 50-d) and the features stage, with the project's params.yaml and the benchmark's
overrides. 'skin' and 'hair' are on nearly every photo and would make Top-k recall
trivial, so they are dropped by default.
"""

from __future__ import annotations

import argparse
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from annotation.importers import files_in, import_tag_csv
from common.images import content_id
from common.tables import empty_table
from common.taxonomy import load_taxonomy
from pipeline import graph, split
from pipeline.near_duplicates import PAIR_COLUMNS
from training import features
from training.settings import load_model_specs

ROOT = Path(__file__).resolve().parents[1]


def add_arguments(parser: argparse.ArgumentParser, work_dir: str, models: str | None = None) -> None:
    """The options every CCP benchmark takes (`models`: the default of --models; None = every model of params.yaml)."""
    parser.add_argument(
        "--ccp",
        type=Path,
        default=ROOT.parent / "shared" / "datasets" / "ccp",
        help="folder with photos/ and labels.csv",
    )
    parser.add_argument(
        "--work-dir", type=Path, default=Path(work_dir), help="where every intermediate file and the report go"
    )
    parser.add_argument("--top-k", type=int, default=10, help="label subset: the K most frequent tags (split.top_k)")
    parser.add_argument("--drop-tags", default="skin,hair", help="comma-separated tags removed before anything else")
    parser.add_argument("--backbone", default=None, help="override features.backbone (training/backbones.py)")
    parser.add_argument("--image-size", type=int, default=None, help="override features.image_size (px)")
    parser.add_argument(
        "--models",
        default=models,
        help="comma-separated model names of params.yaml to train" + ("" if models else " (default: all)"),
    )
    parser.add_argument(
        "--reuse-features",
        action="store_true",
        help="keep the features cache of an earlier run (default: extract everything, to time it)",
    )


def run_stage(name: str, main: Callable[[list[str]], int], argv: list[str]) -> None:
    """Run a stage's command line; stop the benchmark when it fails (the stage printed why), so no later step reads
    stale outputs."""
    if status := main(argv):
        raise SystemExit(f"{name} failed with exit status {status}; its message is above")


def stage_inputs(ccp: Path, work: Path, drop: set[str]) -> tuple[Path, Path, Path]:
    """image_labels, catalog and a taxonomy without the dropped tags, as the curation stages expect them."""
    photos = ccp / "photos"
    taxonomy_path = ROOT / "taxonomies" / "ccp_garments.yaml"
    imported = import_tag_csv(ccp / "labels.csv", load_taxonomy(taxonomy_path), files_in(photos))
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
    """The project's params with the benchmark's taxonomy, label subset size, backbone, input size, training seed and
    (for csra heads) feature maps."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["taxonomy"] = str(taxonomy)
    params["split"]["top_k"] = args.top_k
    params["features"] |= (
        {"maps": maps}
        | ({"backbone": args.backbone} if args.backbone else {})
        | ({"image_size": args.image_size} if args.image_size else {})
    )
    params["train"]["seed"] = seed
    if args.models:
        params["models"] = {name: params["models"][name] for name in args.models.split(",")}
    path = work / f"params-seed{seed}.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return path


def no_near_duplicates(work: Path) -> Path:
    """An empty near-duplicate pairs file in `work` (CCP lists none), for the split and select stages."""
    path = work / "near_duplicates.parquet"
    empty_table(PAIR_COLUMNS).to_parquet(path)
    return path


def curation_argv(work: Path, labels: Path, catalog: Path, params: Path) -> dict[str, list[str]]:
    """Command lines of the split and graph stages, every output in `work` (none at the project's default paths)."""
    return {
        "split": ["--labels", str(labels), "--catalog", str(catalog), "--splits", str(work / "splits.parquet"),
                  "--dataset", str(work / "dataset.parquet"), "--subset", str(work / "label_subset.json"),
                  "--near-duplicates", str(no_near_duplicates(work)), "--leakage", str(work / "leakage.parquet"),
                  "--params", str(params)],
        "graph": ["--dataset", str(work / "dataset.parquet"), "--subset", str(work / "label_subset.json"),
                  "--out", str(work / "label_graph.npz"), "--plot", str(work / "label_graph.png"),
                  "--params", str(params)],
    }  # fmt: skip


@dataclass
class Prepared:
    """The curated CCP dataset and its features in `work`, ready for the train, evaluate and label_issues stages."""

    work: Path
    seeds: list[int]
    params: dict[int, Path]  # train.seed -> params file
    data: dict[str, Path]  # dataset.parquet, label_subset.json, label_graph.npz, features.npz
    common: list[str]  # --dataset, --label-subset and --crawl-dir, as every stage after features takes them
    timings: dict[str, float] = field(default_factory=dict)

    def timed(self, name: str, main: Callable[[list[str]], int], argv: list[str]) -> None:
        start = time.perf_counter()
        run_stage(name, main, argv)
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start

    def train_argv(self, model: str, seed: int, out: Path) -> list[str]:
        """The train stage's command line for `model` under `seed`, into `out`/models and `out`/dvclive."""
        return [*self.common, "--model", model, "--graph", str(self.data["label_graph.npz"]),
                "--features", str(self.data["features.npz"]), "--out-dir", str(out / "models" / model),
                "--live-dir", str(out / "dvclive" / model), "--params", str(self.params[seed])]  # fmt: skip


def prepare(args: argparse.Namespace, n_seeds: int, name: str) -> Prepared:
    """Import, split, graph and features for the CCP benchmark `name` (its error messages start with it)."""
    if not (args.ccp / "labels.csv").is_file() or not (args.ccp / "photos").is_dir():
        raise SystemExit(
            f"{name}: {args.ccp} does not hold the CCP dataset (labels.csv and photos/); pass its folder with --ccp"
        )
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    labels, catalog, taxonomy = stage_inputs(args.ccp, work, {t for t in args.drop_tags.split(",") if t})
    base_seed = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))["train"]["seed"]
    maps = any(
        spec.spatial for spec in load_model_specs(write_params(work, taxonomy, args, base_seed, maps=False)).values()
    )
    seeds = [base_seed + i for i in range(n_seeds)]
    data = {name: work / name for name in ("dataset.parquet", "label_subset.json", "label_graph.npz", "features.npz")}
    common = [
        "--dataset",
        str(data["dataset.parquet"]),
        "--label-subset",
        str(data["label_subset.json"]),
        "--crawl-dir",
        str(args.ccp / "photos"),
    ]
    prepared = Prepared(
        work, seeds, {seed: write_params(work, taxonomy, args, seed, maps) for seed in seeds}, data, common
    )
    (work / "splits.parquet").unlink(missing_ok=True)
    stage_argv = curation_argv(work, labels, catalog, prepared.params[base_seed])
    prepared.timed("split", split.main, stage_argv["split"])
    prepared.timed("graph", graph.main, stage_argv["graph"])
    if not args.reuse_features:
        shutil.rmtree(work / "features_cache", ignore_errors=True)  # time a full extraction, not a cache read
    prepared.timed(
        "features",
        features.main,
        [
            *common,
            "--out",
            str(data["features.npz"]),
            "--cache-dir",
            str(work / "features_cache"),
            "--params",
            str(prepared.params[base_seed]),
        ],
    )
    return prepared


def timing_table(timings: dict[str, float], note: str = "") -> str:
    return f"| stage | seconds{note} |\n|---|---|\n" + "\n".join(
        f"| {name} | {seconds:.1f} |" for name, seconds in timings.items()
    )
