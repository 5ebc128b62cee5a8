"""Multi-label metrics: the paper's Top-k any/all-recall, mAP and per-class AP, CF1/OF1, F1 thresholds, bootstrap
intervals.

All functions take `scores` (N, C) (probabilities or logits: only the order matters,
except for CF1/OF1 which threshold probabilities at 0.5, i.e. logit 0 as in the
reference code) and `targets` (N, C) 0/1.

Ties are ranked pessimistically: a false label scored equal to a true label counts as
ranked above it. So a model that gives every label the same score gets no credit, and
the result does not depend on the class order. A true label set larger than k can never
be "all inside the top k": such an image counts as a miss for all-recall at that k, so
where most images carry more than k labels Top-k all-recall says nothing (its ceiling,
`all_recall_ceiling`, is the share that carry at most k). Top-n all-recall (n = each
image's own number of labels: are its labels exactly its n highest scores) stays
meaningful however many labels an image carries.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

Scores = NDArray[np.floating[Any]]  # (N, C) probabilities or logits
Targets = NDArray[Any]  # (N, C) 0/1, of whatever numeric or bool dtype the caller holds
Hits = NDArray[np.bool_]  # (N,) one per image

TOP_K = (1, 2, 3)
PAPER_COLUMNS = ("top1_any", "top2_all", "top2_any", "top3_all", "top3_any")  # the order of the paper's Tables 3-4
OWN_COUNT_COLUMN = "topn_all"  # all-recall at k = the image's own number of labels


def _false_at_or_above(
    scores: Scores, truth: NDArray[np.bool_], reference: NDArray[np.floating[Any]]
) -> NDArray[np.intp]:
    """Per image: how many false labels score >= `reference` (one threshold per image)."""
    counts: NDArray[np.intp] = ((scores >= reference[:, None]) & ~truth).sum(axis=1)
    return counts


def topk_any_hits(scores: Scores, targets: Targets, k: int) -> Hits:
    """Per image: is at least one true label among the k highest scores."""
    truth = targets.astype(bool)
    best_true = np.where(truth, scores, -np.inf).max(axis=1)
    hits: Hits = truth.any(axis=1) & (_false_at_or_above(scores, truth, best_true) < k)
    return hits


def topk_all_hits(scores: Scores, targets: Targets, k: int) -> Hits:
    """Per image: are the main label and every sub label among the k highest scores."""
    truth = targets.astype(bool)
    worst_true = np.where(truth, scores, np.inf).min(axis=1)
    n_true = truth.sum(axis=1)
    hits: Hits = (n_true > 0) & (n_true + _false_at_or_above(scores, truth, worst_true) <= k)
    return hits


def own_count_all_hits(scores: Scores, targets: Targets) -> Hits:
    """Per image with n labels: are they its n highest scores (Top-k all-recall at k = n; no false label ties or beats
    one)."""
    truth = targets.astype(bool)
    worst_true = np.where(truth, scores, np.inf).min(axis=1)
    hits: Hits = truth.any(axis=1) & (_false_at_or_above(scores, truth, worst_true) == 0)
    return hits


def all_recall_ceiling(targets: Targets, k: int) -> float:
    """The highest Top-k all-recall any model can reach on `targets`: the share of images with 1 to k labels."""
    n_true = targets.astype(bool).sum(axis=1)
    return float(((n_true > 0) & (n_true <= k)).mean()) if len(n_true) else float("nan")


def topk_hits(scores: Scores, targets: Targets) -> dict[str, Hits]:
    """Per-image hit vectors for every paper column, then Top-n all (their means are the recalls)."""
    hits: dict[str, Hits] = {}
    for k in TOP_K:
        hits[f"top{k}_any"] = topk_any_hits(scores, targets, k)
        hits[f"top{k}_all"] = topk_all_hits(scores, targets, k)
    return {name: hits[name] for name in PAPER_COLUMNS} | {OWN_COUNT_COLUMN: own_count_all_hits(scores, targets)}


def average_precision(scores: Scores, targets: Targets) -> NDArray[np.float64]:
    """Per-class AP (area under the step precision-recall curve, one step per distinct score); NaN for a class with no
    positives.

    Tied scores form one threshold, as in scikit-learn's average_precision_score.
    """
    n_classes = scores.shape[1]
    ap = np.full(n_classes, np.nan)
    for c in range(n_classes):
        positives = targets[:, c].sum()
        if positives == 0:
            continue
        order = np.argsort(-scores[:, c], kind="stable")
        s, t = scores[order, c], targets[order, c]
        last_of_tie = np.r_[s[1:] != s[:-1], True]
        tp = np.cumsum(t)[last_of_tie]
        predicted = (np.arange(len(s)) + 1)[last_of_tie]
        recall = tp / positives
        ap[c] = np.sum(np.diff(np.r_[0.0, recall]) * tp / predicted)
    return ap


def mean_average_precision(scores: Scores, targets: Targets) -> float:
    """Mean AP over the classes that have positives."""
    ap = average_precision(scores, targets)
    return float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan")


def f1_scores(probs: Scores, targets: Targets, threshold: float | NDArray[np.floating[Any]] = 0.5) -> dict[str, float]:
    """Per-class (C*) and overall (O*) precision, recall, F1 of predictions prob >= threshold (one for all classes, or
    one per class).

    CP and CR average over the same classes, those with positives (as mAP does): a
    class absent from `targets` has no recall, and counting its precision as 0 would
    punish perfect predictions. A class with positives that is never predicted has
    precision 0 (0/0 counted as a miss, as the reference code's Np[Np == 0] = 1) and
    recall 0. A predicted class without positives still counts in OP as false positives.
    """
    predicted = probs >= threshold
    truth = targets.astype(bool)
    tp = (predicted & truth).sum(axis=0)
    n_pred, n_true = predicted.sum(axis=0), truth.sum(axis=0)
    has_pos = n_true > 0
    precision = np.divide(tp, n_pred, out=np.zeros(len(tp)), where=n_pred > 0)
    cp = float(np.mean(precision[has_pos])) if has_pos.any() else 0.0
    cr = float(np.mean(tp[has_pos] / n_true[has_pos])) if has_pos.any() else 0.0
    op = float(tp.sum() / n_pred.sum()) if n_pred.sum() else 0.0
    orr = float(tp.sum() / n_true.sum()) if n_true.sum() else 0.0
    return {"CP": cp, "CR": cr, "CF1": _f1(cp, cr), "OP": op, "OR": orr, "OF1": _f1(op, orr)}


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def ranked_cuts(
    scores: NDArray[np.floating[Any]], truth: NDArray[Any]
) -> tuple[NDArray[np.float64], NDArray[np.intp], NDArray[Any]]:
    """The candidate cuts of one label's scores: (scores sorted high to low, how many images each cut calls positive,
    how many of those are true). A cut falls only after the last of tied scores, so tied images share a side."""
    order = np.argsort(-scores, kind="stable")
    s, t = scores[order].astype(np.float64), truth[order]
    last_of_tie = np.r_[s[1:] != s[:-1], True]
    called: NDArray[np.intp] = (np.arange(len(s)) + 1)[last_of_tie]
    return s, called, np.cumsum(t)[last_of_tie]


def threshold_after(sorted_scores: NDArray[np.float64], called: int) -> float:
    """The probability threshold that calls the `called` highest scores positive: midway to the next score."""
    cut = called - 1  # the last image called positive
    return float(
        (sorted_scores[cut] + sorted_scores[cut + 1]) / 2 if cut + 1 < len(sorted_scores) else sorted_scores[cut]
    )


def f1_thresholds(probs: Scores, targets: Targets, default: float = 0.5) -> NDArray[np.float64]:
    """Per class, the probability threshold (predict where prob >= it) with the best F1 on these images; `default` for a
    class without positives.

    Meant for the validation split: thresholds chosen there decide which labels a
    prediction ticks, and are scored on the test split like every other choice. Each
    candidate cut lies between two neighbouring distinct scores (at their midpoint), so
    tied images are always on the same side; of cuts with equal F1 the highest wins.
    """
    thresholds = np.full(probs.shape[1], default, dtype=np.float64)
    for c in range(probs.shape[1]):
        positives = targets[:, c].sum()
        if positives == 0:
            continue
        s, predicted, hits = ranked_cuts(probs[:, c], targets[:, c])
        f1 = 2 * hits / (predicted + positives)
        thresholds[c] = threshold_after(s, int(predicted[int(np.argmax(f1))]))
    return thresholds


def per_label_top2_all(
    scores: Scores, targets: Targets, main: NDArray[np.integer[Any]], labels: list[str]
) -> list[dict[str, Any]]:
    """The paper's Table 5: Top-2 all-recall of the images grouped by main label (support = their count).

    Without main labels (tag taxonomies, main = -1) an image counts for every label it carries.
    """
    hits = topk_all_hits(scores, targets, 2)
    rows = []
    for c, label in enumerate(labels):
        group = main == c if (main >= 0).any() else targets[:, c].astype(bool)
        support = int(group.sum())
        rows.append(
            {"label": label, "support": support, "top2_all": float(hits[group].mean()) if support else float("nan")}
        )
    return rows


def bootstrap_interval(
    statistic: Callable[[NDArray[np.int64]], float],
    n_images: int,
    n_resamples: int,
    seed: int,
    confidence: float = 0.95,
    around: float | None = None,
) -> tuple[float, float]:
    """Interval of `statistic(indices)` over resamples of the images with replacement.

    Percentile interval by default. With `around` (the point estimate) the percentile
    interval shifted by the resamples' bias (their mean minus `around`), for statistics that
    resampling itself biases: AP rises when a resample repeats images (a repeated positive
    lifts the precision at its rank), an artifact the test set, which has no repeats, does
    not share; unshifted, mAP intervals sit above the estimate. (The basic interval, which
    reflects the quantiles about the estimate, would move them as far below it.)
    """
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, n_images, n_images)) for _ in range(n_resamples)], dtype=float)
    values = values[np.isfinite(values)]
    tail = (1 - confidence) / 2 * 100
    low, high = float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))
    bias = 0.0 if around is None else float(values.mean()) - around
    return low - bias, high - bias


def evaluate_scores(
    probs: Scores,
    targets: Targets,
    main: NDArray[np.integer[Any]],
    labels: list[str],
    n_resamples: int,
    seed: int,
    thresholds: NDArray[np.floating[Any]] | None = None,
) -> dict[str, Any]:
    """Every reported metric of one model on one split, with bootstrap 95% intervals for the headline ones.

    `thresholds`: per-label decision thresholds (chosen on the validation split) for a second set of F1 figures.
    """
    hits = topk_hits(probs, targets)
    summary: dict[str, dict[str, float]] = {}
    for name, hit in hits.items():

        def hit_rate(idx: NDArray[np.int64], h: Hits = hit) -> float:
            return float(h[idx].mean())

        low, high = bootstrap_interval(hit_rate, len(hit), n_resamples, seed)
        summary[name] = {"value": float(hit.mean()), "ci_low": low, "ci_high": high}
    point = mean_average_precision(probs, targets)
    low, high = bootstrap_interval(
        lambda idx: mean_average_precision(probs[idx], targets[idx]), len(probs), n_resamples, seed, around=point
    )
    summary["mAP"] = {"value": point, "ci_low": low, "ci_high": high}
    ap = average_precision(probs, targets)
    return {
        "n_images": len(probs),
        "summary": summary,
        "f1": f1_scores(probs, targets),
        "f1_val_thresholds": f1_scores(probs, targets, 0.5 if thresholds is None else thresholds),
        "per_class_ap": {label: (None if np.isnan(v) else float(v)) for label, v in zip(labels, ap, strict=True)},
        "per_label_top2_all": per_label_top2_all(probs, targets, main, labels),
    }
