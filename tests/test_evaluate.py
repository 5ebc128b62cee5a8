"""The evaluate stage: a CPU smoke run of every model through train, select and evaluate, and what evaluate refuses."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import (
    ADJACENCY_NORM,
    LABELS,
    MODELS,
    error_message,
    run_features,
    run_train,
    scored_test_split,
    select_stage,
    trained_gcn,
    training_params,
)

from training import data as training_data
from training import engine, evaluate, predict
from training.checkpoint import load_checkpoint
from training.metrics import f1_thresholds


def test_smoke_run_of_every_model_then_the_evaluation_report(inputs, tmp_path):
    params = training_params(tmp_path, inputs["weights"])
    for model in MODELS:
        run_train(inputs, model, tmp_path, params)
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


@pytest.mark.slow
@pytest.mark.parametrize("model", ["gcn", "cnn"])
def test_evaluation_and_prediction_run_a_model_in_the_precision_it_was_trained_in(inputs, tmp_path, monkeypatch, model):
    params = training_params(tmp_path, inputs["weights"], epochs=1, precision="fp32")
    inputs = dict(inputs, features=run_features(inputs, tmp_path / "features.npz", params))
    run_train(inputs, model, tmp_path, params)
    real, used = engine.autocast, []

    def recording(device, precision="bf16"):
        used.append(precision)
        return real(device, precision)

    monkeypatch.setattr(engine, "autocast", recording)  # evaluate and predict both score through engine.predict_probs
    best = tmp_path / "models" / model / "best.pt"
    scored_test_split(inputs, best, inputs["features"])
    predict.predict_images(best, [inputs["crawl"] / "00.png"])
    assert used and set(used) == {"fp32"}


def test_decision_thresholds_are_chosen_on_the_validation_split_as_evaluate_scores_it(inputs, tmp_path):
    best = trained_gcn(inputs, tmp_path)
    table = pd.read_parquet(inputs["dataset"]).query("split == 'val'").reset_index(drop=True)
    targets = training_data.target_matrix(table["labels"], LABELS)
    val = evaluate.TestSet(table, targets, np.zeros(len(table), int), LABELS)
    probs = evaluate.test_probs(load_checkpoint(best), val, inputs["features"], inputs["crawl"])
    np.testing.assert_allclose(load_checkpoint(best)["thresholds"], f1_thresholds(probs, targets), atol=1e-6)


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
        run_train(inputs, model, tmp_path, training_params(tmp_path, inputs["weights"], epochs=1))
    assert evaluate.main([
        "--dataset", str(inputs["dataset"]), "--label-subset", str(inputs["subset"]),
        "--features", str(tmp_path / "features.npz"), "--crawl-dir", str(inputs["crawl"]),
        "--models-dir", str(tmp_path / "models"), "--report", str(tmp_path / "report.md"),
        "--selection", str(tmp_path / "selection.json"),
        "--metrics", str(tmp_path / "metrics.json"), "--params", str(training_params(tmp_path, inputs["weights"])),
    ]) == 2  # fmt: skip
    assert re.fullmatch(
        rf"{re.escape(str(tmp_path / 'features.npz'))}: features of {re.escape(named)}, not those model gcn was "
        r"trained on; re-run the features stage and the training \(dvc repro\)",
        error_message(capsys, "evaluate"),
    )
