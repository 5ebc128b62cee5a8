"""The label set as data: a versioned YAML file, so another taxonomy needs no code change."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common.cli import InputError, read_yaml


class TaxonomyError(InputError):
    """The taxonomy file is malformed; the message names the file and the entry."""


@dataclass(frozen=True)
class Label:
    id: str
    name: str
    words: tuple[str, ...]
    korean: str | None = None


@dataclass(frozen=True)
class Taxonomy:
    name: str
    version: int
    labels: tuple[Label, ...]

    @property
    def names(self) -> list[str]:
        return [label.name for label in self.labels]

    def index_of(self, name: str) -> int:
        """Class index of a display name; KeyError names the unknown value."""
        for i, label in enumerate(self.labels):
            if label.name == name:
                return i
        raise KeyError(f"unknown label {name!r} (not in taxonomy {self.name!r})")

    def by_korean(self) -> dict[str, str]:
        """Korean name -> display name, for the labels that have one."""
        return {label.korean: label.name for label in self.labels if label.korean}


def label_words(entry: dict, path: Path) -> tuple[str, ...]:
    """The words whose vectors describe a label in the label graph: a non-empty list of strings.

    Checked here because a plain string would be read letter by letter and an empty
    list fail much later, in the graph stage, naming no label.
    """
    words = entry["words"]
    if not (isinstance(words, list) and words and all(isinstance(w, str) and w.strip() for w in words)):
        raise TaxonomyError(
            f"{path}: label {entry['name']!r}: 'words' must be a non-empty list of words, e.g. words: [romantic]; "
            f"found {words!r}"
        )
    return tuple(words)


def load_taxonomy(path: str | Path) -> Taxonomy:
    path = Path(path)
    raw = read_yaml(path, TaxonomyError, "taxonomy file not found (set 'taxonomy' in params.yaml)")
    if not isinstance(raw, dict) or not isinstance(raw.get("labels"), list) or not raw["labels"]:
        raise TaxonomyError(f"{path}: expected a mapping with a non-empty 'labels' list")
    labels = []
    for position, entry in enumerate(raw["labels"]):
        missing = {"id", "name", "words"} - set(entry or {})
        if missing:
            raise TaxonomyError(f"{path}: label #{position} lacks {sorted(missing)}")
        labels.append(
            Label(
                id=str(entry["id"]),
                name=str(entry["name"]),
                words=label_words(entry, path),
                korean=entry.get("korean"),
            )
        )
    for field in ("id", "name"):
        values = [getattr(label, field) for label in labels]
        duplicated = sorted({v for v in values if values.count(v) > 1})
        if duplicated:
            raise TaxonomyError(f"{path}: duplicate label {field}s {duplicated}")
    return Taxonomy(name=str(raw.get("name", path.stem)), version=int(raw.get("version", 1)), labels=tuple(labels))
