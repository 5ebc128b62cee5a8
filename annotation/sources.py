"""Label sources: every label file of the label folder and of the crawl batches, recognised by its shape.

- a `.json` file holding a list: a Label Studio export (`python -m annotation pull` writes them);
- a `.json` file holding an object: one K-Fashion (AI Hub) label file; a folder of them is one
  source (one annotator for consolidation), and so are the files beside the photos of a
  crawl batch (the K-Fashion layout: `<stem>.jpg` and `<stem>.json` side by side);
- a `.csv` file: `image,tags[,main_style]` rows, one source.
Image files in the label folder are skipped (K-Fashion folders come with their photos),
as are names starting with a dot; anything else is an error naming the file. In crawl
batches only `.json` files are label files (ingest leaves them out of the catalog).

Records find their catalog image by 'batch/file', by file name (or stem) within the
batch they lie in, or, in the label folder, by a file name or stem found once in the
whole catalog; a name found in several batches, or nowhere, is a reject with the reason.

Parsing 1.2 million small K-Fashion files takes minutes, so parsed records are cached
per folder (`<cache>/<folder>.parquet`, keyed by file name, size and modification time
like ingest's batch cache): a new export or batch parses only its own files.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from annotation.importers import ImageMatcher, Imported, import_label_studio, import_tag_csv, read_label_studio_export
from annotation.kfashion import KFashionRecord, kfashion_rows, parse_kfashion
from common.atomic import write_parquet
from common.cli import InputError
from common.crawl import batch_folders
from common.tables import empty_table, read_cache
from common.taxonomy import Taxonomy

IMAGE_SUFFIXES = {
    ".jpg",
    ".jpeg",
    ".png",
    ".webp",
    ".gif",
    ".bmp",
    ".tif",
    ".tiff",
}  # photos beside K-Fashion files: skipped
CACHE_COLUMNS = {
    "file": "string",
    "size": "int64",
    "mtime_ns": "int64",
    "main": "string",
    "sub_styles": "object",
    "problem": "string",
}


def stem_of(name: str) -> str:
    return os.path.splitext(name)[0]


class CatalogIndex:
    """Where label records find their image: every (batch, file) of every catalog image, re-posts included."""

    def __init__(self, catalog: pd.DataFrame) -> None:
        self.ids = set(catalog["image_id"])
        self.by_key: dict[str, str] = {}  # 'batch/file' and 'batch/stem' -> image id
        self.by_name: dict[str, set[str]] = defaultdict(set)  # file name and stem -> image ids
        for image_id, sources in zip(catalog["image_id"], catalog["sources"], strict=True):
            for s in sources:
                batch, file = s["batch"], s["file"]
                stem = stem_of(file)
                self.by_key[f"{batch}/{file}"] = self.by_key[f"{batch}/{stem}"] = image_id
                self.by_name[file].add(image_id)
                self.by_name[stem].add(image_id)

    def matcher(self, batch: str | None) -> ImageMatcher:
        """Matches an image name within `batch` (a crawl batch's own label files), else 'batch/file' or a name unique in
        the catalog."""

        def match(name: str) -> tuple[str | None, str | None]:
            if batch is not None:
                found = self.by_key.get(f"{batch}/{name}") or self.by_key.get(f"{batch}/{stem_of(name)}")
                return (found, None) if found else (None, f"image {name} not in the catalog under crawl batch {batch}")
            if "/" in name:
                found = self.by_key.get(name) or self.by_key.get(stem_of(name))
                return (found, None) if found else (None, f"image {name} not in the catalog (expected <batch>/<file>)")
            ids = self.by_name.get(name) or self.by_name.get(stem_of(name)) or set()
            if len(ids) == 1:
                return next(iter(ids)), None
            if not ids:
                return (
                    None,
                    f"image {name} not in the catalog (no crawl batch has a file of that name: ingest it first)",
                )
            return (
                None,
                f"image {name} names {len(ids)} different catalog images (several batches hold a file of that name): "
                f"write it as <batch>/{name}",
            )

        return match


def label_folders(label_dir: Path) -> dict[Path, list[str]]:
    """Every folder under `label_dir` (itself included) with the names of its label files; a file of no known shape is
    an InputError."""
    if not label_dir.is_dir():
        raise InputError(
            f"label folder {label_dir} does not exist: run `make demo-data`, `python -m annotation pull`, or put your "
            "label files there (crawl.label_exports)"
        )
    folders: dict[Path, list[str]] = {}
    for root, dirs, files in os.walk(label_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        names = sorted(
            f for f in files if not f.startswith(".") and os.path.splitext(f)[1].lower() not in IMAGE_SUFFIXES
        )
        unknown = [f for f in names if os.path.splitext(f)[1].lower() not in (".json", ".csv")]
        if unknown:
            raise InputError(
                f"{Path(root) / unknown[0]}: not a label file; the label folder holds Label Studio exports (.json "
                "lists), K-Fashion label files (.json objects, with or without their photos) and image,tags CSV files: "
                "move other files elsewhere"
            )
        folders[Path(root)] = names
    return folders


def first_character(path: Path) -> str:
    """The first non-blank character of a file (after a byte-order mark): '[' for an export, '{' for a K-Fashion
    file."""
    with path.open("rb") as f:
        head = f.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head[:1].decode("latin-1")


def cache_path(cache_dir: Path, folder: Path) -> Path:
    """One cache file per folder, named readably and uniquely."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", folder.as_posix()).strip("-")[-60:]
    return cache_dir / f"{slug}-{hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:8]}.parquet"


