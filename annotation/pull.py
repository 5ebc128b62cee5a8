"""Snapshots of the Label Studio projects into the label folder (`python -m annotation pull`).

The labels stage (annotation/labels.py) reads the snapshots with the other label files;
a snapshot is rewritten only when the labels changed, so DVC sees a change only then.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from label_studio_sdk import LabelStudio

from annotation.client import Connection, LabelStudioError
from annotation.projects import find_projects, review_title
from common.atomic import atomic_path

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
    text = (
        json.dumps(
            sorted(map(without_volatile_fields, tasks), key=lambda t: t["id"]),
            indent=1,
            ensure_ascii=False,
            sort_keys=True,
            default=str,
        )
        + "\n"
    )
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
