"""The train stage on a tiny synthetic dataset: interrupted-then-resumed training, fine-tuning from pixels, settings
refused, several processes."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from helpers import (
    LABELS,
    MODELS,
    error_message,
    run_train,
    training_params,
)
from torch import nn

import training.train as train_module
from common.cli import InputError
from common.settings import ParamsError, load_section
from pipeline.pixel_cache import PixelCacheSettings, build_cache
from training import feeds, predict, schedule
from training.checkpoint import load_checkpoint
from training.distributed import SINGLE, World, shard
from training.models import ModelSpec
from training.settings import TrainSettings


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
    params = training_params(tmp_path, inputs["weights"], epochs=3, cached_pixels=cached_pixels)
    run_train(inputs, model, tmp_path / "straight", params)
    with monkeypatch.context() as patch:
        _interrupt_mid_epoch(patch, epoch=1)
        with pytest.raises(KeyboardInterrupt):
            run_train(inputs, model, tmp_path / "resumed", params)
    assert load_checkpoint(tmp_path / "resumed" / "models" / model / "last.pt")["state"]["epoch"] == 1
    run_train(inputs, model, tmp_path / "resumed", params, "--resume")
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
    params = training_params(tmp_path, inputs["weights"], epochs=3)
    run_train(inputs, "gcn", tmp_path / "straight", params)
    with monkeypatch.context() as patch:
        _kill_at_the_end_of_epoch(patch, 1, when)
        with pytest.raises(KeyboardInterrupt):
            run_train(inputs, "gcn", tmp_path / "resumed", params)
    run_train(inputs, "gcn", tmp_path / "resumed", params, "--resume")
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
        run_train(inputs, "gcn", tmp_path, training_params(tmp_path, inputs["weights"], epochs=4))
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
        run_train(inputs, "linear", tmp_path, training_params(tmp_path, inputs["weights"], epochs=1, finetune=True))
    checkpoint = load_checkpoint(tmp_path / "models" / "linear" / "best.pt")
    assert checkpoint["meta"]["finetuned"] and any(key.startswith("body.") for key in checkpoint["model"])
    [result] = predict.predict_images(tmp_path / "models" / "linear" / "best.pt", [inputs["crawl"] / "00.png"], top_k=3)
    assert [label for label, _ in result["top"]] == sorted(LABELS, key=lambda label: -result["scores"][label])


@pytest.mark.slow
def test_finetuning_from_the_pixel_cache_reads_no_image_file(inputs, tmp_path, capsys):
    no_files = dict(inputs, crawl=tmp_path / "no-crawl")
    params = training_params(tmp_path, inputs["weights"], epochs=1, finetune=True, cached_pixels=True)
    run_train(no_files, "linear", tmp_path, params)
    checkpoint = load_checkpoint(tmp_path / "models" / "linear" / "last.pt")
    initial = torch.load(inputs["weights"], weights_only=True)
    assert checkpoint["meta"]["finetuned"] and checkpoint["state"]["epoch"] == 1
    assert not torch.equal(checkpoint["model"]["body.model.conv_stem.weight"], initial["conv_stem.weight"]), (
        "the backbone must train"
    )
    run_train(
        no_files,
        "linear",
        tmp_path / "files",
        training_params(tmp_path, inputs["weights"], epochs=1, finetune=True),
        status=2,
    )
    assert "no-crawl/01.png: cannot read image (FileNotFoundError" in error_message(capsys, "train")


@pytest.mark.slow
def test_bf16_stays_off_on_the_cpu_unless_asked_for_everywhere(inputs, tmp_path):
    """train.precision bf16 trains a CPU run exactly as fp32 does; bf16-all runs it under bf16 autocast."""
    weights = {}
    for precision in ("fp32", "bf16", "bf16-all"):
        out = tmp_path / precision
        out.mkdir()
        run_train(
            inputs,
            "linear",
            out,
            training_params(out, inputs["weights"], epochs=1, finetune=True, cached_pixels=True, precision=precision),
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
    params = training_params(tmp_path, inputs["weights"], finetune=True, cached_pixels=True, batch_size=4)
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
    run_train(
        dict(inputs, pixels=tmp_path / "pixels"),
        "cnn",
        tmp_path,
        training_params(tmp_path, inputs["weights"], cached_pixels=True),
        status=2,
    )
    assert re.search(
        "pixel cache lacks 2 dataset images.*python -m pipeline.pixel_cache", error_message(capsys, "train")
    )


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


def test_unknown_model_and_missing_inputs_say_what_to_do(inputs, tmp_path, capsys):
    params = training_params(tmp_path, inputs["weights"])
    run_train(inputs, "resnet-9000", tmp_path, params, status=2)
    assert (
        error_message(capsys, "train") == "unknown model 'resnet-9000'; params.yaml 'models' has "
        "['cnn', 'gcn', 'gcn_identity', 'linear', 'residual_csra']"
    )
    missing = dict(inputs, dataset=tmp_path / "nowhere.parquet")
    run_train(missing, "linear", tmp_path, params, status=2)
    assert "nowhere.parquet: dataset not found; run the curation stages" in error_message(capsys, "train")


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
    params = training_params(tmp_path, inputs["weights"])
    raw = yaml.safe_load(params.read_text())
    raw["models"]["gcn"] = entry
    params.write_text(yaml.safe_dump(raw))
    run_train(inputs, "gcn", tmp_path, params, status=2)
    assert re.search(message, error_message(capsys, "train"))


def test_resuming_under_another_configuration_is_refused(inputs, tmp_path, capsys):
    run_train(inputs, "gcn", tmp_path, training_params(tmp_path, inputs["weights"], epochs=1))
    run_train(
        inputs,
        "gcn",
        tmp_path,
        training_params(tmp_path, inputs["weights"], epochs=2, gcn_hidden=8),
        "--resume",
        status=2,
    )
    assert re.search(r"other settings: gcn_hidden 16 -> 8\. Rerun without --resume", error_message(capsys, "train"))


def test_resuming_a_checkpoint_that_predates_recorded_settings_is_refused(inputs, tmp_path, capsys):
    run_train(inputs, "gcn", tmp_path, training_params(tmp_path, inputs["weights"], epochs=1))
    last = tmp_path / "models" / "gcn" / "last.pt"
    checkpoint = load_checkpoint(last)
    del checkpoint["meta"]["train"], checkpoint["meta"]["processes"]  # as written before the settings were recorded
    torch.save(checkpoint, last)
    run_train(inputs, "gcn", tmp_path, training_params(tmp_path, inputs["weights"], epochs=2), "--resume", status=2)
    assert re.search(
        r"older stylegraph that did not record its training settings.*rerun without --resume",
        error_message(capsys, "train"),
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
    run_train(inputs, "gcn", tmp_path, training_params(tmp_path, inputs["weights"], epochs=2))
    run_train(
        inputs,
        "gcn",
        tmp_path,
        training_params(tmp_path, inputs["weights"], epochs=2, lr_head=1e-2, seed=99, batch_size=4),
        "--resume",
        status=2,
    )
    assert re.search(
        r"other settings: train.batch_size 8 -> 4, train.lr_head 0.001 -> 0.01, train.seed 7 -> 99\. "
        r"Rerun without --resume .* restore those settings",
        error_message(capsys, "train"),
    )
    params = training_params(tmp_path, inputs["weights"], epochs=2)
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
    run_train(
        inputs,
        "gcn",
        tmp_path,
        training_params(tmp_path, inputs["weights"], epochs=3, patience=9, workers=1),
        "--resume",
    )
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
    settings = load_section(
        TrainSettings, "train", training_params(tmp_path, inputs["weights"], batch_size=4, workers=workers)
    )
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


def test_a_csra_head_without_cached_maps_or_the_flip_without_mirror_images_is_refused_with_the_setting(
    inputs, tmp_path, capsys
):
    npz = dict(np.load(inputs["features"]))
    pooled_only = {key: value for key, value in npz.items() if not key.startswith("maps")}
    np.savez(tmp_path / "pooled.npz", **pooled_only)
    np.savez(tmp_path / "unmirrored.npz", **{key: value for key, value in pooled_only.items() if "flip" not in key})
    params = training_params(tmp_path, inputs["weights"], epochs=1)
    run_train(dict(inputs, features=tmp_path / "pooled.npz"), "residual_csra", tmp_path, params, status=2)
    assert (
        error_message(capsys, "train")
        == f"{tmp_path / 'pooled.npz'}: holds no feature maps, which a csra head reads; set features.maps: true "
        "(params.yaml) and re-run the features stage (dvc repro)"
    )
    run_train(dict(inputs, features=tmp_path / "unmirrored.npz"), "linear", tmp_path, params, status=2)
    assert error_message(capsys, "train").startswith(
        f"{tmp_path / 'unmirrored.npz'}: holds no mirrored features, which train.tta_flip scores with; set "
        "features.flip: true"
    )


def test_a_head_is_not_trained_on_features_extracted_in_another_precision(inputs, tmp_path, capsys):
    run_train(
        inputs, "gcn", tmp_path, training_params(tmp_path, inputs["weights"], epochs=1, precision="fp32"), status=2
    )  # the fixture's features: "bf16"
    assert (
        error_message(capsys, "train")
        == f"{inputs['features']}: features extracted in bf16, but train.precision is fp32; re-run the features stage "
        "(dvc repro features)"
    )
