"""Training entry points on a tiny synthetic dataset: a CPU smoke run of features -> train -> evaluate,
interrupted-then-resumed training, fine-tuning from pixels, and predictions that match the cached path."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch
import yaml
from PIL import Image
from torch import nn

import training.train as train_module
from pipeline.cli import InputError, report_user_errors
from pipeline.pixel_cache import PixelCacheSettings, build_cache
from pipeline.settings import ParamsError, load_section
from training import data as training_data
from training import engine, evaluate, features, feeds, predict, schedule
from training.checkpoint import CHECKPOINT_REMEDY, build_trained_module, load_checkpoint
from training.data import ImageDataset, eval_transform
from training.distributed import SINGLE, World, shard
from training.metrics import f1_thresholds
from training.models import ModelSpec
from training.settings import TrainSettings

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


def _params(tmp: Path, weights: Path, **train_overrides) -> Path:
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
    _extract_features(paths, paths["features"], _params(root, paths["weights"]))
    return paths


def _extract_features(inputs: dict[str, Path], out: Path, params: Path) -> Path:
    """Run the features stage's command line into `out`."""
    args = [
        "--dataset",
        str(inputs["dataset"]),
        "--label-subset",
        str(inputs["subset"]),
        "--crawl-dir",
        str(inputs["crawl"]),
        "--out",
        str(out),
        "--params",
        str(params),
    ]
    assert features.main([*args, "--cache-dir", str(out.parent / f"{out.stem}_cache")]) == 0
    return out


def _train(inputs: dict[str, Path], model: str, out: Path, params: Path, *extra: str, status: int = 0) -> None:
    """Run the train stage's command line; it must end with exit `status` (2: refused with a message on stderr)."""
    assert train_module.main([
        "--model", model, "--dataset", str(inputs["dataset"]), "--label-subset", str(inputs["subset"]),
        "--graph", str(inputs["graph"]), "--features", str(inputs["features"]), "--crawl-dir", str(inputs["crawl"]),
        "--out-dir", str(out / "models" / model), "--live-dir", str(out / "dvclive" / model),
        "--pixel-cache", str(inputs["pixels"]), "--params", str(params), *extra,
    ]) == status  # fmt: skip


def _error(capsys, prog: str) -> str:
    """The one `<prog>: error: <message>` line a refused command printed on stderr, without its prefix."""
    [line] = [line for line in capsys.readouterr().err.splitlines() if line.startswith(f"{prog}: error: ")]
    return line.removeprefix(f"{prog}: error: ")


@pytest.mark.slow
def test_features_cache_both_poolings_the_maps_and_every_image_mirrored(inputs):
    npz = np.load(inputs["features"])
    assert npz["max"].shape == npz["avg"].shape == (28, 1280)
    assert npz["max_flip"].shape == (28, 1280) and list(npz["flip_image_id"]) == list(npz["image_id"]), (
        "training augmentation and the test-time flip"
    )
    assert (npz["max"] >= npz["avg"]).all()
    assert npz["maps"].dtype == npz["maps_flip"].dtype == np.float16 and npz["maps"].shape[:2] == (28, 1280)
    np.testing.assert_allclose(npz["maps"].astype(np.float32).max(axis=(2, 3)), npz["max"], rtol=1e-3, atol=1e-3)
    assert json.loads(str(npz["meta"]))["mean"] == [0.5, 0.5, 0.5]


def _spy_on_extraction(monkeypatch) -> list[tuple[int, int]]:
    """(images, mirrored images) of every extraction the features stage starts from now on."""
    passes: list[tuple[int, int]] = []
    real = features.extract

    def extract(backbone, paths, mirrored, *args):
        passes.append((len(paths) - sum(mirrored), sum(mirrored)))
        return real(backbone, paths, mirrored, *args)

    monkeypatch.setattr(features, "extract", extract)
    return passes


def _dataset_in_batches(inputs: dict[str, Path], tmp_path: Path, first_batch: int, keep: int = 28) -> dict[str, Path]:
    """The fixture's first `keep` images, the first `first_batch` of them in crawl batch b1 and the rest in b2."""
    table = pd.read_parquet(inputs["dataset"]).head(keep)
    table["batch"] = ["b1" if i < first_batch else "b2" for i in range(len(table))]
    table.to_parquet(tmp_path / "dataset.parquet")
    return dict(inputs, dataset=tmp_path / "dataset.parquet")


def _assert_same_features(features_file: Path, from_scratch: Path) -> None:
    """Every array of the two features files has the same dtype and values: the file a from-scratch run writes."""
    ours, theirs = np.load(features_file), np.load(from_scratch)
    assert ours.files == theirs.files
    for array in theirs.files:
        assert ours[array].dtype == theirs[array].dtype, array
        np.testing.assert_array_equal(ours[array], theirs[array], err_msg=array)


@pytest.mark.slow
def test_a_new_batch_runs_the_backbone_over_its_own_images_only(inputs, tmp_path, monkeypatch):
    params, out = _params(tmp_path, inputs["weights"]), tmp_path / "features.npz"
    _extract_features(
        _dataset_in_batches(inputs, tmp_path, first_batch=20, keep=20), out, params
    )  # images 0-15 train, 16-19 val
    shard = tmp_path / "features_cache" / "b1.npz"
    written = shard.stat().st_mtime_ns
    passes = _spy_on_extraction(monkeypatch)
    _extract_features(
        _dataset_in_batches(inputs, tmp_path, first_batch=20), out, params
    )  # batch b2: 8 images, and their mirror images
    assert passes == [(8, 8)] and shard.stat().st_mtime_ns == written
    _assert_same_features(out, inputs["features"])
    _extract_features(_dataset_in_batches(inputs, tmp_path, first_batch=20), out, params)
    assert passes == [(8, 8), (0, 0)], "nothing new: nothing extracted"


@pytest.mark.slow
def test_an_image_that_joined_an_old_batch_is_the_only_one_extracted(inputs, tmp_path, monkeypatch):
    params = _params(tmp_path, inputs["weights"])
    table = pd.read_parquet(inputs["dataset"]).assign(batch="b1")
    table.loc[table["image_id"].isin(["img03", "img04"]), "split"] = (
        "val"  # another split changes nothing: every image is mirrored
    )
    table.drop(index=[5]).to_parquet(tmp_path / "dataset.parquet")  # img05: labelled later
    partial = dict(inputs, dataset=tmp_path / "dataset.parquet")
    _extract_features(partial, tmp_path / "features.npz", params)
    passes = _spy_on_extraction(monkeypatch)
    _extract_features(
        dict(inputs, dataset=_dataset_in_batches(inputs, tmp_path, first_batch=28)["dataset"]),
        tmp_path / "features.npz",
        params,
    )
    assert passes == [(1, 1)]
    _assert_same_features(
        tmp_path / "features.npz", inputs["features"]
    )  # a pass of one image computes what a pass of eight does


@pytest.mark.slow
def test_the_cache_folder_is_made_even_when_nothing_is_cached_and_leftovers_go(inputs, tmp_path):
    """The folder is a DVC output, so it must exist after every run; a temporary file a killed write left must not stay
    in it."""
    _extract_features(
        inputs, tmp_path / "features.npz", _params(tmp_path, "none")
    )  # a random backbone: nothing to reuse
    cache = tmp_path / "features_cache"
    assert cache.is_dir() and not any(cache.iterdir())
    (cache / ".b1.npz.k2j4x.tmp").write_bytes(b"half a shard")
    _extract_features(inputs, tmp_path / "features.npz", _params(tmp_path, inputs["weights"]))
    assert sorted(p.name for p in cache.iterdir()) == ["b1.npz"]


