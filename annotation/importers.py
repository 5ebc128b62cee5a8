"""Importers: expert labels from any source into one normalised annotations table.

One row per annotation: image_id, annotator, main_style, sub_styles, lead_time,
created_at, updated_at, cancelled, source, record. Every record that cannot become
a valid row goes to the rejects report (source, record, reason) instead: nothing
is dropped silently, and one bad record never stops an import.

Sources: Label Studio JSON exports, K-Fashion (AI Hub) JSON label files with
Korean keys and style names, and `image,tags` CSV files (garment tag sets, which
have no main label: main_style is empty there).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pandas as pd

from pipeline.images import content_id
from pipeline.taxonomy import Taxonomy

ANNOTATION_COLUMNS = {
    "image_id": "string",
    "annotator": "string",
    "main_style": "string",
    "sub_styles": "object",
    "lead_time": "Float64",
    "created_at": "datetime64[ns, UTC]",
    "updated_at": "datetime64[ns, UTC]",
    "cancelled": "bool",
    "source": "string",
    "record": "string",
}
REJECT_COLUMNS = ["source", "record", "image_id", "reason"]

MAIN_FIELD, SUB_FIELD = "main_style", "sub_styles"

# K-Fashion (AI Hub) keys, see ../shared/reference/notes.md section 3
KF_LABEL_PATH = ("데이터셋 정보", "데이터셋 상세설명", "라벨링", "스타일")
KF_STYLE, KF_SUB_STYLE = "스타일", "서브스타일"


@dataclass
class Imported:
    """Valid annotation rows and rejected records of one import."""

    rows: list[dict] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)

    def reject(self, source: str, record: str, image_id: str | None, reason: str) -> None:
        self.rejects.append({"source": source, "record": record, "image_id": image_id, "reason": reason})

    def extend(self, other: Imported) -> None:
        self.rows += other.rows
        self.rejects += other.rejects

    def tables(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        rows = pd.DataFrame(self.rows, columns=list(ANNOTATION_COLUMNS))
        for column in ("created_at", "updated_at"):
            rows[column] = pd.to_datetime(rows[column], utc=True, format="ISO8601")
        return rows.astype(ANNOTATION_COLUMNS), pd.DataFrame(self.rejects, columns=REJECT_COLUMNS, dtype="string")


def unknown_styles(styles: Iterable[str], taxonomy: Taxonomy) -> list[str]:
    known = set(taxonomy.names)
    return sorted({s for s in styles if s not in known})


def local_file_key(image_url: str) -> str | None:
    """'batch/file' from a Label Studio local-files URL such as /data/local-files/?d=crawl/batch-001/x.jpg."""
    document = parse_qs(urlparse(image_url).query).get("d", [None])[0]
    if document is None:
        return None
    parts = document.split("/")
    return "/".join(parts[-2:]) if len(parts) >= 2 else None


def annotator_name(completed_by: object) -> str:
    if isinstance(completed_by, Mapping):
        return str(completed_by.get("email") or completed_by.get("id"))
    return str(completed_by)


def import_label_studio(
    tasks: list[dict], source: str, taxonomy: Taxonomy, image_ids: Mapping[str, str], catalog_ids: set[str]
) -> Imported:
    """Label Studio JSON export -> rows. `image_ids` maps 'batch/file' to image id (all catalog sources)."""
    out = Imported()
    for task in tasks:
        data = task.get("data", {})
        image_id = data.get("image_id") or image_ids.get(local_file_key(str(data.get("image", ""))) or "")
        for annotation in task.get("annotations", []):
            record = f"task {task.get('id')} / annotation {annotation.get('id')}"
            if not image_id or image_id not in catalog_ids:
                out.reject(source, record, image_id, f"image not in catalog ({data.get('image_id') or data.get('image')})")
                continue
            base = {
                "image_id": image_id,
                "annotator": annotator_name(annotation.get("completed_by")),
                "lead_time": annotation.get("lead_time"),
                "created_at": annotation.get("created_at"),
                "updated_at": annotation.get("updated_at"),
                "source": source,
                "record": record,
            }
            if annotation.get("was_cancelled"):
                out.rows.append({**base, "main_style": None, "sub_styles": [], "cancelled": True})
                out.reject(source, record, image_id, "cancelled: the expert skipped this task (kept with cancelled=true)")
                continue
            choices: dict[str, list[str]] = {}
            for result in annotation.get("result", []):
                if result.get("type") == "choices":
                    choices.setdefault(result.get("from_name"), []).extend(result.get("value", {}).get("choices", []))
            mains, subs = choices.get(MAIN_FIELD, []), choices.get(SUB_FIELD, [])
            if len(mains) != 1:
                problem = "no main style" if not mains else f"{len(mains)} main styles {mains}"
                out.reject(source, record, image_id, f"{problem}: exactly one is required")
                continue
            unknown = unknown_styles(mains + subs, taxonomy)
            if unknown:
                out.reject(source, record, image_id, f"unknown style(s) {unknown}: not in taxonomy '{taxonomy.name}'")
                continue
            out.rows.append({**base, "main_style": mains[0], "sub_styles": subs, "cancelled": False})
    return out


def read_label_studio_export(path: Path) -> list[dict]:
    try:
        tasks = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not a Label Studio JSON export ({exc})") from None
    if not isinstance(tasks, list):
        raise ValueError(f"{path}: a Label Studio JSON export is a list of tasks")
    return tasks


def import_kfashion(label_files: Iterable[Path], taxonomy: Taxonomy) -> Imported:
    """K-Fashion JSON files; the image is the .jpg of the same stem beside each file.

    Korean style names map through the taxonomy's `korean` field; the first style
    entry is the main style, the 서브스타일 values are sub-styles. An empty style
    entry means the image is unlabelled and is reported, not imported.
    """
    out = Imported()
    korean = taxonomy.by_korean()
    for path in label_files:
        source, record = f"kfashion:{path.name}", path.stem
        try:
            label = json.loads(path.read_text(encoding="utf-8"))
            styles = label
            for key in KF_LABEL_PATH:
                styles = styles[key]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            out.reject(source, record, None, f"not a K-Fashion label file (missing {exc})")
            continue
        image = path.with_suffix(".jpg")
        image_id = content_id(image.read_bytes()) if image.exists() else None
        entries = [s for s in styles if s]
        if image_id is None:
            out.reject(source, record, None, f"image {image.name} not found beside the label file")
        elif not entries:
            out.reject(source, record, image_id, "unlabelled: the style entry is empty")
        else:
            names = [entries[0].get(KF_STYLE)] + [e.get(KF_SUB_STYLE) for e in entries if e.get(KF_SUB_STYLE)]
            unmapped = sorted({n for n in names if n not in korean})
            if unmapped:
                out.reject(source, record, image_id, f"Korean style name(s) {unmapped} not in taxonomy '{taxonomy.name}'")
                continue
            mapped = [korean[n] for n in names]
            out.rows.append(
                {"image_id": image_id, "annotator": "kfashion", "main_style": mapped[0], "sub_styles": sorted(set(mapped[1:]) - {mapped[0]}, key=taxonomy.index_of),
                 "lead_time": None, "created_at": None, "updated_at": None, "cancelled": False, "source": source, "record": record}
            )  # fmt: skip
    return out


def import_tag_csv(path: Path, taxonomy: Taxonomy, images_dir: Path) -> Imported:
    """`image,tags` CSV (tags separated by ';'): a tag set per image, no main label."""
    out = Imported()
    source = f"csv:{path.name}"
    table = pd.read_csv(path, dtype="string", keep_default_na=False)
    if list(table.columns[:2]) != ["image", "tags"]:
        raise ValueError(f"{path}: expected columns image,tags; found {list(table.columns)}")
    for line, (image, tags) in enumerate(zip(table["image"], table["tags"]), start=2):
        record = f"line {line} ({image})"
        file = images_dir / image
        if not file.exists():
            out.reject(source, record, None, f"image {file} not found")
            continue
        image_id = content_id(file.read_bytes())
        tag_list = [t for t in tags.split(";") if t]
        if not tag_list:
            out.reject(source, record, image_id, "no tags")
            continue
        unknown = unknown_styles(tag_list, taxonomy)
        if unknown:
            out.reject(source, record, image_id, f"unknown tag(s) {unknown}: not in taxonomy '{taxonomy.name}'")
            continue
        out.rows.append(
            {"image_id": image_id, "annotator": "csv", "main_style": None, "sub_styles": sorted(set(tag_list), key=taxonomy.index_of),
             "lead_time": None, "created_at": None, "updated_at": None, "cancelled": False, "source": source, "record": record}
        )  # fmt: skip
    return out
