"""Groups of images that belong together (near-duplicates): the split stage keeps them in one split, the
out-of-fold selection in one fold."""

from __future__ import annotations

import numpy as np
import pandas as pd


def components(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """Connected components of the graph on n nodes with edges a[i]-b[i]: each node's smallest member."""
    parent = list(range(n))

    def root(node: int) -> int:
        while parent[node] != node:
            parent[node] = parent[parent[node]]  # path halving
            node = parent[node]
        return node

    for x, y in zip(a.tolist(), b.tolist(), strict=True):
        rx, ry = root(x), root(y)
        if rx != ry:
            parent[max(rx, ry)] = min(rx, ry)
    return np.array([root(node) for node in range(n)], dtype=np.int64)


def near_duplicate_groups(image_ids: pd.Series, pairs: pd.DataFrame) -> np.ndarray:
    """Group number of each of `image_ids` (N,): images joined by a chain of `pairs` (image_id_a, image_id_b) share
    one; an image in no pair is a group of its own."""
    index = pd.Index(image_ids.astype(str))
    a = index.get_indexer(pairs["image_id_a"].astype(str))
    b = index.get_indexer(pairs["image_id_b"].astype(str))
    known = (a >= 0) & (b >= 0)
    return components(a[known], b[known], len(index))
