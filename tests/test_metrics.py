"""Metrics against values computed by hand on small cases: ties, more labels than k, a class with no positives, F1
thresholds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.metrics import (
    all_recall_ceiling,
    average_precision,
    bootstrap_interval,
    evaluate_scores,
    f1_scores,
    f1_thresholds,
    mean_average_precision,
    own_count_all_hits,
    per_label_top2_all,
    topk_all_hits,
    topk_any_hits,
    topk_hits,
)

# Three classes. Row by row:
#   0: true {0};      class 0 tied with false class 1 at the top
#   1: true {0,1,2};  three labels: "all inside the top 2" is impossible
#   2: true {0,2};    true labels ranked 3rd and 2nd
#   3: true {1};      clean top-1 hit
SCORES = np.array([[0.5, 0.5, 0.1], [0.9, 0.8, 0.7], [0.1, 0.9, 0.2], [0.2, 0.7, 0.3]])
TARGETS = np.array([[1, 0, 0], [1, 1, 1], [1, 0, 1], [0, 1, 0]])


def test_topk_any_recall_counts_a_tie_with_a_false_label_against_the_model():
    assert topk_any_hits(SCORES, TARGETS, 1).tolist() == [False, True, False, True]
    assert topk_any_hits(SCORES, TARGETS, 2).tolist() == [True, True, True, True]


def test_topk_all_recall_needs_every_label_inside_the_top_k():
    assert topk_all_hits(SCORES, TARGETS, 1).tolist() == [False, False, False, True]
    assert topk_all_hits(SCORES, TARGETS, 2).tolist() == [True, False, False, True]  # row 1: 3 labels > k = 2
    assert topk_all_hits(SCORES, TARGETS, 3).tolist() == [True, True, True, True]


def test_paper_columns_in_table_order_and_their_means_then_top_n_all():
    hits = topk_hits(SCORES, TARGETS)
    assert list(hits) == ["top1_any", "top2_all", "top2_any", "top3_all", "top3_any", "topn_all"]
    assert {k: v.mean() for k, v in hits.items()} == {
        "top1_any": 0.5,
        "top2_all": 0.5,
        "top2_any": 1.0,
        "top3_all": 1.0,
        "top3_any": 1.0,
        "topn_all": 0.5,
    }


def test_top_n_all_recall_asks_for_exactly_the_images_own_labels_at_the_top_and_stays_meaningful_with_many_labels():
    # row 0: its one label tied with a false one (a miss); row 1: all 3 labels are the top 3; row 2: a false label above
    # a true one; row 3: clean
    assert own_count_all_hits(SCORES, TARGETS).tolist() == [False, True, False, True]
    many = np.array([[1, 1, 1, 0], [1, 1, 1, 1]])  # 3 and 4 labels: Top-2 all-recall is 0 for any model
    perfect = many * 0.9 + 0.05
    assert not topk_all_hits(perfect, many, 2).any() and own_count_all_hits(perfect, many).all()
    assert (
        all_recall_ceiling(many, 2) == 0.0
        and all_recall_ceiling(many, 3) == 0.5
        and all_recall_ceiling(TARGETS, 2) == 0.75
    )
    assert not own_count_all_hits(np.zeros((1, 2)), np.zeros((1, 2))).any(), "an image without labels is no hit"


def test_f1_thresholds_by_hand_ties_on_one_side_and_the_default_without_positives():
    probs = np.array([[0.9, 0.5, 0.2], [0.7, 0.5, 0.1], [0.4, 0.3, 0.3], [0.2, 0.1, 0.6]])
    targets = np.array([[1, 1, 0], [1, 0, 0], [0, 1, 0], [1, 0, 0]])
    thresholds = f1_thresholds(probs, targets)
    # class 0: cuts after 0.9 (F1 2/4), 0.7 (4/5), 0.4 (4/6), 0.2 (6/7): all predicted is best -> threshold 0.2 itself
    # class 1: the tie at 0.5 stays together: cut after it F1 2/4, after 0.3 F1 4/5 -> midpoint of 0.3 and 0.1
    assert thresholds.tolist() == pytest.approx([0.2, 0.2, 0.5])
    assert f1_scores(probs, targets, thresholds)["CF1"] >= f1_scores(probs, targets)["CF1"]
    # equal F1 (2/3) after 0.8 and after 0.2: the higher threshold wins
    assert f1_thresholds(np.array([[0.8], [0.6], [0.4], [0.2]]), np.array([[1], [0], [0], [1]]))[0] == pytest.approx(
        0.7
    )


def test_a_constant_predictor_gets_no_top1_credit_whatever_the_class_order():
    flat = np.full((2, 4), 0.3)
    targets = np.array([[1, 0, 0, 0], [0, 0, 0, 1]])
    assert not topk_any_hits(flat, targets, 1).any()
    assert topk_any_hits(flat, targets, 4).all()


def test_average_precision_by_hand_with_a_tie_and_a_class_without_positives():
    scores = np.array([[0.9, 0.9, 0.1], [0.8, 0.8, 0.2], [0.7, 0.8, 0.3], [0.6, 0.1, 0.4]])
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 1, 0]])
    ap = average_precision(scores, targets)
    # class 0: positives at ranks 1 and 3 -> (1/1 + 2/3) / 2
    assert ap[0] == pytest.approx(5 / 6)
    # class 1: 0.9 (neg) then a tie at 0.8 (one pos, one neg), then 0.1 (pos):
    # recall 0.5 at precision 1/3, recall 1 at precision 2/4 -> 0.5/3 + 0.5/2
    assert ap[1] == pytest.approx(0.5 / 3 + 0.5 / 2)
    assert math.isnan(ap[2])
    assert mean_average_precision(scores, targets) == pytest.approx((5 / 6 + 0.5 / 3 + 0.25) / 2)


def test_f1_scores_by_hand():
    probs = np.array([[0.9, 0.6, 0.1], [0.2, 0.7, 0.1], [0.8, 0.3, 0.1]])
    targets = np.array([[1, 0, 0], [0, 1, 0], [0, 1, 1]])
    f1 = f1_scores(probs, targets)
    # class 0: tp 1, predicted 2, true 1; class 1: tp 1, predicted 2, true 2; class 2: never predicted, true 1
    assert f1["CP"] == pytest.approx((1 / 2 + 1 / 2 + 0) / 3)
    assert f1["CR"] == pytest.approx((1 + 1 / 2 + 0) / 3)
    assert f1["OP"] == pytest.approx(2 / 4) and f1["OR"] == pytest.approx(2 / 4)
    assert f1["OF1"] == pytest.approx(0.5)
    assert f1["CF1"] == pytest.approx(2 * (1 / 3) * 0.5 / (1 / 3 + 0.5))


def test_class_precision_and_recall_average_over_the_same_classes_those_with_positives():
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]])  # class 2: no test positives
    perfect = f1_scores(targets.astype(float), targets)
    assert perfect["CP"] == perfect["CR"] == perfect["CF1"] == 1.0, "an absent label must not cost a perfect model"
    probs = np.array(
        [[0.9, 0.1, 0.8], [0.1, 0.2, 0.1], [0.9, 0.1, 0.1]]
    )  # class 1 never predicted; class 2 predicted once, wrongly
    f1 = f1_scores(probs, targets)
    assert f1["CP"] == pytest.approx((1 + 0) / 2) and f1["CR"] == pytest.approx((1 + 0) / 2), (
        "a class with positives but no predictions: precision 0, recall 0"
    )
    assert f1["OP"] == pytest.approx(2 / 3), "the false positive of the class without positives still counts overall"


def test_per_label_table_groups_by_main_label_and_reports_support():
    main = np.array([0, 0, 0, 1])
    rows = per_label_top2_all(SCORES, TARGETS, main, ["a", "b", "c"])
    assert rows[0] == {"label": "a", "support": 3, "top2_all": pytest.approx(1 / 3)}
    assert rows[1] == {"label": "b", "support": 1, "top2_all": 1.0}
    assert rows[2]["support"] == 0 and math.isnan(rows[2]["top2_all"])


def test_without_main_labels_an_image_counts_for_every_label_it_carries():
    rows = per_label_top2_all(SCORES, TARGETS, np.full(4, -1), ["a", "b", "c"])
    assert [r["support"] for r in rows] == [3, 2, 2]


def test_bootstrap_interval_brackets_the_estimate_and_collapses_without_variance():
    hits = np.r_[np.ones(60), np.zeros(40)]
    low, high = bootstrap_interval(lambda idx: hits[idx].mean(), len(hits), 500, seed=0)
    assert 0.45 < low < 0.6 < high < 0.75
    assert bootstrap_interval(lambda idx: np.ones(10)[idx].mean(), 10, 50, seed=0) == (1.0, 1.0)


def test_evaluate_scores_reports_nan_ap_as_none_and_every_paper_column():
    result = evaluate_scores(SCORES, TARGETS * np.array([1, 1, 0]), np.array([0, 0, 0, 1]), ["a", "b", "c"], 50, seed=0)
    assert result["per_class_ap"]["c"] is None
    assert set(result["summary"]) == {"top1_any", "top2_all", "top2_any", "top3_all", "top3_any", "topn_all", "mAP"}
    for entry in result["summary"].values():
        assert entry["ci_low"] <= entry["value"] <= entry["ci_high"]


def test_map_intervals_are_centred_on_the_estimate_though_resampling_lifts_ap():
    """Repeated images lift AP, so percentile intervals of mAP lean above the estimate; shifting by the resamples' bias
    corrects that."""
    rng = np.random.default_rng(0)
    targets = (rng.random((235, 23)) < 0.1).astype(np.float32)
    scores = targets * rng.normal(1, 1, targets.shape) + rng.normal(0, 1, targets.shape)
    point = mean_average_precision(scores, targets)
    statistic = lambda idx: mean_average_precision(scores[idx], targets[idx])  # noqa: E731
    percentile = bootstrap_interval(statistic, 235, 300, seed=0)
    shifted = bootstrap_interval(statistic, 235, 300, seed=0, around=point)
    assert (percentile[0] + percentile[1]) / 2 - point > 0.005  # the bias this guards against
    assert abs((shifted[0] + shifted[1]) / 2 - point) < abs((percentile[0] + percentile[1]) / 2 - point) / 2
    assert shifted[0] < point < shifted[1]
    summary = evaluate_scores(scores, targets, np.full(235, -1), [str(c) for c in range(23)], 300, seed=0)["summary"][
        "mAP"
    ]
    assert (summary["ci_low"], summary["ci_high"]) == pytest.approx(shifted)


def test_the_report_warns_where_top_k_all_recall_cannot_mean_much():
    from training.evaluate import ceiling_lines

    six_labels = np.array(
        [[1] * 6 + [0] * 4] * 3
    )  # a client's photos carry ~6 labels: Top-2 and Top-3 all-recall are 0 for any model
    summary, *warnings = ceiling_lines(six_labels)
    assert "k = 2: 0.00, k = 3: 0.00" in summary
    assert warnings == [
        f"**T{k} all says little here**: 100.00 % of the images carry more than {k} labels; compare models on Tn all "
        "and mAP."
        for k in (2, 3)
    ]
    assert ceiling_lines(TARGETS)[1:] == [], "3 of 4 images with at most 2 labels: no warning"


def test_ap_and_f1_agree_with_scikit_learn_on_random_multilabel_scores_with_ties():
    """scikit-learn as the oracle: per-class AP (ties as one threshold), micro P/R/F1 as OP/OR/OF1,
    macro P/R over the classes with positives as CP/CR (CF1 is the paper's F1 of CP and CR)."""
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(7)
    scores = rng.random((300, 12)).round(1)  # one decimal: many ties
    targets = (rng.random((300, 12)) < np.linspace(0.02, 0.5, 12)).astype(int)
    targets[:, 3] = 0  # a class without positives
    has_pos = targets.sum(axis=0) > 0
    expected_ap = [
        sklearn_metrics.average_precision_score(targets[:, c], scores[:, c]) for c in np.flatnonzero(has_pos)
    ]
    np.testing.assert_allclose(average_precision(scores, targets)[has_pos], expected_ap, rtol=1e-12)
    assert np.isnan(average_precision(scores, targets)[3])

    predicted = (scores >= 0.5).astype(int)
    ours = f1_scores(scores, targets, 0.5)
    oracle = {
        "OP": sklearn_metrics.precision_score(targets, predicted, average="micro", zero_division=0),
        "OR": sklearn_metrics.recall_score(targets, predicted, average="micro", zero_division=0),
        "OF1": sklearn_metrics.f1_score(targets, predicted, average="micro", zero_division=0),
        "CP": sklearn_metrics.precision_score(
            targets[:, has_pos], predicted[:, has_pos], average="macro", zero_division=0
        ),
        "CR": sklearn_metrics.recall_score(
            targets[:, has_pos], predicted[:, has_pos], average="macro", zero_division=0
        ),
    }
    oracle["CF1"] = 2 * oracle["CP"] * oracle["CR"] / (oracle["CP"] + oracle["CR"])
    assert ours == pytest.approx(oracle, rel=1e-12)
