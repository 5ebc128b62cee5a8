"""The simulation that measures whether a labelling order and pre-annotations save expert labels and clicks.

`simulate` replays the expert loop on a labelled set: a random seed set, then rounds in
which an order (training/labelling_order.py) picks `round_size` images of the pool, their
labels are revealed, and a linear head is refitted; it records validation and test mAP
against labels used, and the expert clicks spent so far (training/clicks.py): the seed set
on empty forms, then each round's images either on empty forms or pre-annotated by the
head of the round before, with fewest-clicks thresholds fitted on the validation split.
Only pool (training split) images are ever labelled; validation and test images only
score. Run by benchmarks/bench_active_labelling.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from training.clicks import SHRINK, click_thresholds, correction_clicks, empty_form_clicks
from training.labelling_order import pick
from training.metrics import mean_average_precision


def fit_head(
    x: torch.Tensor, y: torch.Tensor, l2: float = 1e-3, steps: int = 100
) -> Callable[[torch.Tensor], np.ndarray]:
    """A linear multi-label head (logistic regression with an L2 penalty, fitted to convergence by L-BFGS); returns its
    probability function.

    Deterministic and free of epochs and learning rates, so a round's score depends on the labels chosen, not on how
    long a small set trained.
    """
    weight = torch.zeros(y.shape[1], x.shape[1], requires_grad=True)
    bias = torch.zeros(y.shape[1], requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(x @ weight.T + bias, y) + l2 * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return lambda features: torch.sigmoid(features @ weight.detach().T + bias.detach()).numpy()


@dataclass
class Simulation:
    """One replay of the expert loop: which pool rows were labelled in which round, and the scores after each."""

    order: str
    labelled: list[np.ndarray] = field(default_factory=list)  # per round, the pool rows newly labelled
    labels_used: list[int] = field(default_factory=list)
    val_map: list[float] = field(default_factory=list)
    test_map: list[float] = field(default_factory=list)
    clicks_empty: list[int] = field(default_factory=list)  # cumulative clicks, every image on an empty form
    clicks_pre: list[int] = field(default_factory=list)  # cumulative clicks, rounds pre-annotated by the last head


def simulate(
    order: str,
    x: torch.Tensor,
    targets: np.ndarray,
    split: np.ndarray,
    seed_size: int,
    round_size: int,
    rounds: int,
    seed: int,
    main: np.ndarray | None = None,
) -> Simulation:
    """Replay `rounds` rounds of `order` on the rows of `split` == "train" (the pool); score each round's head on "val"
    and "test" rows.

    The seed set is `seed_size` random pool rows (the same for every order under one seed). `main`: each row's main
    label index (-1: none, the default), for the clicks.
    """
    rng = np.random.default_rng(seed)
    pool, val, test = (np.flatnonzero(split == s) for s in ("train", "val", "test"))
    y = torch.from_numpy(targets.astype(np.float32))
    features = x.numpy()
    main = np.full(len(targets), -1) if main is None else main
    run = Simulation(order)
    chosen = rng.permutation(pool)[:seed_size]
    taken = np.zeros(len(targets), dtype=bool)
    empty = empty_form_clicks(targets, main).per_image()
    pre = empty[chosen].sum()  # no model yet: the seed set is labelled on empty forms
    for _ in range(rounds + 1):
        taken[chosen] = True
        run.labelled.append(chosen)
        run.clicks_empty.append(int(empty[taken].sum()))
        run.clicks_pre.append(int(pre))
        head = fit_head(x[taken], y[taken])
        probs = head(x)
        run.labels_used.append(int(taken.sum()))
        run.val_map.append(mean_average_precision(probs[val], targets[val]))
        run.test_map.append(mean_average_precision(probs[test], targets[test]))
        unlabelled = pool[~taken[pool]]
        if not len(unlabelled):
            break
        chosen = pick(order, round_size, probs, features, unlabelled, np.flatnonzero(taken), rng)
        cuts = click_thresholds(probs[val], targets[val], main[val], SHRINK)
        pre += correction_clicks(probs[chosen], cuts, targets[chosen], main[chosen]).total
    return run


def labels_to_reach(labels_used: list[int], scores: list[float], target: float) -> float:
    """Labels (or clicks: any cumulative cost) at which `scores` first reach `target`, linearly interpolated between
    rounds; NaN when they never do."""
    for i, score in enumerate(scores):
        if score >= target:
            if i == 0:
                return float(labels_used[0])
            before, after = scores[i - 1], score
            return labels_used[i - 1] + (target - before) / (after - before) * (labels_used[i] - labels_used[i - 1])
    return float("nan")