@pytest.mark.slow
def test_an_interrupted_extraction_keeps_the_batches_it_finished(inputs, tmp_path, monkeypatch):
    batches, out = _dataset_in_batches(inputs, tmp_path, first_batch=20), tmp_path / "features.npz"
    settings = features.FeatureSettings(
        "tf_efficientnet_lite0", str(inputs["weights"]), image_size=32, batch_size=8, workers=0, flip=True, maps=True
    )

    def stage() -> features.FeatureCounts:
        return features.write_features(
            batches["dataset"], batches["subset"], batches["crawl"], out, tmp_path / "cache", settings, "bf16"
        )

    real = training_data.load_rgb

    def interrupted_in_b2(path, vetted):
        if path.name == "27.png":  # b2's last image (one stream of passes of 8: b1's all end before it)
            raise KeyboardInterrupt
        return real(path, vetted)

    monkeypatch.setattr(training_data, "load_rgb", interrupted_in_b2)
    with pytest.raises(KeyboardInterrupt):
        stage()
    assert not out.exists() and sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["b1.npz"]
    monkeypatch.undo()
    passes = _spy_on_extraction(monkeypatch)
    stage()
    assert passes == [(8, 8)]


@pytest.mark.slow
@pytest.mark.parametrize(
    "change",
    ["image_size", "batch_size", "thread count", "weights file", "random weights", "damaged shard", "empty shard"],
)
def test_features_are_extracted_again_when_the_cache_cannot_vouch_for_them(
    inputs, tmp_path, monkeypatch, capsys, request, change
):
    weights = tmp_path / "lite0.pth"
    weights.write_bytes(inputs["weights"].read_bytes())
    params, out = _params(tmp_path, weights), tmp_path / "features.npz"
    batches = _dataset_in_batches(inputs, tmp_path, first_batch=20)
    _extract_features(batches, out, params)
    if change in (
        "image_size",
        "batch_size",
    ):  # every pass has the batch size's shape, and kernels round differently for another
        params.write_text(
            params.read_text().replace("image_size: 32", "image_size: 48")
            if change == "image_size"
            else params.read_text().replace("batch_size: 8", "batch_size: 4", 1)
        )
    elif change == "thread count":  # CPU kernels split work, and so round, by threads
        threads = torch.get_num_threads()
        request.addfinalizer(lambda: torch.set_num_threads(threads))
        torch.set_num_threads(1 if torch.get_num_threads() > 1 else 2)
    elif change == "weights file":  # the same path, other contents
        state = torch.load(weights)
        torch.save(state | {"conv_stem.weight": state["conv_stem.weight"] * 2}, weights)
    elif change == "random weights":
        params.write_text(params.read_text().replace(f"weights: {weights}", "weights: none"))
    else:
        (tmp_path / "features_cache" / "b2.npz").write_bytes(
            b"PK\x03\x04 cut off" if change == "damaged shard" else b""
        )
    passes = _spy_on_extraction(monkeypatch)
    _extract_features(batches, out, params)
    damaged = change.endswith("shard")
    assert passes == ([(8, 8)] if damaged else [(28, 28)])
    if damaged:
        assert re.search(
            r"features: warning: cache shard .*b2.npz is unreadable .*: extracting its images again",
            capsys.readouterr().err,
        )


def test_smoke_run_of_every_model_then_the_evaluation_report(inputs, tmp_path):
    params = _params(tmp_path, inputs["weights"])
    for model in MODELS:
        _train(inputs, model, tmp_path, params)
    for model in MODELS:
        assert (tmp_path / "models" / model / "best.pt").is_file() and (
            tmp_path / "models" / model / "last.pt"
        ).is_file()
        history = (tmp_path / "dvclive" / model / "plots" / "metrics" / "val" / "mAP.tsv").read_text().splitlines()
        assert len(history) == 1 + 2, "a header and one row per epoch"
    gcn = load_checkpoint(tmp_path / "models" / "gcn" / "best.pt")
    assert torch.equal(gcn["model"]["classifiers.adjacency"], torch.from_numpy(ADJACENCY_NORM)), (
        "the forward pass multiplies the graph stage's adjacency_norm"
    )
    assert torch.equal(
        load_checkpoint(tmp_path / "models" / "residual_csra" / "best.pt")["model"]["classifiers.graph.adjacency"],
        torch.from_numpy(ADJACENCY_NORM),
    )
    assert torch.equal(
        load_checkpoint(tmp_path / "models" / "gcn_identity" / "best.pt")["model"]["classifiers.adjacency"],
        torch.eye(3),
    )
    assert len(gcn["thresholds"]) == 3 and all(0 < t < 1 for t in gcn["thresholds"]), (
        "per-label thresholds chosen on validation"
    )

    from test_select import select_stage  # test_select imports this module's helpers

    assert select_stage(inputs, tmp_path, params) == 0
    report, metrics = tmp_path / "evaluation.md", tmp_path / "evaluation.json"
    evaluate.main([
        "--dataset", str(inputs["dataset"]), "--label-subset", str(inputs["subset"]),
        "--features", str(inputs["features"]), "--crawl-dir", str(inputs["crawl"]),
        "--models-dir", str(tmp_path / "models"), "--selection", str(tmp_path / "selection.json"),
        "--report", str(report), "--metrics", str(metrics), "--params", str(params),
    ])  # fmt: skip
    text = report.read_text()
    assert (
        "| model | T1 any | T2 all | T2 any | T3 all | T3 any | Tn all | mAP | clicks | CF1 | OF1 | CF1 (thr) | OF1 "
        "(thr) |" in text
    )
    assert all(f"| {model} |" in text for model in MODELS)
    assert (
        "Each model minus linear" in text
        and "| gcn_identity |" in text
        and "| linear | " not in text.split("Each model minus linear")[1].split("##")[0]
    )
    scores = json.loads(metrics.read_text())
    val_maps = {name: load_checkpoint(tmp_path / "models" / name / "best.pt")["val"]["mAP"] for name in MODELS}
    selection = json.loads((tmp_path / "selection.json").read_text())
    assert scores["chosen_model"] == selection["chosen"] and f"**Chosen: {selection['chosen']}** (" in text
    assert scores["validation_choice"] == max(val_maps, key=val_maps.get)
    assert "## Expert clicks" in text and all(0 <= m["clicks_ratio"] for m in scores["models"].values())
    assert "| cnn | " in text.split("## Expert clicks")[1] and "| validation split |" in text, (
        "the basic CNN's rules were fitted on the validation split, the heads' out of fold"
    )
    assert scores["n_images"] == 6 and set(scores["models"]) == set(MODELS)
    assert all(m["top2_all_ci_low"] <= m["top2_all"] <= m["top2_all_ci_high"] for m in scores["models"].values())
    assert "mAP_minus_baseline" in scores["models"]["gcn"] and "mAP_minus_baseline" not in scores["models"]["linear"]


