"""How far experts agree beyond chance: Krippendorff's alpha over the images two or more experts labelled.

Raw agreement (the share of images where everyone agreed) flatters frequent styles:
two experts who both name Casual on most photos agree often by chance alone. Alpha
corrects for that: 1 - observed disagreement / disagreement expected by chance, so 1 is
perfect, 0 what chance gives, below 0 systematic disagreement (Krippendorff 2011,
"Computing Krippendorff's Alpha-Reliability"; 0.667 is his lowest bar for tentative
conclusions, 0.8 for firm ones). Measures:

- main_style: nominal alpha on the main style (the `krippendorff` package);
- sub_styles: alpha with the MASI distance on each expert's set of sub-styles
  (Passonneau 2006; nltk's AnnotationTask), so overlapping sets count as partly agreeing;
- named: per style, nominal alpha on whether an expert named it (main or sub).

Scopes: overall, per style (named), per crawl batch, and per expert against the
consensus of the OTHER experts of each image (majority main style; the sub-styles at
least half of them named). Against a consensus that held their own vote an expert
would mostly agree with themselves. Alpha is NaN where it is undefined: no image with
two experts, or no variation at all.
"""

from __future__ import annotations

from collections.abc import Iterable

import krippendorff
import numpy as np
import pandas as pd
from nltk.metrics.agreement import AnnotationTask
from nltk.metrics.distance import masi_distance

AGREEMENT_COLUMNS = {"scope": "string", "key": "string", "measure": "string", "alpha": "float64", "images": "int64"}
SCOPES = ("overall", "style", "batch", "expert")


def nominal_alpha(values: pd.DataFrame) -> float:
    """Nominal alpha of (unit, coder, value) rows; NaN when no unit has two values or every value is the same."""
    pairable = _pairable(values)
    if pairable.empty or pairable["value"].nunique() < 2:
        return float("nan")
    codes = {value: i for i, value in enumerate(sorted(pairable["value"].astype(str).unique()))}
    matrix = pairable.assign(code=pairable["value"].astype(str).map(codes)).pivot_table(
        index="coder", columns="unit", values="code", aggfunc="first"
    )
    return float(krippendorff.alpha(reliability_data=matrix.to_numpy(dtype=float), level_of_measurement="nominal"))


def set_distance(a: frozenset, b: frozenset) -> float:
    """MASI distance, with two empty sets (no sub-style from either expert) in full agreement (nltk divides by their
    empty union)."""
    return 0.0 if a == b else masi_distance(a, b)


def masi_alpha(values: pd.DataFrame) -> float:
    """Alpha with the MASI distance of (unit, coder, value) rows whose values are label sets; NaN where undefined."""
    pairable = _pairable(values)
    sets = [frozenset(v) for v in pairable["value"]]
    if pairable.empty or len(set(sets)) < 2:
        return float("nan")
    return float(
        AnnotationTask(
            data=list(zip(pairable["coder"].astype(str), pairable["unit"].astype(str), sets, strict=True)),
            distance=set_distance,
        ).alpha()
    )


def _pairable(values: pd.DataFrame) -> pd.DataFrame:
    """The rows of units that two or more coders gave a value (the only ones alpha counts)."""
    values = values.dropna(subset=["value"])
    coders = values.groupby("unit")["coder"].transform("nunique")
    return values[coders >= 2]


def expert_votes(votes: pd.DataFrame) -> pd.DataFrame:
    """(image_id, batch, annotator, main_style, sub_styles) with each expert's sub-styles as a frozenset, from
    consolidate's current votes."""
    return votes.assign(
        sub_styles=[
            frozenset(s) if isinstance(s, (list, tuple, np.ndarray)) else frozenset() for s in votes["sub_styles"]
        ]
    )


def _rows(votes: pd.DataFrame, value: str) -> pd.DataFrame:
    return pd.DataFrame({"unit": votes["image_id"], "coder": votes["annotator"], "value": votes[value]})


def _both(scope: str, key: str, votes: pd.DataFrame) -> list[dict]:
    units = int((votes.groupby("image_id")["annotator"].nunique() >= 2).sum())
    return [
        {
            "scope": scope,
            "key": key,
            "measure": "main_style",
            "alpha": nominal_alpha(_rows(votes, "main_style")),
            "images": units,
        },
        {
            "scope": scope,
            "key": key,
            "measure": "sub_styles",
            "alpha": masi_alpha(_rows(votes, "sub_styles")),
            "images": units,
        },
    ]


def style_rows(votes: pd.DataFrame, styles: Iterable[str]) -> list[dict]:
    """Per style: nominal alpha on 'named it or not' (main or sub), over images with two or more experts."""
    multi = votes[votes.groupby("image_id")["annotator"].transform("nunique") >= 2]
    mains = multi["main_style"].where(multi["main_style"].notna(), None)
    named = [{s, *subs} - {None} for s, subs in zip(mains, multi["sub_styles"], strict=True)]
    rows = []
    for style in styles:
        flags = pd.DataFrame(
            {"unit": multi["image_id"], "coder": multi["annotator"], "value": [style in n for n in named]}
        )
        images = int(flags.groupby("unit")["value"].any().sum())  # images where anyone named it
        rows.append(
            {"scope": "style", "key": style, "measure": "named", "alpha": nominal_alpha(flags), "images": images}
        )
    return rows


def leave_one_out_consensus(votes: pd.DataFrame, expert: str) -> pd.DataFrame:
    """For each image `expert` labelled with others: the others' majority main style (None on a tie) and the sub-styles
    at least half of them named."""
    mine = set(votes.loc[votes["annotator"] == expert, "image_id"])
    others = votes[votes["image_id"].isin(mine) & (votes["annotator"] != expert)]
    rows = []
    for image_id, group in others.groupby("image_id", sort=True):
        mains = group["main_style"].dropna().value_counts()
        main = mains.index[0] if len(mains) and (len(mains) == 1 or mains.iloc[0] > mains.iloc[1]) else None
        counts = pd.Series([s for subs in group["sub_styles"] for s in subs]).value_counts()
        subs = frozenset(counts[2 * counts >= len(group)].index)
        rows.append({"image_id": image_id, "annotator": "consensus", "main_style": main, "sub_styles": subs})
    return pd.DataFrame(rows, columns=["image_id", "annotator", "main_style", "sub_styles"])


def expert_rows(votes: pd.DataFrame) -> list[dict]:
    """Each expert against the consensus of the other experts of the images they share."""
    rows = []
    for expert in sorted(votes["annotator"].dropna().unique()):
        consensus = leave_one_out_consensus(votes, expert)
        if consensus.empty:
            continue
        paired = pd.concat(
            [votes[(votes["annotator"] == expert) & votes["image_id"].isin(consensus["image_id"])], consensus],
            ignore_index=True,
        )
        rows += _both("expert", str(expert), paired)
    return rows


def agreement_table(votes: pd.DataFrame, styles: Iterable[str]) -> pd.DataFrame:
    """Every alpha of the module docstring, one row each (scope, key, measure, alpha, images); empty without votes."""
    if votes.empty:
        return pd.DataFrame({column: pd.Series(dtype=dtype) for column, dtype in AGREEMENT_COLUMNS.items()})
    votes = expert_votes(votes)
    rows = _both("overall", "", votes) + style_rows(votes, styles)
    for batch, group in votes.groupby("batch", sort=True):
        rows += _both("batch", str(batch), group)
    rows += expert_rows(votes)
    return pd.DataFrame(rows, columns=list(AGREEMENT_COLUMNS)).astype(AGREEMENT_COLUMNS)
