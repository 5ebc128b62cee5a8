"""Labels stage: expert annotations -> data/annotations.parquet (+ rejects report).

Reads the Label Studio JSON exports in the exports folder (the demo's exports, or
snapshots `python -m annotation pull` took from a server), checks every annotation
against the taxonomy and the image catalog, and writes the normalised annotations
table. Downstream stages re-run only when the labels change, because DVC hashes
the exports folder (a DVC-tracked input).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import pandas as pd
from label_studio_sdk import LabelStudio

from annotation.client import Connection, LabelStudioError
from annotation.importers import Imported, import_label_studio, read_label_studio_export
from annotation.push import find_projects, review_title
from pipeline.atomic import atomic_path, write_csv, write_json, write_parquet
from pipeline.cli import InputError, report_user_errors
from pipeline.settings import DEFAULT_PARAMS, load_params
from pipeline.tables import read_table
from pipeline.taxonomy import Taxonomy, load_taxonomy


def catalog_lookup(catalog: pd.DataFrame) -> dict[str, str]:
    """'batch/file' -> image id for every source of every catalog image (re-posts included)."""
    return {f"{s['batch']}/{s['file']}": image_id for image_id, sources in zip(catalog["image_id"], catalog["sources"]) for s in sources}


def import_exports(exports_dir: Path, catalog: pd.DataFrame, taxonomy: Taxonomy) -> Imported:
    exports = sorted(exports_dir.glob("*.json"))
    if not exports:
        raise InputError(f"no Label Studio exports (*.json) in {exports_dir}: run `make demo-data` or export a project there")
    lookup, catalog_ids = catalog_lookup(catalog), set(catalog["image_id"])
    imported = Imported()
    for path in exports:
        imported.extend(import_label_studio(read_label_studio_export(path), str(path), taxonomy, lookup, catalog_ids))
    return imported


VOLATILE_FIELDS = {"created_ago"}  # "3 minutes" ago: changes with the clock, not with the labels


def without_volatile_fields(value):
    if isinstance(value, dict):
        return {k: without_volatile_fields(v) for k, v in value.items() if k not in VOLATILE_FIELDS}
    if isinstance(value, list):
        return [without_volatile_fields(v) for v in value]
    return value


def export_path(exports_dir: Path, title: str) -> Path:
    return exports_dir / f"label-studio-{re.sub(r'[^A-Za-z0-9]+', '-', title).strip('-').lower()}.json"


def snapshot_project(conn: Connection, ls: LabelStudio, project, exports_dir: Path) -> tuple[Path, bool]:
    """Export `project` into `<exports_dir>/label-studio-<title>.json`; (path, whether it changed).

    The file is rewritten only when the export differs, so DVC sees a change only
    when the experts' labels did.
    """
    tasks = conn.call(f"export project {project.title!r}", lambda: ls.projects.exports.as_json(project.id))
    text = json.dumps(sorted(map(without_volatile_fields, tasks), key=lambda t: t["id"]), indent=1, ensure_ascii=False, sort_keys=True, default=str) + "\n"
    path = export_path(exports_dir, project.title)
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return path, False
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path, True


def snapshot_from_server(conn: Connection, title: str, exports_dir: Path) -> list[tuple[Path, bool]]:
    """Snapshot project `title` and, once `push --review` has created it, its review project.

    The review project's labels are extra votes on tied images; the labels stage
    reads every JSON in the exports folder, so they reach consolidate.
    """
    ls = conn.client()
    main, review = find_projects(conn, ls, title, review_title(title))
    if main is None:
        raise LabelStudioError(f"no project titled {title!r} on {conn.url}: run `python -m annotation push` first")
    return [snapshot_project(conn, ls, project, exports_dir) for project in (main, review) if project is not None]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m annotation.pull",
        description="Turn Label Studio JSON exports into the normalised annotations table. Annotations with "
        "no or several main styles, unknown styles, or images not in the catalog go to the rejects report. "
        "This is the `labels` stage; `python -m annotation pull` fetches the exports from the server.",
    )
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="params.yaml (taxonomy, crawl.label_exports)")
    parser.add_argument("--exports-dir", type=Path, help="folder of Label Studio JSON exports (default: crawl.label_exports)")
    parser.add_argument("--catalog", type=Path, default=Path("data/catalog.parquet"), help="image catalog from the ingest stage")
    parser.add_argument("--out", type=Path, default=Path("data/annotations.parquet"), help="output: one row per annotation")
    parser.add_argument("--rejects", type=Path, default=Path("data/annotation_rejects.csv"), help="output: source, record, image_id, reason")
    parser.add_argument("--metrics", type=Path, default=Path("metrics/labels.json"), help="output: counts for `dvc metrics show`")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return report_user_errors("labels", lambda: run(args))


def run(args: argparse.Namespace) -> int:
    params = load_params(args.params)
    imported = import_exports(args.exports_dir or params.crawl.label_exports, read_table(args.catalog), load_taxonomy(params.taxonomy))
    rows, rejects = imported.tables()
    write_parquet(rows, args.out)
    write_csv(rejects, args.rejects)
    counts = {
        "annotations": int((~rows["cancelled"]).sum()),
        "cancelled": int(rows["cancelled"].sum()),
        "labelled_images": int(rows.loc[~rows["cancelled"], "image_id"].nunique()),
        "rejected": len(rejects),
    }
    write_json(counts, args.metrics)
    print(f"labels: {counts['annotations']} annotations of {counts['labelled_images']} images; {counts['rejected']} rejected -> {args.rejects}")
    for row in rejects.head(10).itertuples(index=False):
        print(f"  rejected {row.source} {row.record}: {row.reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
