"""Typed settings read from params.yaml: one frozen dataclass per section, all one convention.

Every section is a frozen dataclass subclassing `Settings`, each field declared with
`setting(help, choices=..., interval=...)`. That one declaration is the whole contract of a
key: `load_section` refuses unknown and missing keys and converts YAML values to the field's
type; `Settings.__post_init__` checks choices and intervals (and a section's `rules` for
constraints between keys), so a value is checked the same way whether it comes from
params.yaml, a checkpoint or a test; and docs/reference.md is generated from the same
declarations (`docs/generate.py`), so the reference cannot drift from the code.

Sections shared by several stages live here; a stage with a section of its own declares its
dataclass in its module. Every stage reads exactly what dvc.yaml declares for it: a whole
section (`load_section`), one key of a section (`load_setting`), or the top-level taxonomy
(`load_taxonomy_path`), so a broken section it does not declare cannot stop it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from common.cli import InputError, read_yaml

DEFAULT_PARAMS = Path("params.yaml")

T = TypeVar("T", bound="Settings")
CONVERTERS: dict[str, type] = {"Path": Path, "int": int, "float": float, "str": str, "bool": bool}
INTERVAL = re.compile(r"^([\[(])\s*(-?[\d.e+-]+|-inf)\s*,\s*(-?[\d.e+-]+|inf)\s*([\])])$")


class ParamsError(InputError):
    """params.yaml is missing a key or has one the code does not know, or a value outside its bounds."""


Problem = tuple[str, str]  # (key, or "" for the section as a whole; what is wrong)


def describe(section: str, problems: Sequence[Problem]) -> str:
    """`problems` as one line: "split.val must be in [0, 1], not -0.1; split: train + val + test must sum to 1"."""
    return "; ".join(f"{section}.{key} {text}" if key else f"{section}: {text}" for key, text in problems)


class SettingsError(ParamsError):
    """Values that break their section's declarations. `problems` keeps them per key, so that a loader can name
    the section as params.yaml does (a `models` entry by its name)."""

    def __init__(self, section: str, problems: Sequence[Problem]) -> None:
        super().__init__(f"{describe(section, problems)} (params.yaml)")
        self.problems = list(problems)


def setting(help: str, *, choices: Sequence[str] = (), interval: str = "", default: Any = MISSING) -> Any:
    """A settings field: what it means (`help`, shown in docs/reference.md), its allowed values
    (`choices`) or bounds (`interval`, written as in mathematics: "[0, 1)", "[1, inf)")."""
    if interval and not INTERVAL.match(interval):
        raise ValueError(f"interval {interval!r} is not like '[0, 1)' or '(0, inf)'")
    metadata = {"help": help, "choices": tuple(choices), "interval": interval}
    return field(default=default, metadata=metadata)


def interval_problem(value: float, interval: str) -> str:
    """'' when `value` lies in `interval` ("[a, b)" style), else what is wrong, for a message."""
    match = INTERVAL.match(interval)
    assert match, interval
    opening, low, high, closing = match.groups()
    lower, upper = float(low), float(high)
    inside_low = value >= lower if opening == "[" else value > lower
    inside_high = value <= upper if closing == "]" else value < upper
    return "" if inside_low and inside_high and not math.isnan(value) else f"must be in {interval}"


def field_problem(spec: Field[Any], value: Any) -> str:
    """'' when `value` satisfies the field's declared choices and interval, else the complaint."""
    choices, interval = spec.metadata.get("choices", ()), spec.metadata.get("interval", "")
    if choices and value not in choices:
        named = ", ".join(str(choice) or "''" for choice in choices)
        return f"must be one of {named}, not {value!r}"
    if interval and isinstance(value, int | float) and not isinstance(value, bool):
        problem = interval_problem(value, interval)
        return f"{problem}, not {value!r}" if problem else ""
    return ""


class Settings:
    """Base of every params.yaml section's dataclass (see the module docstring).

    `section` names the params.yaml section in messages. `rules` yields a problem per broken
    constraint between keys (one key alone is checked from its `setting` declaration).
    """

    section: ClassVar[str]

    def __post_init__(self) -> None:
        problems = [
            (spec.name, problem)
            for spec in fields(self)  # type: ignore[arg-type]
            if (problem := field_problem(spec, getattr(self, spec.name)))
        ]
        problems += list(self.rules())
        if problems:
            raise SettingsError(self.section, problems)

    def rules(self) -> Iterator[Problem]:
        """(key, what is wrong) of each broken constraint between this section's keys; none by default."""
        return iter(())


