"""Importers: expert labels from any source into one normalised annotations table.

One row per annotation: image_id, annotator, main_style, sub_styles, lead_time,
created_at, updated_at, cancelled, source, record. Every record that cannot become
a valid row goes to the rejects report (source, record, reason) instead: nothing
is dropped silently, and one bad record never stops an import.

Sources: Label Studio JSON exports, K-Fashion (AI Hub) JSON label files with
Korean keys and style names (annotation/kfashion.py), and `image,tags[,main_style]` CSV files (tag sets; without
a main_style column the main label is empty). For the two imported formats the
annotator is the source (a K-Fashion folder, a CSV file), so consolidation counts each
source as one expert. How a record's image is found is the caller's `ImageMatcher`
(annotation/sources.py matches the catalog; `files_in` hashes files in a folder).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pandas as pd

from common.cli import InputError
from common.images import content_id
from common.taxonomy import Taxonomy

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

TAG_CSV_HEADER = ["image", "tags"]
TAG_CSV_MAIN = "main_style"  # optional column of a tag CSV: the image's main label
TIMESTAMP_FORMAT = "ISO8601"  # created_at / updated_at, as pandas parses them


ImageMatcher = Callable[[str], tuple[str | None, str | None]]
"""A record's image name -> (image id, None), or (image id or None, why the record cannot be imported)."""


class RejectedRecord(ValueError):
    """One record that cannot become a row; the message is its reason in the rejects report."""


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
            rows[column] = pd.to_datetime(rows[column], utc=True, format=TIMESTAMP_FORMAT)
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


def read_utf8(path: Path) -> str:
    """Text of `path` as UTF-8, with or without a byte-order mark; a ValueError names the file and line otherwise."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(
            f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); save it as UTF-8 and import it "
            "again"
        ) from None


def describe(value: object) -> str:
    """A short JSON rendering of an unexpected value, for reject reasons."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def task_image(data: object, image_ids: Mapping[str, str]) -> tuple[str | None, str]:
    """(image id or None, how the task names its image): data.image_id, else data.image's local-files URL looked up in
    `image_ids`."""
    if not isinstance(data, Mapping):
        return None, f"task data is {describe(data)}"
    named, url = data.get("image_id"), data.get("image")
    if isinstance(named, str) and named:
        return named, named
    if isinstance(url, str):
        return image_ids.get(local_file_key(url) or ""), url
    return None, f"task data has image_id {describe(named)} and image {describe(url)}"


def annotation_metadata(annotation: Mapping) -> dict[str, object]:
    """lead_time, created_at and updated_at of one annotation; RejectedRecord unless each is null or of its type.

    Checked here, per record, because the table is typed as a whole: one bad value would
    otherwise fail every annotation of the export.
    """
    lead_time = annotation.get("lead_time")
    if lead_time is not None and (isinstance(lead_time, bool) or not isinstance(lead_time, (int, float))):
        raise RejectedRecord(f"malformed annotation: lead_time is {describe(lead_time)}, not a number of seconds")
    stamps = {name: annotation.get(name) for name in ("created_at", "updated_at")}
    for name, stamp in stamps.items():
        if stamp is not None and not is_iso_timestamp(stamp):
            raise RejectedRecord(f"malformed annotation: {name} is {describe(stamp)}, not an ISO-8601 time")
    return {"lead_time": lead_time, **stamps}


def is_iso_timestamp(value: object) -> bool:
    """Whether `value` is a time that `Imported.tables` can read: checked with the same parser, so no value passes here
    and fails there."""
    if not isinstance(value, str):
        return False
    try:
        pd.to_datetime(value, utc=True, format=TIMESTAMP_FORMAT)
    except ValueError:
        return False
    return True


