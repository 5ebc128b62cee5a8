"""Ingest stage: crawl batches -> image catalog (Parquet), rejects (CSV), near duplicates.

A crawl batch is a folder `<crawl-dir>/<batch>/` of image files plus an optional
`metadata.csv` (file, source, post_id, posted_at) and optional `.json` label files
beside the photos (the K-Fashion layout; the labels stage reads them). Every file is decoded once;
the facts of its bytes (size, hashes, or what is wrong with them) are kept in a
per-batch cache (`<cache-dir>/<batch>.parquet`) keyed by file name, size and
modification time, so adding a batch decodes only that batch. The limits of
params.yaml (ingest.min_side, ingest.max_pixels) are applied to those facts on every
run, so changing them re-judges every batch without decoding it again.
Exact duplicates (same bytes, across or within batches) collapse to one image id
that lists all its sources. Bad files land in the rejects file and never stop the run.
"""

from __future__ import annotations

import argparse
import errno
import os
import stat
import sys
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import PIL
import pyarrow as pa
from tqdm import tqdm

from common.atomic import (
    outputs_together,
    remove_leftover_temporaries,
    write_arrow,
    write_csv,
    write_json,
    write_parquet,
)
from common.cli import InputError, StageParser, report_user_errors
from common.crawl import batch_folders, inside
from common.images import Inspected, content_id, inspect_image
from common.processes import worker_pool
from common.settings import DEFAULT_PARAMS, IngestSettings, crawl_folder, load_section
from common.tables import empty_table, read_cache
from pipeline.near_duplicates import catalog_near_duplicates

METADATA_FILE = "metadata.csv"
LABEL_SUFFIX = ".json"  # label files beside the photos (the K-Fashion layout): the labels stage reads them
METADATA_COLUMNS = ["source", "post_id", "posted_at"]
FILE_COLUMNS = {
    "file": "string",
    "size": "int64",
    "mtime_ns": "int64",
    "image_id": "string",
    "reason": "string",  # what is wrong with the bytes themselves; the size limits come on top
    "header_only": "bool",  # the pixel guard left it undecoded: more than ingest.max_pixels pixels
    "width": "Int64",
    "height": "Int64",
    "format": "string",
    "mode": "string",
    "orientation": "Int64",
    "dhash": "UInt64",
    "decoder": "string",  # the Pillow version that judged the bytes: another one judges the rejects again
}


@dataclass
class IngestCounts:
    batches: int = 0
    files: int = 0
    decoded: int = 0
    reused: int = 0
    rehashed: int = 0
    images: int = 0
    duplicate_files: int = 0
    rejected: int = 0
    near_duplicate_pairs: int = 0
    near_duplicate_searched: int = (
        0  # images searched against the catalog this run (the other batches' pairs are cached)
    )


def list_batches(crawl_dir: Path) -> list[Path]:
    if not crawl_dir.is_dir():
        raise InputError(
            f"crawl folder {crawl_dir} does not exist: run `make demo-data` for the demo crawl, "
            "or set crawl.dir in params.yaml to your crawl"
        )
    batches, outside = batch_folders(crawl_dir)
    for path in outside:
        print(
            f"ingest: warning: {path} links to {os.path.realpath(path)}, outside the crawl folder: not read (copy the "
            "batch in instead)",
            file=sys.stderr,
        )
    return batches


