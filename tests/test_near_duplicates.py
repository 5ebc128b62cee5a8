"""Near-duplicate search: exact, per batch, and a new batch searched at the cost of the batch."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from common.settings import IngestSettings, load_section
from pipeline.ingest import ingest
from pipeline.near_duplicates import catalog_near_duplicates, near_duplicate_pairs


def synthetic_catalog(batches: int, per_batch: int, seed: int = 0) -> pd.DataFrame:
    """Random hashes, and every third image a copy of an earlier one (this or an earlier batch) with 1-6 bits
    flipped."""
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**63, size=batches * per_batch, dtype=np.uint64)
    for i in range(3, len(hashes), 3):
        flips = rng.choice(64, size=rng.integers(1, 7), replace=False)
        hashes[i] = hashes[rng.integers(0, i)] ^ np.bitwise_or.reduce(
            np.left_shift(np.uint64(1), flips.astype(np.uint64))
        )
    return pd.DataFrame({"image_id": [f"{i:016x}" for i in range(len(hashes))],
                         "batch": [f"batch-{i // per_batch:03d}" for i in range(len(hashes))],
                         "dhash": pd.array(hashes, dtype="UInt64")})  # fmt: skip


def as_set(pairs: pd.DataFrame) -> set[tuple[str, str, int]]:
    return set(zip(pairs["image_id_a"], pairs["image_id_b"], pairs["distance"], strict=True))


def test_per_batch_search_finds_the_whole_catalog_search_and_a_new_batch_searches_only_itself(tmp_path: Path):
    catalog = synthetic_catalog(batches=4, per_batch=50)
    whole = near_duplicate_pairs(
        catalog["image_id"].to_numpy(dtype=object), catalog["dhash"].to_numpy(dtype=np.uint64), 6
    )
    ordered = {(min(a, b), max(a, b), d) for a, b, d in as_set(whole)}
    three = catalog[catalog["batch"] < "batch-003"]
    pairs, searched = catalog_near_duplicates(three, tmp_path, 6, workers=2)
    assert searched == 150 and as_set(pairs) == {
        p for p in ordered if p[0] in set(three["image_id"]) and p[1] in set(three["image_id"])
    }
    pairs, searched = catalog_near_duplicates(catalog, tmp_path, 6, workers=2)
    assert searched == 50, "the new batch only"
    assert as_set(pairs) == ordered and len(ordered) >= 60
    assert catalog_near_duplicates(catalog, tmp_path, 6)[1] == 0, "nothing new: nothing searched"
    assert catalog_near_duplicates(catalog, tmp_path, 8)[1] == 200, "another distance: everything searched again"
    assert len(list(tmp_path.glob("*.parquet"))) == 4, "the caches of the old distance are gone"


def test_a_repost_scaled_and_recompressed_is_found_at_the_default_distance(
    demo_crawl: Path, tmp_path: Path, ingest_settings, params_file
):
    photo = next(
        p
        for p in sorted((demo_crawl / "batch-001").iterdir())
        if p.suffix == ".jpg" and p.stem.startswith(("instagram", "pinterest", "twitter"))
    )
    original = Image.open(photo).convert("RGB")
    buffer = io.BytesIO()
    original.resize((round(original.width * 0.9), round(original.height * 0.9)), Image.Resampling.LANCZOS).save(
        buffer, "JPEG", quality=70
    )
    (demo_crawl / "batch-002" / "repost.jpg").write_bytes(
        buffer.getvalue()
    )  # the most common re-post, in a later batch
    settings = ingest_settings.__class__(
        **{
            **ingest_settings.__dict__,
            "near_duplicate_distance": load_section(IngestSettings, "ingest", params_file).near_duplicate_distance,
        }
    )
    catalog, _, near, _ = ingest(demo_crawl, tmp_path / "cache", settings)
    ids = {s["file"]: row["image_id"] for row in catalog.to_pylist() for s in row["sources"]}
    pairs = [{a, b} for a, b in zip(near["image_id_a"], near["image_id_b"], strict=True)]
    assert {ids[photo.name], ids["repost.jpg"]} in pairs


def test_a_damaged_batch_cache_is_searched_again_with_a_warning(tmp_path: Path, capsys):
    catalog = synthetic_catalog(batches=2, per_batch=30)
    expected, _ = catalog_near_duplicates(catalog, tmp_path, 6)
    damaged = sorted(tmp_path.glob("batch-001-*.parquet"))[0]
    damaged.write_bytes(b"not parquet")
    pairs, searched = catalog_near_duplicates(catalog, tmp_path, 6)
    assert searched == 30 and as_set(pairs) == as_set(expected)
    assert f"ingest: warning: {damaged}" in capsys.readouterr().err