def _interrupt_mid_epoch(monkeypatch, epoch: int) -> None:
    """Make training die after the first optimizer step of `epoch` (0-based), as a kill would."""
    real = train_module.train_one_epoch
    calls = {"n": 0}

    def dying(model, batches, *rest):
        calls["n"] += 1
        if calls["n"] - 1 != epoch:
            return real(model, batches, *rest)

        def one_batch_then_kill():
            yield next(iter(batches))
            raise KeyboardInterrupt

        return real(model, one_batch_then_kill(), *rest)

    monkeypatch.setattr(train_module, "train_one_epoch", dying)


@pytest.mark.slow
@pytest.mark.parametrize(("model", "cached_pixels"), [("gcn", False), ("cnn", False), ("cnn", True)])
def test_interrupted_then_resumed_training_ends_in_the_uninterrupted_state(
    inputs, tmp_path, monkeypatch, model, cached_pixels
):
    params = _params(tmp_path, inputs["weights"], epochs=3, cached_pixels=cached_pixels)
    _train(inputs, model, tmp_path / "straight", params)
    with monkeypatch.context() as patch:
        _interrupt_mid_epoch(patch, epoch=1)
        with pytest.raises(KeyboardInterrupt):
            _train(inputs, model, tmp_path / "resumed", params)
    assert load_checkpoint(tmp_path / "resumed" / "models" / model / "last.pt")["state"]["epoch"] == 1
    _train(inputs, model, tmp_path / "resumed", params, "--resume")
    for name in ("last.pt", "best.pt"):
        straight = load_checkpoint(tmp_path / "straight" / "models" / model / name)
        resumed = load_checkpoint(tmp_path / "resumed" / "models" / model / name)
        assert straight["model"].keys() == resumed["model"].keys()
        for key, tensor in straight["model"].items():
            assert torch.equal(tensor, resumed["model"][key]), f"{name}: {key} differs after resuming"
        assert straight.get("state") == resumed.get("state") and straight.get("val") == resumed.get("val")
    steps = (
        (tmp_path / "resumed" / "dvclive" / model / "plots" / "metrics" / "train" / "loss.tsv")
        .read_text()
        .splitlines()[1:]
    )
    assert [line.split("\t")[0] for line in steps] == ["0", "1", "2"], "one row per epoch, none repeated or lost"


def _kill_at_the_end_of_epoch(monkeypatch, epoch: int, when: str) -> None:
    """Make training die at the end of `epoch` (0-based): before its dvclive rows, halfway through them, or before
    last.pt records it."""
    real_log, real_save = train_module._log_epoch, train_module.save_checkpoint

    def logging(live, logged_epoch, train_loss, val):
        if logged_epoch != epoch:
            return real_log(live, logged_epoch, train_loss, val)
        if when == "while_logging":
            live.step = logged_epoch
            live.log_metric("train/loss", train_loss)
        raise KeyboardInterrupt

    def saving(state, path):
        if path.name == "last.pt" and state["state"]["epoch"] == epoch + 1:
            raise KeyboardInterrupt
        real_save(state, path)

    if when == "before_last_pt":
        monkeypatch.setattr(train_module, "save_checkpoint", saving)
    else:
        monkeypatch.setattr(train_module, "_log_epoch", logging)


def _metric_histories(live_dir: Path) -> dict[str, str]:
    metrics = live_dir / "plots" / "metrics"
    return {str(path.relative_to(metrics)): path.read_text() for path in sorted(metrics.rglob("*.tsv"))}


@pytest.mark.parametrize("when", ["before_logging", "while_logging", "before_last_pt"])
def test_a_kill_at_the_end_of_an_epoch_leaves_every_epoch_logged_once_after_resuming(
    inputs, tmp_path, monkeypatch, when
):
    params = _params(tmp_path, inputs["weights"], epochs=3)
    _train(inputs, "gcn", tmp_path / "straight", params)
    with monkeypatch.context() as patch:
        _kill_at_the_end_of_epoch(patch, 1, when)
        with pytest.raises(KeyboardInterrupt):
            _train(inputs, "gcn", tmp_path / "resumed", params)
    _train(inputs, "gcn", tmp_path / "resumed", params, "--resume")
    straight, resumed = (
        _metric_histories(tmp_path / "straight" / "dvclive" / "gcn"),
        _metric_histories(tmp_path / "resumed" / "dvclive" / "gcn"),
    )
    assert [line.split("\t")[0] for line in resumed["train/loss.tsv"].splitlines()[1:]] == ["0", "1", "2"], (
        "one row per epoch, none repeated or lost"
    )
    assert resumed == straight, "every metric's history as an uninterrupted run writes it"


def test_a_diverging_run_stops_with_the_epoch_and_keeps_the_last_good_checkpoint(inputs, tmp_path, monkeypatch):
    real = train_module.train_one_epoch
    epochs_run = []

    def diverging(model, batches, *rest):
        real(model, batches, *rest)
        epochs_run.append(len(epochs_run))
        if len(epochs_run) < 2:
            return 0.5
        with torch.no_grad():  # what an overflow does to the weights
            for parameter in model.parameters():
                parameter.fill_(float("nan"))
        return float("nan")

    monkeypatch.setattr(train_module, "train_one_epoch", diverging)
    with pytest.raises(
        train_module.TrainingDiverged,
        match=r"gcn: the training loss is nan in epoch 2; nothing of this epoch was saved "
        r".*train.warmup_epochs.*--resume",
    ):
        _train(inputs, "gcn", tmp_path, _params(tmp_path, inputs["weights"], epochs=4))
    assert epochs_run == [0, 1], "training stops at the first diverged epoch"
    for name in ("last.pt", "best.pt"):
        weights = load_checkpoint(tmp_path / "models" / "gcn" / name)["model"]
        assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point()), (
            f"{name} got NaN weights"
        )
    assert load_checkpoint(tmp_path / "models" / "gcn" / "last.pt")["state"]["epoch"] == 1


@pytest.mark.slow
def test_finetuning_trains_the_backbone_from_pixels(inputs, tmp_path):
    with pytest.warns(
        UserWarning, match=r"optimizer steps per epoch on \d+ training images.*lower train.batch_size"
    ):  # the tiny set has too few
        _train(inputs, "linear", tmp_path, _params(tmp_path, inputs["weights"], epochs=1, finetune=True))
    checkpoint = load_checkpoint(tmp_path / "models" / "linear" / "best.pt")
    assert checkpoint["meta"]["finetuned"] and any(key.startswith("body.") for key in checkpoint["model"])
    [result] = predict.predict_images(tmp_path / "models" / "linear" / "best.pt", [inputs["crawl"] / "00.png"], top_k=3)
    assert [label for label, _ in result["top"]] == sorted(LABELS, key=lambda label: -result["scores"][label])


@pytest.mark.slow
def test_finetuning_from_the_pixel_cache_reads_no_image_file(inputs, tmp_path, capsys):
    no_files = dict(inputs, crawl=tmp_path / "no-crawl")
    params = _params(tmp_path, inputs["weights"], epochs=1, finetune=True, cached_pixels=True)
    _train(no_files, "linear", tmp_path, params)
    checkpoint = load_checkpoint(tmp_path / "models" / "linear" / "last.pt")
    initial = torch.load(inputs["weights"], weights_only=True)
    assert checkpoint["meta"]["finetuned"] and checkpoint["state"]["epoch"] == 1
    assert not torch.equal(checkpoint["model"]["body.model.conv_stem.weight"], initial["conv_stem.weight"]), (
        "the backbone must train"
    )
    _train(
        no_files, "linear", tmp_path / "files", _params(tmp_path, inputs["weights"], epochs=1, finetune=True), status=2
    )
    assert "no-crawl/01.png: cannot read image (FileNotFoundError" in _error(capsys, "train")


