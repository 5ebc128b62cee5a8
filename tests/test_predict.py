"""Predict: predictions that match the cached path, unreadable images, models by name, bad inputs named."""

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
    run_train,
    scored_test_split,
    trained_gcn,
    training_params,
)

from common.cli import InputError
from training import evaluate, features, predict
from training.checkpoint import CHECKPOINT_REMEDY, build_trained_module, load_checkpoint


@pytest.mark.slow
def test_predictions_equal_the_cached_feature_path_and_the_cli_writes_csv(inputs, tmp_path, capsys):
    run_train(inputs, "gcn", tmp_path, training_params(tmp_path, inputs["weights"], epochs=1))
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


@pytest.mark.slow
def test_predict_goes_past_unreadable_images_lists_each_with_its_error_and_exits_1(inputs, tmp_path, capsys):
    best = trained_gcn(inputs, tmp_path)
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


def test_predict_and_push_take_a_model_by_name_or_the_one_validation_chose(inputs, tmp_path, capsys):
    params = training_params(tmp_path, inputs["weights"], epochs=2)
    for model in ("linear", "gcn_identity"):
        run_train(inputs, model, tmp_path, params)
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
    assert error_message(capsys, "predict").startswith(f"{models / 'mlgcn' / 'best.pt'}: checkpoint not found")
    empty = [str(inputs["crawl"]), "--model", "best", "--models-dir", str(tmp_path / "empty"), "--selection", str(none)]
    assert predict.main(empty) == 2
    assert error_message(capsys, "predict").startswith(f"{tmp_path / 'empty'}: no trained model")
    with pytest.raises(SystemExit):
        predict.parse_args(
            [str(inputs["crawl"]), "--model", "best", "--checkpoint", str(models / "linear" / "best.pt")]
        )


@pytest.mark.parametrize("top_k", ["0", "-1", "4"])
def test_predict_refuses_a_top_k_outside_the_models_labels(inputs, tmp_path, capsys, top_k):
    best = trained_gcn(inputs, tmp_path)
    assert predict.main([str(inputs["crawl"] / "00.png"), "--checkpoint", str(best), "--top-k", top_k]) == 2
    assert error_message(capsys, "predict") == f"--top-k must be 1 to 3 (the labels of {best}), not {top_k}"


def test_training_commands_refuse_bad_inputs_with_a_message_naming_the_file(inputs, tmp_path, capsys):
    best = trained_gcn(inputs, tmp_path)
    (tmp_path / "empty").mkdir()
    assert predict.main([str(tmp_path / "empty"), "--checkpoint", str(best)]) == 2
    assert error_message(capsys, "predict").startswith(f"no image files in ['{tmp_path / 'empty'}']")
    assert predict.main([str(inputs["crawl"]), "--checkpoint", str(tmp_path / "none.pt")]) == 2
    assert error_message(capsys, "predict") == f"{tmp_path / 'none.pt'}: checkpoint not found; {CHECKPOINT_REMEDY}"

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(best.read_bytes()[:1000])
    assert predict.main([str(inputs["crawl"]), "--checkpoint", str(truncated)]) == 2
    assert re.fullmatch(
        rf"{re.escape(str(truncated))}: cannot read checkpoint, not a complete file written by torch.save "
        r"\(RuntimeError: .*\); train the model .*dvc pull\)",
        error_message(capsys, "predict"),
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
        error_message(capsys, "predict"),
    )

    evaluate_args = ["--dataset", str(inputs["dataset"]), "--label-subset", str(inputs["subset"]),
                     "--features", str(inputs["features"]), "--crawl-dir", str(inputs["crawl"]),
                     "--report", str(tmp_path / "report.md"), "--metrics", str(tmp_path / "metrics.json"),
                     "--selection", str(tmp_path / "selection.json"),
                     "--params", str(training_params(tmp_path, inputs["weights"]))]  # fmt: skip
    assert evaluate.main([*evaluate_args, "--models-dir", str(tmp_path / "no-models")]) == 2
    assert error_message(capsys, "evaluate").startswith(
        f"{tmp_path / 'no-models' / 'cnn' / 'best.pt'}: checkpoint not found"
    )

    params = training_params(tmp_path, inputs["weights"])
    params.write_text(params.read_text().replace("backbone: tf_efficientnet_lite0", "backbone: vgg"))
    assert features.main(features_argv(inputs, tmp_path / "f.npz", params)) == 2
    assert error_message(capsys, "features") == (
        f"{params}: features.backbone must be one of resnet50, tf_efficientnet_lite0, tf_efficientnet_lite1,"
        " tf_efficientnet_lite2, not 'vgg'"
    )
    nowhere = features_argv(inputs, tmp_path / "f.npz", training_params(tmp_path, inputs["weights"]))
    assert features.main([*nowhere, "--crawl-dir", str(tmp_path / "nowhere")]) == 2  # the last --crawl-dir counts
    assert "nowhere/00.png: cannot read image (FileNotFoundError" in error_message(capsys, "features")


@pytest.mark.slow
def test_a_csra_head_predicts_from_images_what_evaluate_scores_from_the_cached_fp16_maps(inputs, tmp_path):
    params = training_params(tmp_path, inputs["weights"], epochs=4, patience=4, lr_head=0.03)
    run_train(inputs, "residual_csra", tmp_path, params)
    best = tmp_path / "models" / "residual_csra" / "best.pt"
    table, scored = scored_test_split(inputs, best, inputs["features"])
    predicted = predict.predict_images(best, [inputs["crawl"] / p for p in table["path"]])
    assert np.ptp(scored) > 0.01, "trained enough that the scores differ"
    np.testing.assert_allclose(
        [[r["scores"][label] for label in LABELS] for r in predicted], scored, atol=2e-3
    )  # the cache rounds maps to fp16


@pytest.mark.slow
def test_a_checkpoint_whose_description_lacks_an_entry_is_named(inputs, tmp_path):
    best = trained_gcn(inputs, tmp_path)
    checkpoint = torch.load(best, weights_only=True)
    del checkpoint["meta"]["finetuned"]
    torch.save(checkpoint, best)
    with pytest.raises(
        InputError,
        match=rf"{re.escape(str(best))}: its description of the model is incomplete or damaged "
        r"\(KeyError: 'finetuned'\)",
    ):
        load_checkpoint(best)
