"""Split stage: stable, stratified train/val/test assignment and the label subset training uses.

Stable: `data/splits.parquet` (a persisted DVC output) is read back on every run;
an image assigned once keeps its split forever, even when params change, it is
relabelled, or it drops out of the dataset. Only images seen for the first time are
assigned: per stratum (the main style; for tag taxonomies the image's first label in
taxonomy order) they fill each split up to its share of the stratum's images, in
an order fixed by a seeded hash of the image id. Delete splits.parquet to re-split.

Eligible images: consolidated, not tied (needs_review false), at least one label.

Near-duplicates: a re-post in test of a photo in train flatters the test scores. Given
ingest's near-duplicate pairs, new images are kept together: the pairs at most
`split.near_duplicates_together` bits apart join images into groups, and every new
image of a group takes the split of the group's images assigned earlier (the most common
one), or else of its first new image in the stratified order. Groups may shift a
stratum's shares slightly off their targets. The pairs whose two images still lie in
different splits (assigned before, or further apart) are listed in the leakage table for
review. Assignments are never moved to fix them.

Label subset (the paper's top-K): the K styles with most images as main style
(most images with the label, for tag taxonomies), ties broken by taxonomy order;
top_k 0 keeps every label. An image whose MAIN style is outside the subset is left
out (the paper uses "the images of the top-K styles"); of the others, sub-styles
outside the subset are dropped. For tag taxonomies an image is kept when any of
its labels is in the subset.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from common.atomic import outputs_together, write_json, write_parquet
from common.cli import StageParser, report_user_errors
from common.groups import components
from common.labelsets import main_and_sub_matrices
from common.settings import DEFAULT_PARAMS, Problem, Settings, load_section, load_taxonomy_path, setting
from common.tables import empty_table, read_table
from common.taxonomy import load_taxonomy

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SplitSettings(Settings):
    section = "split"
    seed: int = setting("orders NEW images inside a stratum; images already assigned never move")
    train: float = setting("share of each stratum in the train split", interval="[0, 1]")
    val: float = setting("share in the validation split (model and setting choices are made here)", interval="[0, 1]")
    test: float = setting("share in the test split (read once, by evaluate)", interval="[0, 1]")
    top_k: int = setting(
        "label subset: the K styles with most images as main style; 0 = all (the paper: 5 and 7)", interval="[0, inf)"
    )
    near_duplicates_together: int = setting(
        "new images in near-duplicate pairs at most this many dHash bits apart go to one split (from ingest's list,"
        " up to ingest.near_duplicate_distance); -1: off (docs/near-duplicates.md)",
        interval="[-1, 64]",
    )

    def rules(self) -> Iterator[Problem]:
        if not np.isclose(self.train + self.val + self.test, 1.0):
            yield "", f"train + val + test must sum to 1, got {[self.train, self.val, self.test]}"

    def fractions(self) -> np.ndarray:
        return np.array([self.train, self.val, self.test], dtype=np.float64)


def largest_remainder(totals: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Integer (S, K) allocation of totals[s] in proportion to weights[s]; rows sum to totals exactly.

    Ties between equal remainders go to the earlier column (train before val before test).
    """
    weights = weights / np.where(weights.sum(axis=1, keepdims=True) > 0, weights.sum(axis=1, keepdims=True), 1.0)
    quotas = totals[:, None] * weights
    base = np.floor(quotas + 1e-9).astype(np.int64)
    remainder = totals - base.sum(axis=1)
    order = np.argsort(-(quotas - base), axis=1, kind="stable")
    rank = np.argsort(order, axis=1, kind="stable")
    return base + (rank < remainder[:, None])


def eligible_images(labels: pd.DataFrame, names: Sequence[str]) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """(eligible label rows, their main and sub indicator matrices), with a 'stratum' column."""
    main, sub = main_and_sub_matrices(labels["main_style"], labels["sub_styles"], names)
    keep = ~labels["needs_review"].to_numpy(dtype=bool) & (main | sub).any(axis=1)
    rows = labels[keep].reset_index(drop=True)
    main, sub = main[keep], sub[keep]
    first_label = np.asarray(names, dtype=object)[np.argmax(main | sub, axis=1)]
    rows["stratum"] = rows["main_style"].astype(object).where(rows["main_style"].notna(), first_label).astype(str)
    return rows, main, sub