def test_catalog_images_above_pillows_bomb_limit_load_and_other_pictures_keep_the_guard(tmp_path, monkeypatch):
    Image.new("RGB", (64, 48), "white").save(tmp_path / "big.png")
    monkeypatch.setattr(
        Image, "MAX_IMAGE_PIXELS", 100
    )  # 64 x 48 is a "bomb" to Pillow now; ingest.max_pixels admitted it
    transform = eval_transform(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    catalog_images = ImageDataset([tmp_path / "big.png"], np.zeros((1, 2), np.float32), transform, vetted=True)
    assert catalog_images[0][0].shape == (3, 32, 32)
    assert Image.MAX_IMAGE_PIXELS == 100
    arbitrary_photos = ImageDataset([tmp_path / "big.png"], np.zeros((1, 0), np.float32), transform)  # predict's
    with pytest.raises(InputError, match=f"{tmp_path / 'big.png'}: cannot read image .*decompression bomb"):
        arbitrary_photos[0]


@pytest.mark.slow
def test_bf16_stays_off_on_the_cpu_unless_asked_for_everywhere(inputs, tmp_path):
    """train.precision bf16 trains a CPU run exactly as fp32 does; bf16-all runs it under bf16 autocast."""
    weights = {}
    for precision in ("fp32", "bf16", "bf16-all"):
        out = tmp_path / precision
        out.mkdir()
        _train(
            inputs,
            "linear",
            out,
            _params(out, inputs["weights"], epochs=1, finetune=True, cached_pixels=True, precision=precision),
        )
        weights[precision] = load_checkpoint(out / "models" / "linear" / "last.pt")["model"][
            "body.model.conv_stem.weight"
        ]
    assert torch.equal(weights["bf16"], weights["fp32"])
    assert not torch.equal(weights["bf16-all"], weights["fp32"]) and torch.isfinite(weights["bf16-all"]).all()


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA: checks that the training loop does not wait for the GPU"
)
def test_the_cached_pixel_training_loop_waits_for_the_gpu_once_per_epoch(inputs, tmp_path):
    params = _params(tmp_path, inputs["weights"], finetune=True, cached_pixels=True, batch_size=4)
    paths = argparse.Namespace(
        label_subset=inputs["subset"],
        graph=inputs["graph"],
        dataset=inputs["dataset"],
        features=inputs["features"],
        crawl_dir=inputs["crawl"],
        pixel_cache=inputs["pixels"],
        params=params,
    )
    settings = load_section(TrainSettings, "train", params)
    device = torch.device("cuda")
    run = train_module.setup("linear", ModelSpec(**MODELS["linear"]), settings, paths, device)
    batches = run.train_batches(torch.Generator().manual_seed(0))
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train_module.train_one_epoch(run.model, batches, run.optimizer, device, None)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) == 1, f"only the loss read-back at the end of the epoch may wait for the GPU: {syncs}"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the side-stream prefetch exists only there")
def test_prefetched_pixel_batches_arrive_whole_and_in_order_on_the_gpu():
    generator = torch.Generator().manual_seed(0)
    host = [
        (
            torch.randint(0, 256, (32, 224, 224, 3), dtype=torch.uint8, generator=generator).pin_memory(),
            torch.full((32,), i),
        )
        for i in range(6)
    ]
    device = torch.device("cuda")
    received = [
        (pixels.cpu(), targets) for pixels, targets in feeds.on_device(iter(host), device, lambda x: x.float().mul(2))
    ]
    assert [int(t[0]) for _, t in received] == list(range(6))
    assert all(torch.equal(got, sent.float().mul(2)) for (got, _), (sent, _) in zip(received, host, strict=True))


def test_a_pixel_cache_without_the_dataset_images_says_how_to_rebuild_it(inputs, tmp_path, capsys):
    rows = pd.read_parquet(inputs["dataset"]).iloc[:20]  # train: rows 0-15, val: 16-21
    build_cache(rows, inputs["crawl"], tmp_path / "pixels", PixelCacheSettings(height=40, width=32, workers=1))
    _train(
        dict(inputs, pixels=tmp_path / "pixels"),
        "cnn",
        tmp_path,
        _params(tmp_path, inputs["weights"], cached_pixels=True),
        status=2,
    )
    assert re.search("pixel cache lacks 2 dataset images.*python -m pipeline.pixel_cache", _error(capsys, "train"))


def test_learning_rates_scale_with_the_global_batch():
    assert schedule.lr_factor("none", 256) == 1.0
    assert schedule.lr_factor("linear", 256) == 8.0
    assert schedule.lr_factor("sqrt", 128) == 2.0


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"lr_scaling": "cubic"}, "train.lr_scaling must be one of none, sqrt, linear, not 'cubic'"),
        ({"precision": "fp16"}, "train.precision must be one of bf16, bf16-all, fp32, not 'fp16'"),
        ({"warmup_epochs": -1}, r"train.warmup_epochs must be in \[0, inf\), not -1"),
        ({"loss": "focal"}, "train.loss must be one of bce, asl, not 'focal'"),
    ],
)
def test_invalid_training_settings_are_refused_with_the_choices(setting, message):
    valid = {"seed": 0, "epochs": 1, "patience": 1, "batch_size": 8, "lr_backbone": 1e-4, "lr_head": 1e-3,
             "gcn_hidden": 8, "finetune": False, "workers": 0, "cached_pixels": False, "compile": False,
             "lr_scaling": "none", "precision": "bf16", "warmup_epochs": 0.0, "loss": "bce", "asl_gamma_neg": 4.0,
             "asl_gamma_pos": 0.0, "asl_clip": 0.05, "tta_flip": False}  # fmt: skip
    with pytest.raises(ParamsError, match=message):
        TrainSettings(**valid | setting)


def test_warmup_raises_every_group_rate_linearly_across_epochs_then_leaves_it():
    optimizer = torch.optim.Adam(
        [{"params": [nn.Parameter(torch.zeros(1))], "lr": 1e-3}, {"params": [nn.Parameter(torch.zeros(1))], "lr": 1e-4}]
    )
    warmup = schedule.LinearWarmup(
        (1e-3, 1e-4), steps=4, steps_per_epoch=schedule.steps_per_epoch(n_train=20, batch_size=8, world=SINGLE)
    )
    rates = []
    for epoch in range(3):
        set_rates = warmup.setter(optimizer, epoch)
        for batch in range(3):
            if set_rates is not None:
                set_rates(batch)
            rates.append([group["lr"] for group in optimizer.param_groups])
    assert np.allclose([r[0] for r in rates], [0.25e-3, 0.5e-3, 0.75e-3, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3])
    assert np.allclose([r[1] for r in rates[:4]], [0.25e-4, 0.5e-4, 0.75e-4, 1e-4])
    assert warmup.setter(optimizer, 2) is None
    assert schedule.steps_per_epoch(17, 4, World(rank=0, size=2)) == 3, "9 rows per rank in batches of 4"