def annotation_choices(annotation: Mapping) -> dict[str, list[str]]:
    """Chosen values per control (from_name) of one annotation; RejectedRecord if its result is malformed."""
    results = annotation.get("result", [])
    if not isinstance(results, list):
        raise RejectedRecord(f"malformed annotation: result is {describe(results)}, not a list")
    choices: dict[str, list[str]] = {}
    for number, result in enumerate(results, start=1):
        if not isinstance(result, Mapping):
            raise RejectedRecord(f"malformed annotation: result {number} is {describe(result)}, not an object")
        if result.get("type") != "choices":
            continue
        value = result.get("value")
        values = value.get("choices") if isinstance(value, Mapping) else None
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise RejectedRecord(
                f'malformed annotation: result {number} has value {describe(value)}, not {{"choices": [names]}}'
            )
        control = result.get("from_name")
        if not isinstance(control, str):
            raise RejectedRecord(
                f"malformed annotation: result {number} has from_name {describe(control)}, not a control's name"
            )
        choices.setdefault(control, []).extend(values)
    return choices


def import_label_studio(
    tasks: list, source: str, taxonomy: Taxonomy, image_ids: Mapping[str, str], catalog_ids: set[str]
) -> Imported:
    """Label Studio JSON export -> rows. `image_ids` maps 'batch/file' to image id (all catalog sources).

    A task or annotation that is not an object, or whose fields are null or of the wrong type, is a reject.
    """
    out = Imported()
    for position, task in enumerate(tasks, start=1):
        if not isinstance(task, Mapping):
            out.reject(
                source, f"task #{position} in the file", None, f"malformed task: {describe(task)} is not an object"
            )
            continue
        annotations = task.get("annotations", [])
        if not isinstance(annotations, list):
            out.reject(
                source,
                f"task {task.get('id')}",
                None,
                f"malformed task: annotations is {describe(annotations)}, not a list",
            )
            continue
        image_id, image_named = task_image(task.get("data"), image_ids)
        for number, annotation in enumerate(annotations, start=1):
            if not isinstance(annotation, Mapping):
                out.reject(
                    source,
                    f"task {task.get('id')} / annotation #{number}",
                    image_id,
                    f"malformed annotation: {describe(annotation)} is not an object",
                )
                continue
            record = f"task {task.get('id')} / annotation {annotation.get('id')}"
            try:
                if image_id not in catalog_ids:
                    raise RejectedRecord(f"image not in catalog ({image_named})")
                row = label_studio_row(annotation, taxonomy)
            except RejectedRecord as exc:
                out.reject(source, record, image_id, str(exc))
                continue
            out.rows.append({"image_id": image_id, **row, "source": source, "record": record})
            if row["cancelled"]:
                out.reject(
                    source, record, image_id, "cancelled: the expert skipped this task (kept with cancelled=true)"
                )
    return out


def label_studio_row(annotation: Mapping, taxonomy: Taxonomy) -> dict[str, object]:
    """annotator, styles, metadata and cancelled of one annotation; RejectedRecord with the reason if it cannot be a
    row.

    A cancelled (skipped) annotation is a row without styles, which consolidation leaves out.
    """
    row: dict[str, object] = {
        "annotator": annotator_name(annotation.get("completed_by")),
        **annotation_metadata(annotation),
    }
    if annotation.get("was_cancelled"):
        return {**row, "main_style": None, "sub_styles": [], "cancelled": True}
    choices = annotation_choices(annotation)
    mains, subs = choices.get(MAIN_FIELD, []), choices.get(SUB_FIELD, [])
    if len(mains) != 1:
        problem = "no main style" if not mains else f"{len(mains)} main styles {mains}"
        raise RejectedRecord(f"{problem}: exactly one is required")
    unknown = unknown_styles(mains + subs, taxonomy)
    if unknown:
        raise RejectedRecord(f"unknown style(s) {unknown}: not in taxonomy '{taxonomy.name}'")
    return {**row, "main_style": mains[0], "sub_styles": subs, "cancelled": False}


def read_label_studio_export(path: Path) -> list:
    """The tasks of an export file; a ValueError names the file when it is not UTF-8 JSON holding a list."""
    try:
        tasks = json.loads(read_utf8(path))
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not a Label Studio JSON export ({exc})") from None
    if not isinstance(tasks, list):
        raise InputError(f"{path}: a Label Studio JSON export is a list of tasks")
    return tasks


