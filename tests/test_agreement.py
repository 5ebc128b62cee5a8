"""Krippendorff's alpha: the published worked example, MASI on label sets, and the scopes consolidate writes."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from annotation.agreement import agreement_table, leave_one_out_consensus, masi_alpha, nominal_alpha
from annotation.consolidate import agreement_metrics

nan = np.nan
# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: nominal data,
# four observers, twelve units, missing values. His result: alpha = 0.743.
WORKED_EXAMPLE = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, nan, nan, nan],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, nan, 3],
    [nan, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, nan],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, nan],
]


def _rows(matrix: list[list[float]], as_sets: bool = False) -> pd.DataFrame:
    return pd.DataFrame([
        {"unit": f"u{u}", "coder": f"o{c}", "value": frozenset({int(v)}) if as_sets else str(int(v))}
        for c, row in enumerate(matrix) for u, v in enumerate(row) if not math.isnan(v)
    ])  # fmt: skip


def test_nominal_alpha_matches_krippendorffs_worked_example_to_three_decimals():
    assert round(nominal_alpha(_rows(WORKED_EXAMPLE)), 3) == 0.743


def test_masi_alpha_on_one_label_sets_is_the_nominal_alpha_and_partial_overlap_counts_partly():
    assert masi_alpha(_rows(WORKED_EXAMPLE, as_sets=True)) == pytest.approx(0.743421, abs=1e-6)
    sets = lambda pairs: pd.DataFrame([{"unit": u, "coder": c, "value": frozenset(v)} for u, c, v in pairs])  # noqa: E731
    disjoint = [("1", "a", "x"), ("1", "b", "y"), ("2", "a", "y"), ("2", "b", "x"), ("3", "a", "x"), ("3", "b", "x")]
    overlapping = [
        ("1", "a", "x"),
        ("1", "b", "xy"),
        ("2", "a", "y"),
        ("2", "b", "xy"),
        ("3", "a", "x"),
        ("3", "b", "x"),
    ]
    assert masi_alpha(sets(overlapping)) > masi_alpha(sets(disjoint)), (
        "sets that share a label agree more than sets that share none"
    )
    none_twice = [("1", "a", ""), ("1", "b", ""), ("2", "a", "x"), ("2", "b", "y")]
    assert math.isfinite(masi_alpha(sets(none_twice))), "two experts naming no sub-style agree"


def test_alpha_is_undefined_without_two_coders_or_without_variation():
    assert math.isnan(nominal_alpha(pd.DataFrame({"unit": ["1", "2"], "coder": ["a", "a"], "value": ["x", "y"]})))
    assert math.isnan(nominal_alpha(pd.DataFrame({"unit": ["1", "1"], "coder": ["a", "b"], "value": ["x", "x"]})))


def _votes(rows: list[tuple[str, str, str, list[str]]], batch: str = "b1") -> pd.DataFrame:
    return pd.DataFrame(
        [{"image_id": i, "annotator": a, "main_style": m, "sub_styles": s, "batch": batch} for i, a, m, s in rows]
    )


def test_chance_agreement_on_a_frequent_style_scores_near_zero_though_raw_agreement_is_high():
    rng = np.random.default_rng(0)
    rows = []
    for i in range(400):  # two experts who name Casual 90 % of the time, independently of the photo
        for expert in ("ann", "bob"):
            rows.append((f"i{i}", expert, "Casual" if rng.random() < 0.9 else "Romantic", []))
    votes = _votes(rows)
    both = votes.pivot(index="image_id", columns="annotator", values="main_style")
    assert (both["ann"] == both["bob"]).mean() > 0.8, "the raw share flatters"
    table = agreement_table(votes, ["Casual", "Romantic"])
    casual = table[(table["scope"] == "style") & (table["key"] == "Casual")].iloc[0]
    assert (
        abs(casual["alpha"]) < 0.15
        and casual["images"] == ((both["ann"] == "Casual") | (both["bob"] == "Casual")).sum()
    ), "images where anyone named it"


def test_every_scope_and_each_expert_against_the_others_consensus():
    votes = pd.concat([
        _votes([("i1", "ann", "Casual", ["Sexy"]), ("i1", "bob", "Casual", ["Sexy"]), ("i1", "cid", "Casual", []),
                ("i2", "ann", "Romantic", []), ("i2", "bob", "Romantic", ["Sexy"]), ("i2", "cid", "Sexy", [])], "b1"),
        _votes([("i3", "ann", "Casual", []), ("i3", "bob", "Romantic", []), ("i4", "ann", "Sexy", ["Casual"])], "b2"),
    ], ignore_index=True)  # fmt: skip
    table = agreement_table(votes, ["Casual", "Romantic", "Sexy"])
    assert set(table["scope"]) == {"overall", "style", "batch", "expert"}
    assert table.set_index(["scope", "key", "measure"])["images"].to_dict()[("batch", "b2", "main_style")] == 1, (
        "i4 had one expert"
    )
    # cid against ann + bob: i1 -> Casual {Sexy}; i2 -> Romantic, and Sexy named by one of two (kept: at least half)
    consensus = leave_one_out_consensus(votes, "cid").set_index("image_id")
    assert consensus.loc["i1", "main_style"] == "Casual" and consensus.loc["i2", "main_style"] == "Romantic"
    assert consensus.loc["i2", "sub_styles"] == frozenset({"Sexy"})
    assert pd.isna(leave_one_out_consensus(votes, "bob").set_index("image_id").loc["i2", "main_style"]), (
        "ann and cid tie: no consensus"
    )
    experts = table[(table["scope"] == "expert") & (table["measure"] == "main_style")].set_index("key")
    assert set(experts.index) == {"ann", "bob", "cid"} and experts.loc["ann", "images"] == 3
    metrics = agreement_metrics(table)
    assert metrics["images_with_several_experts"] == 3 and set(metrics["alpha"]) == {"main_style", "sub_styles"}
    assert set(metrics["alpha_per_style"]) == {"Casual/named", "Romantic/named", "Sexy/named"}


def test_no_votes_give_an_empty_table_of_the_right_columns():
    table = agreement_table(pd.DataFrame(columns=["image_id", "annotator", "main_style", "sub_styles", "batch"]), [])
    assert table.empty and list(table.columns) == ["scope", "key", "measure", "alpha", "images"]
    assert agreement_metrics(table) == {"images_with_several_experts": 0, "alpha": {}, "alpha_per_style": {}}
