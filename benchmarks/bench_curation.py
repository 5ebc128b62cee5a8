"""Curation benchmark: stats and label graph on 1,000,000 synthetic label rows over 23 styles.

Prints, measured in this one process on this machine, the seconds each step takes
on label sets already in memory (reading Parquet and plotting are left out: they
do not grow with the rows that matter here):
  1. stats: class balance overall and per batch (Table 2) + co-occurrence and P(j|i);
  2. graph: train-split indicator matrix + co-occurrence, P(j|i), A' and its normalisation.

Usage: python benchmarks/bench_curation.py [--rows N] [--seed S]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import pandas as pd
import pyarrow as pa

from common.labelsets import main_and_sub_matrices
from common.taxonomy import load_taxonomy
from pipeline.graph import GraphSettings, build_graph, train_matrix
from pipeline.stats import class_balance, cooccurrence_table

STYLES = load_taxonomy("taxonomies/kfashion_styles.yaml").names


def synthetic_labels(rows: int, seed: int) -> pd.DataFrame:
    """Image-label rows shaped like image_labels.parquet: skewed main styles, 0-3 sub-styles, 10 batches."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, len(STYLES) + 1) ** 1.2
    names = np.asarray(STYLES, dtype=object)
    main = names[rng.choice(len(STYLES), size=rows, p=weights / weights.sum())]
    lengths = rng.integers(0, 4, size=rows)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    values = names[rng.integers(0, len(STYLES), size=int(offsets[-1]))]
    subs = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, type=pa.string())).to_pandas()
    return pd.DataFrame(
        {
            "batch": pd.Series(rng.integers(0, 10, size=rows)).map("batch-{:03d}".format),
            "main_style": pd.Series(main, dtype="string"),
            "sub_styles": subs,
            "split": np.asarray(["train", "val", "test"])[rng.choice(3, size=rows, p=[0.7, 0.1, 0.2])],
        }
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="label rows to generate")
    parser.add_argument("--seed", type=int, default=0, help="generator seed")
    args = parser.parse_args(argv)
    labels = synthetic_labels(args.rows, args.seed)
    dataset = labels.assign(labels=labels["sub_styles"])  # graph reads 'labels' lists; content does not change the cost

    start = time.perf_counter()
    main_matrix, sub_matrix = main_and_sub_matrices(labels["main_style"], labels["sub_styles"], STYLES)
    class_balance(main_matrix, sub_matrix, labels["batch"], STYLES)
    cooccurrence_table(main_matrix | sub_matrix, STYLES)
    stats_seconds = time.perf_counter() - start

    start = time.perf_counter()
    build_graph(
        train_matrix(dataset, STYLES),
        STYLES,
        GraphSettings(threshold=0.4, p=0.2, normalisation="reference", word_vectors="glove-6b-50d"),
    )
    graph_seconds = time.perf_counter() - start

    print(f"rows: {args.rows:,}, styles: {len(STYLES)}")
    print(f"stats (class balance overall + per batch, co-occurrence, P(j|i)): {stats_seconds:.2f} s")
    print(f"graph (train rows only: co-occurrence, P(j|i), A', normalised): {graph_seconds:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
