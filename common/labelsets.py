"""Label sets as a boolean image x label matrix, and the co-occurrence statistics built on it.

Shared by stats (all labelled images) and graph (train split only), so both count
the same way. Everything is vectorised: list columns are flattened through Arrow,
never iterated row by row.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

CHUNK = 1 << 22  # rows per float32 block in cross_counts


def flatten_lists(values: pd.Series) -> tuple[np.ndarray, pa.Array]:
    """(row position, value) for every element of a list column; missing lists count as empty."""
    array = pa.array(values.to_numpy(dtype=object), type=pa.list_(pa.string()), from_pandas=True)
    return pc.list_parent_indices(array).to_numpy(zero_copy_only=False).astype(np.int64), pc.list_flatten(array)


def indicator(rows: np.ndarray, values: pa.Array | np.ndarray, n_rows: int, names: Sequence[str]) -> np.ndarray:
    """Boolean (n_rows, C) matrix: True where row `rows[k]` carries label `values[k]`.

    A value outside `names` raises KeyError naming the unknown values: curation runs
    after validation, so an unknown label here is a bug, not data to skip.
    """
    values = values if isinstance(values, pa.Array) else pa.array(np.asarray(values, dtype=object), type=pa.string())
    codes = pc.index_in(values, value_set=pa.array(list(names), type=pa.string()))
    if codes.null_count:
        unknown = pc.unique(pc.filter(values, pc.is_null(codes))).to_pylist()
        raise KeyError(f"labels not in the label set: {sorted(map(str, unknown))}")
    matrix = np.zeros((n_rows, len(names)), dtype=bool)
    matrix[rows, codes.to_numpy(zero_copy_only=False)] = True
    return matrix


def main_and_sub_matrices(main: pd.Series, subs: pd.Series, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(main, sub) indicator matrices of consolidated labels; NULL main styles mark nothing."""
    has_main = main.notna().to_numpy()
    main_matrix = indicator(np.flatnonzero(has_main), main[has_main].astype(str).to_numpy(), len(main), names)
    rows, values = flatten_lists(subs)
    return main_matrix, indicator(rows, values, len(subs), names)


def cross_counts(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """left.T @ right for 0/1 matrices, as exact int64 counts.

    Float32 matrix products (BLAS) over chunks of 2**22 rows: every partial count
    stays below 2**24, where float32 is still exact, and it is far faster than
    numpy's integer matmul.
    """
    total = np.zeros((left.shape[1], right.shape[1]), dtype=np.int64)
    for start in range(0, len(left), CHUNK):
        a = left[start : start + CHUNK].astype(np.float32)
        b = right[start : start + CHUNK].astype(np.float32)
        total += np.rint(a.T @ b).astype(np.int64)
    return total


def cooccurrence(matrix: np.ndarray) -> np.ndarray:
    """(C, C) int64 counts of images carrying both labels i and j; zero diagonal."""
    counts = cross_counts(matrix, matrix)
    np.fill_diagonal(counts, 0)
    return counts


def conditional(cooc: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """P(Lj | Li) = cooc[i, j] / counts[i]; a label with no images has an all-zero row (no edges)."""
    counts = np.asarray(counts, dtype=np.float64)
    safe = np.where(counts > 0, counts, 1.0)
    return np.where(counts[:, None] > 0, cooc / safe[:, None], 0.0)