def imported_row(image_id: str | None, source: str, record: str, main: str | None, sub_styles: list[str]) -> dict:
    """An annotation row of an imported source: the source is the annotator; no times, nothing cancelled."""
    return {"image_id": image_id, "annotator": source, "main_style": main, "sub_styles": sub_styles, "lead_time": None,
            "created_at": None, "updated_at": None, "cancelled": False, "source": source, "record": record}  # fmt: skip


def tag_csv_rows(path: Path) -> Iterable[tuple[int, list[str], list[str]]]:
    """(line number, header, fields) of each data row of an `image,tags[,...]` CSV; blank lines are skipped.

    Columns after the first two are allowed (a `main_style` column is read, others ignored).

    File-level problems (not UTF-8, empty, wrong header, unreadable CSV) are ValueErrors naming the file.
    """
    reader = csv.reader(io.StringIO(read_utf8(path), newline=""))
    try:
        header = next((fields for fields in reader if fields), None)
        if header is None:
            raise InputError(f"{path}: empty file; expected the header line {','.join(TAG_CSV_HEADER)}")
        header = [name.strip() for name in header]
        if header[:2] != TAG_CSV_HEADER:
            raise InputError(f"{path}: expected the header line {','.join(TAG_CSV_HEADER)}; found {','.join(header)}")
        for fields in reader:
            if fields:
                yield reader.line_num, header, fields
    except csv.Error as exc:
        raise InputError(f"{path}, line {reader.line_num}: not readable as CSV ({exc})") from None


def image_file_problem(name: str, file: Path) -> str | None:
    """Why the image field `name` (resolved to `file`) names no image file; None when it does."""
    if not name:
        return "no image file name"
    if not file.exists():
        return f"image {file} not found"
    return None if file.is_file() else f"image {name!r} is {file}, not a file"


def files_in(folder: Path) -> ImageMatcher:
    """Matches a record's image name to the file of that name in `folder`, by content (the image id is the file's
    content id)."""

    def match(name: str) -> tuple[str | None, str | None]:
        file = folder / name
        problem = image_file_problem(name, file)
        return (None, problem) if problem else (content_id(file.read_bytes()), None)

    return match


def import_tag_csv(path: Path, taxonomy: Taxonomy, match: ImageMatcher) -> Imported:
    """`image,tags[,main_style]` CSV, UTF-8 (tags separated by ';'): a tag set per image, and its main label where the
    column is there.

    Records name the file's real line numbers; a row with more or fewer fields than the
    header (an unquoted comma in the tags) is a reject. A main label counts as named:
    it need not be repeated among the tags.
    """
    out = Imported()
    source = f"csv:{path.name}"
    for line, header, fields in tag_csv_rows(path):
        image = fields[0].strip()
        record = f"line {line} ({image})"
        if len(fields) != len(header):
            out.reject(
                source,
                record,
                None,
                f"{len(fields)} fields {fields}: expected {len(header)}, as the header has (quote a field that holds "
                "a comma)",
            )
            continue
        image_id, problem = (None, "no image file name") if not image else match(image)
        if problem:
            out.reject(source, record, image_id, problem)
            continue
        main = fields[header.index(TAG_CSV_MAIN)].strip() or None if TAG_CSV_MAIN in header else None
        tag_list = [tag.strip() for tag in fields[1].split(";") if tag.strip()]
        if not tag_list and main is None:
            out.reject(source, record, image_id, "no tags")
            continue
        unknown = unknown_styles([*tag_list, *([main] if main else [])], taxonomy)
        if unknown:
            out.reject(source, record, image_id, f"unknown tag(s) {unknown}: not in taxonomy '{taxonomy.name}'")
            continue
        out.rows.append(
            imported_row(image_id, source, record, main, sorted(set(tag_list) - {main}, key=taxonomy.index_of))
        )
    return out