@pytest.mark.parametrize(("n", "size"), [(16, 2), (17, 2), (10, 3), (2, 4)])
def test_ranks_share_an_epoch_in_equal_parts_that_cover_every_row(n, size):
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    parts = [shard(order, World(rank=r, size=size)) for r in range(size)]
    assert len({len(p) for p in parts}) == 1, "DDP needs the same number of batches on every rank"
    assert set(torch.cat(parts).tolist()) == set(range(n))
    assert sum(len(p) for p in parts) - n < size, "wrap-around adds fewer rows than there are ranks"


@pytest.mark.slow
def test_predictions_equal_the_cached_feature_path_and_the_cli_writes_csv(inputs, tmp_path, capsys):
    _train(inputs, "gcn", tmp_path, _params(tmp_path, inputs["weights"], epochs=1))
    best = tmp_path / "models" / "gcn" / "best.pt"
    images = sorted(inputs["crawl"].glob("2*.png"))
    results = predict.predict_images(best, images, top_k=2)
    assert [r["path"] for r in results] == [str(p) for p in images]
    assert all(len(r["top"]) == 2 and r["top"][0][1] >= r["top"][1][1] and list(r["scores"]) == LABELS for r in results)

    checkpoint = load_checkpoint(best)
    head = build_trained_module(checkpoint["meta"])
    head.load_state_dict(checkpoint["model"])
    npz = np.load(inputs["features"])
    rows = [list(npz["image_id"]).index(f"img{p.stem}") for p in images]
    plain, mirrored = (
        torch.sigmoid(head(torch.from_numpy(npz[array][rows]))).detach().numpy() for array in ("max", "max_flip")
    )
    np.testing.assert_allclose(
        [[r["scores"][label] for label in LABELS] for r in results],
        (plain + mirrored) / 2,
        atol=1e-5,
        err_msg="train.tta_flip: the mean with the mirror image",
    )
    thresholds = checkpoint["thresholds"]
    assert all(
        r["predicted"]
        == [
            label
            for label, p in sorted(r["scores"].items(), key=lambda item: -item[1])
            if p >= thresholds[LABELS.index(label)]
        ]
        for r in results
    )
    embedded = predict.predict_images(
        best, images, embeddings=True
    )  # what push's diverse labelling order compares images by
    np.testing.assert_allclose(
        [r["embedding"] for r in embedded], (npz["avg"][rows] + npz["avg_flip"][rows]) / 2, atol=1e-4
    )

    out = tmp_path / "predictions.csv"
    assert predict.main([str(inputs["crawl"]), "--checkpoint", str(best), "--top-k", "2", "--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert (
        list(table.columns) == ["path", "label_1", "prob_1", "label_2", "prob_2", "predicted", "error"]
        and len(table) == 28
    )
    assert table["error"].isna().all()


def test_unknown_model_and_missing_inputs_say_what_to_do(inputs, tmp_path, capsys):
    params = _params(tmp_path, inputs["weights"])
    _train(inputs, "resnet-9000", tmp_path, params, status=2)
    assert (
        _error(capsys, "train") == "unknown model 'resnet-9000'; params.yaml 'models' has "
        "['cnn', 'gcn', 'gcn_identity', 'linear', 'residual_csra']"
    )
    missing = dict(inputs, dataset=tmp_path / "nowhere.parquet")
    _train(missing, "linear", tmp_path, params, status=2)
    assert "nowhere.parquet: dataset not found; run the curation stages" in _error(capsys, "train")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"kind": "gcn", "pooling": "median"}, "models.gcn.pooling must be one of max, avg, csra, not 'median'"),
        (
            {"kind": "gcn", "poolng": "max"},
            r"section 'models.gcn': unknown \['poolng'\] \(every key: docs/reference.md\)",
        ),
        ("gcn", r"section 'models.gcn' must be a mapping"),
    ],
    ids=["unknown-value", "unknown-key", "not-a-mapping"],
)
def test_a_malformed_model_entry_is_refused_in_one_line(inputs, tmp_path, capsys, entry, message):
    params = _params(tmp_path, inputs["weights"])
    raw = yaml.safe_load(params.read_text())
    raw["models"]["gcn"] = entry
    params.write_text(yaml.safe_dump(raw))
    _train(inputs, "gcn", tmp_path, params, status=2)
    assert re.search(message, _error(capsys, "train"))


def test_resuming_under_another_configuration_is_refused(inputs, tmp_path, capsys):
    _train(inputs, "gcn", tmp_path, _params(tmp_path, inputs["weights"], epochs=1))
    _train(inputs, "gcn", tmp_path, _params(tmp_path, inputs["weights"], epochs=2, gcn_hidden=8), "--resume", status=2)
    assert re.search(r"other settings: gcn_hidden 16 -> 8\. Rerun without --resume", _error(capsys, "train"))


def test_resuming_a_checkpoint_that_predates_recorded_settings_is_refused(inputs, tmp_path, capsys):
    _train(inputs, "gcn", tmp_path, _params(tmp_path, inputs["weights"], epochs=1))
    last = tmp_path / "models" / "gcn" / "last.pt"
    checkpoint = load_checkpoint(last)
    del checkpoint["meta"]["train"], checkpoint["meta"]["processes"]  # as written before the settings were recorded
    torch.save(checkpoint, last)
    _train(inputs, "gcn", tmp_path, _params(tmp_path, inputs["weights"], epochs=2), "--resume", status=2)
    assert re.search(
        r"older stylegraph that did not record its training settings.*rerun without --resume", _error(capsys, "train")
    )


def _stage_paths(inputs: dict[str, Path], out: Path, params: Path) -> argparse.Namespace:
    """What train.main parses from its command line, for calling train.train directly."""
    return argparse.Namespace(label_subset=inputs["subset"], graph=inputs["graph"], dataset=inputs["dataset"],
                              features=inputs["features"], crawl_dir=inputs["crawl"], pixel_cache=inputs["pixels"],
                              params=params, out_dir=out / "models" / "gcn",
                              live_dir=out / "dvclive" / "gcn")  # fmt: skip


def test_resuming_with_other_training_settings_or_processes_is_refused_but_longer_training_is_not(
    inputs, tmp_path, capsys
):
    """Adam keeps the checkpoint's learning rates, so a resume with new rates (or seed, batch, ...) would silently train
    with the old ones."""
    _train(inputs, "gcn", tmp_path, _params(tmp_path, inputs["weights"], epochs=2))
    _train(
        inputs,
        "gcn",
        tmp_path,
        _params(tmp_path, inputs["weights"], epochs=2, lr_head=1e-2, seed=99, batch_size=4),
        "--resume",
        status=2,
    )
    assert re.search(
        r"other settings: train.batch_size 8 -> 4, train.lr_head 0.001 -> 0.01, train.seed 7 -> 99\. "
        r"Rerun without --resume .* restore those settings",
        _error(capsys, "train"),
    )
    params = _params(tmp_path, inputs["weights"], epochs=2)
    settings = load_section(TrainSettings, "train", params)
    with pytest.raises(InputError, match=r"other settings: processes 1 -> 2\. .*the number of torchrun processes"):
        train_module.train(
            "gcn",
            ModelSpec(**MODELS["gcn"]),
            settings,
            _stage_paths(inputs, tmp_path, params),
            resume=True,
            world=World(rank=0, size=2),
        )
    _train(inputs, "gcn", tmp_path, _params(tmp_path, inputs["weights"], epochs=3, patience=9, workers=1), "--resume")
    last = load_checkpoint(tmp_path / "models" / "gcn" / "last.pt")
    assert last["state"]["epoch"] == 3 and last["meta"]["train"]["epochs"] == 3 and last["meta"]["processes"] == 1


