"""Active labelling, simulated: how many expert labels, and clicks, each labelling order needs to reach 95% of the
full-data mAP.

Usage: python benchmarks/bench_active_labelling.py [CCP options, see bench_ccp_models.py] [--seeds 5] [--seed-size 50]
           [--round-size 50]
       python benchmarks/bench_active_labelling.py --project .     # the demo: the project's own data/ after `make demo`

The training split is the pool experts label from; its labels are hidden and revealed
`--round-size` images at a time in the order each strategy picks (training/labelling_order.py:
random, least_confident, entropy, entropy_diverse), after a random seed set of
`--seed-size` images. After every round a linear head (logistic regression on the cached
global-average-pooled features) is refitted and scored on the validation and test
splits. Labels needed: where the mAP curve first reaches 95% of the mAP of a head fitted
on the whole pool (interpolated between rounds), per seed. Clicks needed (the expert day,
training/clicks.py): the same point on the curve of clicks spent, where the seed set is
labelled on empty forms and each later round either on empty forms (today's baseline,
with random order) or pre-annotated by the head of the round before, its sub-styles
ticked at fewest-clicks thresholds fitted on the validation split. The order is CHOSEN on
the validation split; the test split confirms it. Writes a plot of mAP against labels
used. Numbers are printed, never asserted.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from active import Simulation, fit_head, labels_to_reach, simulate  # noqa: E402
from ccp import add_arguments, prepare  # noqa: E402
from tqdm import tqdm  # noqa: E402

from common.feature_shards import read_features  # noqa: E402
from training.data import main_index, read_dataset, read_label_subset, target_matrix  # noqa: E402
from training.labelling_order import ORDERS  # noqa: E402
from training.metrics import mean_average_precision  # noqa: E402

SHARE_OF_FULL = 0.95


def plot(runs: dict[str, list[Simulation]], full: dict[str, float], title: str, path: Path) -> None:
    figure, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for axis, split in zip(axes, ("val", "test"), strict=True):
        for order, sims in runs.items():
            scores = np.array([getattr(s, f"{split}_map") for s in sims]) * 100
            axis.plot(sims[0].labels_used, scores.mean(axis=0), label=order)
            axis.fill_between(sims[0].labels_used, scores.min(axis=0), scores.max(axis=0), alpha=0.15)
        axis.axhline(
            100 * SHARE_OF_FULL * full[split],
            color="grey",
            linestyle="--",
            linewidth=1,
            label=f"{SHARE_OF_FULL:.0%} of full data",
        )
        axis.set(title=f"{split} split", xlabel="expert labels used", ylabel="mAP (%)")
        axis.grid(alpha=0.3)
    axes[0].legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def clicks_needed(sims: list[Simulation], split: str, target: float, pre_annotated: bool) -> np.ndarray:
    """Per seed, the clicks spent when the `split` mAP curve first reaches `target`."""
    return np.array([
        labels_to_reach(s.clicks_pre if pre_annotated else s.clicks_empty, getattr(s, f"{split}_map"), target)
        for s in sims
    ])  # fmt: skip


def print_clicks(runs: dict[str, list[Simulation]], full: dict[str, float]) -> None:
    """The expert day in clicks: each arm's clicks to 95% of full-data mAP against random order on empty forms."""
    arms = {"random, empty forms": ("random", False)} | {f"{order}, pre-annotated": (order, True) for order in ORDERS}
    needed = {
        split: {arm: clicks_needed(runs[o], split, SHARE_OF_FULL * full[split], pre) for arm, (o, pre) in arms.items()}
        for split in ("val", "test")
    }
    print(f"\n| arm | clicks to {SHARE_OF_FULL:.0%} of full val mAP | vs random, empty | clicks to "
          f"{SHARE_OF_FULL:.0%} of full test mAP | vs random, empty |")  # fmt: skip
    print("|---|---|---|---|---|")
    for arm in arms:
        cells = []
        for split in ("val", "test"):
            n, base = needed[split][arm], needed[split]["random, empty forms"]
            cells += [
                f"{np.mean(n):.0f} ± {np.std(n, ddof=1) if len(n) > 1 else 0:.0f}",
                f"{np.mean(n) / np.mean(base):.0%}",
            ]
        print(f"| {arm} | " + " | ".join(cells) + " |")
    pre_arms = [arm for arm in arms if arms[arm][1]]
    chosen = min(pre_arms, key=lambda arm: np.mean(needed["val"][arm]))
    base = {split: np.mean(needed[split]["random, empty forms"]) for split in ("val", "test")}
    print(f"\nchosen on the validation split: {chosen} ({np.mean(needed['val'][chosen]) / base['val']:.0%} of the "
          f"baseline's clicks; test: {np.mean(needed['test'][chosen]) / base['test']:.0%})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser, "/tmp/stylegraph-ccp-active", models="linear")
    parser.add_argument(
        "--project", type=Path, default=None, help="use this project's data/ (after dvc repro) instead of CCP"
    )
    parser.add_argument("--seeds", type=int, default=5, help="replays per order (each with its own seed set)")
    parser.add_argument("--seed-size", type=int, default=50, help="images labelled at random before the first round")
    parser.add_argument("--round-size", type=int, default=50, help="images labelled per round")
    parser.add_argument(
        "--plot",
        type=Path,
        default=None,
        help="PNG to write (default: active_labelling.png in the work dir, or the project's reports/plots/)",
    )
    args = parser.parse_args()
    if args.project is None:
        ccp = prepare(args, 1, "bench_active_labelling")
        dataset, subset, features, plot_path = (
            ccp.data["dataset.parquet"],
            ccp.data["label_subset.json"],
            ccp.data["features.npz"],
            ccp.work / "active_labelling.png",
        )
    else:
        root = args.project
        dataset, subset, features, plot_path = (
            root / "data/dataset.parquet",
            root / "data/label_subset.json",
            root / "data/features.npz",
            root / "reports/plots/active_labelling.png",
        )
    labels = read_label_subset(subset)
    table = read_dataset(dataset, labels)
    x = read_features(features, list(table["image_id"]), "avg", mirrored=False).x.float()
    targets, split = target_matrix(table["labels"], labels), table["split"].to_numpy()
    main = main_index(table["main_style"], labels)
    pool = int((split == "train").sum())
    rounds = -(-(pool - args.seed_size) // args.round_size)
    head = fit_head(x[torch.from_numpy(split == "train")], torch.from_numpy(targets[split == "train"]))
    full = {
        s: mean_average_precision(head(x[torch.from_numpy(split == s)]), targets[split == s]) for s in ("val", "test")
    }
    runs: dict[str, list[Simulation]] = {order: [] for order in ORDERS}
    for seed in tqdm(range(args.seeds), desc="seeds", unit="seed"):
        for order in ORDERS:
            runs[order].append(
                simulate(order, x, targets, split, args.seed_size, args.round_size, rounds, seed, main=main)
            )
    print(f"\n{len(table)} images ({pool} in the pool), {len(labels)} labels; "
          f"full-data mAP: val {100 * full['val']:.2f}, test {100 * full['test']:.2f}; "
          f"seed set {args.seed_size}, rounds of {args.round_size}, {args.seeds} seeds\n")  # fmt: skip
    needed = {
        split: {
            order: np.array(
                [labels_to_reach(s.labels_used, getattr(s, f"{split}_map"), SHARE_OF_FULL * full[split]) for s in sims]
            )
            for order, sims in runs.items()
        }
        for split in ("val", "test")
    }
    area = {
        split: {order: np.array([np.mean(getattr(s, f"{split}_map")) for s in sims]) for order, sims in runs.items()}
        for split in ("val", "test")
    }
    print(
        f"| order | labels to {SHARE_OF_FULL:.0%} of full val mAP | vs random | mean val mAP over rounds | labels to "
        f"{SHARE_OF_FULL:.0%} of full test mAP | vs random | mean test mAP over rounds |"
    )
    print("|---|---|---|---|---|---|---|")
    for order in ORDERS:
        cells = []
        for split in ("val", "test"):
            n, random = needed[split][order], needed[split]["random"]
            cells += [
                f"{np.mean(n):.0f} ± {np.std(n, ddof=1) if len(n) > 1 else 0:.0f}",
                f"{np.mean(n) / np.mean(random) - 1:+.0%}",
                f"{100 * np.mean(area[split][order]):.2f}",
            ]
        print(f"| {order} | " + " | ".join(cells) + " |")
    chosen = min(ORDERS, key=lambda order: np.mean(needed["val"][order]))
    val_gain = np.mean(needed["val"][chosen]) / np.mean(needed["val"]["random"]) - 1
    test_gain = np.mean(needed["test"][chosen]) / np.mean(needed["test"]["random"]) - 1
    print(f"\nchosen on the validation split: {chosen} ({val_gain:+.0%} labels against random; test: {test_gain:+.0%})")
    print_clicks(runs, full)
    plot_path = args.plot or plot_path
    plot_path.parent.mkdir(parents=True, exist_ok=True)
    plot(runs, full, f"Simulated expert loop: {len(labels)} labels, pool {pool}", plot_path)
    print(f"plot: {plot_path}")


if __name__ == "__main__":
    main()
