"""Typed settings read from params.yaml: one frozen dataclass per section.

Sections shared by several stages live here (`Params`); a stage with a section of
its own declares its dataclass in its module and reads it with `load_section`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from pipeline.cli import InputError, read_yaml

DEFAULT_PARAMS = Path("params.yaml")

T = TypeVar("T")
CONVERTERS = {"Path": Path, "int": int, "float": float, "str": str, "bool": bool}


class ParamsError(InputError):
    """params.yaml is missing a key or has one the code does not know."""


@dataclass(frozen=True)
class CrawlSettings:
    dir: Path
    label_exports: Path


@dataclass(frozen=True)
class IngestSettings:
    workers: int
    min_side: int
    max_pixels: int
    near_duplicate_distance: int


@dataclass(frozen=True)
class DemoSettings:
    seed: int
    batches: int
    images_per_batch: int
    width: int
    height: int


@dataclass(frozen=True)
class Params:
    taxonomy: Path
    crawl: CrawlSettings
    ingest: IngestSettings
    demo: DemoSettings


def _section(cls: type[T], raw: Any, name: str, source: Path) -> T:
    """Build dataclass `cls` from a params mapping; unknown or missing keys are errors."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: section '{name}' must be a mapping")
    expected = {f.name: f.type for f in fields(cls)}
    unknown = set(raw) - set(expected)
    missing = set(expected) - set(raw)
    if unknown or missing:
        raise ParamsError(f"{source}: section '{name}': missing {sorted(missing)}, unknown {sorted(unknown)}")
    return cls(**{key: _converted(value, str(expected[key]), f"{name}.{key}", source) for key, value in raw.items()})


def _converted(value: Any, type_name: str, key: str, source: Path) -> Any:
    """`value` as the field's type (int/float/str/bool/Path; others as-is); ParamsError naming `key` when it is not one."""
    if type_name not in CONVERTERS:
        return value
    refused = ParamsError(f"{source}: {key} must be {type_name}, not {value!r}")
    if not _convertible(value, type_name):
        raise refused
    try:
        return CONVERTERS[type_name](value)
    except (TypeError, ValueError, OverflowError):
        raise refused from None


def _convertible(value: Any, type_name: str) -> bool:
    """False where the conversion would silently change what was written: None, a bool as a number,
    anything but a bool as a bool (bool("false") is True), a fraction as an int (int(5.9) is 5)."""
    if value is None:
        return False
    if type_name == "bool":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return type_name not in ("int", "float")
    return not (type_name == "int" and isinstance(value, float) and not value.is_integer())


def read_params_file(path: Path) -> dict[str, Any]:
    """The parsed params file; ParamsError naming it when it is missing (stages run from the project root) or not YAML."""
    raw = read_yaml(
        path,
        ParamsError,
        f"params file not found in {Path.cwd()}; run from the project root (the folder with dvc.yaml), or pass --params",
    )
    if raw is not None and not isinstance(raw, dict):
        raise ParamsError(f"{path}: a params file is a mapping of sections")
    return raw or {}


def load_section(cls: type[T], section: str, path: str | Path = DEFAULT_PARAMS) -> T:
    """One params.yaml section as dataclass `cls` (fields typed int/float/str/bool/Path; others as-is)."""
    path = Path(path)
    raw = read_params_file(path)
    if section not in raw:
        raise ParamsError(f"{path}: section '{section}' is missing")
    return _section(cls, raw[section], section, path)


def load_params(path: str | Path = DEFAULT_PARAMS) -> Params:
    path = Path(path)
    raw = read_params_file(path)
    if "taxonomy" not in raw:
        raise ParamsError(f"{path}: 'taxonomy' (the taxonomy file) is missing")
    return Params(
        taxonomy=Path(raw["taxonomy"]),
        crawl=_section(CrawlSettings, raw.get("crawl"), "crawl", path),
        ingest=_section(IngestSettings, raw.get("ingest"), "ingest", path),
        demo=_section(DemoSettings, raw.get("demo"), "demo", path),
    )
