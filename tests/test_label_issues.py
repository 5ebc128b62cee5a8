"""The label-issue finder on tiny pictures whose colours carry their labels: a planted wrong label ranks near the
top."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from helpers import LABELS, MODELS, run_train, select_stage, training_params

from training import label_issues

FINDER = {"model": "linear", "max_rows": 30}


def _finder_params(tmp_path: Path, weights: Path, models: tuple[str, ...] = ("linear",), **finder) -> Path:
    params = training_params(tmp_path, weights, epochs=6, patience=6, lr_head=0.3, warmup_epochs=0)
    raw = yaml.safe_load(params.read_text()) | {
        "label_issues": FINDER | finder,
        "select": {"folds": 4, "seed": 0, "candidates": []},
    }
    raw["models"] = {name: MODELS[name] for name in models}
    params.write_text(yaml.safe_dump(raw))
    return params


def _find(inputs: dict[str, Path], tmp_path: Path, params: Path, dataset: Path) -> int:
    """Run the select stage, then the label_issues stage's command line, on `dataset` with the models trained into
    tmp_path/models."""
    select_stage(inputs, tmp_path, params, dataset)
    return label_issues.main([
        "--dataset", str(dataset), "--label-subset", str(inputs["subset"]),
        "--out-of-fold", str(tmp_path / "out_of_fold.parquet"), "--selection", str(tmp_path / "selection.json"),
        "--out", str(tmp_path / "issues.parquet"), "--report", str(tmp_path / "issues.md"),
        "--metrics", str(tmp_path / "issues.json"), "--params", str(params),
    ])  # fmt: skip


def _telling_features(inputs: dict[str, Path], tmp_path: Path) -> dict[str, Path]:
    """The fixture's features file with pooled vectors that carry each image's labels (a backbone that sees colour
    perfectly), plus noise."""
    npz = dict(np.load(inputs["features"]))
    table = pd.read_parquet(inputs["dataset"]).set_index("image_id")
    rng = np.random.default_rng(0)
    for array, ids in (("avg", npz["image_id"]), ("avg_flip", npz["flip_image_id"])):
        vectors = rng.normal(0, 0.1, npz[array].shape).astype(np.float32)
        vectors[:, :3] += 3 * np.array(
            [[label in table.at[i, "labels"] for label in LABELS] for i in ids], dtype=np.float32
        )
        npz[array] = vectors
    np.savez(tmp_path / "telling.npz", **npz)
    return dict(inputs, features=tmp_path / "telling.npz")


def test_a_planted_wrong_label_ranks_near_the_top_and_the_test_split_stays_out(inputs, tmp_path):
    params = _finder_params(tmp_path, inputs["weights"])
    inputs = _telling_features(inputs, tmp_path)
    run_train(
        inputs, "linear", tmp_path, params
    )  # trained on the clean labels; the folds below train on the planted one
    table = pd.read_parquet(inputs["dataset"])
    planted = table.index[table["image_id"] == "img01"][0]  # a green picture, training split
    assert table.at[planted, "labels"].tolist() == ["green"] and table.at[planted, "split"] == "train"
    table.at[planted, "labels"], table.at[planted, "main_style"] = (
        ["blue"],
        "blue",
    )  # the expert clicked the wrong colour
    table.to_parquet(tmp_path / "dataset.parquet")
    assert _find(inputs, tmp_path, params, tmp_path / "dataset.parquet") == 0
    issues = pd.read_parquet(tmp_path / "issues.parquet")
    top = set(zip(issues.head(3)["image_id"], issues.head(3)["label"], issues.head(3)["kind"], strict=True))
    assert {("img01", "blue", "wrong main style"), ("img01", "green", "missing")} <= top, (
        "both cells of the planted label among the 3 most suspicious of 66 (heads of 2 epochs on 16 pictures)"
    )
    row = issues[(issues["image_id"] == "img01") & (issues["label"] == "green")].iloc[0]
    assert (
        row["experts_labels"].tolist() == ["blue"] and row["model_main"] == "green" and row["model_probability"] > 0.5
    )
    assert set(issues["split"]) <= {"train", "val"}, "the test split's labels are never put up for change"
    assert list(issues["rank"]) == list(range(1, len(issues) + 1)) and issues["score"].is_monotonic_decreasing
    metrics = json.loads((tmp_path / "issues.json").read_text())
    assert metrics["model"] == "linear" and metrics["images"] == 22 and metrics["rows"] == len(issues) == 30
    assert "| 1 | " in (tmp_path / "issues.md").read_text()


def test_a_finder_on_a_model_without_out_of_fold_scores_is_refused_naming_the_setting(inputs, tmp_path, capsys):
    params = _finder_params(tmp_path, inputs["weights"], models=("cnn", "linear"), model="cnn")
    for model in ("cnn", "linear"):
        run_train(inputs, model, tmp_path, params)
    assert _find(inputs, tmp_path, params, inputs["dataset"]) == 2
    assert "label_issues.model 'cnn' has no out-of-fold scores: the select stage scores heads on cached features " in (
        capsys.readouterr().err
    )


def test_kinds_name_what_the_fix_would_be():
    kinds = label_issues.issue_kinds(np.array([[1, 0, 1], [0, 1, 0]]), np.array([0, 1]))
    assert kinds.tolist() == [
        ["wrong main style", "missing", "extra sub-style"],
        ["missing", "wrong main style", "missing"],
    ]
    assert label_issues.issue_kinds(np.array([[1, 0]]), np.array([-1])).tolist() == [["extra", "missing"]], (
        "tag sets have no main label"
    )


def test_neighbour_agreement_is_the_share_of_nearest_look_alikes_that_agree_with_each_cell():
    features = np.array([[1.0, 0.0], [0.9, 0.1], [0.95, 0.05], [0.0, 1.0], [0.1, 0.9]])
    targets = np.array([[1, 0], [1, 0], [0, 1], [0, 1], [0, 1]])  # row 2 looks like rows 0-1 but says otherwise
    quality = label_issues.neighbour_quality(features, targets, k=2, block=2)
    # (agreeing neighbours + 1) / (k + 2)
    assert quality[0].tolist() == [0.5, 0.5], "neighbours 2 and 1: one agrees on each label"
    assert quality[2].tolist() == [0.25, 0.25], "both look-alikes carry label 0 and not label 1: its labels disagree"
    assert quality[3].tolist() == [0.5, 0.5], "neighbours 4 (agrees) and 1, the next most alike (does not)"
