"""Labels stage: every label source -> data/annotations.parquet (+ rejects report).

Reads the label folder (`crawl.label_exports`: Label Studio exports that `python -m
annotation pull` snapshots, K-Fashion folders, image,tags CSV files) and the label files
beside the photos of the crawl batches (annotation/sources.py), checks every record
against the taxonomy and the image catalog, and writes the normalised annotations table.
Downstream stages re-run only when the labels change, because DVC hashes the label
folder (a DVC-tracked input).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from annotation.sources import read_label_sources
from common.atomic import outputs_together, write_csv, write_json, write_parquet
from common.cli import StageParser, report_user_errors
from common.settings import DEFAULT_PARAMS, CrawlSettings, crawl_folder, load_setting, load_taxonomy_path
from common.tables import read_table
from common.taxonomy import load_taxonomy


def source_kind(source: str) -> str:
    """label-studio, kfashion or csv: what kind of file a row came from (imported sources are named '<kind>:<name>')."""
    kind, _, name = source.partition(":")
    return kind if name and kind in ("kfashion", "csv") else "label-studio"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = StageParser(
        "labels",
        prog="python -m annotation.labels",
        description="Turn every label source into the normalised annotations table: Label Studio exports, K-Fashion "
        "JSON files and image,tags[,main_style] CSV files, each recognised by its shape. Records with no or several "
        "main styles, unknown styles, or images not in the catalog go to the rejects report. This is the `labels` "
        "stage; `python -m annotation pull` fetches Label Studio exports from the server.",
    )
    parser.add_argument(
        "--params", type=Path, default=DEFAULT_PARAMS, help="params.yaml (taxonomy, crawl.label_exports, crawl.dir)"
    )
    parser.add_argument(
        "--label-dir",
        type=Path,
        help="label folder: exports, K-Fashion folders, CSV files",
    )
    parser.add_argument(
        "--crawl-dir",
        type=Path,
        help="crawl folder whose batches may hold .json label files beside the photos",
    )
    parser.add_argument("--catalog", type=Path, help="image catalog from the ingest stage")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        help="parsed K-Fashion files per folder (kept between runs)",
    )
    parser.add_argument("--out", type=Path, help="output: one row per annotation")
    parser.add_argument(
        "--rejects",
        type=Path,
        help="output: source, record, image_id, reason",
    )
    parser.add_argument("--metrics", type=Path, help="output: counts for `dvc metrics show`")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return report_user_errors("labels", lambda: run(args))


def run(args: argparse.Namespace) -> int:
    label_dir = args.label_dir or load_setting(CrawlSettings, "crawl", "label_exports", args.params)
    crawl_dir, taxonomy = crawl_folder(args.crawl_dir, args.params), load_taxonomy(load_taxonomy_path(args.params))
    args.cache_dir.mkdir(parents=True, exist_ok=True)  # a DVC output, also where no K-Fashion file needs it
    catalog = read_table(args.catalog, columns=["image_id", "sources"])
    imported = read_label_sources(label_dir, crawl_dir, catalog, taxonomy, args.cache_dir)
    rows, rejects = imported.tables()
    valid = rows[~rows["cancelled"]]
    per_kind = {kind: int(n) for kind, n in valid["source"].map(source_kind).value_counts().sort_index().items()}
    counts = {
        "annotations": len(valid),
        "cancelled": int(rows["cancelled"].sum()),
        "labelled_images": int(valid["image_id"].nunique()),
        "rejected": len(rejects),
        "per_kind": per_kind,
    }
    with outputs_together():
        write_parquet(rows, args.out)
        write_csv(rejects, args.rejects)
        write_json(counts, args.metrics)
    kinds = ", ".join(f"{n} {kind}" for kind, n in per_kind.items())
    print(
        f"labels: {counts['annotations']} annotations of {counts['labelled_images']} images ({kinds}); "
        f"{counts['rejected']} rejected -> {args.rejects}"
    )
    for row in rejects.head(10).itertuples(index=False):
        print(f"  rejected {row.source} {row.record}: {row.reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
