"""Which unlabelled images experts should label next: the orders push queues new tasks in (numpy only).

Orders (each picks `n` of the unlabelled images from a model's probabilities and, for
diversity, the images' pooled backbone features):
- random: the baseline;
- least_confident: lowest top-1 probability first (push's order before it was measured);
- entropy: highest mean binary entropy over the labels first, i.e. the images whose labels
  the model is least sure of overall (a multi-label image can have a confident top-1 and
  several undecided sub-styles);
- entropy_diverse: the 4n images of highest entropy, thinned to n by farthest-first
  traversal in feature space (k-center greedy, Sener & Savarese 2018), so one round does
  not spend its labels on near-copies of one uncertain look.

benchmarks/active.py replays the expert loop to measure which order saves labels
(benchmarks/bench_active_labelling.py, docs/expert-time.md).
"""

from __future__ import annotations

import numpy as np

ORDERS = ("random", "least_confident", "entropy", "entropy_diverse")
CANDIDATES_PER_PICK = 4  # entropy_diverse thins this many times n of the most uncertain images


def mean_entropy(probs: np.ndarray) -> np.ndarray:
    """Per image, the mean binary entropy of its label probabilities (bits): 0 when sure of every label, 1 when
    undecided on all."""
    p = np.clip(probs, 1e-7, 1 - 1e-7)
    return (-(p * np.log2(p) + (1 - p) * np.log2(1 - p))).mean(axis=1)


def unit_rows(features: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (float32), so that a matrix product gives cosine similarities."""
    features = features.astype(np.float32, copy=False)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def distance_to_nearest(unit: np.ndarray, rows: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """For each of `rows`, the cosine distance to the nearest of `anchors` (inf when there are none)."""
    if not len(anchors):
        return np.full(len(rows), np.inf, dtype=np.float32)
    return 1 - (unit[rows] @ unit[anchors].T).max(axis=1)


def farthest_first(unit: np.ndarray, candidates: np.ndarray, nearest: np.ndarray, n: int) -> np.ndarray:
    """`n` of `candidates` (row indices of `unit`), each the farthest from the anchors (`nearest`: each candidate's
    distance to them) and from those picked before it: k-center greedy."""
    nearest = nearest.copy()
    picked = []
    for _ in range(min(n, len(candidates))):
        best = int(np.argmax(nearest))
        picked.append(candidates[best])
        nearest = np.minimum(nearest, 1 - unit[candidates] @ unit[candidates[best]])
        nearest[best] = -np.inf
    return np.array(picked, dtype=np.int64)


def pick(
    order: str,
    n: int,
    probs: np.ndarray,
    features: np.ndarray,
    unlabelled: np.ndarray,
    labelled: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """`n` row indices of `unlabelled` images for experts to label next, most wanted first. `probs` and `features` cover
    every row."""
    if order == "random":
        return rng.permutation(unlabelled)[:n]
    if order == "least_confident":
        return unlabelled[np.argsort(probs[unlabelled].max(axis=1), kind="stable")[:n]]
    uncertain = unlabelled[np.argsort(-mean_entropy(probs[unlabelled]), kind="stable")]
    if order == "entropy":
        return uncertain[:n]
    if order == "entropy_diverse":
        unit, candidates = unit_rows(features), uncertain[: CANDIDATES_PER_PICK * n]
        return farthest_first(unit, candidates, distance_to_nearest(unit, candidates, labelled), n)
    raise ValueError(f"unknown labelling order {order!r}; one of {ORDERS}")


def labelling_queue(order: str, probs: np.ndarray, features: np.ndarray, round_size: int, seed: int = 0) -> np.ndarray:
    """Every row, in the order experts should label them (push's order for new tasks).

    For entropy_diverse, successive rounds of `round_size`, each picked among the most uncertain rows not yet queued
    and kept away from each other and from the rounds before; each row's distance to the nearest queued row is kept up
    to date round by round: one pass over the rows per round, so the cost grows with the square of the rows (1,280-wide
    features on 2 cores: 10,000 rows 3 s, 30,000 rows 25 s; predicting those images takes far longer).
    """
    rows = np.arange(len(probs))
    if order != "entropy_diverse":  # one pick of every row is already the whole order
        return pick(order, len(rows), probs, features, rows, rows[:0], np.random.default_rng(seed))
    unit = unit_rows(features)
    rest = rows[np.argsort(-mean_entropy(probs), kind="stable")]
    nearest = np.full(len(rows), np.inf, dtype=np.float32)
    queued: list[np.ndarray] = []
    while len(rest):
        candidates = rest[: CANDIDATES_PER_PICK * round_size]
        chosen = farthest_first(unit, candidates, nearest[candidates], round_size)
        queued.append(chosen)
        rest = rest[~np.isin(rest, chosen)]
        if len(rest):
            nearest[rest] = np.minimum(nearest[rest], distance_to_nearest(unit, rest, chosen))
    return np.concatenate(queued) if queued else rows
