"""Near-duplicate photos (re-posts): catalog image pairs whose 64-bit difference hashes differ in at most `max_distance`
bits.

Exact search by brute force in blocks: XOR and popcount of a block of query hashes against a chunk of the
catalog's (numpy, on threads: its loops release the GIL). Memory stays at one block x chunk (32 MiB a thread)
whatever the distance, where the earlier pigeonhole banding ran out of memory at distance 8 on 200,000 hashes;
time grows with (new images) x (catalog images), about 0.6 billion pairs a second per core.

Incremental per crawl batch: an image belongs to the batch that first brought it (the catalog's `batch`); the
pairs of a batch are those between its images and the images of itself and of the batches before it. They are
cached per batch (`<cache-dir>/<batch>-<key>.parquet`), keyed by the distance and the image ids on both sides,
so a new batch searches its own images against the catalog and the other batches are read back.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from common.atomic import remove_leftover_temporaries, write_parquet
from common.tables import empty_table, read_cache

PAIR_COLUMNS = {"image_id_a": "string", "image_id_b": "string", "distance": "int64"}
QUERY_BLOCK, CATALOG_CHUNK = 64, 65_536  # one block x chunk of uint64: 32 MiB


def empty_pairs() -> pd.DataFrame:
    return empty_table(PAIR_COLUMNS)


def close_pairs(
    queries: np.ndarray, catalog: np.ndarray, max_distance: int, workers: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query index, catalog index, distance) of every query-catalog pair within `max_distance` bits."""
    queries, catalog = queries.astype(np.uint64), catalog.astype(np.uint64)

    def block(start: int) -> list[np.ndarray]:
        found = []
        q = queries[start : start + QUERY_BLOCK, None]
        for offset in range(0, len(catalog), CATALOG_CHUNK):
            distance = np.bitwise_count(q ^ catalog[None, offset : offset + CATALOG_CHUNK])
            rows, cols = np.nonzero(distance <= max_distance)
            found.append(np.stack([rows + start, cols + offset, distance[rows, cols].astype(np.int64)]))
        return found

    starts = range(0, len(queries), QUERY_BLOCK)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        parts = [p for found in pool.map(block, starts) for p in found]
    if not parts:
        return np.array([], np.int64), np.array([], np.int64), np.array([], np.int64)
    a, b, d = np.concatenate(parts, axis=1)
    return a, b, d


def near_duplicate_pairs(
    image_ids: np.ndarray, hashes: np.ndarray, max_distance: int, workers: int = 1
) -> pd.DataFrame:
    """Pairs of distinct images (each pair once, a before b in input order) within `max_distance` bits."""
    if max_distance < 0 or len(hashes) < 2:
        return empty_pairs()
    a, b, d = close_pairs(hashes, hashes, max_distance, workers)
    keep = a < b
    return pd.DataFrame(
        {"image_id_a": image_ids[a[keep]], "image_id_b": image_ids[b[keep]], "distance": d[keep]}
    ).astype(PAIR_COLUMNS)


def batch_key(max_distance: int, own: np.ndarray, earlier: np.ndarray) -> str:
    """What a batch's pairs depend on: the distance and the ids of its images and of the images before it."""
    digest = hashlib.sha256(f"{max_distance}\n".encode())
    for ids in (own, earlier):
        digest.update("\n".join(sorted(ids)).encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def batch_pairs(
    ids: np.ndarray, hashes: np.ndarray, own: np.ndarray, earlier: np.ndarray, max_distance: int, workers: int
) -> pd.DataFrame:
    """Pairs between the batch's images (`own`, row indices) and themselves or the images of earlier batches."""
    search = np.concatenate([own, earlier])
    a, b, d = close_pairs(hashes[own], hashes[search], max_distance, workers)
    keep = b >= len(own)  # an earlier batch's image
    keep |= (b < len(own)) & (a < b)  # two of the batch's own images, each pair once
    first, second = ids[own[a[keep]]], ids[search[b[keep]]]
    return pd.DataFrame(
        {"image_id_a": np.minimum(first, second), "image_id_b": np.maximum(first, second), "distance": d[keep]}
    ).astype(PAIR_COLUMNS)


def catalog_near_duplicates(
    catalog: pd.DataFrame, cache_dir: Path, max_distance: int, workers: int = 0
) -> tuple[pd.DataFrame, int]:
    """(every near-duplicate pair of the catalog, images searched this run); batches unchanged since are read from
    `cache_dir`."""
    if max_distance < 0:
        return empty_pairs(), 0
    workers = workers or os.cpu_count() or 1
    cache_dir.mkdir(parents=True, exist_ok=True)
    remove_leftover_temporaries(cache_dir)
    hashed = catalog[catalog["dhash"].notna()].reset_index(drop=True)
    ids, hashes = hashed["image_id"].to_numpy(dtype=object), hashed["dhash"].to_numpy(dtype=np.uint64)
    batches = hashed["batch"].to_numpy(dtype=object)
    tables, searched, kept = [], 0, set()
    for batch in sorted(set(batches)):
        own, earlier = np.flatnonzero(batches == batch), np.flatnonzero(batches < batch)
        path = cache_dir / f"{batch}-{batch_key(max_distance, ids[own], ids[earlier])}.parquet"
        kept.add(path)
        pairs = read_cache(path, PAIR_COLUMNS, "ingest", "searching its batch again")
        if pairs is None:
            pairs = batch_pairs(ids, hashes, own, earlier, max_distance, workers)
            write_parquet(pairs, path)
            searched += len(own)
        tables.append(pairs)
    for stale in set(cache_dir.glob("*.parquet")) - kept:
        stale.unlink()  # a batch changed or gone, or another distance
    pairs = pd.concat(tables, ignore_index=True) if tables else empty_pairs()
    return pairs.sort_values(["image_id_a", "image_id_b"], ignore_index=True).astype(PAIR_COLUMNS), searched