def file_stats(folder: Path, names: list[str]) -> pd.DataFrame:
    """Name, size and modification time of each file (no file is opened)."""
    rows = [(name, st.st_size, st.st_mtime_ns) for name in names for st in [os.stat(os.path.join(folder, name))]]
    return pd.DataFrame(rows, columns=["file", "size", "mtime_ns"]).astype({"file": "string"})


def read_folder(
    folder: Path,
    names: list[str],
    source_name: str,
    batch: str | None,
    index: CatalogIndex,
    taxonomy: Taxonomy,
    cache_dir: Path,
) -> Imported:
    """The rows and rejects of one folder's label files, each recognised by its shape.

    A .json file that the folder's cache holds at its size and time is a K-Fashion file parsed before: it is not opened.
    """
    out, match = Imported(), index.matcher(batch)
    for name in (n for n in names if n.lower().endswith(".csv")):
        out.extend(import_tag_csv(folder / name, taxonomy, match))
    cache_file = cache_path(cache_dir, folder)
    stats = file_stats(folder, [n for n in names if n.lower().endswith(".json")])
    cache = read_cache(cache_file, CACHE_COLUMNS, "labels", "parsing its folder again")
    cache = empty_table(CACHE_COLUMNS) if cache is None else cache
    known = stats.merge(cache, on=["file", "size", "mtime_ns"], how="inner")
    parsed = []
    for name, size, mtime_ns in stats[~stats["file"].isin(set(known["file"].tolist()))].itertuples(index=False):
        if (record := read_json_labels(folder / name, taxonomy, index, out)) is not None:
            parsed.append({"file": name, "size": size, "mtime_ns": mtime_ns, "main": record.main,
                           "sub_styles": list(record.sub_styles), "problem": record.problem})  # fmt: skip
    table = pd.concat(
        [known, pd.DataFrame(parsed, columns=list(CACHE_COLUMNS)).astype(CACHE_COLUMNS)], ignore_index=True
    ).sort_values("file", ignore_index=True)
    if parsed or len(table) != len(cache):
        write_parquet(table[list(CACHE_COLUMNS)], cache_file)
    if len(table):
        out.extend(kfashion_rows(cached_records(table), f"kfashion:{source_name}", taxonomy, match))
    return out


def read_json_labels(path: Path, taxonomy: Taxonomy, index: CatalogIndex, out: Imported) -> KFashionRecord | None:
    """A Label Studio export's rows go straight into `out`; a K-Fashion file's record is returned (to be cached)."""
    first = first_character(path)
    if first == "[":
        out.extend(import_label_studio(read_label_studio_export(path), str(path), taxonomy, index.by_key, index.ids))
        return None
    if first == "{":
        return parse_kfashion(path)
    raise InputError(
        f"{path}: neither a Label Studio export (a JSON list of tasks) nor a K-Fashion label file (a JSON object)"
    )


def cached_records(table: pd.DataFrame) -> Iterator[KFashionRecord]:
    """The K-Fashion records a folder's parse cache holds."""
    for f, m, subs, p in zip(
        table["file"].tolist(), table["main"].tolist(), table["sub_styles"].tolist(), table["problem"].tolist(),
        strict=True,
    ):  # fmt: skip
        yield KFashionRecord(stem_of(f), None if pd.isna(m) else m, tuple(subs), None if pd.isna(p) else p)


def read_label_folder(label_dir: Path, index: CatalogIndex, taxonomy: Taxonomy, cache_dir: Path) -> Imported:
    """Every label file under `label_dir`; each folder's K-Fashion files are one source, named by the folder."""
    imported = Imported()
    for folder, files in label_folders(label_dir).items():
        name = folder.relative_to(label_dir).as_posix()
        imported.extend(
            read_folder(folder, files, label_dir.name if name == "." else name, None, index, taxonomy, cache_dir)
        )
    return imported


def read_batch_labels(batch_dir: Path, index: CatalogIndex, taxonomy: Taxonomy, cache_dir: Path) -> Imported:
    """The .json label files beside the photos of one crawl batch (the K-Fashion layout), matched within the batch."""
    names = sorted(
        e.name
        for e in os.scandir(batch_dir)
        if e.name.lower().endswith(".json") and not e.name.startswith(".") and e.is_file(follow_symlinks=False)
    )
    return (
        read_folder(batch_dir, names, batch_dir.name, batch_dir.name, index, taxonomy, cache_dir)
        if names
        else Imported()
    )


def read_label_sources(
    label_dir: Path, crawl_dir: Path, catalog: pd.DataFrame, taxonomy: Taxonomy, cache_dir: Path
) -> Imported:
    """Every label record of the label folder and of the crawl batches' label files, with the rejects (the labels
    stage)."""
    index = CatalogIndex(catalog)
    imported = read_label_folder(label_dir, index, taxonomy, cache_dir)
    for batch_dir in (
        batch_folders(crawl_dir)[0] if crawl_dir.is_dir() else []
    ):  # a batch linking outside the crawl is not read
        imported.extend(read_batch_labels(batch_dir, index, taxonomy, cache_dir))
    return imported


def read_labels_at(path: Path, crawl_dir: Path, catalog: pd.DataFrame, taxonomy: Taxonomy, cache_dir: Path) -> Imported:
    """The label records of one source (`push --labels`): a label file, a folder of them, or a crawl batch with label
    files beside its photos."""
    index = CatalogIndex(catalog)
    if path.is_file():
        return read_folder(path.parent, [path.name], path.parent.name, None, index, taxonomy, cache_dir)
    if path.is_dir() and path.resolve().parent == crawl_dir.resolve():
        return read_batch_labels(path, index, taxonomy, cache_dir)
    return read_label_folder(path, index, taxonomy, cache_dir)