@dataclass(frozen=True)
class CrawlSettings(Settings):
    section = "crawl"
    dir: Path = setting(
        "one folder per crawl batch (`batch-*`): images, metadata.csv, optional K-Fashion .json sidecars"
    )
    label_exports: Path = setting(
        "label files: Label Studio JSON exports, K-Fashion folders, CSVs (docs/arriving-with-labels.md)"
    )


@dataclass(frozen=True)
class IngestSettings(Settings):
    section = "ingest"
    workers: int = setting("decode processes; 0 = one per CPU core", interval="[0, inf)")
    min_side: int = setting("reject images whose shorter side is below this (px)", interval="[1, inf)")
    max_pixels: int = setting("decompression-bomb guard: reject images with more pixels", interval="[1, inf)")
    near_duplicate_distance: int = setting(
        "list image pairs whose 64-bit dHashes differ in at most this many bits (docs/near-duplicates.md)",
        interval="[0, 64]",
    )


@dataclass(frozen=True)
class ValidateSettings(Settings):
    section = "validate"
    require_main: bool = setting(
        "every image has exactly one main style (false for tag taxonomies without a main label)"
    )
    min_images_per_style: int = setting("warn when a style is named (main or sub) on fewer images", interval="[0, inf)")
    min_alpha: float = setting(
        "warn when experts agree on a style less than this, as Krippendorff's alpha (0.667: his bar for tentative"
        " conclusions)",
        interval="[-1, 1]",
    )
    fail_on_warnings: bool = setting("warnings stop the pipeline like errors")


TAXONOMY_HELP = "the label set: a taxonomy YAML file (taxonomies/); another file runs the pipeline on other labels"


def build_section(cls: type[T], raw: Any, name: str, source: Path) -> T:
    """Dataclass `cls` from a params mapping; unknown or missing keys are errors, values converted to field types."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: section '{name}' must be a mapping")
    declared = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    required = {key for key, spec in declared.items() if spec.default is MISSING}
    unknown, missing = set(raw) - set(declared), required - set(raw)
    if unknown or missing:
        found = [f"{what} {sorted(keys)}" for what, keys in (("missing", missing), ("unknown", unknown)) if keys]
        raise ParamsError(f"{source}: section '{name}': {', '.join(found)} (every key: docs/reference.md)")
    values = {key: _converted(value, str(declared[key].type), f"{name}.{key}", source) for key, value in raw.items()}
    try:
        return cls(**values)
    except SettingsError as error:  # named as in `source`: a `models` entry by its name, not models.<name>
        raise ParamsError(f"{source}: {describe(name, error.problems)}") from None


def _converted(value: Any, type_name: str, key: str, source: Path) -> Any:
    """`value` as the field's type (int/float/str/bool/Path; others as-is); ParamsError naming `key` if it is not."""
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
    """The parsed params file; ParamsError naming it when missing (stages run from the project root) or not YAML."""
    raw = read_yaml(
        path,
        ParamsError,
        f"params file not found in {Path.cwd()}; run from the project root (the folder with dvc.yaml)"
        ", or pass --params",
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
    return build_section(cls, raw[section], section, path)


def load_setting(cls: type[Settings], section: str, key: str, path: str | Path = DEFAULT_PARAMS) -> Any:
    """One key of a section (`validate.min_alpha`), converted and checked by its declaration in `cls`; the rest of the
    section is not read, so a stage that declares one key in dvc.yaml depends on that key alone."""
    path = Path(path)
    values = read_params_file(path).get(section)
    if not isinstance(values, dict) or key not in values:
        raise ParamsError(f"{path}: '{section}.{key}' is missing (every key: docs/reference.md)")
    spec = {f.name: f for f in fields(cls)}[key]  # type: ignore[arg-type]
    value = _converted(values[key], str(spec.type), f"{section}.{key}", path)
    if problem := field_problem(spec, value):
        raise ParamsError(f"{path}: {section}.{key} {problem}")
    return value


def load_taxonomy_path(path: str | Path = DEFAULT_PARAMS) -> Path:
    """The top-level `taxonomy`: the label set's file."""
    path = Path(path)
    taxonomy = read_params_file(path).get("taxonomy")
    if not isinstance(taxonomy, str):
        raise ParamsError(f"{path}: 'taxonomy' (the taxonomy file) is missing")
    return Path(taxonomy)


def crawl_folder(given: Path | None, path: str | Path = DEFAULT_PARAMS) -> Path:
    """The crawl folder: `--crawl-dir` where given, else crawl.dir of params.yaml (as dvc.yaml passes it)."""
    return given if given is not None else Path(load_setting(CrawlSettings, "crawl", "dir", path))