@pytest.mark.parametrize(("cached_pixels", "workers"), [(False, 0), (False, 1), (True, 0)])
def test_ranks_augment_their_images_differently_and_rank_0_as_one_process_does(
    inputs, tmp_path, cached_pixels, workers
):
    """Eight copies of one picture, so that the batches differ by their augmentations alone; the shuffle stays
    shared."""
    table = pd.DataFrame(
        {"image_id": [f"copy{i}" for i in range(8)], "path": "00.png", "batch": "b1", "split": "train"}
    )
    build_cache(table, inputs["crawl"], tmp_path / "pixels", PixelCacheSettings(height=40, width=32, workers=1))
    stage = feeds.StageInputs(
        table, torch.zeros(8, 3), {"train": np.ones(8, bool), "val": np.ones(8, bool)}, torch.zeros(3, 5), torch.eye(3)
    )
    paths = argparse.Namespace(crawl_dir=inputs["crawl"], pixel_cache=tmp_path / "pixels")
    settings = load_section(TrainSettings, "train", _params(tmp_path, inputs["weights"], batch_size=4, workers=workers))
    make_feeds = feeds.cached_pixel_feeds if cached_pixels else feeds.file_feeds

    def first_batch(world: World) -> torch.Tensor:
        generator = train_module.seed_everything(7000, world)
        assert generator.initial_seed() == 7000, "every rank shuffles alike (shard() needs the same order)"
        train_batches, _ = make_feeds(stage, paths, settings, (32, (0.5,) * 3, (0.5,) * 3), torch.device("cpu"), world)
        return next(iter(train_batches(generator)))[0]

    rank0 = first_batch(World(rank=0, size=2))
    assert torch.equal(rank0, first_batch(SINGLE)), "rank 0 draws what a single process draws"
    assert not torch.equal(rank0, first_batch(World(rank=1, size=2))), (
        "rank 1 must not repeat rank 0's crops, flips and jitter"
    )


@pytest.mark.slow
@pytest.mark.parametrize("model", ["gcn", "cnn"])
def test_evaluation_and_prediction_run_a_model_in_the_precision_it_was_trained_in(inputs, tmp_path, monkeypatch, model):
    params = _params(tmp_path, inputs["weights"], epochs=1, precision="fp32")
    inputs = dict(inputs, features=_extract_features(inputs, tmp_path / "features.npz", params))
    _train(inputs, model, tmp_path, params)
    real, used = engine.autocast, []

    def recording(device, precision="bf16"):
        used.append(precision)
        return real(device, precision)

    monkeypatch.setattr(engine, "autocast", recording)  # evaluate and predict both score through engine.predict_probs
    best = tmp_path / "models" / model / "best.pt"
    _test_probs(inputs, best, inputs["features"])
    predict.predict_images(best, [inputs["crawl"] / "00.png"])
    assert used and set(used) == {"fp32"}


