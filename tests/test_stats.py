"""Stats: co-occurrence against a brute-force count, hand-computed P(j|i) and class balance, the CLI outputs."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from common.labelsets import cooccurrence, cross_counts, main_and_sub_matrices
from pipeline.stats import class_balance, cooccurrence_table, main

NAMES = ["A", "B", "C", "D"]


def labels_frame(rows: list[tuple[str, str | None, list[str]]]) -> pd.DataFrame:
    """image_labels-shaped rows from (batch, main, subs)."""
    return pd.DataFrame(
        {
            "image_id": pd.Series([f"i{k}" for k in range(len(rows))], dtype="string"),
            "batch": pd.Series([r[0] for r in rows], dtype="string"),
            "main_style": pd.Series([r[1] for r in rows], dtype="string"),
            "sub_styles": pd.Series([np.array(r[2], dtype=object) for r in rows], dtype=object),
        }
    )


# A on 4 images, B on 2 (always with A), C on a single image alone, D never; the last image is a tie.
HAND = labels_frame([("b1", "A", ["B"]), ("b1", "A", []), ("b2", "B", ["A"]), ("b2", "C", []), ("b2", None, ["A"])])


def matrices(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    return main_and_sub_matrices(frame["main_style"], frame["sub_styles"], NAMES)


def test_cooccurrence_equals_a_brute_force_count_on_random_label_sets():
    rng = np.random.default_rng(7)
    names = [f"s{k}" for k in range(9)]
    sets = [set(rng.choice(names, size=rng.integers(0, 5), replace=False)) for _ in range(400)]
    frame = pd.DataFrame(
        {
            "main_style": pd.Series([None] * len(sets), dtype="string"),
            "sub_styles": [np.array(sorted(s), dtype=object) for s in sets],
        }
    )
    _, sub = main_and_sub_matrices(frame["main_style"], frame["sub_styles"], names)
    expected = np.zeros((len(names), len(names)), dtype=np.int64)
    for labels in sets:
        for a, b in itertools.permutations(labels, 2):
            expected[names.index(a), names.index(b)] += 1
    assert np.array_equal(cooccurrence(sub), expected)


def test_cross_counts_are_exact_across_chunks(monkeypatch):
    import common.labelsets as labelsets

    rng = np.random.default_rng(1)
    left, right = rng.random((1000, 3)) < 0.5, rng.random((1000, 4)) < 0.3
    monkeypatch.setattr(labelsets, "CHUNK", 64)  # many chunks: partial sums must add up exactly
    assert np.array_equal(cross_counts(left, right), left.astype(np.int64).T @ right.astype(np.int64))


def test_conditional_probabilities_match_the_hand_computed_case():
    main_matrix, sub_matrix = matrices(HAND)
    table, prob = cooccurrence_table(main_matrix | sub_matrix, NAMES)
    expected = np.array(
        [
            [0, 2 / 4, 0, 0],  # A on 4 images (main 2, sub 2), with B on 2
            [1, 0, 0, 0],  # B always with A
            [0, 0, 0, 0],  # C: a single image, alone
            [0, 0, 0, 0],  # D: never labelled, so no edges (not NaN)
        ]
    )
    np.testing.assert_allclose(prob, expected)
    assert len(table) == 12 and not (table["i"] == table["j"]).any()
    row = table.set_index(["i", "j"]).loc[("A", "B")]
    assert (row["count"], row["p_j_given_i"]) == (2, 0.5)
    assert table.set_index(["i", "j"]).loc[("B", "A"), "count"] == 2


def test_class_balance_follows_table_2_overall_and_per_batch():
    main_matrix, sub_matrix = matrices(HAND)
    overall, by_batch = class_balance(main_matrix, sub_matrix, HAND["batch"], NAMES)
    assert overall["style"].tolist() == NAMES
    assert overall["images"].tolist() == [2, 1, 1, 0]  # the tie (NULL main) counts for no style
    np.testing.assert_allclose(overall["main_share"], [0.5, 0.25, 0.25, 0.0])
    assert overall["sub_labels"].tolist() == [2, 1, 0, 0]
    np.testing.assert_allclose(overall["sub_share"], [2 / 3, 1 / 3, 0, 0])
    b2 = by_batch[by_batch["batch"] == "b2"].set_index("style")
    assert b2.loc[["A", "B", "C"], "images"].tolist() == [0, 1, 1]
    np.testing.assert_allclose(b2["main_share"].sum(), 1.0)
    assert by_batch.groupby("style")["images"].sum().loc[NAMES].tolist() == overall["images"].tolist()


def test_unknown_style_is_an_error_not_silently_dropped():
    frame = labels_frame([("b1", "A", ["Zebra"])])
    with pytest.raises(KeyError, match="Zebra"):
        matrices(frame)


def test_cli_writes_the_parquet_tables_and_both_plots(tmp_path: Path):
    HAND.to_parquet(tmp_path / "labels.parquet")
    (tmp_path / "taxonomy.yaml").write_text(
        yaml.safe_dump({"labels": [{"id": n, "name": n, "words": [n]} for n in NAMES]})
    )
    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params | {"taxonomy": str(tmp_path / "taxonomy.yaml")}))
    out = {
        name: tmp_path / name
        for name in ("balance.parquet", "by_batch.parquet", "cooc.parquet", "heat.png", "trend.png")
    }
    argv = ["--labels", str(tmp_path / "labels.parquet"), "--params", str(tmp_path / "params.yaml")]
    argv += [
        "--balance",
        str(out["balance.parquet"]),
        "--balance-by-batch",
        str(out["by_batch.parquet"]),
        "--cooccurrence",
        str(out["cooc.parquet"]),
    ]
    argv += ["--heatmap", str(out["heat.png"]), "--trend", str(out["trend.png"])]
    assert main(argv) == 0
    assert pd.read_parquet(out["cooc.parquet"]).columns.tolist() == ["i", "j", "count", "p_j_given_i"]
    assert pd.read_parquet(out["by_batch.parquet"])["batch"].unique().tolist() == ["b1", "b2"]
    assert pd.read_parquet(out["balance.parquet"]).columns.tolist() == [
        "style",
        "images",
        "main_share",
        "sub_labels",
        "sub_share",
    ]
    for png in ("heat.png", "trend.png"):
        assert out[png].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
