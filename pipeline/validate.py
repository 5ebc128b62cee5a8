"""Validate stage: a Great Expectations suite (declared in code) over the labels before curation.

Errors (the data is broken: an unknown style, a label row without its image, a
column of the wrong type...) stop the pipeline with a short summary; warnings (ties
sent to review, images nobody labelled yet, thin styles, styles the experts read
differently) are reported and let it continue, unless `validate.fail_on_warnings`.
Every run writes a Great Expectations Data Docs site (open index.html) and a JSON
summary for `dvc metrics show`.

The expectations run on small derived tables (one row per named style, one per
label row with its checks as columns, ...), so each rule is one plain expectation
whose failing rows point at the image or style to fix.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from pandas.api import types as ptypes

from common.atomic import atomic_dir, write_json
from common.cli import StageParser, report_user_errors
from common.labelsets import flatten_lists
from common.settings import DEFAULT_PARAMS, ValidateSettings, load_section, load_taxonomy_path
from common.tables import read_table
from common.taxonomy import load_taxonomy

ERROR, WARNING = "error", "warning"
EXAMPLES = 3

# Columns each input must have, with the kind of values they hold.
SCHEMA: dict[str, dict[str, str]] = {
    "catalog": {"image_id": "string", "path": "string", "batch": "string"},
    "annotations": {
        "image_id": "string",
        "annotator": "string",
        "main_style": "string",
        "sub_styles": "list",
        "cancelled": "bool",
    },
    "image_labels": {
        "image_id": "string",
        "batch": "string",
        "main_style": "string",
        "sub_styles": "list",
        "n_annotators": "int",
        "main_agreement": "float",
        "needs_review": "bool",
    },
    "style_agreement": {"scope": "string", "key": "string", "measure": "string", "alpha": "float", "images": "int"},
}


@dataclass(frozen=True)
class Check:
    """One expectation on one derived table, with its severity and the column its examples show."""

    table: str
    expectation: Any  # a great_expectations.expectations.Expectation
    severity: str
    examples: Callable[[pd.DataFrame], pd.Series]


@dataclass(frozen=True)
class Outcome:
    check: str
    table: str
    severity: str
    success: bool
    unexpected: int
    examples: list[str]


def value_kind(column: pd.Series) -> str:
    """The kind of values a column holds: bool, int, float, string, list or other."""
    if ptypes.is_bool_dtype(column):
        return "bool"
    if ptypes.is_integer_dtype(column):
        return "int"
    if ptypes.is_float_dtype(column):
        return "float"
    if ptypes.is_string_dtype(column) and not ptypes.is_object_dtype(column):
        return "string"
    try:
        array = pa.array(column.to_numpy(dtype=object), from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return "other"
    if pa.types.is_list(array.type) and (
        pa.types.is_string(array.type.value_type) or pa.types.is_null(array.type.value_type)
    ):
        return "list"
    if pa.types.is_string(array.type) or pa.types.is_null(array.type):
        return "string"
    return "other"


def observed_kind(frame: pd.DataFrame, column: str, expected: str) -> str:
    """The kind of values `frame[column]` holds, 'missing' when it is absent.

    A table with no rows yet (no labels) contradicts no kind, so its columns count as
    the expected one: read back from Parquet they have lost their type (empty object
    columns), which would otherwise look like strings. A column of only nulls in a
    table with rows is still judged (and fails).
    """
    if column not in frame:
        return "missing"
    return expected if frame.empty else value_kind(frame[column])


def schema_table(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per required column: expected and observed kind ('missing' when absent)."""
    rows = [
        {"table": name, "column": column, "expected": kind, "observed": observed_kind(tables[name], column, kind)}
        for name, columns in SCHEMA.items()
        for column, kind in columns.items()
    ]
    return pd.DataFrame(rows)


