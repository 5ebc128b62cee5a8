"""Labelling orders and the simulated expert loop: bookkeeping (no image labelled twice, only the pool labelled) and
hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from active import labels_to_reach, simulate  # benchmarks/active.py (conftest puts benchmarks/ on the path)

from training.labelling_order import (
    ORDERS,
    distance_to_nearest,
    farthest_first,
    labelling_queue,
    mean_entropy,
    pick,
    unit_rows,
)


def _data(n: int = 120, seed: int = 0) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, 4)) < 0.3).astype(np.float32)
    x = torch.from_numpy(targets * 2 + rng.normal(0, 1, (n, 4)).astype(np.float32))
    split = np.array(["train"] * 80 + ["val"] * 20 + ["test"] * 20)
    return x, targets, split


@pytest.mark.parametrize("order", ORDERS)
def test_the_loop_labels_pool_images_only_each_once_until_the_pool_is_used_up(order):
    x, targets, split = _data()
    run = simulate(order, x, targets, split, seed_size=10, round_size=15, rounds=10, seed=3)
    labelled = np.concatenate(run.labelled)
    assert len(labelled) == len(set(labelled.tolist())) == 80, "every pool image once, none twice"
    assert set(split[labelled]) == {"train"}, "validation and test images are never labelled"
    assert run.labels_used == [10, 25, 40, 55, 70, 80] and len(run.val_map) == len(run.test_map) == 6
    assert np.isfinite(run.test_map).all()


def test_every_order_starts_from_the_same_seed_set():
    x, targets, split = _data()
    firsts = {order: simulate(order, x, targets, split, 10, 15, 1, seed=5).labelled[0].tolist() for order in ORDERS}
    assert len({tuple(v) for v in firsts.values()}) == 1


def test_orders_pick_the_images_they_say():
    probs = np.array([[0.9, 0.1], [0.55, 0.5], [0.6, 0.1], [0.99, 0.01]])
    features = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.1]])
    unlabelled, rng = np.arange(4), np.random.default_rng(0)
    assert pick("least_confident", 2, probs, features, unlabelled, np.array([], int), rng).tolist() == [1, 2]
    assert pick("entropy", 2, probs, features, unlabelled, np.array([], int), rng).tolist() == [1, 2]
    assert sorted(pick("random", 4, probs, features, unlabelled, np.array([], int), rng).tolist()) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="unknown labelling order 'smart'"):
        pick("smart", 1, probs, features, unlabelled, np.array([], int), rng)


def test_farthest_first_skips_a_near_copy_of_what_it_picked_or_what_is_labelled():
    unit = unit_rows(np.array([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [0.7, 0.7]]))

    def first(candidates: list[int], labelled: list[int], n: int) -> list[int]:
        rows = np.array(candidates)
        return farthest_first(unit, rows, distance_to_nearest(unit, rows, np.array(labelled, int)), n).tolist()

    assert first([0, 1, 2], [], 2) == [0, 2], "1 is a near copy of 0"
    assert first([0, 1, 3], [2], 1) == [0], "the farthest from the labelled image 2"


def test_entropy_and_the_labels_needed_by_hand():
    assert mean_entropy(np.array([[0.5, 0.5], [1.0, 0.0]])).tolist() == pytest.approx([1.0, 0.0], abs=1e-5)
    assert labels_to_reach([50, 100, 150], [0.40, 0.44, 0.50], 0.47) == pytest.approx(125.0)
    assert labels_to_reach([50, 100], [0.5, 0.6], 0.45) == 50.0 and np.isnan(
        labels_to_reach([50, 100], [0.1, 0.2], 0.3)
    )


@pytest.mark.parametrize("order", ORDERS)
def test_the_push_queue_holds_every_image_once_and_entropy_diverse_spreads_each_round(order):
    rng = np.random.default_rng(1)
    probs, features = rng.random((23, 3)), rng.normal(size=(23, 5))
    queue = labelling_queue(order, probs, features, round_size=5)
    assert sorted(queue.tolist()) == list(range(23))
    if order == "entropy":
        assert queue.tolist() == np.argsort(-mean_entropy(probs), kind="stable").tolist()
    if order == "entropy_diverse":
        replayed, rng = np.array([], int), np.random.default_rng(0)  # the incremental queue = picking each round afresh
        while len(replayed) < 23:
            rest = np.array([i for i in np.argsort(-mean_entropy(probs), kind="stable") if i not in replayed])
            replayed = np.concatenate([replayed, pick(order, 5, probs, features, rest, replayed, rng)])
        assert queue.tolist() == replayed.tolist()
        copies = np.repeat(
            np.eye(3), 2, axis=0
        )  # three looks, two near-identical images of each, all equally uncertain
        assert set(labelling_queue(order, np.full((6, 2), 0.5), copies, round_size=3)[:3] // 2) == {0, 1, 2}, (
            "one of each look first"
        )


def test_an_unknown_push_order_in_params_is_refused_naming_the_choices(tmp_path):
    from annotation.settings import AnnotationSettings
    from common.settings import ParamsError

    with pytest.raises(
        ParamsError, match="annotation.order must be one of random, least_confident, entropy, entropy_diverse.*'smart'"
    ):
        AnnotationSettings(
            project="p",
            chunk_size=1,
            port=8080,
            data_dir=tmp_path,
            document_root=tmp_path,
            order="smart",
            round_size=50,
        )


def test_the_loop_counts_the_clicks_of_empty_forms_and_of_pre_annotated_rounds():
    x, targets, split = _data()
    main = np.where(targets.any(axis=1), targets.argmax(axis=1), -1)
    run = simulate("random", x, targets, split, seed_size=10, round_size=15, rounds=3, seed=3, main=main)
    empty = (main >= 0).astype(int) + targets.sum(axis=1).astype(int) - (main >= 0)  # main + the other labels
    labelled = [np.concatenate(run.labelled[: i + 1]) for i in range(len(run.labelled))]
    assert run.clicks_empty == [int(empty[rows].sum()) for rows in labelled]
    assert run.clicks_pre[0] == run.clicks_empty[0], "no model for the seed set: empty forms"
    assert all(b > a for a, b in zip(run.clicks_pre, run.clicks_pre[1:], strict=False))
    assert run.clicks_pre[-1] < run.clicks_empty[-1], "a head that sees the labels in the features saves clicks"
