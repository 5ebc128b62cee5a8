"""Noise-injection check of the label-issue finder: corrupt a known share of labels, see how many of the corruptions it
ranks on top.

Usage: python benchmarks/bench_label_issues.py [CCP options, see bench_ccp_models.py] [--model csra] [--noise 0.05]
           [--seeds 3]
       python benchmarks/bench_label_issues.py --project .
           (the demo: the project's own data/ and models/ after `make demo`)

CCP (default): the photos go through the project's stages (benchmarks/ccp.py) and the
model whose recipe the finder copies (--model) is trained once on the clean labels.
Then, under each seed, a share --noise of the train and validation images gets one
corruption each: a true tag dropped (only where the image keeps another) or a wrong tag
added; where images have a main style (the demo) a third kind swaps it for another
style. The finder (training/label_issues.py: out-of-fold heads, self-confidence)
ranks every (image, label) cell of the corrupted labels; printed: the
share of corruptions among its top 2 x (number injected) cells (recall), the share
of those cells that are corruptions (precision) and of the top 50 (precision@50), for
the finder's ranking and, beside it: self-confidence divided by the mean of its label's
cells of the same given value; the agreement of each cell with the image's nearest
neighbours in feature space (training/label_issues.py: neighbour_quality), alone and
combined with the finder; and (--ensemble N) the finder on out-of-fold scores averaged
over N fold draws. Chance: listed / all cells. A
corruption that swaps a main style counts as found when either of its two cells is listed.
Numbers are printed, never asserted.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from ccp import add_arguments, prepare, timing_table

from common.feature_shards import read_features
from training import train
from training.checkpoint import load_checkpoint
from training.data import main_index, read_dataset, read_label_subset, target_matrix
from training.label_issues import CHECKED_SPLITS, label_quality, neighbour_quality
from training.models import ModelSpec, feature_array
from training.out_of_fold import assign_folds, out_of_fold_probs


@dataclass(frozen=True)
class Corruption:
    row: int
    cells: tuple[tuple[int, int], ...]  # the (row, label) cells it changed
    kind: str  # dropped, added, swapped main


def corrupt(
    targets: np.ndarray, main: np.ndarray, share: float, rng: np.random.Generator
) -> tuple[np.ndarray, list[Corruption]]:
    """A copy of `targets` with one corruption in each of round(share x images) random images, and what was done."""
    noisy, done = targets.copy(), []
    kinds = ("dropped", "added", "swapped main") if (main >= 0).any() else ("dropped", "added")
    for row in rng.choice(len(targets), size=round(share * len(targets)), replace=False):
        present, absent = np.flatnonzero(noisy[row] > 0), np.flatnonzero(noisy[row] == 0)
        kind = rng.choice(kinds)
        if kind == "dropped" and len(present) < 2:
            kind = "added"  # an image keeps at least one label, as the dataset requires
        if kind == "swapped main":
            new = rng.choice(absent)
            noisy[row, main[row]], noisy[row, new] = 0, 1
            done.append(Corruption(int(row), ((int(row), int(main[row])), (int(row), int(new))), kind))
        else:
            label = (
                rng.choice([c for c in present if c != main[row]] or list(present))
                if kind == "dropped"
                else rng.choice(absent)
            )
            noisy[row, label] = 1 - noisy[row, label]
            done.append(Corruption(int(row), ((int(row), int(label)),), kind))
    return noisy, done


def found_share(quality: np.ndarray, corruptions: list[Corruption], listed: int) -> tuple[float, float]:
    """(recall, precision) of the corruptions among the `listed` lowest-quality cells."""
    top = np.argsort(quality, axis=None, kind="stable")[:listed]
    cells = set(zip(*np.unravel_index(top, quality.shape), strict=True))
    hits = [any(cell in cells for cell in c.cells) for c in corruptions]
    corrupted = {cell for c in corruptions for cell in c.cells}
    return float(np.mean(hits)), len(cells & corrupted) / max(len(cells), 1)


def relative_quality(probs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Self-confidence divided by the mean over the label's cells of the same given value (named / not named)."""
    quality = label_quality(probs, targets)
    relative = np.empty_like(quality)
    for given in (True, False):
        cells = (targets > 0) == given
        typical = np.where(cells, quality, 0).sum(axis=0) / np.maximum(cells.sum(axis=0), 1)
        relative = np.where(cells, quality / np.maximum(typical, 1e-12), relative)
    return relative


def markdown(table: pd.DataFrame) -> str:
    cells = [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row] for row in table.itertuples(index=False)]
    return "\n".join(
        [
            "| " + " | ".join(table.columns) + " |",
            "|---" * len(table.columns) + "|",
            *("| " + " | ".join(row) + " |" for row in cells),
        ]
    )