def named_styles(annotations: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """Every style named anywhere: (table, image_id, role, style)."""
    parts = []
    for table, frame in (
        ("annotations", annotations[~annotations["cancelled"].astype(bool)]),
        ("image_labels", labels),
    ):
        frame = frame.reset_index(drop=True)
        mains = frame.loc[frame["main_style"].notna(), ["image_id", "main_style"]].rename(
            columns={"main_style": "style"}
        )
        rows, values = flatten_lists(frame["sub_styles"])
        subs = pd.DataFrame(
            {"image_id": frame["image_id"].to_numpy()[rows], "style": values.to_numpy(zero_copy_only=False)}
        )
        parts += [mains.assign(table=table, role="main"), subs.assign(table=table, role="sub")]
    styles = pd.concat(parts, ignore_index=True)[["table", "image_id", "role", "style"]]
    return styles.astype({"table": "string", "image_id": "string", "role": "string", "style": "string"})


def label_table(labels: pd.DataFrame, catalog: pd.DataFrame) -> pd.DataFrame:
    """The consolidated labels with one boolean column per row-level rule."""
    rows, values = flatten_lists(labels["sub_styles"])
    repeated = (
        pd.Series(values.to_numpy(zero_copy_only=False), dtype="string")
        == labels["main_style"].astype("string").iloc[rows].to_numpy()
    )
    main_in_subs = np.zeros(len(labels), dtype=bool)
    main_in_subs[rows[repeated.fillna(False).to_numpy(dtype=bool)]] = True
    return pd.DataFrame(
        {
            "image_id": labels["image_id"].astype("string"),
            "main_style": labels["main_style"].astype("string"),
            "needs_review": labels["needs_review"].astype(bool),
            "main_in_subs": main_in_subs,
            "in_catalog": labels["image_id"].isin(catalog["image_id"]),
        }
    ).reset_index(drop=True)


def style_counts(styles: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
    """Consolidated images naming each taxonomy style (as main or sub), zero for styles nobody named."""
    consolidated = styles[(styles["table"] == "image_labels") & styles["style"].isin(names)]
    images = consolidated.drop_duplicates(["image_id", "style"]).groupby("style").size()
    return pd.DataFrame({"style": list(names), "images": images.reindex(list(names), fill_value=0).to_numpy()})


def style_alphas(agreement: pd.DataFrame) -> pd.DataFrame:
    """(style, images, alpha) of each style the experts named, from the agreement table (annotation/agreement.py); alpha
    NaN where undefined."""
    styles = agreement[(agreement["scope"] == "style") & (agreement["measure"] == "named")]
    return pd.DataFrame(
        {
            "style": styles["key"].astype("string"),
            "images": styles["images"].astype(int),
            "alpha": styles["alpha"].astype(float),
        }
    ).reset_index(drop=True)


def derived_tables(inputs: dict[str, pd.DataFrame], names: Sequence[str]) -> dict[str, pd.DataFrame]:
    """The tables the expectations run on; built only from inputs whose schema is valid."""
    catalog, labels = inputs["catalog"], inputs["image_labels"]
    styles = named_styles(inputs["annotations"], labels)
    return {
        "styles": styles,
        "labels": label_table(labels, catalog),
        "catalog": pd.DataFrame(
            {"image_id": catalog["image_id"].astype("string"), "labelled": catalog["image_id"].isin(labels["image_id"])}
        ),
        "style_counts": style_counts(styles, names),
        "agreement": style_alphas(inputs["style_agreement"]),
    }


def _column(name: str) -> Callable[[pd.DataFrame], pd.Series]:
    return lambda rows: rows[name].astype(str)


def _style_with_number(number: str) -> Callable[[pd.DataFrame], pd.Series]:
    return lambda rows: rows["style"].astype(str) + " (" + rows[number].round(3).astype(str) + ")"


def schema_check() -> Check:
    import great_expectations.expectations as gxe

    return Check(
        "schema",
        gxe.ExpectColumnPairValuesToBeEqual(
            column_A="expected",
            column_B="observed",
            description="Every input has its columns, with values of the right kind",
            meta={"severity": ERROR},
        ),
        ERROR,
        lambda rows: (
            rows["table"] + "." + rows["column"] + ": expected " + rows["expected"] + ", found " + rows["observed"]
        ),
    )


Expect = Callable[..., Check]  # (table, severity, expectation class, examples, description, **its arguments) -> Check


def content_checks(settings: ValidateSettings, names: Sequence[str]) -> list[Check]:
    """The suite over the derived tables, in the order the summary lists them."""
    import great_expectations.expectations as gxe

    def expect(
        table: str,
        severity: str,
        cls: Any,
        examples: Callable[[pd.DataFrame], pd.Series],
        description: str,
        **kwargs: Any,
    ) -> Check:
        return Check(table, cls(description=description, meta={"severity": severity}, **kwargs), severity, examples)

    return [
        *label_checks(expect, gxe, names),
        *(main_style_checks(expect, gxe) if settings.require_main else []),
        *catalog_checks(expect, gxe),
        *coverage_checks(expect, gxe, settings),
    ]


def label_checks(expect: Expect, gxe: Any, names: Sequence[str]) -> list[Check]:
    """Styles known, one row per image."""
    return [
        expect(
            "styles",
            ERROR,
            gxe.ExpectColumnValuesToBeInSet,
            lambda r: r["style"] + " (" + r["table"] + ", " + r["image_id"] + ")",
            "Every main and sub style is in the taxonomy",
            column="style",
            value_set=list(names),
        ),
        expect(
            "labels", ERROR, gxe.ExpectColumnValuesToBeUnique, _column("image_id"), "One label row per image",
            column="image_id",
        ),
    ]  # fmt: skip


def main_style_checks(expect: Expect, gxe: Any) -> list[Check]:
    """Taxonomies with a main style (validate.require_main): one per image, and no image left waiting for review."""
    from great_expectations.expectations.row_conditions import Column

    return [
        expect(
            "labels",
            ERROR,
            gxe.ExpectColumnValuesToNotBeNull,
            _column("image_id"),
            "Exactly one main style per labelled image (ties aside)",
            column="main_style",
            row_condition=Column("needs_review") == False,  # noqa: E712 (builds a GX condition)
        ),
        expect(
            "labels",
            WARNING,
            gxe.ExpectColumnValuesToBeInSet,
            _column("image_id"),
            "No image waits for review: a tie for the main style, or a source that labels it twice, differently "
            "(left out downstream)",
            column="needs_review",
            value_set=[False],
        ),
    ]


def catalog_checks(expect: Expect, gxe: Any) -> list[Check]:
    """Labels and catalog agree: no main style repeated as a sub-style, every labelled image catalogued and back."""
    image = _column("image_id")
    return [
        expect(
            "labels",
            ERROR,
            gxe.ExpectColumnValuesToBeInSet,
            lambda r: r["image_id"] + " " + r["main_style"].astype(str),
            "The main style is not repeated among the sub-styles",
            column="main_in_subs",
            value_set=[False],
        ),
        expect(
            "labels", ERROR, gxe.ExpectColumnValuesToBeInSet, image, "Every labelled image is in the catalog",
            column="in_catalog", value_set=[True],
        ),
        expect(
            "catalog", WARNING, gxe.ExpectColumnValuesToBeInSet, image, "Every catalogued image is labelled",
            column="labelled", value_set=[True],
        ),
    ]  # fmt: skip


def coverage_checks(expect: Expect, gxe: Any, settings: ValidateSettings) -> list[Check]:
    """Enough images per style, and experts who agree on each."""
    return [
        expect(
            "style_counts",
            WARNING,
            gxe.ExpectColumnValuesToBeBetween,
            _style_with_number("images"),
            f"Every style is named on at least {settings.min_images_per_style} images",
            column="images",
            min_value=settings.min_images_per_style,
        ),
        expect(
            "agreement",
            WARNING,
            gxe.ExpectColumnValuesToBeBetween,
            _style_with_number("alpha"),
            f"Experts agree on every style beyond chance: Krippendorff's alpha at least {settings.min_alpha}",
            column="alpha",
            min_value=settings.min_alpha,
        ),
    ]


def run_checks(tables: dict[str, pd.DataFrame], checks: Sequence[Check], docs_dir: Path | None) -> list[Outcome]:
    """Run every check with Great Expectations (one suite per table); render Data Docs into docs_dir if given."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    sites = (
        {
            "validation": {
                "class_name": "SiteBuilder",
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(docs_dir.resolve()),
                },  # GX wants it absolute
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            }
        }
        if docs_dir
        else {}
    )
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
        data_docs_sites=sites,
    )
    context = gx.get_context(mode="ephemeral", project_config=config)
    source = context.data_sources.add_pandas("stylegraph")
    outcomes = []
    for table in dict.fromkeys(check.table for check in checks):
        mine = [check for check in checks if check.table == table]
        suite = context.suites.add(gx.ExpectationSuite(name=table, expectations=[check.expectation for check in mine]))
        batch = source.add_dataframe_asset(table).add_batch_definition_whole_dataframe("all")
        definition = context.validation_definitions.add(gx.ValidationDefinition(name=table, data=batch, suite=suite))
        results = definition.run(batch_parameters={"dataframe": tables[table]}, result_format="COMPLETE").results
        outcomes += [outcome(check, result, tables[table]) for check, result in zip(mine, results, strict=True)]
    if docs_dir:
        context.build_data_docs()  # once, from every stored result: the site builds in ~1 s
    return outcomes


def outcome(check: Check, result: Any, table: pd.DataFrame) -> Outcome:
    """The summary of one expectation result: how many rows failed and a few of them."""
    if result.exception_info.get("raised_exception"):
        raise RuntimeError(
            f"expectation '{check.expectation.description}' could not run: {result.exception_info['exception_message']}"
        )
    index = result.result.get("unexpected_index_list") or []
    return Outcome(
        check=str(check.expectation.description),
        table=check.table,
        severity=check.severity,
        success=bool(result.success),
        unexpected=int(result.result.get("unexpected_count", len(index))),
        examples=check.examples(table.loc[list(index)[:EXAMPLES]]).tolist(),
    )


def validate(
    inputs: dict[str, pd.DataFrame], settings: ValidateSettings, names: Sequence[str], docs_dir: Path | None
) -> list[Outcome]:
    """Schema first; the content rules run only when every input has the columns they read."""
    schema = schema_table(inputs)
    checks = [schema_check()]
    tables = {"schema": schema}
    if (schema["expected"] == schema["observed"]).all():
        checks += content_checks(settings, names)
        tables |= derived_tables(inputs, names)
    return run_checks(tables, checks, docs_dir)


def summary(outcomes: Sequence[Outcome]) -> str:
    """Readable lines for the failed expectations, errors first."""
    failed = sorted((o for o in outcomes if not o.success), key=lambda o: o.severity != ERROR)
    lines = [
        f"{o.severity.upper()}: {o.check} [{o.table}]: {o.unexpected} rows, e.g. {'; '.join(o.examples)}"
        for o in failed
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = StageParser("validate", prog="python -m pipeline.validate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--catalog", type=Path, help="image catalog from the ingest stage")
    parser.add_argument(
        "--annotations",
        type=Path,
        help="expert annotations from the labels stage",
    )
    parser.add_argument("--labels", type=Path, help="consolidated labels, one row per image")
    parser.add_argument(
        "--agreement",
        type=Path,
        help="per-style agreement between annotators",
    )
    parser.add_argument(
        "--docs",
        type=Path,
        help="output: Great Expectations Data Docs site (index.html)",
    )
    parser.add_argument(
        "--metrics",
        type=Path,
        help="output: JSON summary of every expectation",
    )
    parser.add_argument(
        "--params", type=Path, default=DEFAULT_PARAMS, help="params.yaml (sections 'validate' and 'taxonomy')"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return report_user_errors("validate", lambda: run(args))


def run(args: argparse.Namespace) -> int:
    settings = load_section(ValidateSettings, "validate", args.params)
    names = load_taxonomy(load_taxonomy_path(args.params)).names
    inputs = {
        "catalog": read_table(args.catalog),
        "annotations": read_table(args.annotations),
        "image_labels": read_table(args.labels),
        "style_agreement": read_table(args.agreement),
    }
    with atomic_dir(args.docs) as docs:
        outcomes = validate(inputs, settings, names, docs)
    errors = sum(not o.success and o.severity == ERROR for o in outcomes)
    warnings = sum(not o.success and o.severity == WARNING for o in outcomes)
    passed = errors == 0 and (warnings == 0 or not settings.fail_on_warnings)
    write_json(
        {"success": passed, "errors": errors, "warnings": warnings, "expectations": [o.__dict__ for o in outcomes]},
        args.metrics,
    )
    report = summary(outcomes)
    if report:
        print(report, file=sys.stdout if passed else sys.stderr)
    print(
        f"validate: {len(outcomes)} expectations, {errors} errors, {warnings} warnings; report: "
        f"{args.docs / 'index.html'}"
    )
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
