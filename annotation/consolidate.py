"""Consolidate stage: several experts' annotations -> one label row per image.

Rules: the main style is the majority of the annotators' main styles; a tie is
not guessed but flagged for review (main_style empty, needs_review true). A
sub-style is kept when at least half of the image's annotators named it (as
main or sub), except the consolidated main style itself (on a tie: the tied
candidates, which the review decides between). How far the experts agree beyond
chance, overall, per style, per batch and per expert, is Krippendorff's alpha
(annotation/agreement.py). Each expert counts once per image: only their newest valid
annotation votes; an imported source (one annotator) that labels a photo twice, differently,
sends it to review (`current_votes`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa

from annotation.agreement import agreement_table
from common.atomic import outputs_together, write_arrow, write_csv, write_json, write_parquet
from common.cli import StageParser, report_user_errors
from common.tables import empty_table, read_table

IMAGE_LABEL_COLUMNS = {
    "image_id": "string",
    "batch": "string",
    "main_style": "string",
    "sub_styles": "object",
    "n_annotators": "int64",
    "main_agreement": "Float64",
    "needs_review": "bool",
}
REVIEW_COLUMNS = {"image_id": "string", "reason": "string"}


def labels_arrow(labels: pd.DataFrame) -> pa.Table:
    """The labels as Arrow, sub_styles typed list<string> even when no row shows it (an empty table)."""
    schema = pa.Schema.from_pandas(labels, preserve_index=False)
    schema = schema.set(schema.get_field_index("sub_styles"), pa.field("sub_styles", pa.list_(pa.string())))
    return pa.Table.from_pandas(labels, schema=schema, preserve_index=False)


def current_votes(annotations: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(each expert's one vote per image, the review list of conflicting versions).

    A vote is the expert's valid annotation updated last. The same expert's annotation of
    an image can be read several times (the same export file twice in the exports folder,
    an image imported as two tasks, a second annotation tab, a re-label in the review
    project); counting rows would let one expert outvote another. Where an expert's newest
    annotations of one image disagree and no time orders them (imported sources have none:
    a K-Fashion folder or a CSV that labels byte-identical copies of a photo differently),
    no version is chosen silently: the vote keeps what every version says (the main style
    if they share it, the styles they all name) and the image goes to review with each
    version.
    """
    valid = annotations[~annotations["cancelled"]]
    newest = valid.groupby(["image_id", "annotator"])["updated_at"].transform("max")
    current = valid[newest.isna() | (valid["updated_at"] == newest)]
    versions = (
        current["main_style"].fillna("").astype(str) + "|" + current["sub_styles"].map(lambda s: ",".join(sorted(s)))
    )
    n_versions = versions.groupby([current["image_id"], current["annotator"]]).transform("nunique")
    agreeing = current[n_versions == 1].drop_duplicates(["image_id", "annotator"], keep="last")
    conflicting = current[n_versions > 1]
    agreed = conflicting.drop_duplicates(["image_id", "annotator"], keep="last").set_index(["image_id", "annotator"])
    review = []
    for (image_id, annotator), group in conflicting.groupby(["image_id", "annotator"], sort=False):
        mains = set(group["main_style"].fillna(""))
        main = (next(iter(mains)) or None) if len(mains) == 1 else None
        named = set.intersection(
            *(
                {*subs, *([m] if isinstance(m, str) else [])}
                for m, subs in zip(group["main_style"], group["sub_styles"], strict=True)
            )
        )
        agreed.loc[(image_id, annotator), "main_style"] = main
        agreed.at[(image_id, annotator), "sub_styles"] = sorted(named - {main})
        described = "; ".join(
            f"{record}: {m if isinstance(m, str) else '(no main)'}{' | ' + ', '.join(subs) if len(subs) else ''}"
            for record, m, subs in zip(group["record"], group["main_style"], group["sub_styles"], strict=True)
        )
        review.append(
            {"image_id": image_id, "reason": f"{annotator} labels it {len(group)} times, differently: {described}"}
        )
    votes = pd.concat([agreeing, agreed.reset_index()[list(current.columns)]], ignore_index=True)
    return votes.reset_index(drop=True), pd.DataFrame(review, columns=list(REVIEW_COLUMNS)).astype(REVIEW_COLUMNS)


def named_styles(annotations: pd.DataFrame) -> pd.DataFrame:
    """Long table (image_id, annotation, style, is_main): every style each annotation named."""
    subs = annotations[["image_id", "sub_styles"]].assign(annotation=annotations.index).explode("sub_styles")
    subs = subs.dropna(subset=["sub_styles"]).rename(columns={"sub_styles": "style"}).assign(is_main=False)
    mains = annotations.loc[annotations["main_style"].notna(), ["image_id", "main_style"]]
    mains = mains.assign(annotation=mains.index).rename(columns={"main_style": "style"}).assign(is_main=True)
    return pd.concat([mains, subs], ignore_index=True).drop_duplicates(["annotation", "style"])