def printable_name(name: str) -> str:
    """A file name as the rejects report can hold it: bytes that are not UTF-8 shown as \\xNN escapes."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def judge_entry(entry: os.DirEntry, crawl_root: str) -> tuple[os.stat_result | None, str | None]:
    """(its stat, None) for a batch-folder entry that is a regular file (or a link to one inside the crawl), else (None,
    why it cannot be an image file); judged without opening it.

    Symlink policy: a link is followed only when its target is a regular file inside the crawl folder (a crawler may
    link a re-post to the copy it already has); a link leaving the crawl would let a crawl folder read any file of
    the machine, and Label Studio would serve it.
    """
    try:
        entry.name.encode("utf-8")
    except UnicodeEncodeError:
        return (
            None,
            "file name is not valid UTF-8: rename the file (the catalog, Label Studio and DVC need UTF-8 paths)",
        )
    try:
        own = entry.stat(follow_symlinks=False)
        if stat.S_ISLNK(own.st_mode):
            target = os.path.realpath(entry.path)
            try:
                followed = os.stat(entry.path)
            except OSError as exc:
                return (
                    None,
                    "symlink loop"
                    if exc.errno == errno.ELOOP
                    else f"dangling symlink: its target {target} does not exist",
                )
            if not inside(target, crawl_root):
                return (
                    None,
                    f"symlink to {target}, outside the crawl folder: links may only point inside it (copy the file "
                    "into the batch instead)",
                )
            own = followed
    except OSError as exc:
        return None, f"cannot inspect the entry: {exc.strerror or exc}"
    if stat.S_ISREG(own.st_mode):
        return own, None
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))  # fmt: skip
    kind = next((k for test, k in kinds if test(own.st_mode)), "not a regular file")
    return None, f"{kind}, not an image file (batches are flat folders of files)"


def stat_batch_files(batch_dir: Path, crawl_root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(name, size and mtime of every candidate image file, entries rejected as they are listed) of a batch; no file is
    opened.

    Every entry is judged on its own (`judge_entry`): one bad entry never stops a batch.
    """
    root = os.path.realpath(crawl_root)
    files, rejected = [], []
    for entry in os.scandir(batch_dir):
        if entry.name == METADATA_FILE or entry.name.startswith(".") or entry.name.lower().endswith(LABEL_SUFFIX):
            continue
        st, problem = judge_entry(entry, root)
        if st is None:
            rejected.append({"file": printable_name(entry.name), "reason": problem})
        else:
            files.append((entry.name, st.st_size, st.st_mtime_ns))
    listed = pd.DataFrame(files, columns=["file", "size", "mtime_ns"]).sort_values("file", ignore_index=True)
    entries = (
        pd.DataFrame(rejected, columns=["file", "reason"])
        .reindex(columns=list(FILE_COLUMNS))
        .assign(size=0, mtime_ns=0, header_only=False)
    )
    return listed, entries.astype(FILE_COLUMNS)


def read_batch_cache(path: Path) -> pd.DataFrame:
    """The cached rows of a batch; a cache in another layout (an older ingest) or a damaged one counts as empty."""
    cache = read_cache(path, FILE_COLUMNS, "ingest", "decoding its batch again")
    return empty_table(FILE_COLUMNS) if cache is None else cache


def _inspected_row(name: str, size: int, mtime_ns: int, result: Inspected) -> dict:
    row = asdict(result)
    row.pop("bytes")
    return {"file": name, "size": size, "mtime_ns": mtime_ns, **row, "decoder": PIL.__version__}


def current_id(path: Path) -> str | None:
    """Content id of the file as it is now; None when it cannot be read (it is then decoded, and rejected)."""
    try:
        return content_id(path.read_bytes())
    except OSError:
        return None