def keep_together(new: pd.DataFrame, existing: pd.DataFrame, pairs: pd.DataFrame) -> pd.Series:
    """The split of each new image (rows of `new`, in the stratified order, with their allocated split) once
    near-duplicate groups are kept in one split: a group's earlier images decide (their most common split,
    train before val before test on ties), else its first new image."""
    ids = pd.Index(pd.concat([pairs["image_id_a"], pairs["image_id_b"]]).astype(str).unique())
    group_of = pd.Series(
        components(
            ids.get_indexer(pairs["image_id_a"].astype(str)), ids.get_indexer(pairs["image_id_b"].astype(str)), len(ids)
        ),
        index=ids,
    )
    new_groups = new["image_id"].astype(str).map(group_of)
    grouped = new.assign(group=new_groups.to_numpy())[new_groups.notna().to_numpy()]
    choice = grouped.groupby("group", sort=False)["split"].first()  # `new` is in allocation order
    old = existing.assign(group=existing["image_id"].astype(str).map(group_of).to_numpy()).dropna(subset=["group"])
    earlier = old.groupby("group")["split"].agg(lambda s: s.value_counts().reindex(list(SPLITS)).idxmax())
    choice.update(earlier)
    return new["split"].where(new_groups.isna().to_numpy(), new_groups.map(choice).to_numpy())


def assign_splits(
    existing: pd.DataFrame, images: pd.DataFrame, settings: SplitSettings, pairs: pd.DataFrame | None = None
) -> pd.DataFrame:
    """All assignments (image_id, split): the existing ones untouched plus the new images of `images`.

    `images` has image_id and stratum. For each stratum, the new images go where the
    stratum's current members (old + new) fall short of the target shares; then, given
    near-duplicate `pairs` (image_id_a, image_id_b, distance), groups are kept in one split.
    """
    known = images["image_id"].isin(existing["image_id"])
    old = images[known].merge(existing, on="image_id")
    new = images[~known].copy()
    if new.empty:
        return existing.sort_values("image_id", ignore_index=True)
    strata = pd.Index(sorted(set(new["stratum"])))
    old_counts = (
        pd.crosstab(old["stratum"], old["split"]).reindex(index=strata, columns=list(SPLITS), fill_value=0).to_numpy()
    )
    new_counts = new.groupby("stratum").size().reindex(strata).to_numpy()
    fractions = np.broadcast_to(settings.fractions(), old_counts.shape)
    targets = largest_remainder(old_counts.sum(axis=1) + new_counts, fractions)
    need = np.clip(targets - old_counts, 0, None).astype(np.float64)
    allocation = largest_remainder(new_counts, np.where(need.sum(axis=1, keepdims=True) > 0, need, fractions))
    bounds = pd.DataFrame(np.cumsum(allocation, axis=1), index=strata, columns=list(SPLITS))

    key = f"{settings.seed:016d}"[-16:]
    new["order"] = pd.util.hash_pandas_object(new["image_id"].astype(str), index=False, hash_key=key).to_numpy()
    new = new.sort_values(["stratum", "order", "image_id"])
    position = new.groupby("stratum").cumcount().to_numpy()
    limits = bounds.loc[new["stratum"]].to_numpy()
    new["split"] = np.asarray(SPLITS)[(position[:, None] >= limits).sum(axis=1)]
    close = pairs[pairs["distance"] <= settings.near_duplicates_together] if pairs is not None else None
    if close is not None and not close.empty:
        new["split"] = keep_together(new, existing, close)
    merged = pd.concat([existing, new[["image_id", "split"]]], ignore_index=True)
    return merged.astype({"image_id": "string", "split": "string"}).sort_values("image_id", ignore_index=True)


def select_labels(main: np.ndarray, sub: np.ndarray, names: Sequence[str], top_k: int) -> list[str]:
    """The label subset in taxonomy order: top_k labels by main-style images (any-label images without mains)."""
    counts = main.sum(axis=0) if main.any() else (main | sub).sum(axis=0)
    if top_k <= 0 or top_k >= len(names):
        return list(names)
    chosen = np.sort(np.argsort(-counts, kind="stable")[:top_k])
    return [names[i] for i in chosen]


def label_lists(main: np.ndarray, sub: np.ndarray, names: Sequence[str]) -> pa.Array:
    """list<string> per row: the main label first, then the sub-labels in taxonomy order."""
    sub = sub & ~main
    rows = np.concatenate([np.nonzero(main)[0], np.nonzero(sub)[0]])
    cols = np.concatenate([np.nonzero(main)[1], np.nonzero(sub)[1]])
    keys = np.concatenate([np.full(int(main.sum()), -1), np.nonzero(sub)[1]])
    order = np.lexsort((keys, rows))
    offsets = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=len(main)))]).astype(np.int32)
    values = pa.array(np.asarray(names, dtype=object)[cols[order]], type=pa.string())
    return pa.ListArray.from_arrays(pa.array(offsets), values)


