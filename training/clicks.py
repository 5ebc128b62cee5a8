"""Expert clicks: what a pre-annotation costs the expert who corrects it, and the pre-annotation rule that costs least.

The Label Studio form (annotation/config.py) has one single-choice main style and a
multiple-choice list of sub-styles (a tag taxonomy has the list only). On an empty form
the expert clicks once for the main style and once per sub-style the photo carries. On a
pre-annotated form the main style is already selected (changing it is one click) and
each sub-style ticked wrongly or left unticked wrongly is one click. So, per image:

    empty form      = [main style] + number of true sub-styles
    pre-annotation  = [main style wrong] + sum over labels of (ticked XOR true sub-style)

where a true sub-style is a label the photo carries other than its main style, and the
pre-annotation never ticks its own main style as a sub-style. Pre-selecting the main
style never costs more than the empty form's click, so it is always done.

Each sub-style label's clicks depend on its own tick only, so the rule is chosen per
label: tick label c where its probability reaches `thresholds[c]`, the cut with the
fewest clicks (false ticks + missed ticks) on held-out scores. A cut is noise where a
label has few positives, so it is shrunk towards the one cut that is best for all labels
pooled, with weight positives / (positives + `shrink`). A label whose best cut still
costs at least as many clicks as never ticking it (its positives) is never pre-ticked
(threshold +inf).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from training.metrics import ranked_cuts, threshold_after

NEVER = float("inf")  # threshold of a label that is never pre-ticked
NO_MAIN = -1  # main index of an image without a main label (tag taxonomies)
SHRINK = 20.0  # pseudo-positives pulling a label's cut towards the pooled cut (chosen on CCP: docs/expert-time.md)


@dataclass(frozen=True)
class Clicks:
    """Clicks on a set of images: per image the main-style click (0/1) and per (image, label) the sub-style clicks."""

    main: NDArray[np.int64]  # (N,)
    labels: NDArray[np.int64]  # (N, C)

    @property
    def total(self) -> int:
        return int(self.main.sum() + self.labels.sum())

    def per_image(self) -> NDArray[np.int64]:
        return self.main + self.labels.sum(axis=1)


def true_sub_labels(targets: NDArray[Any], main: NDArray[np.integer[Any]]) -> NDArray[np.bool_]:
    """(N, C) the labels an expert ticks in the sub-style list: every label the photo carries but its main style."""
    sub = targets.astype(bool).copy()
    rows = np.flatnonzero(main != NO_MAIN)
    sub[rows, main[rows]] = False
    return sub


def empty_form_clicks(targets: NDArray[Any], main: NDArray[np.integer[Any]]) -> Clicks:
    """Clicks to label each image on an empty form: its main style (where there is one) and each true sub-style."""
    return Clicks((main != NO_MAIN).astype(np.int64), true_sub_labels(targets, main).astype(np.int64))


def pre_main(probs: NDArray[np.floating[Any]], main: NDArray[np.integer[Any]]) -> NDArray[np.int64]:
    """The main style a pre-annotation selects: the most probable label, on images whose taxonomy has a main style."""
    chosen = probs.argmax(axis=1).astype(np.int64)
    return np.where(main != NO_MAIN, chosen, NO_MAIN)


def pre_ticks(
    probs: NDArray[np.floating[Any]], thresholds: NDArray[np.floating[Any]], selected_main: NDArray[np.integer[Any]]
) -> NDArray[np.bool_]:
    """(N, C) the sub-styles a pre-annotation ticks: probability at or above the label's threshold, but not the
    pre-selected main style."""
    ticked = probs >= thresholds[None, :]
    rows = np.flatnonzero(selected_main != NO_MAIN)
    ticked[rows, selected_main[rows]] = False
    return ticked


def correction_clicks(
    probs: NDArray[np.floating[Any]],
    thresholds: NDArray[np.floating[Any]],
    targets: NDArray[Any],
    main: NDArray[np.integer[Any]],
) -> Clicks:
    """Clicks to correct the pre-annotation the rule (`thresholds`, main style = most probable) makes of `probs`."""
    selected = pre_main(probs, main)
    ticked = pre_ticks(probs, thresholds, selected)
    wrong_main = ((selected != main) & (main != NO_MAIN)).astype(np.int64)
    return Clicks(wrong_main, (ticked ^ true_sub_labels(targets, main)).astype(np.int64))


def _fewest_clicks_cut(scores: NDArray[np.floating[Any]], truth: NDArray[np.bool_]) -> tuple[float, int]:
    """(threshold, clicks) of the cut with the fewest false + missed ticks among cuts that tick at least one image;
    ties go to the higher cut."""
    s, ticked, hits = ranked_cuts(scores, truth)
    clicks = ticked + truth.sum() - 2 * hits  # false ticks + missed ticks
    best = int(np.argmin(clicks))
    return threshold_after(s, int(ticked[best])), int(clicks[best])


def sub_style_cells(
    probs: NDArray[np.floating[Any]], targets: NDArray[Any], main: NDArray[np.integer[Any]]
) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """(N, C) which cells a pre-annotation may tick (not its own main style) and which of them are true sub-styles."""
    tickable = pre_ticks(probs, np.full(probs.shape[1], -np.inf), pre_main(probs, main))
    return tickable, true_sub_labels(targets, main)


def click_thresholds(
    probs: NDArray[np.floating[Any]], targets: NDArray[Any], main: NDArray[np.integer[Any]], shrink: float
) -> NDArray[np.float64]:
    """Per label, the pre-tick threshold with the fewest correction clicks on these (held-out) scores, shrunk towards
    the pooled best cut by `shrink` pseudo-positives; NEVER where ticking costs at least what it saves."""
    tickable, truth = sub_style_cells(probs, targets, main)
    pooled, _ = _fewest_clicks_cut(probs[tickable], truth[tickable]) if tickable.any() else (NEVER, 0)
    thresholds = np.full(probs.shape[1], NEVER)
    for c in range(probs.shape[1]):
        cells = tickable[:, c]
        scores, positives = probs[cells, c], truth[cells, c]
        n_pos = int(positives.sum())
        if n_pos == 0:
            continue
        own, _ = _fewest_clicks_cut(scores, positives)
        weight = n_pos / (n_pos + shrink) if shrink > 0 else 1.0
        cut = weight * own + (1 - weight) * pooled if np.isfinite(pooled) else own
        ticked = scores >= cut
        clicks = int((ticked & ~positives).sum() + (~ticked & positives).sum())
        if clicks < n_pos:  # ticking saves clicks here; else leave it to the expert
            thresholds[c] = cut
    return thresholds


def summary(rule: Clicks, empty: Clicks, labels: list[str]) -> dict[str, Any]:
    """Headline click figures of a rule against the empty form: the ratio, clicks per image, the share of images
    whose pre-annotation needs no click, and per label (the main style as '(main style)')."""
    n = max(len(rule.main), 1)
    per_label = {
        label: {"clicks": int(rule.labels[:, c].sum()), "empty_form": int(empty.labels[:, c].sum())}
        for c, label in enumerate(labels)
    }
    if empty.main.any():
        per_label["(main style)"] = {"clicks": int(rule.main.sum()), "empty_form": int(empty.main.sum())}
    return {
        "clicks": rule.total,
        "empty_form_clicks": empty.total,
        "ratio": rule.total / empty.total if empty.total else float("nan"),
        "clicks_per_image": rule.total / n,
        "empty_form_per_image": empty.total / n,
        "exactly_right": float((rule.per_image() == 0).mean()) if len(rule.main) else float("nan"),
        "per_label": per_label,
    }


def thresholds_json(thresholds: NDArray[np.floating[Any]]) -> list[float | None]:
    """Thresholds for JSON (which has no infinity): None for a label that is never pre-ticked."""
    return [float(t) if np.isfinite(t) else None for t in thresholds]


def thresholds_from_json(values: list[float | None]) -> NDArray[np.float64]:
    return np.array([NEVER if v is None else float(v) for v in values], dtype=np.float64)
