"""The features stage: cached backbone features, per-batch shards, incremental extraction, the precision."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import (
    LABELS,
    error_message,
    features_argv,
    run_features,
    run_train,
    scored_test_split,
    training_params,
)

from training import data as training_data
from training import features, predict
from training.settings import FeatureSettings


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
    params, out = training_params(tmp_path, inputs["weights"]), tmp_path / "features.npz"
    run_features(
        _dataset_in_batches(inputs, tmp_path, first_batch=20, keep=20), out, params
    )  # images 0-15 train, 16-19 val
    shard = tmp_path / "features_cache" / "b1.npz"
    written = shard.stat().st_mtime_ns
    passes = _spy_on_extraction(monkeypatch)
    run_features(
        _dataset_in_batches(inputs, tmp_path, first_batch=20), out, params
    )  # batch b2: 8 images, and their mirror images
    assert passes == [(8, 8)] and shard.stat().st_mtime_ns == written
    _assert_same_features(out, inputs["features"])
    run_features(_dataset_in_batches(inputs, tmp_path, first_batch=20), out, params)
    assert passes == [(8, 8), (0, 0)], "nothing new: nothing extracted"


@pytest.mark.slow
def test_an_image_that_joined_an_old_batch_is_the_only_one_extracted(inputs, tmp_path, monkeypatch):
    params = training_params(tmp_path, inputs["weights"])
    table = pd.read_parquet(inputs["dataset"]).assign(batch="b1")
    table.loc[table["image_id"].isin(["img03", "img04"]), "split"] = (
        "val"  # another split changes nothing: every image is mirrored
    )
    table.drop(index=[5]).to_parquet(tmp_path / "dataset.parquet")  # img05: labelled later
    partial = dict(inputs, dataset=tmp_path / "dataset.parquet")
    run_features(partial, tmp_path / "features.npz", params)
    passes = _spy_on_extraction(monkeypatch)
    run_features(
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
    run_features(
        inputs, tmp_path / "features.npz", training_params(tmp_path, "none")
    )  # a random backbone: nothing to reuse
    cache = tmp_path / "features_cache"
    assert cache.is_dir() and not any(cache.iterdir())
    (cache / ".b1.npz.k2j4x.tmp").write_bytes(b"half a shard")
    run_features(inputs, tmp_path / "features.npz", training_params(tmp_path, inputs["weights"]))
    assert sorted(p.name for p in cache.iterdir()) == ["b1.npz"]


@pytest.mark.slow
def test_an_interrupted_extraction_keeps_the_batches_it_finished(inputs, tmp_path, monkeypatch):
    batches, out = _dataset_in_batches(inputs, tmp_path, first_batch=20), tmp_path / "features.npz"
    settings = FeatureSettings(
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
    params, out = training_params(tmp_path, weights), tmp_path / "features.npz"
    batches = _dataset_in_batches(inputs, tmp_path, first_batch=20)
    run_features(batches, out, params)
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
    run_features(batches, out, params)
    damaged = change.endswith("shard")
    assert passes == ([(8, 8)] if damaged else [(28, 28)])
    if damaged:
        assert re.search(
            r"features: warning: cache shard .*b2.npz is unreadable .*: extracting its images again",
            capsys.readouterr().err,
        )


@pytest.mark.slow
def test_features_are_extracted_in_train_precision_so_predict_scores_what_evaluate_scores(inputs, tmp_path):
    """bf16-all on the CPU: predict runs backbone and head under bf16, so the cached features must come from a bf16
    backbone too."""
    params = training_params(
        tmp_path, inputs["weights"], epochs=8, patience=8, lr_head=0.03, precision="bf16-all"
    )  # trained enough that scores spread out from 0.5
    bf16 = dict(inputs, features=run_features(inputs, tmp_path / "features.npz", params))
    assert json.loads(str(np.load(bf16["features"])["meta"]))["precision"] == "bf16-all"
    run_train(bf16, "gcn", tmp_path, params)
    best = tmp_path / "models" / "gcn" / "best.pt"
    table, scored = scored_test_split(inputs, best, bf16["features"])
    predicted = predict.predict_images(best, [inputs["crawl"] / p for p in table["path"]])
    np.testing.assert_allclose(
        [[r["scores"][label] for label in LABELS] for r in predicted], scored, atol=1e-4
    )  # fp32 features: off by 6.5e-3


def test_the_features_stage_refuses_an_unknown_precision_before_extracting(inputs, tmp_path, capsys):
    params = training_params(tmp_path, inputs["weights"], precision="fp16")
    assert features.main(features_argv(inputs, tmp_path / "f.npz", params)) == 2
    assert "train.precision must be one of bf16, bf16-all, fp32, not 'fp16'" in error_message(capsys, "features")
    assert not (tmp_path / "f.npz").exists()