def build_dataset(
    rows: pd.DataFrame,
    main: np.ndarray,
    sub: np.ndarray,
    subset: Sequence[str],
    names: Sequence[str],
    splits: pd.DataFrame,
    catalog: pd.DataFrame,
) -> pd.DataFrame:
    """What training reads: image_id, path, batch, split, main_style, labels (inside the subset)."""
    inside = np.isin(np.asarray(names), list(subset))
    has_main = main.any(axis=1)
    keep = np.where(has_main, (main & inside).any(axis=1), (sub & inside).any(axis=1))
    main_in, sub_in = main[keep][:, inside], sub[keep][:, inside]
    kept = rows.loc[keep, ["image_id", "main_style"]].reset_index(drop=True)
    kept["labels"] = pd.Series(label_lists(main_in, sub_in, list(subset)).to_pylist(), dtype=object)
    places = catalog.set_index("image_id")[["path", "batch"]]
    dataset = kept.join(places, on="image_id").merge(splits, on="image_id", how="left")
    dataset = dataset.astype(
        {"image_id": "string", "path": "string", "batch": "string", "split": "string", "main_style": "string"}
    )
    return dataset[["image_id", "path", "batch", "split", "main_style", "labels"]].sort_values(
        "image_id", ignore_index=True
    )


def split_leakage(pairs: pd.DataFrame, splits: pd.DataFrame) -> pd.DataFrame:
    """The near-duplicate pairs whose two images are assigned to different splits, with both splits."""
    split_of = splits.set_index("image_id")["split"]
    table = pairs.assign(split_a=pairs["image_id_a"].map(split_of), split_b=pairs["image_id_b"].map(split_of))
    crossing = table[table["split_a"].notna() & table["split_b"].notna() & (table["split_a"] != table["split_b"])]
    return (
        crossing[["image_id_a", "split_a", "image_id_b", "split_b", "distance"]]
        .astype({"split_a": "string", "split_b": "string"})
        .reset_index(drop=True)
    )


def read_splits(path: Path) -> pd.DataFrame:
    """Earlier assignments, or none on the first run."""
    if not path.exists():
        return empty_table({"image_id": "string", "split": "string"})
    return read_table(path, columns=["image_id", "split"]).astype({"image_id": "string", "split": "string"})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = StageParser("split", prog="python -m pipeline.split", description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", type=Path, help="consolidated labels, one row per image")
    parser.add_argument(
        "--catalog",
        type=Path,
        help="image catalog (path relative to crawl.dir, batch)",
    )
    parser.add_argument(
        "--splits",
        type=Path,
        help="input AND output: every assignment so far (image_id, split); kept forever",
    )
    parser.add_argument(
        "--dataset",
        type=Path,
        help="output: the images training reads, with split and labels",
    )
    parser.add_argument(
        "--subset",
        type=Path,
        help="output: the selected labels in taxonomy order",
    )
    parser.add_argument(
        "--params", type=Path, default=DEFAULT_PARAMS, help="params.yaml (sections 'split' and 'taxonomy')"
    )
    parser.add_argument(
        "--near-duplicates",
        type=Path,
        help="ingest's near-duplicate pairs: new near-duplicates are kept in one split (split.near_duplicates_together)"
        "; with --leakage, the pairs that still cross splits are listed",
    )
    parser.add_argument(
        "--leakage",
        type=Path,
        help="output: near-duplicate pairs whose images lie in different splits (image_id_a, split_a, image_id_b, "
        "split_b, distance)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return report_user_errors("split", lambda: run(args))


def run(args: argparse.Namespace) -> int:
    settings = load_section(SplitSettings, "split", args.params)
    names = load_taxonomy(load_taxonomy_path(args.params)).names
    labels = read_table(args.labels, columns=["image_id", "main_style", "sub_styles", "needs_review"])
    catalog = read_table(args.catalog, columns=["image_id", "path", "batch"])
    rows, main, sub = eligible_images(labels, names)
    existing = read_splits(args.splits)
    pairs = read_table(args.near_duplicates) if args.near_duplicates else None
    splits = assign_splits(existing, rows[["image_id", "stratum"]], settings, pairs)
    subset = select_labels(main, sub, names, settings.top_k)
    dataset = build_dataset(rows, main, sub, subset, names, splits, catalog)
    leakage = split_leakage(pairs, splits) if pairs is not None and args.leakage else None
    with outputs_together():
        write_parquet(splits, args.splits)
        write_parquet(dataset, args.dataset)
        write_json({"labels": subset, "top_k": settings.top_k}, args.subset)
        if leakage is not None:
            write_parquet(leakage, args.leakage)
    sizes = dataset["split"].value_counts().reindex(list(SPLITS), fill_value=0)
    print(
        f"split: {len(splits) - len(existing)} new images assigned ({len(splits)} in all); "
        f"dataset {len(dataset)} images, "
        + ", ".join(f"{k} {v}" for k, v in sizes.items())
        + f"; {len(subset)} labels"
        + (
            f"; {len(leakage)} near-duplicate pairs cross splits (leakage, for review) -> {args.leakage}"
            if leakage is not None
            else ""
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
