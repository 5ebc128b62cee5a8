"""Report stage: every stage's results on one offline page, reports/index.html.

Why: after `dvc repro` the results lie in a dozen places (Markdown tables, JSON metrics,
Parquet tables, PNG plots, dvclive TSVs, a Great Expectations site), and a problem that
needs two of them side by side (a style the experts disagree on that the models also
miss) goes unseen when each is read alone. This page shows them together: the model
comparison, the training curves, the likely label errors, the validation summary, expert
agreement, class balance, the style trend per batch, label co-occurrence and the label
graph. It is one self-contained file (pipeline/report_html.py): it opens from a CI
artifact or a mail attachment, offline. Its only link out of the page is the relative
one to the Data Docs site beside it.

A section whose input is absent (its stage has not run) says so and the page is still
written; a damaged input is an error (`report: error: ...`, exit 2).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from common.atomic import atomic_path  # noqa: E402
from common.cli import InputError, StageParser, report_user_errors  # noqa: E402
from common.settings import DEFAULT_PARAMS, ValidateSettings, load_setting  # noqa: E402
from common.tables import read_table  # noqa: E402
from pipeline.report_html import absent, code, esc, figure, markdown, page, png_file, read_json, row, table  # noqa: E402

# Section id -> heading, in page order. The ids are the page's anchors (and what the tests look for).
SECTIONS = {
    "evaluation": "Evaluation: the models on the test split",
    "training": "Training curves",
    "label-issues": "Likely label errors",
    "validation": "Validation",
    "agreement": "Expert agreement",
    "class-balance": "Class balance",
    "style-trend": "Style trend per crawl batch",
    "cooccurrence": "Label co-occurrence",
    "label-graph": "Label graph",
}
TOP_ISSUES = 100  # the label-issues chart counts the most suspicious this many cells, as reports/label_issues.md


def optional_json(path: Path) -> Any | None:
    return read_json(path) if path.is_file() else None


def model_metrics(evaluation: Any, path: Path) -> dict[str, dict[str, float]]:
    models = evaluation.get("models") if isinstance(evaluation, dict) else None
    if not isinstance(models, dict) or not all(isinstance(m, dict) and "mAP" in m for m in models.values()):
        raise InputError(f"{path}: no 'models' with an mAP each; rebuild it (`dvc repro evaluate`)")
    return models


def plot_map(evaluation: dict[str, Any], models: dict[str, dict[str, float]]) -> plt.Figure:
    """Test mAP per model with its bootstrap interval, its validation mAP as a tick (the select stage chooses on
    out-of-fold mAP, named in the report below)."""
    names = list(models)
    test = np.array([100 * models[n]["mAP"] for n in names])
    low = np.array([100 * models[n].get("mAP_ci_low", np.nan) for n in names])
    high = np.array([100 * models[n].get("mAP_ci_high", np.nan) for n in names])
    chosen, baseline = evaluation.get("chosen_model"), evaluation.get("baseline")
    colours = ["tab:orange" if n == chosen else "tab:gray" if n == baseline else "tab:blue" for n in names]
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.34 * len(names)))
    y = np.arange(len(names))
    ax.barh(y, test, xerr=np.nan_to_num([test - low, high - test]), color=colours, capsize=3, alpha=0.85)
    val = [100 * models[n].get("val_mAP", np.nan) for n in names]
    ax.scatter(val, y, marker="|", s=260, color="black", zorder=3, label="validation mAP")
    ax.set_yticks(y, [f"{n} (chosen)" if n == chosen else f"{n} (baseline)" if n == baseline else n for n in names])
    ax.invert_yaxis()
    ax.set_xlabel(f"mAP on the {evaluation.get('split', 'test')} split, % (bars: 95% bootstrap interval)")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    return fig


def evaluation_section(args: argparse.Namespace, evaluation: Any | None) -> str:
    parts = []
    if evaluation is None:
        parts.append(absent(args.evaluation_metrics, "evaluate"))
    else:
        models = model_metrics(evaluation, args.evaluation_metrics)
        parts.append(figure(plot_map(evaluation, models), "Test mAP per model with 95% intervals"))
    if args.evaluation_report.is_file():
        parts.append(markdown(args.evaluation_report.read_text(encoding="utf-8")))
    else:
        parts.append(absent(args.evaluation_report, "evaluate"))
    return "\n".join(parts)


def read_tsv(path: Path, column: str) -> pd.Series:
    """One dvclive series (step -> value); empty when the file is not there."""
    if not path.is_file():
        return pd.Series(dtype=float)
    try:
        frame = pd.read_csv(path, sep="\t")
        return frame.set_index("step")[column]
    except (pd.errors.ParserError, pd.errors.EmptyDataError, KeyError) as exc:
        raise InputError(f"{path}: not a dvclive table with 'step' and {column!r} ({exc})") from None


def training_section(args: argparse.Namespace, evaluation: Any | None) -> str:
    live = args.live_dir
    found = sorted(p.name for p in live.iterdir() if (p / "plots/metrics").is_dir()) if live.is_dir() else []
    order = list(evaluation.get("models", {})) if isinstance(evaluation, dict) else []
    names = [n for n in order if n in found] or found  # the evaluated models, in their order, when known
    if not names:
        return absent(live, "train")
    panels = (("train", "loss", "training loss"), ("val", "loss", "validation loss"), ("val", "mAP", "validation mAP"))
    fig, axes = plt.subplots(1, 3, figsize=(11.5, 3.6))
    colours = plt.get_cmap("tab10")(np.arange(10))  # RGBA rows; the colormap object types no .colors
    rows = []
    for k, name in enumerate(names):
        metrics = live / name / "plots/metrics"
        for ax, (split, column, _) in zip(axes, panels, strict=True):
            series = read_tsv(metrics / split / f"{column}.tsv", column)
            style = {"color": colours[k % 10], "ls": ("-", "--", ":")[k // 10 % 3]}  # 10 colours, then dashed
            ax.plot(series.index + 1, series.to_numpy(), label=name, lw=1.4, **style)
        summary = optional_json(live / name / "metrics.json") or {}
        rows.append(
            {
                "model": name,
                "epochs": summary["step"] + 1 if "step" in summary else np.nan,
                "best epoch": summary.get("best/epoch", np.nan),
                "best val mAP": summary.get("best/val_mAP", np.nan),
                "last train loss": summary.get("train", {}).get("loss", np.nan),
                "last val loss": summary.get("val", {}).get("loss", np.nan),
            }
        )
    for ax, (_, _, title) in zip(axes, panels, strict=True):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    fig.tight_layout()
    fig.legend(*axes[0].get_legend_handles_labels(), loc="center left", bbox_to_anchor=(1, 0.5), fontsize=8)
    formats = {"epochs": "{:.0f}", "best epoch": "{:.0f}", "best val mAP": "{:.4f}"}
    return (
        f'<p class="lead">Per epoch, from dvclive ({code(live)}); every model keeps the epoch of its best validation'
        " mAP (early stopping).</p>"
        + figure(fig, "Training loss, validation loss and validation mAP per epoch")
        + table(pd.DataFrame(rows), formats | {"last train loss": "{:.4f}", "last val loss": "{:.4f}"})
    )


def issues_summary(issues: pd.DataFrame, path: Path) -> str:
    """How many suspicious cells, and a chart of the most suspicious per label and kind."""
    if issues.empty:
        return f"<p>{code(path)} lists no suspicious cell.</p>"
    top = issues[issues["rank"] <= TOP_ISSUES]
    counts = top.pivot_table(index="label", columns="kind", values="rank", aggfunc="count", fill_value=0)
    counts = counts.loc[counts.sum(axis=1).sort_values().index]
    fig, ax = plt.subplots(figsize=(6.4, 1.0 + 0.2 * len(counts)))
    counts.plot.barh(stacked=True, ax=ax, width=0.75)
    ax.set_xlabel(f"cells among the {TOP_ISSUES} most suspicious")
    ax.set_ylabel("")
    ax.legend(fontsize=8, loc="lower right")
    return (
        f'<p class="lead">{len(issues)} suspicious (image, label) cells on {issues["image_id"].nunique()} images'
        f" in {code(path)}.</p>" + figure(fig, "Most suspicious cells per label and kind")
    )


def label_issues_section(args: argparse.Namespace) -> str:
    if args.label_issues.is_file():
        parts = [
            issues_summary(read_table(args.label_issues, ["rank", "image_id", "label", "kind"]), args.label_issues)
        ]
    else:
        parts = [absent(args.label_issues, "label_issues")]
    if args.label_issues_report.is_file():
        parts.append(markdown(args.label_issues_report.read_text(encoding="utf-8")))
    else:
        parts.append(absent(args.label_issues_report, "label_issues"))
    return "\n".join(parts)


def validation_section(args: argparse.Namespace, validation: Any | None) -> str:
    docs = args.data_docs / "index.html"
    if docs.is_file():
        link = Path(os.path.relpath(docs.resolve(), args.out.resolve().parent)).as_posix()
        docs_note = (
            f'<p>Every expectation with its failing rows: <a href="{esc(link)}">Great Expectations Data Docs</a>.</p>'
        )
    else:
        docs_note = absent(docs, "validate")
    if validation is None:
        return absent(args.validation, "validate") + docs_note
    checks = pd.DataFrame(validation.get("expectations", []))
    if checks.empty:
        raise InputError(f"{args.validation}: no 'expectations'; rebuild it (`dvc repro validate`)")
    verdict = "passed" if validation.get("success") else "failed"
    status = (
        f'<p><span class="{"ok" if verdict == "passed" else "error"}">Validation {verdict}</span>:'
        f" {validation.get('errors', 0)} errors, {validation.get('warnings', 0)} warnings"
        f" over {len(checks)} expectations.</p>"
    )
    results = pd.DataFrame(
        {
            "result": ["passed" if ok else sev for ok, sev in zip(checks["success"], checks["severity"], strict=True)],
            "check": checks["check"],
            "table": checks["table"],
            "unexpected": checks["unexpected"],
            "examples": [", ".join(map(str, e)) for e in checks["examples"]],
        }
    )
    return status + table(results) + docs_note


def agreement_section(args: argparse.Namespace) -> str:
    if not args.agreement.is_file():
        return absent(args.agreement, "consolidate")
    alpha = read_table(args.agreement, columns=["scope", "key", "measure", "alpha", "images"])
    min_alpha = load_setting(ValidateSettings, "validate", "min_alpha", args.params)
    lead = (
        '<p class="lead">Krippendorff\'s alpha over the images several experts labelled (1: full agreement, 0: chance);'
        f" validate warns below {min_alpha} ({code('validate.min_alpha')}).</p>"
    )
    tables = [table(alpha[alpha["scope"] == "overall"][["measure", "alpha", "images"]], {"alpha": "{:.3f}"})]
    for scope, title in (("batch", "Per crawl batch"), ("expert", "Per expert (with the others)")):
        rows = alpha[alpha["scope"] == scope]
        if len(rows):
            wide = rows.pivot_table(index="key", columns="measure", values="alpha").reset_index()
            wide = wide.merge(rows.groupby("key")["images"].max().reset_index(), on="key")
            formats = dict.fromkeys(wide.columns[1:-1], "{:.3f}")
            tables.append(f"<h3>{title}</h3>" + table(wide.rename(columns={"key": scope}), formats))
    styles = alpha[alpha["scope"] == "style"].sort_values("alpha")
    if styles.empty:
        return lead + "\n".join(tables)
    fig, ax = plt.subplots(figsize=(6.4, 1.0 + 0.22 * len(styles)))
    low = styles["alpha"] < min_alpha
    ax.barh(styles["key"], styles["alpha"], color=np.where(low, "tab:red", "tab:green"), alpha=0.8)
    ax.axvline(min_alpha, color="black", ls="--", lw=1, label=f"validate.min_alpha = {min_alpha}")
    ax.set_xlabel("alpha per style (named or not, on images with several experts)")
    ax.legend(fontsize=8, loc="lower right")
    return lead + row(figure(fig, "Krippendorff's alpha per style"), "\n".join(tables))


def class_balance_section(args: argparse.Namespace) -> str:
    if not args.balance.is_file():
        return absent(args.balance, "stats")
    balance = read_table(args.balance, columns=["style", "images", "main_share", "sub_labels", "sub_share"])
    fig, ax = plt.subplots(figsize=(5.6, 1.0 + 0.24 * len(balance)))
    y = np.arange(len(balance))
    ax.barh(y - 0.2, balance["images"], height=0.4, label="images with it as main style")
    ax.barh(y + 0.2, balance["sub_labels"], height=0.4, label="sub-labels")
    ax.set_yticks(y, balance["style"])
    ax.invert_yaxis()
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    return '<p class="lead">The paper\'s Table 2 over every consolidated image.</p>' + row(
        figure(fig, "Images per main style and sub-labels per style"),
        table(balance, {"main_share": "{:.1%}", "sub_share": "{:.1%}"}),
    )


def label_graph_section(args: argparse.Namespace) -> str:
    picture = png_file(args.graph_plot, "The label graph", "graph", width=660)
    if not args.graph.is_file():
        return row(picture, absent(args.graph, "graph"))
    try:
        with np.load(args.graph, allow_pickle=False) as arrays:
            labels, prob, cooc = arrays["labels"], arrays["conditional"], arrays["cooccurrence"]
            meta = json.loads(str(arrays["meta"]))
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"{args.graph}: not a label graph from the graph stage ({exc}); rebuild it") from None
    i, j = np.nonzero((prob >= meta["t"]) & ~np.eye(len(labels), dtype=bool))
    edges = pd.DataFrame({"i": labels[i], "j": labels[j], "P(j | i)": prob[i, j], "images with both": cooc[i, j]})
    about = (
        f"<p>{len(edges)} edges i &rarr; j where P(j | i) &ge; t = {meta['t']} over {meta.get('train_images', '?')}"
        f" train images (p = {meta.get('p', '?')}, {esc(str(meta.get('normalisation', '?')))} normalisation);"
        f" node features: {esc(str(meta.get('word_vectors', '?')))}.</p>"
    )
    return about + row(picture, table(edges.sort_values("P(j | i)", ascending=False), {"P(j | i)": "{:.2f}"}))


def glance(ingest: Any, labels: Any, validation: Any, evaluation: Any) -> list[tuple[str, str]]:
    """The summary line at the top: (label, value), '—' where the input is absent."""
    get = lambda source, key: source.get(key, "—") if isinstance(source, dict) else "—"  # noqa: E731
    result = "—"
    if isinstance(validation, dict):
        result = "passed" if validation.get("success") else f"failed ({validation.get('errors')} errors)"
    chosen = get(evaluation, "chosen_model")
    test_map = get(get(evaluation, "models"), chosen) if chosen != "—" else "—"
    return [
        ("crawl batches", str(get(ingest, "batches"))),
        ("images", str(get(ingest, "images"))),
        ("labelled images", str(get(labels, "labelled_images"))),
        ("validation", result),
        ("chosen model", str(chosen)),
        ("its test mAP", f"{100 * test_map['mAP']:.1f}%" if isinstance(test_map, dict) else "—"),
        (
            "its pre-annotations' clicks",
            f"{100 * test_map['clicks_ratio']:.0f}% of an empty form's"
            if isinstance(test_map, dict) and "clicks_ratio" in test_map
            else "—",
        ),
    ]


def build(args: argparse.Namespace) -> str:
    """The page's HTML."""
    evaluation, validation = optional_json(args.evaluation_metrics), optional_json(args.validation)
    bodies: dict[str, Callable[[], str]] = {
        "evaluation": lambda: evaluation_section(args, evaluation),
        "training": lambda: training_section(args, evaluation),
        "label-issues": lambda: label_issues_section(args),
        "validation": lambda: validation_section(args, validation),
        "agreement": lambda: agreement_section(args),
        "class-balance": lambda: class_balance_section(args),
        "style-trend": lambda: png_file(args.trend_plot, "Main-style share per crawl batch", "stats"),
        "cooccurrence": lambda: png_file(args.heatmap, "P(style j | style i)", "stats", width=900),
        "label-graph": lambda: label_graph_section(args),
    }
    sections = [(sid, title, bodies[sid]()) for sid, title in SECTIONS.items()]
    facts = glance(optional_json(args.ingest), optional_json(args.labels_metrics), validation, evaluation)
    return page("stylegraph: pipeline report", facts, sections)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = StageParser("report", prog="python -m pipeline.report", description=__doc__.split("\n\n")[0])
    inputs = [
        ("--evaluation-report", "evaluate: the model comparison tables (Markdown)"),
        ("--evaluation-metrics", "evaluate: mAP with intervals, the chosen model"),
        ("--live-dir", "train: one dvclive folder per model (plots/metrics/*.tsv, metrics.json)"),
        ("--label-issues", "label_issues: the suspicious (image, label) cells"),
        ("--label-issues-report", "label_issues: its summary (Markdown)"),
        ("--validation", "validate: the outcome of every expectation"),
        ("--data-docs", "validate: the Data Docs folder the page links to (index.html)"),
        ("--agreement", "consolidate: Krippendorff's alpha per scope"),
        ("--balance", "stats: class balance (Table 2)"),
        ("--trend-plot", "stats: main-style shares per crawl batch"),
        ("--heatmap", "stats: the P(j | i) heatmap"),
        ("--graph-plot", "graph: the picture of the label graph"),
        ("--graph", "graph: the label graph arrays (edges, meta)"),
        ("--ingest", "ingest: batches and images, for the summary line"),
        ("--labels-metrics", "labels: labelled images, for the summary line"),
    ]
    for flag, what in inputs:
        parser.add_argument(flag, type=Path, help=f"input from {what} (absent: the section says so)")
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="params.yaml (for 'validate.min_alpha')")
    parser.add_argument("--out", type=Path, help="output: the page")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return report_user_errors("report", lambda: run(args))


def run(args: argparse.Namespace) -> int:
    html = build(args)
    with atomic_path(args.out) as tmp:
        tmp.write_text(html, encoding="utf-8")
    missing = html.count('class="absent"')
    print(
        f"report: {len(SECTIONS)} sections, {html.count('<img ')} images, {len(html.encode()) / 1e6:.1f} MB"
        + (f", {missing} input(s) absent" if missing else "")
        + f"; open {args.out.resolve()}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
