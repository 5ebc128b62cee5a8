"""Validate: every expectation passes on clean labels and catches its own planted defect."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from common.settings import ValidateSettings
from pipeline.validate import ERROR, WARNING, main, summary, validate

NAMES = ["Casual", "Romantic", "Sexy"]
SETTINGS = ValidateSettings(require_main=True, min_images_per_style=2, min_alpha=0.667, fail_on_warnings=False)


def clean_inputs() -> dict[str, pd.DataFrame]:
    """Four images, all labelled, every style on at least two images, experts in agreement."""
    ids = pd.Series(["a1", "a2", "a3", "a4"], dtype="string")
    catalog = pd.DataFrame(
        {"image_id": ids, "path": "b1/" + ids + ".jpg", "batch": pd.Series(["b1"] * 4, dtype="string")}
    )
    mains = pd.Series(["Casual", "Romantic", "Sexy", "Casual"], dtype="string")
    subs = pd.Series(
        [np.array(["Romantic"]), np.array([], dtype=object), np.array(["Casual"]), np.array(["Sexy"])], dtype=object
    )
    annotations = pd.DataFrame(
        {
            "image_id": ids,
            "annotator": pd.Series(["1", "1", "2", "2"], dtype="string"),
            "main_style": mains,
            "sub_styles": subs,
            "cancelled": False,
        }
    )
    labels = pd.DataFrame(
        {
            "image_id": ids,
            "batch": catalog["batch"],
            "main_style": mains,
            "sub_styles": subs,
            "n_annotators": np.int64(1),
            "main_agreement": pd.Series([1.0] * 4, dtype="Float64"),
            "needs_review": False,
        }
    )
    agreement = pd.DataFrame(
        {
            "scope": "style",
            "key": pd.Series(NAMES, dtype="string"),
            "measure": "named",
            "alpha": [1.0, 0.8, 0.7],
            "images": np.int64(2),
        }
    )
    agreement = pd.concat(
        [
            agreement,
            pd.DataFrame([{"scope": "overall", "key": "", "measure": "main_style", "alpha": 0.1, "images": 4}]),
        ],
        ignore_index=True,
    )
    return {"catalog": catalog, "annotations": annotations, "image_labels": labels, "style_agreement": agreement}


def failures(
    inputs: dict[str, pd.DataFrame], tmp_path: Path, settings: ValidateSettings = SETTINGS
) -> dict[str, object]:
    return {o.check: o for o in validate(inputs, settings, NAMES, None) if not o.success}


def _set(table: str, column: str, row: int, value: object) -> Callable[[dict[str, pd.DataFrame]], None]:
    def plant(inputs: dict[str, pd.DataFrame]) -> None:
        if isinstance(value, list):  # a list cell: rebuild the object column (.at would unpack it)
            cells = list(inputs[table][column])
            cells[row] = np.array(value, dtype=object)
            inputs[table][column] = pd.Series(cells, dtype=object)
        else:
            inputs[table].at[row, column] = value

    return plant


def _duplicate_label_row(inputs: dict[str, pd.DataFrame]) -> None:
    inputs["image_labels"] = pd.concat([inputs["image_labels"], inputs["image_labels"].iloc[[1]]], ignore_index=True)


def _drop_catalog_row(inputs: dict[str, pd.DataFrame]) -> None:
    inputs["catalog"] = inputs["catalog"].iloc[1:].reset_index(drop=True)


def _add_catalog_row(inputs: dict[str, pd.DataFrame]) -> None:
    extra = pd.DataFrame({"image_id": ["zz"], "path": ["b1/zz.jpg"], "batch": ["b1"]}).astype("string")
    inputs["catalog"] = pd.concat([inputs["catalog"], extra], ignore_index=True)


def _nulls_only(inputs: dict[str, pd.DataFrame]) -> None:
    inputs["annotations"]["cancelled"] = pd.Series([None] * len(inputs["annotations"]), dtype=object)


def _wrong_type(inputs: dict[str, pd.DataFrame]) -> None:
    inputs["image_labels"]["n_annotators"] = inputs["image_labels"]["n_annotators"].astype(str)


def _missing_column(inputs: dict[str, pd.DataFrame]) -> None:
    inputs["annotations"] = inputs["annotations"].drop(columns=["cancelled"])


def _tie(inputs: dict[str, pd.DataFrame]) -> None:
    inputs["image_labels"].at[0, "main_style"] = pd.NA
    inputs["image_labels"].at[0, "needs_review"] = True


# (planted defect, the expectation that must fail, its severity, a word its examples must show)
DEFECTS = [
    (
        _missing_column,
        "Every input has its columns, with values of the right kind",
        ERROR,
        "annotations.cancelled: expected bool, found missing",
    ),
    (
        _wrong_type,
        "Every input has its columns, with values of the right kind",
        ERROR,
        "image_labels.n_annotators: expected int",
    ),
    (
        _nulls_only,
        "Every input has its columns, with values of the right kind",
        ERROR,
        "annotations.cancelled: expected bool",
    ),
    (
        _set("image_labels", "sub_styles", 1, ["Boho"]),
        "Every main and sub style is in the taxonomy",
        ERROR,
        "Boho (image_labels, a2)",
    ),
    (
        _set("annotations", "main_style", 2, "Punk"),
        "Every main and sub style is in the taxonomy",
        ERROR,
        "Punk (annotations, a3)",
    ),
    (_duplicate_label_row, "One label row per image", ERROR, "a2"),
    (
        _set("image_labels", "main_style", 3, pd.NA),
        "Exactly one main style per labelled image (ties aside)",
        ERROR,
        "a4",
    ),
    (
        _set("image_labels", "sub_styles", 1, ["Romantic", "Sexy"]),
        "The main style is not repeated among the sub-styles",
        ERROR,
        "a2 Romantic",
    ),
    (_drop_catalog_row, "Every labelled image is in the catalog", ERROR, "a1"),
    (_add_catalog_row, "Every catalogued image is labelled", WARNING, "zz"),
    (
        _tie,
        "No image waits for review: a tie for the main style, or a source that labels it twice, differently (left out "
        "downstream)",
        WARNING,
        "a1",
    ),
    (_set("image_labels", "sub_styles", 3, []), "Every style is named on at least 2 images", WARNING, "Sexy (1)"),
    (
        _set("style_agreement", "alpha", 1, 0.25),
        "Experts agree on every style beyond chance: Krippendorff's alpha at least 0.667",
        WARNING,
        "Romantic (0.25)",
    ),
]


def test_clean_labels_pass_every_expectation(tmp_path):
    outcomes = validate(clean_inputs(), SETTINGS, NAMES, tmp_path / "docs")
    assert len(outcomes) == 10
    assert [o.check for o in outcomes if not o.success] == []
    assert (tmp_path / "docs" / "index.html").is_file()


@pytest.mark.parametrize(
    ("plant", "check", "severity", "example"), DEFECTS, ids=[f"{d[1][:30]}-{d[3][:20]}" for d in DEFECTS]
)
def test_each_expectation_catches_its_planted_defect(tmp_path, plant, check, severity, example):
    inputs = clean_inputs()
    plant(inputs)
    failed = failures(inputs, tmp_path)
    assert list(failed) == [check]
    assert failed[check].severity == severity
    assert failed[check].unexpected >= 1
    assert any(example in e for e in failed[check].examples), failed[check].examples


def test_tag_taxonomies_switch_the_main_style_expectations_off(tmp_path):
    inputs = clean_inputs()
    for table in ("annotations", "image_labels"):
        inputs[table]["main_style"] = pd.Series([pd.NA] * 4, dtype="string")
    inputs["image_labels"]["sub_styles"] = pd.Series([np.array(NAMES)] * 4, dtype=object)
    assert failures(inputs, tmp_path, SETTINGS.__class__(**{**SETTINGS.__dict__, "require_main": False})) == {}
    assert "Exactly one main style per labelled image (ties aside)" in failures(inputs, tmp_path)


@pytest.mark.parametrize("typed", [True, False], ids=["typed-columns", "untyped-columns"])
def test_no_labels_yet_gives_warnings_not_a_schema_error(tmp_path, typed):
    inputs = clean_inputs()
    for name in ("annotations", "image_labels", "style_agreement"):
        empty = inputs[name].iloc[0:0] if typed else pd.DataFrame(columns=list(inputs[name].columns))
        empty.to_parquet(tmp_path / f"{name}.parquet")
        inputs[name] = pd.read_parquet(
            tmp_path / f"{name}.parquet"
        )  # as the stage reads them: empty list columns lose their type
    assert set(failures(inputs, tmp_path)) == {
        "Every catalogued image is labelled",
        "Every style is named on at least 2 images",
    }


def test_summary_names_the_expectation_the_row_count_and_examples_errors_first(tmp_path):
    inputs = clean_inputs()
    _add_catalog_row(inputs)
    _set("image_labels", "sub_styles", 0, ["Romantic", "Boho", "Emo"])(inputs)
    lines = summary(validate(inputs, SETTINGS, NAMES, None)).splitlines()
    assert lines == [
        "ERROR: Every main and sub style is in the taxonomy [styles]: 2 rows, e.g. Boho (image_labels, a1); Emo "
        "(image_labels, a1)",
        "WARNING: Every catalogued image is labelled [catalog]: 1 rows, e.g. zz",
    ]


def write_inputs(tmp_path: Path, inputs: dict[str, pd.DataFrame], **validate_section: object) -> list[str]:
    """Parquet inputs, a taxonomy of NAMES and a params.yaml; returns the CLI arguments."""
    for name, frame in inputs.items():
        frame.to_parquet(tmp_path / f"{name}.parquet")
    taxonomy = {"name": "test", "labels": [{"id": n.lower(), "name": n, "words": [n.lower()]} for n in NAMES]}
    (tmp_path / "taxonomy.yaml").write_text(yaml.safe_dump(taxonomy))
    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    params["taxonomy"] = str(tmp_path / "taxonomy.yaml")
    params["validate"] = SETTINGS.__dict__ | validate_section
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return [
        *("--catalog", str(tmp_path / "catalog.parquet"), "--annotations", str(tmp_path / "annotations.parquet")),
        *("--labels", str(tmp_path / "image_labels.parquet"), "--agreement", str(tmp_path / "style_agreement.parquet")),
        *(
            "--docs",
            str(tmp_path / "reports" / "validation"),
            "--metrics",
            str(tmp_path / "validation.json"),
            "--params",
            str(tmp_path / "params.yaml"),
        ),
    ]


def test_cli_errors_stop_the_pipeline_warnings_do_not(tmp_path, capsys, monkeypatch):
    inputs = clean_inputs()
    _add_catalog_row(inputs)
    monkeypatch.chdir(tmp_path)  # dvc passes relative paths: GX needs the docs folder made absolute
    assert main([*write_inputs(tmp_path, inputs), "--docs", "reports/validation"]) == 0
    metrics = json.loads((tmp_path / "validation.json").read_text())
    assert (metrics["success"], metrics["errors"], metrics["warnings"]) == (True, 0, 1)
    assert (tmp_path / "reports" / "validation" / "index.html").is_file()

    assert main(write_inputs(tmp_path, inputs, fail_on_warnings=True)) == 1

    _drop_catalog_row(inputs)
    assert main(write_inputs(tmp_path, inputs)) == 1
    assert "ERROR: Every labelled image is in the catalog [labels]: 1 rows, e.g. a1" in capsys.readouterr().err
    metrics = json.loads((tmp_path / "validation.json").read_text())
    assert (metrics["success"], metrics["errors"]) == (False, 1)
    assert (tmp_path / "reports" / "validation" / "index.html").is_file()