def project_inputs(root: Path, model: str) -> tuple[Path, Path, Path, Path]:
    """dataset, label subset, features and the model's best.pt of a project after `dvc repro` (the demo)."""
    return (
        root / "data/dataset.parquet",
        root / "data/label_subset.json",
        root / "data/features.npz",
        root / "models" / model / "best.pt",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser, "/tmp/stylegraph-ccp-issues")
    parser.add_argument(
        "--project",
        type=Path,
        default=None,
        help="use this project's data/ and models/ (after dvc repro) instead of CCP",
    )
    parser.add_argument("--model", default="csra", help="the model of params.yaml whose recipe the finder's folds copy")
    parser.add_argument(
        "--noise", type=float, default=0.05, help="share of train and validation images that get one corruption"
    )
    parser.add_argument("--seeds", type=int, default=3, help="noise draws (each also seeds the folds)")
    parser.add_argument("--folds", type=int, default=5, help="select.folds")
    parser.add_argument(
        "--ensemble", type=int, default=1, help="also average the out-of-fold scores of this many fold draws"
    )
    parser.add_argument("--neighbours", type=int, default=10, help="k of the neighbour-agreement methods")
    args = parser.parse_args()
    timings: dict[str, float] = {}
    if args.project is None:
        ccp = prepare(args, 1, "bench_label_issues")
        out = ccp.work / "finder"
        ccp.timed(f"train@{args.model}", train.main, ccp.train_argv(args.model, ccp.seeds[0], out))
        dataset, subset, features, best, timings = (
            ccp.data["dataset.parquet"],
            ccp.data["label_subset.json"],
            ccp.data["features.npz"],
            out / "models" / args.model / "best.pt",
            ccp.timings,
        )
    else:
        dataset, subset, features, best = project_inputs(args.project, args.model)
    labels = read_label_subset(subset)
    table = read_dataset(dataset, labels)
    table = table[table["split"].isin(CHECKED_SPLITS)].reset_index(drop=True)
    checkpoint = load_checkpoint(best)
    cached = read_features(
        features, list(table["image_id"]), feature_array(ModelSpec(**checkpoint["meta"]["spec"])), mirrored=True
    )
    clean, main = target_matrix(table["labels"], labels), main_index(table["main_style"], labels)
    pooled = read_features(features, list(table["image_id"]), "avg", mirrored=False).x.float().numpy()
    rows = []
    for seed in range(args.seeds):
        noisy, corruptions = corrupt(clean, main, args.noise, np.random.default_rng(seed))
        draws = [
            out_of_fold_probs(
                checkpoint,
                cached.x,
                cached.mirrored,
                noisy,
                assign_folds(noisy, np.arange(len(table)), args.folds, seed + 1000 * draw),
                seed + 1000 * draw,
            )
            for draw in range(args.ensemble)
        ]
        listed = 2 * len(corruptions)
        model, neighbours = label_quality(draws[0], noisy), neighbour_quality(pooled, noisy, args.neighbours)
        methods = {
            "finder (self-confidence)": model,
            "relative self-confidence": relative_quality(draws[0], noisy),
            f"neighbours only (k = {args.neighbours})": neighbours,
            "finder x neighbours": model * neighbours,
            "finder + neighbours (mean)": (model + neighbours) / 2,
        }
        if args.ensemble > 1:
            ensembled = label_quality(np.mean(draws, axis=0), noisy)
            methods |= {
                f"finder, {args.ensemble} fold draws": ensembled,
                f"finder, {args.ensemble} fold draws x neighbours": ensembled * neighbours,
            }
        for method, quality in methods.items():
            recall, precision = found_share(quality, corruptions, listed)
            _, precision_50 = found_share(quality, corruptions, 50)  # what a reviewer opening the top 50 finds
            lowest = np.argsort(quality, axis=None, kind="stable")[:listed]
            top = set(zip(*np.unravel_index(lowest, quality.shape), strict=True))
            by_kind = (
                pd.Series(
                    [any(cell in top for cell in c.cells) for c in corruptions], index=[c.kind for c in corruptions]
                )
                .groupby(level=0)
                .mean()
            )
            rows.append({"seed": seed, "method": method, "injected": len(corruptions), "listed": listed,
                         "chance": listed / noisy.size, "recall": recall, "precision": precision,
                         "precision@50": precision_50}
                        | {f"recall {k}": v for k, v in by_kind.items()})  # fmt: skip
    results = pd.DataFrame(rows)
    print(
        f"\n{len(table)} train and validation images, {len(labels)} labels, noise {args.noise:.0%}, model {args.model} "
        f"({args.folds} folds)\n"
    )
    print(markdown(results))
    shares = [c for c in results.columns if c.startswith(("chance", "recall", "precision"))]
    means = (
        results.groupby("method", sort=False)[shares]
        .agg(lambda v: f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0:.3f}")
        .reset_index()
    )
    print(f"\nmean ± sd over {args.seeds} seeds:\n\n" + markdown(means))
    if timings:
        print("\n" + timing_table(timings))


if __name__ == "__main__":
    main()
