"""Stats stage: class balance (the paper's Table 2), label co-occurrence, and their plots.

Class balance, overall and per crawl batch: images per main style, the main-label
share (of images with a main style; ties have none) and the sub-label share (of
all sub-labels), as in Table 2. Co-occurrence over every consolidated image's
label set (main + sub-styles): count(i and j) and P(Lj | Li) = count(i and j) /
count(i), for every ordered pair i != j (a style with no images has P = 0).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from common.atomic import atomic_path, outputs_together, write_parquet  # noqa: E402
from common.cli import StageParser, report_user_errors  # noqa: E402
from common.labelsets import conditional, cooccurrence, cross_counts, main_and_sub_matrices  # noqa: E402
from common.settings import DEFAULT_PARAMS, load_taxonomy_path  # noqa: E402
from common.tables import read_table  # noqa: E402
from common.taxonomy import load_taxonomy  # noqa: E402


def _balance(main_counts: np.ndarray, sub_counts: np.ndarray, names: Sequence[str]) -> pd.DataFrame:
    """Table 2 for one group of images, from its per-style main and sub counts."""
    return pd.DataFrame(
        {
            "style": list(names),
            "images": main_counts.astype(np.int64),
            "main_share": main_counts / max(int(main_counts.sum()), 1),
            "sub_labels": sub_counts.astype(np.int64),
            "sub_share": sub_counts / max(int(sub_counts.sum()), 1),
        }
    )


def class_balance(
    main: np.ndarray, sub: np.ndarray, batches: pd.Series, names: Sequence[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(overall, per batch) class balance from the indicator matrices; styles in taxonomy order, all listed."""
    overall = _balance(main.sum(axis=0), sub.sum(axis=0), names)
    codes, batch_names = pd.factorize(batches.astype("string").fillna("(unknown)"), sort=True)
    onehot = np.zeros((len(codes), len(batch_names)), dtype=bool)
    onehot[np.arange(len(codes)), codes] = True
    main_by_batch, sub_by_batch = cross_counts(onehot, main), cross_counts(onehot, sub)
    parts = [
        _balance(main_by_batch[b], sub_by_batch[b], names).assign(batch=str(name)) for b, name in enumerate(batch_names)
    ]
    by_batch = (
        pd.concat(parts, ignore_index=True) if parts else overall.iloc[:0].assign(batch=pd.Series(dtype="string"))
    )
    return overall, by_batch[["batch", *overall.columns]].astype({"batch": "string", "style": "string"})


def cooccurrence_table(matrix: np.ndarray, names: Sequence[str]) -> tuple[pd.DataFrame, np.ndarray]:
    """Long table (i, j, count, p_j_given_i) for i != j, and the (C, C) P(Lj | Li) matrix."""
    cooc = cooccurrence(matrix)
    prob = conditional(cooc, matrix.sum(axis=0))
    i, j = np.nonzero(~np.eye(len(names), dtype=bool))
    styles = np.asarray(names, dtype=object)
    table = pd.DataFrame({"i": styles[i], "j": styles[j], "count": cooc[i, j], "p_j_given_i": prob[i, j]})
    return table.astype({"i": "string", "j": "string"}), prob


def plot_cooccurrence(prob: np.ndarray, names: Sequence[str], target: Path) -> None:
    """Heatmap of P(Lj | Li) like the paper's Figure 6 (row = given style)."""
    shown = np.where(np.eye(len(names), dtype=bool), np.nan, prob)
    size = max(6.0, 0.38 * len(names))
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    image = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("j")
    ax.set_ylabel("i (given)")
    ax.set_title("P(style j | style i), all labelled images")
    if len(names) <= 30:
        for (r, c), value in np.ndenumerate(shown):
            if value >= 0.05:
                ax.text(
                    c,
                    r,
                    f"{value:.2f}",
                    ha="center",
                    va="center",
                    fontsize=5,
                    color="white" if value > 0.5 else "black",
                )
    fig.colorbar(image, ax=ax, fraction=0.046)
    _save(fig, target)


def plot_trend(by_batch: pd.DataFrame, target: Path) -> None:
    """Main-label share of every style per crawl batch (batches in name order = crawl order)."""
    shares = by_batch.pivot(index="batch", columns="style", values="main_share")
    shares = shares[by_batch["style"].drop_duplicates()]
    fig, ax = plt.subplots(figsize=(9, 5.5))
    colours = [cmap(i) for cmap in (plt.get_cmap("tab20"), plt.get_cmap("tab20b")) for i in range(cmap.N)]  # 40 colours
    for k, style in enumerate(shares.columns):
        ax.plot(shares.index, shares[style], marker="o", label=style, color=colours[k % len(colours)])
    ax.set_xlabel("crawl batch")
    ax.set_ylabel("share of main labels")
    ax.set_title("Main-style share per crawl batch")
    ax.legend(fontsize=6, ncol=2, loc="upper left", bbox_to_anchor=(1.01, 1))
    _save(fig, target)


def _save(fig: plt.Figure, target: Path) -> None:
    fig.tight_layout()
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = StageParser("stats", prog="python -m pipeline.stats", description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", type=Path, help="consolidated labels, one row per image")
    parser.add_argument("--balance", type=Path, help="output: class balance (Table 2)")
    parser.add_argument(
        "--balance-by-batch",
        type=Path,
        help="output: class balance per crawl batch",
    )
    parser.add_argument(
        "--cooccurrence",
        type=Path,
        help="output: i, j, count, p_j_given_i",
    )
    parser.add_argument("--heatmap", type=Path, help="output: P(j|i) heatmap (Figure 6)")
    parser.add_argument(
        "--trend",
        type=Path,
        help="output: main-style shares per crawl batch",
    )
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="params.yaml (for 'taxonomy')")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return report_user_errors("stats", lambda: run(args))


def run(args: argparse.Namespace) -> int:
    names = load_taxonomy(load_taxonomy_path(args.params)).names
    labels = read_table(args.labels, columns=["image_id", "batch", "main_style", "sub_styles"])
    main_matrix, sub_matrix = main_and_sub_matrices(labels["main_style"], labels["sub_styles"], names)
    overall, by_batch = class_balance(main_matrix, sub_matrix, labels["batch"], names)
    cooc, prob = cooccurrence_table(main_matrix | sub_matrix, names)
    with outputs_together():
        write_parquet(overall, args.balance)
        write_parquet(by_batch, args.balance_by_batch)
        write_parquet(cooc, args.cooccurrence)
        plot_cooccurrence(prob, names, args.heatmap)
        plot_trend(by_batch, args.trend)
    top = overall.nlargest(3, "images")
    print(
        f"stats: {len(labels)} images, {by_batch['batch'].nunique()} batches; top styles "
        + ", ".join(f"{r.style} {r.main_share:.1%}" for r in top.itertuples())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
