"""Expert clicks and the out-of-fold choice: hand-counted clicks, the fewest-clicks pre-annotation rule, folds,
the model selection on planted scores, and the select stage's command line feeding predict and push."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import LABELS, MODELS, run_train, select_stage, training_params

from training import predict, select
from training.clicks import NEVER, click_thresholds, correction_clicks, empty_form_clicks, summary
from training.out_of_fold import assign_folds

# Four photos, labels A, B, C; main styles A, A, B, C. The model's probabilities below.
TARGETS = np.array([[1, 1, 0], [1, 0, 0], [0, 1, 1], [1, 0, 1]])
MAIN = np.array([0, 0, 1, 2])
PROBS = np.array([[0.9, 0.6, 0.1], [0.8, 0.7, 0.2], [0.3, 0.9, 0.8], [0.6, 0.2, 0.7]])


def test_the_clicks_of_a_known_pre_annotation_match_a_hand_count():
    # Empty form: a main style each (4) + sub-styles B, C, A (3) = 7.
    assert empty_form_clicks(TARGETS, MAIN).total == 7
    # At 0.5 everywhere: photo 1 gets main A (right) and a wrong tick on B (1 click); photo 2 main B, tick C (right);
    # photo 3 main C, tick A (right); photo 0 main A, tick B (right). One click in all.
    clicks = correction_clicks(PROBS, np.full(3, 0.5), TARGETS, MAIN)
    assert clicks.total == 1 and clicks.labels[1].tolist() == [0, 1, 0] and clicks.main.tolist() == [0, 0, 0, 0]
    # A wrong main style is one click; the true main, ticked as a sub-style, one more to untick it; the pre-selected
    # main, a true sub-style, one more to tick it.
    wrong_main = np.array([[0.4, 0.9, 0.1]])  # truth: main A, sub B; the model pre-selects B and ticks A
    one = correction_clicks(wrong_main, np.full(3, 0.3), np.array([[1, 1, 0]]), np.array([0]))
    assert one.main.tolist() == [1] and one.labels.tolist() == [[1, 1, 0]], "main to A, untick A, tick B: 3 clicks"
    report = summary(clicks, empty_form_clicks(TARGETS, MAIN), ["A", "B", "C"])
    assert report["ratio"] == pytest.approx(1 / 7) and report["exactly_right"] == 0.75
    assert report["per_label"]["B"] == {"clicks": 1, "empty_form": 1} and report["per_label"]["(main style)"] == {
        "clicks": 0,
        "empty_form": 4,
    }


def test_tag_sets_have_no_main_style_click():
    targets, no_main = np.array([[1, 0], [1, 1]]), np.array([-1, -1])
    assert empty_form_clicks(targets, no_main).total == 3
    clicks = correction_clicks(np.array([[0.9, 0.8], [0.2, 0.9]]), np.full(2, 0.5), targets, no_main)
    assert clicks.total == 2 and clicks.main.tolist() == [0, 0], "a false tick and a missed one"


def test_a_label_whose_ticks_would_add_clicks_is_never_pre_ticked():
    thresholds = click_thresholds(PROBS, TARGETS, MAIN, shrink=0)
    # B as a sub-style (photos 0, 1, 3; photo 2 pre-selects B as main): true on photo 0 (0.6), false on photo 1
    # (0.7). Any cut that ticks photo 0 ticks photo 1 too: 1 click, the same as never ticking. So never.
    assert thresholds[1] == NEVER
    assert 0.2 < thresholds[0] <= 0.6 and 0.2 < thresholds[2] <= 0.8, "A and C: ticks that save clicks"
    # The F1 rule ticks B at its best-F1 cut and costs a click that the fewest-clicks rule does not.
    best = correction_clicks(PROBS, thresholds, TARGETS, MAIN).total
    assert best == 1 and best <= correction_clicks(PROBS, np.array([0.55, 0.55, 0.15]), TARGETS, MAIN).total - 1


def test_a_labels_cut_with_few_positives_is_shrunk_towards_the_pooled_cut():
    rng = np.random.default_rng(0)
    targets = (rng.random((400, 2)) < [0.5, 0.02]).astype(int)  # label 1: a handful of positives
    probs = np.clip(targets * 0.35 + rng.random((400, 2)) * 0.6, 0, 1)
    no_main = np.full(400, -1)
    own, shrunk = click_thresholds(probs, targets, no_main, 0), click_thresholds(probs, targets, no_main, 1000)
    assert abs(shrunk[1] - shrunk[0]) < abs(own[1] - own[0]) or shrunk[1] == NEVER


def test_folds_keep_near_duplicate_groups_together_and_share_out_a_rare_label():
    rng = np.random.default_rng(1)
    targets = (rng.random((60, 3)) < [0.6, 0.4, 0.0]).astype(int)
    targets[rng.choice(60, 5, replace=False), 2] = 1  # a rare label on 5 photos
    groups = np.arange(60)
    groups[[3, 17, 42]] = 3  # one photo re-posted twice
    fold = assign_folds(targets, groups, 5, seed=0)
    assert len(set(fold[[3, 17, 42]])) == 1
    assert sorted(np.bincount(fold[targets[:, 2] == 1], minlength=5)) == [1, 1, 1, 1, 1]
    assert np.bincount(fold).max() - np.bincount(fold).min() <= 3
    assert (assign_folds(targets, groups, 5, seed=0) == fold).all(), "seeded"


def _scored(probs: np.ndarray, targets: np.ndarray, fold: np.ndarray, parameters: int, val_map: float):
    return select.Scored(probs, select.fold_maps(probs, targets, fold), parameters, val_map)


def test_out_of_fold_scores_choose_the_model_a_small_validation_split_gets_wrong():
    """Planted: `sharp` separates the labels everywhere; `lucky` is noisier, but perfect on the 30 photos that make
    the validation split. Validation prefers lucky; out of fold, over 300 photos, sharp wins."""
    rng = np.random.default_rng(0)
    targets = (rng.random((300, 4)) < 0.3).astype(int)
    fold = assign_folds(targets, np.arange(300), 5, seed=0)
    sharp = np.clip(targets * 0.35 + rng.random((300, 4)) * 0.6, 0, 1)
    lucky = np.clip(targets * 0.1 + rng.random((300, 4)) * 0.6, 0, 1)
    val = np.arange(30)
    lucky[val] = targets[val] * 0.9 + 0.05
    from training.metrics import mean_average_precision

    assert mean_average_precision(lucky[val], targets[val]) > mean_average_precision(sharp[val], targets[val])
    scored = {
        "lucky": _scored(lucky, targets, fold, 100, mean_average_precision(lucky[val], targets[val])),
        "sharp": _scored(sharp, targets, fold, 100, mean_average_precision(sharp[val], targets[val])),
    }
    chosen, top, why = select.choose(scored)
    assert chosen == top == "sharp" and why == "highest mean out-of-fold mAP"


def test_within_noise_the_model_with_fewer_parameters_is_chosen_and_the_reason_says_so():
    rng = np.random.default_rng(0)
    targets = (rng.random((300, 4)) < 0.3).astype(int)
    fold = assign_folds(targets, np.arange(300), 5, seed=0)
    probs = np.clip(targets * 0.5 + rng.random((300, 4)) * 0.6, 0, 1)
    twin = np.clip(probs + rng.normal(0, 0.01, probs.shape), 0, 1)  # the same model, up to noise
    scored = {"big": _scored(probs, targets, fold, 10_000, 0.5), "small": _scored(twin, targets, fold, 100, 0.5)}
    chosen, _, why = select.choose(scored)
    assert chosen == "small" and "within noise of" in why and "fewer parameters (100 against 10,000)" in why


@pytest.mark.slow
def test_the_select_stage_scores_every_head_out_of_fold_and_predict_serves_its_choice_and_rules(
    inputs, tmp_path, capsys
):
    params = training_params(tmp_path, inputs["weights"], epochs=2)
    raw = yaml.safe_load(params.read_text())
    raw["models"] = {name: MODELS[name] for name in ("cnn", "linear", "gcn_identity")}
    params.write_text(yaml.safe_dump(raw))
    for model in raw["models"]:
        run_train(inputs, model, tmp_path, params)
    assert select_stage(inputs, tmp_path, params) == 0
    selection = json.loads((tmp_path / "selection.json").read_text())
    assert set(selection["models"]) == {"linear", "gcn_identity"}, "heads only: the basic CNN trains from pixels"
    assert selection["chosen"] in selection["models"] and selection["labels"] == LABELS
    assert selection["images"] == 22 and selection["folds"] == 3
    entry = selection["models"][selection["chosen"]]
    assert len(entry["fold_mAP"]) == 3 and len(entry["click_thresholds"]) == len(entry["f1_thresholds"]) == 3
    scores = pd.read_parquet(tmp_path / "out_of_fold.parquet")
    assert len(scores) == 2 * 22 and set(scores["split"]) == {"train", "val"}, "the test split is not read"
    assert f"chosen: {selection['chosen']}, {selection['why']}" in capsys.readouterr().out

    # predict --model best serves the choice, with its out-of-fold rules
    models = tmp_path / "models"
    out = tmp_path / "best.json"
    argv = [str(inputs["crawl"] / "00.png"), "--model", "best", "--models-dir", str(models)]
    assert predict.main([*argv, "--selection", str(tmp_path / "selection.json"), "--out", str(out)]) == 0
    assert f"predict: model {selection['chosen']} (chosen out of fold, {tmp_path / 'selection.json'})" in (
        capsys.readouterr().err
    )
    [row] = json.loads(out.read_text())
    cuts = [np.inf if t is None else t for t in entry["click_thresholds"]]
    assert row["pre_ticked"] == [
        label for label, _ in sorted(row["scores"].items(), key=lambda item: -item[1])
        if row["scores"][label] >= cuts[LABELS.index(label)]
    ]  # fmt: skip
