"""K-Fashion (AI Hub) label files: one JSON per image, Korean keys and style names, into annotation rows.

The image of `<stem>.json` is `<stem>.jpg`; Korean style names map through the
taxonomy's `korean` field. Parsing (`parse_kfashion`) is separate from matching and
mapping (`kfashion_rows`) so that the labels stage can cache parsed files
(annotation/sources.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from annotation.importers import ImageMatcher, Imported, RejectedRecord, describe, files_in, imported_row, read_utf8
from common.cli import InputError
from common.taxonomy import Taxonomy

# K-Fashion (AI Hub) keys, see ../shared/reference/notes.md section 3
KF_LABEL_PATH = ("데이터셋 정보", "데이터셋 상세설명", "라벨링", "스타일")
KF_STYLE, KF_SUB_STYLE = "스타일", "서브스타일"


def kfashion_style_entries(path: Path) -> list[dict]:
    """The non-empty entries of a K-Fashion file's 라벨링 → 스타일 list; RejectedRecord says what is wrong."""
    try:
        node = json.loads(read_utf8(path))
    except ValueError as exc:  # not UTF-8, or not JSON
        raise RejectedRecord(f"not a K-Fashion label file: {exc}") from None
    label_path = " → ".join(KF_LABEL_PATH)
    for key in KF_LABEL_PATH:
        if not isinstance(node, Mapping) or key not in node:
            raise RejectedRecord(f"not a K-Fashion label file (no {label_path})")
        node = node[key]
    if not isinstance(node, list) or not all(isinstance(entry, Mapping) for entry in node):
        raise RejectedRecord(f"{label_path} is {describe(node)}, not a list of style entries (objects)")
    return [entry for entry in node if entry]


def kfashion_style_names(entries: list[dict]) -> tuple[str, list[str]]:
    """(main, sub-styles) as Korean names: the first 스타일 is the main style, every other 스타일 and 서브스타일 a
    sub-style."""
    found: dict[str, list[str]] = {KF_STYLE: [], KF_SUB_STYLE: []}
    for number, entry in enumerate(entries, start=1):
        for key, names in found.items():
            value = entry.get(key)
            if value in (None, ""):
                continue
            if not isinstance(value, str):
                raise RejectedRecord(f"style entry {number}: {key} is {describe(value)}, not one Korean style name")
            names.append(value)
    styles, sub_styles = found[KF_STYLE], found[KF_SUB_STYLE]
    if not styles:
        raise RejectedRecord(f"no main style ({KF_STYLE} missing): sub-styles {sub_styles} alone do not label an image")
    return styles[0], styles[1:] + sub_styles


@dataclass(frozen=True)
class KFashionRecord:
    """One K-Fashion label file, parsed: Korean style names as written, or why it cannot be imported."""

    stem: str  # the file's name without .json: its image is <stem>.jpg
    main: str | None = None
    sub_styles: tuple[str, ...] = ()
    problem: str | None = None


def parse_kfashion(path: Path) -> KFashionRecord:
    """The styles of one K-Fashion file; never raises (a bad file is a record with its problem)."""
    try:
        entries = kfashion_style_entries(path)
        if not entries:
            raise RejectedRecord("unlabelled: the style entry is empty")
        main, sub_styles = kfashion_style_names(entries)
    except (RejectedRecord, InputError) as exc:
        return KFashionRecord(path.stem, problem=str(exc))
    return KFashionRecord(path.stem, main, tuple(sub_styles))


def kfashion_rows(records: Iterable[KFashionRecord], source: str, taxonomy: Taxonomy, match: ImageMatcher) -> Imported:
    """Rows of parsed K-Fashion records; Korean style names map through the taxonomy's `korean` field.

    The 스타일 of the first style entry that has one is the main style; the 스타일 of later
    entries (K-Fashion files with several entries, e.g. one per outfit part) and every
    서브스타일 become sub-styles, so no style a labeller gave is lost. Style entries that are
    all empty mean the image is unlabelled and are reported, not imported; so is an image
    with sub-styles but no 스타일.
    """
    out = Imported()
    korean = taxonomy.by_korean()
    for record in records:
        image_id, problem = match(f"{record.stem}.jpg")
        try:
            if record.problem or problem or record.main is None:  # parse_kfashion gives a record no main with a problem
                raise RejectedRecord(record.problem or problem or "no main style")
            unmapped = sorted({n for n in [record.main, *record.sub_styles] if n not in korean})
            if unmapped:
                raise RejectedRecord(f"Korean style name(s) {unmapped} not in taxonomy '{taxonomy.name}'")
        except RejectedRecord as exc:
            out.reject(source, record.stem, image_id, str(exc))
            continue
        main = korean[record.main]
        sub_styles = sorted({korean[n] for n in record.sub_styles} - {main}, key=taxonomy.index_of)
        out.rows.append(imported_row(image_id, source, record.stem, main, sub_styles))
    return out


def import_kfashion(label_files: Iterable[Path], taxonomy: Taxonomy) -> Imported:
    """K-Fashion JSON files (UTF-8), each with its image, the .jpg of the same stem, beside it (matched by content)."""
    out = Imported()
    for path in label_files:
        out.extend(
            kfashion_rows([parse_kfashion(path)], f"kfashion:{path.parent.name}", taxonomy, files_in(path.parent))
        )
    return out