def split_cached(
    files: pd.DataFrame, cache: pd.DataFrame, batch_dir: Path, max_pixels: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows reused from the cache, files that must be decoded).

    A file whose size matches but whose mtime changed (a fresh `dvc checkout` rewrites
    mtimes) is re-hashed, ~20x cheaper than a decode, and reused when its bytes match.
    Never reused: a file that could not be read (no id; tried again on every run, as
    fixing its permissions changes no mtime), one whose decode the pixel guard
    skipped but `max_pixels` now admits, and a reject judged by another Pillow version
    (a newer one may read what an older one could not).
    """
    keyed = files.merge(cache, on=["file", "size"], how="left", suffixes=("", "_cached"))
    known = keyed["image_id"].notna().to_numpy()
    admitted_now = (
        (keyed["header_only"].eq(True) & (keyed["width"] * keyed["height"] <= max_pixels))
        .fillna(False)
        .to_numpy(dtype=bool)
    )
    judged_by_another = (
        (keyed["reason"].notna() & keyed["decoder"].ne(PIL.__version__)).fillna(False).to_numpy(dtype=bool)
    )
    reusable = known & ~admitted_now & ~judged_by_another  # decided first: files decoded anyway are not re-hashed first
    same_mtime = reusable & (keyed["mtime_ns"] == keyed["mtime_ns_cached"]).to_numpy()
    rehash = reusable & ~same_mtime
    same_bytes = rehash.copy()
    same_bytes[rehash] = [
        current_id(batch_dir / name) == cached
        for name, cached in zip(keyed["file"][rehash], keyed["image_id"][rehash], strict=True)
    ]
    reuse = same_mtime | same_bytes
    reused = keyed.loc[reuse, list(FILE_COLUMNS)].copy()
    reused.attrs["rehashed"] = int(same_bytes.sum())
    return reused, keyed.loc[~reuse, ["file", "size", "mtime_ns"]]


def decode_files(
    batch_dir: Path, todo: pd.DataFrame, settings: IngestSettings, pool: ProcessPoolExecutor | None
) -> pd.DataFrame:
    inspect = partial(inspect_image, max_pixels=settings.max_pixels)
    paths = [batch_dir / name for name in todo["file"]]
    results: Iterable[Inspected] = pool.map(inspect, paths, chunksize=8) if pool else map(inspect, paths)
    rows = [
        _inspected_row(name, size, mtime, result)
        for (name, size, mtime), result in zip(
            todo.itertuples(index=False),
            tqdm(results, total=len(paths), desc=f"ingest {batch_dir.name}", unit="img", leave=False, disable=None),
            strict=True,
        )
    ]
    return pd.DataFrame(rows, columns=list(FILE_COLUMNS)).astype(FILE_COLUMNS)


def ingest_batch(
    batch_dir: Path, crawl_root: Path, cache_dir: Path, settings: IngestSettings, pool_factory, counts: IngestCounts
) -> pd.DataFrame:
    """Per-file facts of one batch (the size limits not yet applied), decoding only files the cache does not vouch
    for."""
    cache_path = cache_dir / f"{batch_dir.name}.parquet"
    cache = read_batch_cache(cache_path)
    listed, entries = stat_batch_files(batch_dir, crawl_root)
    reused, todo = split_cached(listed, cache, batch_dir, settings.max_pixels)
    counts.reused += len(reused) - reused.attrs["rehashed"]
    counts.rehashed += reused.attrs["rehashed"]
    counts.decoded += len(todo)
    decoded = decode_files(batch_dir, todo, settings, pool_factory()) if len(todo) else empty_table(FILE_COLUMNS)
    table = pd.concat([df for df in (reused, decoded) if len(df)] or [decoded], ignore_index=True)
    table = table.astype(FILE_COLUMNS).sort_values("file", ignore_index=True)
    if not table.equals(cache.sort_values("file", ignore_index=True)):
        write_parquet(table, cache_path)
    return (
        pd.concat([table, entries], ignore_index=True) if len(entries) else table
    )  # entries are judged afresh on every run


def limit_reason(width: int, height: int, settings: IngestSettings) -> str | None:
    """Why an image fails the size limits of params.yaml, or None when it passes."""
    if width * height > settings.max_pixels:
        return (
            f"decompression bomb guard: {width}x{height} = {width * height:,} pixels exceeds ingest.max_pixels = "
            f"{settings.max_pixels:,}"
        )
    if min(width, height) < settings.min_side:
        return f"too small: {width}x{height} px, ingest.min_side = {settings.min_side}"
    return None


def apply_limits(files: pd.DataFrame, settings: IngestSettings) -> pd.DataFrame:
    """`files` with a reject reason for every image outside ingest.max_pixels or ingest.min_side.

    The test is vectorised over the whole history; reasons are written for the few that fail.
    """
    width, height = files["width"].astype("float64"), files["height"].astype("float64")
    outside = files["reason"].isna() & (
        (width * height > settings.max_pixels) | (np.minimum(width, height) < settings.min_side)
    )
    reasons = files["reason"].copy()
    reasons[outside] = [
        limit_reason(int(w), int(h), settings)
        for w, h in zip(files.loc[outside, "width"], files.loc[outside, "height"], strict=True)
    ]
    return files.assign(reason=reasons)


def read_metadata(batch_dir: Path) -> pd.DataFrame:
    """Crawl metadata of a batch; a batch without metadata.csv gets empty sources, not an error."""
    path = batch_dir / METADATA_FILE
    if not path.exists():
        return pd.DataFrame(columns=["file", *METADATA_COLUMNS], dtype="string")
    try:
        meta = pd.read_csv(path, dtype="string", encoding="utf-8-sig")
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(
            f"{path}: not readable as UTF-8 CSV with the columns file,source,post_id,posted_at ({str(exc).strip()})"
        ) from None
    missing = {"file", *METADATA_COLUMNS} - set(meta.columns)
    if missing:
        raise InputError(f"{path}: metadata lacks columns {sorted(missing)}; expected file,source,post_id,posted_at")
    return meta[["file", *METADATA_COLUMNS]].drop_duplicates("file")


def build_catalog(files: pd.DataFrame) -> pa.Table:
    """One row per unique image id; `sources` lists every (batch, file, source, post_id, posted_at).

    Attributes come from the first source in (batch, file) order, so an image's
    `path` never changes when a later batch brings the same bytes again.
    """
    ok = files[files["reason"].isna()].sort_values(["image_id", "batch", "file"], ignore_index=True)
    starts = (
        np.flatnonzero(np.r_[True, ok["image_id"].to_numpy()[1:] != ok["image_id"].to_numpy()[:-1]])
        if len(ok)
        else np.array([], dtype=int)
    )
    first = ok.iloc[starts].reset_index(drop=True)
    source_struct = pa.StructArray.from_arrays(
        [
            pa.array(ok[c].astype("string").to_numpy(dtype=object, na_value=None), type=pa.string())
            for c in ["batch", "file", *METADATA_COLUMNS]
        ],
        names=["batch", "file", *METADATA_COLUMNS],
    )
    offsets = pa.array(np.r_[starts, len(ok)].astype(np.int32))
    sources = pa.ListArray.from_arrays(offsets, source_struct)
    attributes = pd.DataFrame(
        {
            "image_id": first["image_id"],
            "path": first["batch"] + "/" + first["file"],
            "batch": first["batch"],
            "width": first["width"],
            "height": first["height"],
            "format": first["format"],
            "mode": first["mode"],
            "orientation": first["orientation"],
            "bytes": first["size"],
            "dhash": first["dhash"],
            "n_sources": np.diff(np.r_[starts, len(ok)]).astype("int64"),
        }
    )
    table = pa.Table.from_pandas(attributes, preserve_index=False).append_column("sources", sources)
    return table.sort_by([("batch", "ascending"), ("path", "ascending")])


def ingest(
    crawl_dir: Path, cache_dir: Path, settings: IngestSettings
) -> tuple[pa.Table, pd.DataFrame, pd.DataFrame, IngestCounts]:
    """(catalog, rejects, near duplicates, counts) for every batch under `crawl_dir`."""
    counts = IngestCounts()
    batches = list_batches(crawl_dir)
    remove_leftover_temporaries(cache_dir)
    counts.batches = len(batches)
    workers = settings.workers or os.cpu_count() or 1
    pool: ProcessPoolExecutor | None = None

    def pool_factory() -> ProcessPoolExecutor | None:
        nonlocal pool
        if workers > 1 and pool is None:
            pool = worker_pool(workers)
        return pool

    tables = []
    try:
        for batch_dir in batches:
            table = ingest_batch(batch_dir, crawl_dir, cache_dir, settings, pool_factory, counts)
            table = table.merge(read_metadata(batch_dir), on="file", how="left")
            tables.append(table.assign(batch=batch_dir.name))
    finally:
        if pool is not None:
            pool.shutdown()
    for stale in set(cache_dir.glob("*.parquet")) - {cache_dir / f"{b.name}.parquet" for b in batches}:
        stale.unlink()  # a batch removed from the crawl leaves the catalog too

    files = (
        pd.concat(tables, ignore_index=True)
        if tables
        else empty_table(FILE_COLUMNS).assign(batch=pd.Series(dtype="string"))
    )
    files = apply_limits(files, settings)
    catalog = build_catalog(files)
    rejects = files.loc[files["reason"].notna(), ["batch", "file", "reason"]].sort_values(
        ["batch", "file"], ignore_index=True
    )
    near, counts.near_duplicate_searched = catalog_near_duplicates(
        catalog.select(["image_id", "batch", "dhash"]).to_pandas(),
        cache_dir / "near",
        settings.near_duplicate_distance,
        settings.workers,
    )
    counts.files = len(files)
    counts.images = catalog.num_rows
    counts.rejected = len(rejects)
    counts.duplicate_files = int(files["reason"].isna().sum()) - catalog.num_rows
    counts.near_duplicate_pairs = len(near)
    return catalog, rejects, near, counts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = StageParser(
        "ingest",
        prog="python -m pipeline.ingest",
        description="Decode-check every crawl image once and write the image catalog. "
        "Batches already ingested are served from the per-batch cache, so a new batch costs "
        "work in proportion to its own size. Bad files go to the rejects file; the run continues.",
    )
    parser.add_argument(
        "--params", type=Path, default=DEFAULT_PARAMS, help="params.yaml to read the 'ingest' and 'crawl' sections from"
    )
    parser.add_argument("--crawl-dir", type=Path, help="folder of crawl batches")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        help="per-batch decode results (reused across runs)",
    )
    parser.add_argument("--catalog", type=Path, help="output: one row per unique image")
    parser.add_argument(
        "--rejects",
        type=Path,
        help="output: batch, file, reason of every rejected file",
    )
    parser.add_argument(
        "--near-duplicates",
        type=Path,
        help="output: image pairs with close perceptual hashes",
    )
    parser.add_argument("--metrics", type=Path, help="output: counts for `dvc metrics show`")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return report_user_errors("ingest", lambda: run(args))


def run(args: argparse.Namespace) -> int:
    crawl_dir = crawl_folder(args.crawl_dir, args.params)
    settings = load_section(IngestSettings, "ingest", args.params)
    catalog, rejects, near, counts = ingest(crawl_dir, args.cache_dir, settings)
    with outputs_together():
        write_arrow(catalog, args.catalog)
        write_csv(rejects, args.rejects)
        write_parquet(near, args.near_duplicates)
        write_json(asdict(counts), args.metrics)
    print(
        f"ingest: {counts.images} images from {counts.files} files in {counts.batches} batches "
        f"({counts.decoded} decoded, {counts.reused + counts.rehashed} from cache); "
        f"{counts.rejected} rejected -> {args.rejects}; {counts.duplicate_files} exact duplicates collapsed; "
        f"{counts.near_duplicate_pairs} near-duplicate pairs"
    )
    for row in rejects.head(10).itertuples(index=False):
        print(f"  rejected {row.batch}/{row.file}: {row.reason}")
    if len(rejects) > 10:
        print(f"  ... and {len(rejects) - 10} more in {args.rejects}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