def _test_probs(inputs: dict[str, Path], best: Path, features: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """(test split, the evaluate stage's scores of checkpoint `best` on it, with these cached features)."""
    table = pd.read_parquet(inputs["dataset"]).query("split == 'test'").reset_index(drop=True)
    test = evaluate.TestSet(table, np.zeros((len(table), 3), np.float32), np.zeros(len(table), int), LABELS)
    return table, evaluate.test_probs(load_checkpoint(best), test, features, inputs["crawl"])


def test_training_logs_inside_a_dvc_repo_without_commits(tmp_path, monkeypatch):
    """A fresh `git init` + `dvc init` + `dvc repro` (CI, a new project): dvclive must not need a commit."""
    monkeypatch.chdir(tmp_path)
    env = {
        **os.environ,
        "DVC_NO_ANALYTICS": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    subprocess.run("git init -q && dvc init -q", shell=True, check=True, env=env)
    with train_module.StageLive("dvclive/m", dvcyaml=False, save_dvc_exp=False) as live:
        live.log_metric("val/mAP", 0.5)
        live.next_step()
    assert (tmp_path / "dvclive" / "m" / "plots" / "metrics" / "val" / "mAP.tsv").read_text().splitlines() == [
        "step\tmAP",
        "0\t0.5",
    ]
    assert not (tmp_path / "dvc.yaml").exists(), "dvclive must not write the project's dvc.yaml"


def test_fine_tuning_with_too_few_steps_per_epoch_is_flagged_with_a_batch_that_fits():
    assert schedule.few_steps_warning(36, 1142, 32) is None  # batch 32 on the CCP benchmark: no accuracy lost
    message = schedule.few_steps_warning(9, 1142, 128)
    assert (
        message is not None
        and "9 optimizer steps per epoch on 1142 training images" in message
        and "train.batch_size to at most 57" in message
    )


def _trained_gcn(inputs: dict[str, Path], tmp_path: Path) -> Path:
    """best.pt of a one-epoch GCN head on the cached features."""
    _train(inputs, "gcn", tmp_path, _params(tmp_path, inputs["weights"], epochs=1))
    return tmp_path / "models" / "gcn" / "best.pt"


@pytest.mark.slow
def test_predict_goes_past_unreadable_images_lists_each_with_its_error_and_exits_1(inputs, tmp_path, capsys):
    best = _trained_gcn(inputs, tmp_path)
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a.png", "c.png"):
        (photos / name).write_bytes((inputs["crawl"] / "00.png").read_bytes())
    (photos / "b.jpg").write_bytes(b"<html>403 Forbidden</html>")  # an error page saved as a photo
    (photos / "d.png").write_bytes((inputs["crawl"] / "00.png").read_bytes()[:200])  # a download cut short
    capsys.readouterr()

    assert predict.main([str(photos), "--checkpoint", str(best), "--top-k", "2"]) == 1
    captured = capsys.readouterr()
    results = json.loads(captured.out)
    assert [Path(r["path"]).name for r in results] == ["a.png", "b.jpg", "c.png", "d.png"], "every image, in order"
    assert [len(r["top"]) for r in results if "top" in r] == [2, 2] and results[0]["scores"] == results[2]["scores"]
    failed = {Path(r["path"]).name: r for r in results if "error" in r}
    assert set(failed) == {"b.jpg", "d.png"} and all(set(r) == {"path", "error"} for r in failed.values())
    assert (
        f"{photos / 'b.jpg'}: cannot read image (UnidentifiedImageError" in failed["b.jpg"]["error"]
        and "crawl.dir" not in failed["b.jpg"]["error"]
    )
    assert failed["d.png"]["error"].startswith(f"{photos / 'd.png'}: cannot read image (OSError")
    assert all(f"predict: warning: {r['error']}" in captured.err for r in failed.values())
    assert "predict: 2 of 4 images could not be read" in captured.err

    out = tmp_path / "predictions.csv"
    assert predict.main([str(photos), "--checkpoint", str(best), "--top-k", "2", "--out", str(out)]) == 1
    table = pd.read_csv(out, keep_default_na=False)
    assert list(table.columns) == ["path", "label_1", "prob_1", "label_2", "prob_2", "predicted", "error"]
    assert list(table["error"] != "") == [False, True, False, True] and list(table["label_1"] == "") == [
        False,
        True,
        False,
        True,
    ]

    rows = predict.predict_images(
        best, [photos / "b.jpg", photos / "a.png"], top_k=3, vetted=True
    )  # annotation push --checkpoint
    assert "top" not in rows[0] and "scores" not in rows[0] and "crawl.dir" in rows[0]["error"]
    assert len(rows[1]["top"]) == 3


def test_decision_thresholds_are_chosen_on_the_validation_split_as_evaluate_scores_it(inputs, tmp_path):
    best = _trained_gcn(inputs, tmp_path)
    table = pd.read_parquet(inputs["dataset"]).query("split == 'val'").reset_index(drop=True)
    targets = training_data.target_matrix(table["labels"], LABELS)
    val = evaluate.TestSet(table, targets, np.zeros(len(table), int), LABELS)
    probs = evaluate.test_probs(load_checkpoint(best), val, inputs["features"], inputs["crawl"])
    np.testing.assert_allclose(load_checkpoint(best)["thresholds"], f1_thresholds(probs, targets), atol=1e-6)


def test_predict_and_push_take_a_model_by_name_or_the_one_validation_chose(inputs, tmp_path, capsys):
    params = _params(tmp_path, inputs["weights"], epochs=2)
    for model in ("linear", "gcn_identity"):
        _train(inputs, model, tmp_path, params)
    models = tmp_path / "models"
    val_map = {name: load_checkpoint(models / name / "best.pt")["val"]["mAP"] for name in ("linear", "gcn_identity")}
    chosen = max(val_map, key=val_map.get)
    none = tmp_path / "no-selection.json"  # before the select stage has run: the highest validation mAP
    assert predict.model_checkpoint("best", models, none) == models / chosen / "best.pt"
    assert f"predict: model {chosen} (highest validation mAP in {models}; {none} not found" in capsys.readouterr().err
    assert predict.model_checkpoint("linear", models) == models / "linear" / "best.pt"
    out = tmp_path / "best.json"
    assert (
        predict.main(
            [
                str(inputs["crawl"] / "00.png"),
                "--model",
                "best",
                "--models-dir",
                str(models),
                "--out",
                str(out),
                "--selection",
                str(none),
            ]
        )
        == 0
    )
    assert json.loads(out.read_text()) == predict.predict_images(
        models / chosen / "best.pt", [inputs["crawl"] / "00.png"]
    ), "without a selection, the checkpoint's own rules"
    assert predict.main([str(inputs["crawl"]), "--model", "mlgcn", "--models-dir", str(models)]) == 2
    assert _error(capsys, "predict").startswith(f"{models / 'mlgcn' / 'best.pt'}: checkpoint not found")
    empty = [str(inputs["crawl"]), "--model", "best", "--models-dir", str(tmp_path / "empty"), "--selection", str(none)]
    assert predict.main(empty) == 2
    assert _error(capsys, "predict").startswith(f"{tmp_path / 'empty'}: no trained model")
    with pytest.raises(SystemExit):
        predict.parse_args(
            [str(inputs["crawl"]), "--model", "best", "--checkpoint", str(models / "linear" / "best.pt")]
        )


@pytest.mark.parametrize("top_k", ["0", "-1", "4"])
def test_predict_refuses_a_top_k_outside_the_models_labels(inputs, tmp_path, capsys, top_k):
    best = _trained_gcn(inputs, tmp_path)
    assert predict.main([str(inputs["crawl"] / "00.png"), "--checkpoint", str(best), "--top-k", top_k]) == 2
    assert _error(capsys, "predict") == f"--top-k must be 1 to 3 (the labels of {best}), not {top_k}"


def test_training_commands_refuse_bad_inputs_with_a_message_naming_the_file(inputs, tmp_path, capsys):
    best = _trained_gcn(inputs, tmp_path)
    (tmp_path / "empty").mkdir()
    assert predict.main([str(tmp_path / "empty"), "--checkpoint", str(best)]) == 2
    assert _error(capsys, "predict").startswith(f"no image files in ['{tmp_path / 'empty'}']")
    assert predict.main([str(inputs["crawl"]), "--checkpoint", str(tmp_path / "none.pt")]) == 2
    assert _error(capsys, "predict") == f"{tmp_path / 'none.pt'}: checkpoint not found; {CHECKPOINT_REMEDY}"

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(best.read_bytes()[:1000])
    assert predict.main([str(inputs["crawl"]), "--checkpoint", str(truncated)]) == 2
    assert re.fullmatch(
        rf"{re.escape(str(truncated))}: cannot read checkpoint, not a complete file written by torch.save "
        r"\(RuntimeError: .*\); train the model .*dvc pull\)",
        _error(capsys, "predict"),
    )

    other = load_checkpoint(best)
    other["model"] = {
        "weight": torch.zeros(3, 1280),
        "bias": torch.zeros(3),
    }  # a linear head's tensors under a GCN head's meta
    torch.save(other, tmp_path / "other.pt")
    assert predict.main([str(inputs["crawl"]), "--checkpoint", str(tmp_path / "other.pt")]) == 2
    assert re.match(
        rf"{re.escape(str(tmp_path / 'other.pt'))}: its tensors do not fit PooledHead: \d+ missing \(e\.g\. .*\); "
        r"2 unexpected \(e\.g\. bias\)\. The file does not match",
        _error(capsys, "predict"),
    )

    evaluate_args = ["--dataset", str(inputs["dataset"]), "--label-subset", str(inputs["subset"]),
                     "--features", str(inputs["features"]), "--crawl-dir", str(inputs["crawl"]),
                     "--report", str(tmp_path / "report.md"), "--metrics", str(tmp_path / "metrics.json"),
                     "--selection", str(tmp_path / "selection.json"),
                     "--params", str(_params(tmp_path, inputs["weights"]))]  # fmt: skip
    assert evaluate.main([*evaluate_args, "--models-dir", str(tmp_path / "no-models")]) == 2
    assert _error(capsys, "evaluate").startswith(f"{tmp_path / 'no-models' / 'cnn' / 'best.pt'}: checkpoint not found")

    params = _params(tmp_path, inputs["weights"])
    params.write_text(params.read_text().replace("backbone: tf_efficientnet_lite0", "backbone: vgg"))
    feature_args = [
        "--dataset",
        str(inputs["dataset"]),
        "--label-subset",
        str(inputs["subset"]),
        "--crawl-dir",
        str(inputs["crawl"]),
        "--out",
        str(tmp_path / "f.npz"),
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    assert features.main([*feature_args, "--params", str(params)]) == 2
    assert _error(capsys, "features") == (
        f"{params}: features.backbone must be one of resnet50, tf_efficientnet_lite0, tf_efficientnet_lite1,"
        " tf_efficientnet_lite2, not 'vgg'"
    )
    assert (
        features.main(
            [
                *feature_args,
                "--crawl-dir",
                str(tmp_path / "nowhere"),
                "--params",
                str(_params(tmp_path, inputs["weights"])),
            ]
        )
        == 2
    )
    assert "nowhere/00.png: cannot read image (FileNotFoundError" in _error(capsys, "features")


@pytest.mark.slow
def test_features_are_extracted_in_train_precision_so_predict_scores_what_evaluate_scores(inputs, tmp_path):
    """bf16-all on the CPU: predict runs backbone and head under bf16, so the cached features must come from a bf16
    backbone too."""
    params = _params(
        tmp_path, inputs["weights"], epochs=8, patience=8, lr_head=0.03, precision="bf16-all"
    )  # trained enough that scores spread out from 0.5
    bf16 = dict(inputs, features=_extract_features(inputs, tmp_path / "features.npz", params))
    assert json.loads(str(np.load(bf16["features"])["meta"]))["precision"] == "bf16-all"
    _train(bf16, "gcn", tmp_path, params)
    best = tmp_path / "models" / "gcn" / "best.pt"
    table, scored = _test_probs(inputs, best, bf16["features"])
    predicted = predict.predict_images(best, [inputs["crawl"] / p for p in table["path"]])
    np.testing.assert_allclose(
        [[r["scores"][label] for label in LABELS] for r in predicted], scored, atol=1e-4
    )  # fp32 features: off by 6.5e-3


def test_a_csra_head_without_cached_maps_or_the_flip_without_mirror_images_is_refused_with_the_setting(
    inputs, tmp_path, capsys
):
    npz = dict(np.load(inputs["features"]))
    pooled_only = {key: value for key, value in npz.items() if not key.startswith("maps")}
    np.savez(tmp_path / "pooled.npz", **pooled_only)
    np.savez(tmp_path / "unmirrored.npz", **{key: value for key, value in pooled_only.items() if "flip" not in key})
    params = _params(tmp_path, inputs["weights"], epochs=1)
    _train(dict(inputs, features=tmp_path / "pooled.npz"), "residual_csra", tmp_path, params, status=2)
    assert (
        _error(capsys, "train")
        == f"{tmp_path / 'pooled.npz'}: holds no feature maps, which a csra head reads; set features.maps: true "
        "(params.yaml) and re-run the features stage (dvc repro)"
    )
    _train(dict(inputs, features=tmp_path / "unmirrored.npz"), "linear", tmp_path, params, status=2)
    assert _error(capsys, "train").startswith(
        f"{tmp_path / 'unmirrored.npz'}: holds no mirrored features, which train.tta_flip scores with; set "
        "features.flip: true"
    )


@pytest.mark.slow
def test_a_csra_head_predicts_from_images_what_evaluate_scores_from_the_cached_fp16_maps(inputs, tmp_path):
    params = _params(tmp_path, inputs["weights"], epochs=4, patience=4, lr_head=0.03)
    _train(inputs, "residual_csra", tmp_path, params)
    best = tmp_path / "models" / "residual_csra" / "best.pt"
    table, scored = _test_probs(inputs, best, inputs["features"])
    predicted = predict.predict_images(best, [inputs["crawl"] / p for p in table["path"]])
    assert np.ptp(scored) > 0.01, "trained enough that the scores differ"
    np.testing.assert_allclose(
        [[r["scores"][label] for label in LABELS] for r in predicted], scored, atol=2e-3
    )  # the cache rounds maps to fp16


@pytest.mark.parametrize(
    ("setting", "value", "named"),
    [("image_size", 48, "image_size 48 (model: 32)"), ("precision", "fp32", "precision 'fp32' (model: 'bf16')")],
)
def test_evaluate_refuses_features_extracted_otherwise_than_a_heads_training_features(
    inputs, tmp_path, capsys, setting, value, named
):
    npz = dict(np.load(inputs["features"]))
    npz["meta"] = json.dumps(json.loads(str(npz["meta"])) | {setting: value})
    np.savez(tmp_path / "features.npz", **npz)
    for model in (
        "cnn",
        "gcn",
    ):  # the report's first two models (params keys in sorted order); the GCN head reads the features
        _train(inputs, model, tmp_path, _params(tmp_path, inputs["weights"], epochs=1))
    assert evaluate.main([
        "--dataset", str(inputs["dataset"]), "--label-subset", str(inputs["subset"]),
        "--features", str(tmp_path / "features.npz"), "--crawl-dir", str(inputs["crawl"]),
        "--models-dir", str(tmp_path / "models"), "--report", str(tmp_path / "report.md"),
        "--selection", str(tmp_path / "selection.json"),
        "--metrics", str(tmp_path / "metrics.json"), "--params", str(_params(tmp_path, inputs["weights"])),
    ]) == 2  # fmt: skip
    assert re.fullmatch(
        rf"{re.escape(str(tmp_path / 'features.npz'))}: features of {re.escape(named)}, not those model gcn was "
        r"trained on; re-run the features stage and the training \(dvc repro\)",
        _error(capsys, "evaluate"),
    )


def test_a_head_is_not_trained_on_features_extracted_in_another_precision(inputs, tmp_path, capsys):
    _train(
        inputs, "gcn", tmp_path, _params(tmp_path, inputs["weights"], epochs=1, precision="fp32"), status=2
    )  # the fixture's features: "bf16"
    assert (
        _error(capsys, "train")
        == f"{inputs['features']}: features extracted in bf16, but train.precision is fp32; re-run the features stage "
        "(dvc repro features)"
    )


def test_the_features_stage_refuses_an_unknown_precision_before_extracting(inputs, tmp_path, capsys):
    params = _params(tmp_path, inputs["weights"], precision="fp16")
    assert (
        features.main(
            [
                "--dataset",
                str(inputs["dataset"]),
                "--label-subset",
                str(inputs["subset"]),
                "--crawl-dir",
                str(inputs["crawl"]),
                "--out",
                str(tmp_path / "f.npz"),
                "--cache-dir",
                str(tmp_path / "cache"),
                "--params",
                str(params),
            ]
        )
        == 2
    )
    assert "train.precision must be one of bf16, bf16-all, fp32, not 'fp16'" in _error(capsys, "features")
    assert not (tmp_path / "f.npz").exists()


class _UnreadableImages(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int):
        raise InputError("/crawl/b1/x.jpg: cannot read image (OSError: broken data stream); check crawl.dir")


def test_an_input_error_in_a_dataloader_worker_is_reported_without_torchs_traceback(capsys):
    def train_with_a_worker() -> int:
        list(torch.utils.data.DataLoader(_UnreadableImages(), num_workers=1))
        return 0

    assert report_user_errors("train", train_with_a_worker) == 2
    assert (
        _error(capsys, "train") == "/crawl/b1/x.jpg: cannot read image (OSError: broken data stream); check crawl.dir"
    )


@pytest.mark.slow
def test_a_checkpoint_whose_description_lacks_an_entry_is_named(inputs, tmp_path):
    best = _trained_gcn(inputs, tmp_path)
    checkpoint = torch.load(best, weights_only=True)
    del checkpoint["meta"]["finetuned"]
    torch.save(checkpoint, best)
    with pytest.raises(
        InputError,
        match=rf"{re.escape(str(best))}: its description of the model is incomplete or damaged "
        r"\(KeyError: 'finetuned'\)",
    ):
        load_checkpoint(best)
