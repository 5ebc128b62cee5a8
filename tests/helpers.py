"""What the training-side tests share: 28 tiny pictures whose colours carry their labels (conftest.py's `inputs`
fixture builds them once per module), a params file for them, and the stages' command lines run in-process."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import timm
import torch
import yaml
from PIL import Image

import training.train as train_module
from common.tables import empty_table
from pipeline.near_duplicates import PAIR_COLUMNS
from pipeline.pixel_cache import PixelCacheSettings, build_cache
from training import evaluate, features, select
from training.checkpoint import load_checkpoint

LABELS = ["red", "green", "blue"]


MODELS = {
    "cnn": {"kind": "cnn", "image_size": 32},
    "linear": {"kind": "linear", "pooling": "avg"},
    "gcn": {"kind": "gcn", "pooling": "max", "adjacency": "graph"},
    "gcn_identity": {"kind": "gcn", "pooling": "max", "adjacency": "identity"},
    "residual_csra": {
        "kind": "gcn_residual",
        "pooling": "csra",
        "heads": 2,
        "lam": 0.5,
        "loss": "asl",
    },  # feature maps, the graph as a residual, ASL (last in sorted order)
}


ADJACENCY_NORM = np.array([[0.8, 0.2, 0.0], [0.3, 0.7, 0.0], [0.0, 0.4, 0.6]], dtype=np.float32)


def training_params(tmp: Path, weights: Path, **train_overrides) -> Path:
    params = {
        "features": {"backbone": "tf_efficientnet_lite0", "weights": str(weights), "image_size": 32, "batch_size": 8,
                     "workers": 0, "flip": True, "maps": True},
        "train": {"seed": 7, "epochs": 2, "patience": 5, "batch_size": 8, "lr_backbone": 1e-4, "lr_head": 1e-3,
                  "gcn_hidden": 16, "finetune": False, "workers": 0, "cached_pixels": False, "compile": False,
                  "lr_scaling": "none", "precision": "bf16", "warmup_epochs": 1.5, "loss": "bce",
                  "asl_gamma_neg": 4.0, "asl_gamma_pos": 0.0, "asl_clip": 0.05, "tta_flip": True} | train_overrides,
        "models": MODELS,
        "evaluate": {"split": "test", "bootstrap": 20, "seed": 0, "baseline": "linear"},
        "select": {"folds": 3, "seed": 0, "candidates": []},
    }  # fmt: skip
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(params), encoding="utf-8")
    return path


def build_stage_inputs(root: Path) -> dict[str, Path]:
    """Curation outputs for 28 tiny pictures whose colours carry their labels, plus cached features, in `root`
    (conftest.py's `inputs` fixture)."""
    rng = np.random.default_rng(0)
    rows = []
    (root / "crawl").mkdir()
    for i in range(28):
        main = i % 3
        labels = [LABELS[main]] + ([LABELS[(main + 1) % 3]] if i % 4 == 0 else [])
        pixels = rng.integers(0, 60, (40, 32, 3))
        for label in labels:
            pixels[..., LABELS.index(label)] += 150
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(root / "crawl" / f"{i:02d}.png")
        split = "train" if i < 16 else "val" if i < 22 else "test"
        rows.append(
            {
                "image_id": f"img{i:02d}",
                "path": f"{i:02d}.png",
                "batch": "b1",
                "split": split,
                "main_style": labels[0],
                "labels": labels,
            }
        )
    pd.DataFrame(rows).to_parquet(root / "dataset.parquet")
    (root / "label_subset.json").write_text(json.dumps({"labels": LABELS, "top_k": 3}))
    np.savez(
        root / "label_graph.npz",
        labels=np.array(LABELS),
        adjacency=ADJACENCY_NORM,
        adjacency_norm=ADJACENCY_NORM,
        embeddings=rng.normal(size=(3, 5)).astype(np.float32),
    )
    # A weights file (random, fast) rather than "none": prediction must rebuild the very backbone the features came
    # from.
    torch.manual_seed(0)
    torch.save(timm.create_model("tf_efficientnet_lite0").state_dict(), root / "lite0.pth")
    paths = {
        "root": root,
        "weights": root / "lite0.pth",
        "dataset": root / "dataset.parquet",
        "subset": root / "label_subset.json",
        "graph": root / "label_graph.npz",
        "crawl": root / "crawl",
        "features": root / "features.npz",
        "pixels": root / "pixels",
    }
    build_cache(pd.DataFrame(rows), paths["crawl"], paths["pixels"], PixelCacheSettings(height=40, width=32, workers=1))
    run_features(paths, paths["features"], training_params(root, paths["weights"]))
    return paths


def features_argv(inputs: dict[str, Path], out: Path, params: Path) -> list[str]:
    """The features stage's command line into `out`, its cache beside it."""
    return ["--dataset", str(inputs["dataset"]), "--label-subset", str(inputs["subset"]),
            "--crawl-dir", str(inputs["crawl"]), "--out", str(out),
            "--cache-dir", str(out.parent / f"{out.stem}_cache"), "--params", str(params)]  # fmt: skip


def run_features(inputs: dict[str, Path], out: Path, params: Path) -> Path:
    """Run the features stage's command line into `out`."""
    assert features.main(features_argv(inputs, out, params)) == 0
    return out


def run_train(inputs: dict[str, Path], model: str, out: Path, params: Path, *extra: str, status: int = 0) -> None:
    """Run the train stage's command line; it must end with exit `status` (2: refused with a message on stderr)."""
    assert train_module.main([
        "--model", model, "--dataset", str(inputs["dataset"]), "--label-subset", str(inputs["subset"]),
        "--graph", str(inputs["graph"]), "--features", str(inputs["features"]), "--crawl-dir", str(inputs["crawl"]),
        "--out-dir", str(out / "models" / model), "--live-dir", str(out / "dvclive" / model),
        "--pixel-cache", str(inputs["pixels"]), "--params", str(params), *extra,
    ]) == status  # fmt: skip


def error_message(capsys, prog: str) -> str:
    """The one `<prog>: error: <message>` line a refused command printed on stderr, without its prefix."""
    [line] = [line for line in capsys.readouterr().err.splitlines() if line.startswith(f"{prog}: error: ")]
    return line.removeprefix(f"{prog}: error: ")


def scored_test_split(inputs: dict[str, Path], best: Path, features: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """(test split, the evaluate stage's scores of checkpoint `best` on it, with these cached features)."""
    table = pd.read_parquet(inputs["dataset"]).query("split == 'test'").reset_index(drop=True)
    test = evaluate.TestSet(table, np.zeros((len(table), 3), np.float32), np.zeros(len(table), int), LABELS)
    return table, evaluate.test_probs(load_checkpoint(best), test, features, inputs["crawl"])


def trained_gcn(inputs: dict[str, Path], tmp_path: Path) -> Path:
    """best.pt of a one-epoch GCN head on the cached features."""
    run_train(inputs, "gcn", tmp_path, training_params(tmp_path, inputs["weights"], epochs=1))
    return tmp_path / "models" / "gcn" / "best.pt"


def select_stage(inputs: dict[str, Path], tmp_path: Path, params: Path, dataset: Path | None = None) -> int:
    """Run the select stage's command line on the models trained into tmp_path/models (no near-duplicates)."""
    pairs = tmp_path / "near_duplicates.parquet"
    empty_table(PAIR_COLUMNS).to_parquet(pairs)
    return select.main([
        "--dataset", str(dataset or inputs["dataset"]), "--label-subset", str(inputs["subset"]),
        "--features", str(inputs["features"]), "--near-duplicates", str(pairs),
        "--models-dir", str(tmp_path / "models"), "--out-of-fold", str(tmp_path / "out_of_fold.parquet"),
        "--out", str(tmp_path / "selection.json"), "--metrics", str(tmp_path / "selection_metrics.json"),
        "--params", str(params),
    ])  # fmt: skip