def consolidate(annotations: pd.DataFrame, catalog: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(image labels, review list, agreement table) from the valid annotations; empty tables when there are none."""
    votes_per_expert, conflicts = current_votes(annotations)
    batches = catalog.set_index("image_id")["batch"]
    if votes_per_expert.empty:
        return empty_table(IMAGE_LABEL_COLUMNS), empty_table(REVIEW_COLUMNS), agreement_table(votes_per_expert, [])
    n_annotators = votes_per_expert.groupby("image_id").size().rename("n_annotators")
    named = named_styles(votes_per_expert)

    votes = named[named["is_main"]].groupby(["image_id", "style"]).size().rename("votes").reset_index()
    top = votes.groupby("image_id")["votes"].transform("max")
    leaders = votes[votes["votes"] == top]
    n_leaders = leaders.groupby("image_id").size()
    winner = leaders[leaders["image_id"].map(n_leaders) == 1].set_index("image_id")
    ties = leaders[leaders["image_id"].map(n_leaders) > 1]

    mentions = named.groupby(["image_id", "style"]).size().rename("mentions").reset_index()
    mentions["n"] = mentions["image_id"].map(n_annotators)
    kept = mentions[(2 * mentions["mentions"] >= mentions["n"])]
    kept = kept.merge(leaders[["image_id", "style"]], how="left", indicator="leader")
    kept = kept[kept["leader"] == "left_only"]  # the main style, or on a tie the candidates for it
    subs = kept.groupby("image_id")["style"].agg(lambda s: sorted(map(str, s)))

    labels = pd.DataFrame(index=n_annotators.index)
    labels["main_style"] = winner["style"].reindex(labels.index).astype("string")
    labels["sub_styles"] = pd.Series(
        [s if isinstance(s, list) else [] for s in subs.reindex(labels.index)], index=labels.index, dtype=object
    )
    labels["n_annotators"] = n_annotators.astype("int64")
    labels["main_agreement"] = (
        (votes.groupby("image_id")["votes"].max() / n_annotators).reindex(labels.index).astype("Float64")
    )
    labels["needs_review"] = labels.index.isin(ties["image_id"]) | labels.index.isin(conflicts["image_id"])
    labels = labels.reset_index().rename(columns={"index": "image_id"})
    labels.insert(1, "batch", labels["image_id"].map(batches).astype("string"))

    review = ties.groupby("image_id").apply(
        lambda g: "tie for main style: " + ", ".join(f"{s} {v}" for s, v in zip(g["style"], g["votes"], strict=True)),
        include_groups=False,
    )
    review = (
        review.rename("reason").reset_index().astype(REVIEW_COLUMNS) if len(review) else empty_table(REVIEW_COLUMNS)
    )
    review = (
        pd.concat([review, conflicts], ignore_index=True)
        .groupby("image_id", sort=False)["reason"]
        .agg("; ".join)
        .reset_index()
        .astype(REVIEW_COLUMNS)
    )
    agreement = agreement_table(
        votes_per_expert.assign(batch=votes_per_expert["image_id"].map(batches)),
        sorted(named["style"].astype(str).unique()),
    )
    return labels[list(IMAGE_LABEL_COLUMNS)], review, agreement


def agreement_metrics(agreement: pd.DataFrame) -> dict:
    """The overall alphas and each style's, for `dvc metrics show` (NaN, where alpha is undefined, as null)."""

    def alpha(rows: pd.DataFrame) -> dict:
        return {
            f"{key + '/' if key else ''}{measure}": (None if pd.isna(a) else round(float(a), 4))
            for key, measure, a in zip(rows["key"], rows["measure"], rows["alpha"], strict=True)
        }

    overall = agreement[agreement["scope"] == "overall"]
    return {"images_with_several_experts": int(overall["images"].max()) if len(overall) else 0,
            "alpha": alpha(overall), "alpha_per_style": alpha(agreement[agreement["scope"] == "style"])}  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = StageParser("consolidate", prog="python -m annotation.consolidate", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--annotations",
        type=Path,
        help="annotations table from the labels stage",
    )
    parser.add_argument(
        "--catalog",
        type=Path,
        help="image catalog (for each image's crawl batch)",
    )
    parser.add_argument("--out", type=Path, help="output: one label row per image")
    parser.add_argument(
        "--review",
        type=Path,
        help="output: images the experts disagree on (push sends them back)",
    )
    parser.add_argument(
        "--agreement",
        type=Path,
        help="output: Krippendorff's alpha overall, per style, batch and expert",
    )
    parser.add_argument(
        "--metrics",
        type=Path,
        help="output: the overall and per-style alphas (dvc metrics)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return report_user_errors("consolidate", lambda: run(args))


def run(args: argparse.Namespace) -> int:
    labels, review, agreement = consolidate(
        read_table(args.annotations), read_table(args.catalog, columns=["image_id", "batch"])
    )
    metrics = agreement_metrics(agreement)
    with outputs_together():
        write_arrow(labels_arrow(labels), args.out)
        write_csv(review, args.review)
        write_parquet(agreement, args.agreement)
        write_json(metrics, args.metrics)
    if labels.empty:
        print(
            f"consolidate: no valid annotations in {args.annotations} yet (nothing submitted, or only skipped tasks): "
            "wrote empty tables; once experts submit labels, run `python -m annotation pull` and `dvc repro`"
        )
        return 0
    alphas = ", ".join(
        f"{measure} {value if value is None else format(value, '.3f')}" for measure, value in metrics["alpha"].items()
    )
    print(
        f"consolidate: {len(labels)} images, {int((labels['n_annotators'] > 1).sum())} with several experts "
        f"({alphas}), {len(review)} sent to review ({args.review}: ties, and sources that label a photo twice, "
        "differently)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
