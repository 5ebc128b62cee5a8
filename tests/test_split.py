"""Split: stratified 70/10/20, stable when batches are added, label subset selection, dataset contract."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from common.settings import ParamsError
from common.tables import empty_table
from pipeline.near_duplicates import PAIR_COLUMNS
from pipeline.split import SplitSettings, assign_splits, largest_remainder, main, read_splits

SETTINGS = SplitSettings(seed=2019, train=0.7, val=0.1, test=0.2, top_k=0, near_duplicates_together=4)
NAMES = ["Casual", "Romantic", "Sexy", "Ethnic"]


def images(counts: dict[str, int], prefix: str) -> pd.DataFrame:
    """image_id + stratum: counts[stratum] new images."""
    strata = [s for s, n in counts.items() for _ in range(n)]
    return pd.DataFrame({"image_id": [f"{prefix}{k:05d}" for k in range(len(strata))], "stratum": strata})


def shares(splits: pd.DataFrame, members: pd.DataFrame) -> pd.DataFrame:
    return pd.crosstab(members.merge(splits, on="image_id")["stratum"], members.merge(splits, on="image_id")["split"])


def test_largest_remainder_is_exact_and_proportional():
    totals = np.array([0, 1, 2, 10, 33, 1000])
    allocation = largest_remainder(totals, np.tile([0.7, 0.1, 0.2], (len(totals), 1)))
    assert allocation.sum(axis=1).tolist() == totals.tolist()
    assert allocation[3].tolist() == [7, 1, 2] and allocation[5].tolist() == [700, 100, 200]
    assert allocation[1].tolist() == [1, 0, 0]  # a single image goes to train
    assert np.abs(allocation - totals[:, None] * [0.7, 0.1, 0.2]).max() < 1


def test_each_stratum_is_split_70_10_20():
    batch = images({"Casual": 100, "Romantic": 50, "Sexy": 10}, "a")
    splits = assign_splits(read_splits(Path("/nonexistent")), batch, SETTINGS)
    table = shares(splits, batch)
    assert table.loc["Casual", ["train", "val", "test"]].tolist() == [70, 10, 20]
    assert table.loc["Romantic", ["train", "val", "test"]].tolist() == [35, 5, 10]
    assert table.loc["Sexy", ["train", "val", "test"]].tolist() == [7, 1, 2]


def test_adding_a_batch_never_moves_an_image_and_keeps_strata_balanced():
    first = images({"Casual": 37, "Romantic": 11, "Sexy": 3}, "a")
    before = assign_splits(read_splits(Path("/nonexistent")), first, SETTINGS)
    second = images({"Casual": 63, "Romantic": 9, "Sexy": 7, "Ethnic": 1}, "b")
    after = assign_splits(before, pd.concat([first, second], ignore_index=True), SETTINGS)
    kept = before.merge(after, on="image_id", suffixes=("_before", "_after"))
    assert len(kept) == len(before) and (kept["split_before"] == kept["split_after"]).all()
    assert set(after["image_id"]) == set(first["image_id"]) | set(second["image_id"])
    table = shares(after, pd.concat([first, second]))
    assert table.loc["Casual", ["train", "val", "test"]].tolist() == [70, 10, 20]  # 100 Casual in all
    assert table.loc["Romantic", ["train", "val", "test"]].tolist() == [14, 2, 4]  # 20 Romantic in all


def test_earlier_assignments_survive_new_params_and_images_leaving():
    first = images({"Casual": 30}, "a")
    before = assign_splits(read_splits(Path("/nonexistent")), first, SETTINGS)
    other = SplitSettings(seed=1, train=0.5, val=0.0, test=0.5, top_k=3, near_duplicates_together=4)
    after = assign_splits(before, first.iloc[:10], other)  # 20 images no longer eligible
    pd.testing.assert_frame_equal(after, before)


def test_order_is_seeded_and_deterministic():
    batch = images({"Casual": 200}, "a")
    one = assign_splits(read_splits(Path("/nonexistent")), batch, SETTINGS)
    again = assign_splits(read_splits(Path("/nonexistent")), batch.sample(frac=1, random_state=3), SETTINGS)
    other = assign_splits(
        read_splits(Path("/nonexistent")),
        batch,
        SplitSettings(seed=7, train=0.7, val=0.1, test=0.2, top_k=0, near_duplicates_together=4),
    )
    pd.testing.assert_frame_equal(one, again)
    assert (one["split"] != other["split"]).any()


def test_fractions_must_sum_to_one():
    with pytest.raises(ParamsError, match="sum to 1"):
        SplitSettings(seed=1, train=0.7, val=0.1, test=0.1, top_k=0, near_duplicates_together=4)
    with pytest.raises(ParamsError, match=r"split.val must be in \[0, 1\], not -0.1"):
        SplitSettings(seed=1, train=0.9, val=-0.1, test=0.2, top_k=0, near_duplicates_together=4)


# ---- the stage end to end: files, label subset, exclusions ---------------------------------------


def write_stage_inputs(tmp_path: Path, labels: pd.DataFrame, **split: object) -> list[str]:
    catalog = pd.DataFrame(
        {"image_id": labels["image_id"], "path": "b/" + labels["image_id"] + ".jpg", "batch": labels["batch"]}
    )
    labels.to_parquet(tmp_path / "labels.parquet")
    catalog.to_parquet(tmp_path / "catalog.parquet")
    (tmp_path / "taxonomy.yaml").write_text(
        yaml.safe_dump({"labels": [{"id": n.lower(), "name": n, "words": [n.lower()]} for n in NAMES]})
    )
    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    params |= {"taxonomy": str(tmp_path / "taxonomy.yaml"), "split": SETTINGS.__dict__ | split}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    if not (tmp_path / "pairs.parquet").exists():  # no near-duplicates unless a test wrote some
        empty_table(PAIR_COLUMNS).to_parquet(tmp_path / "pairs.parquet")
    return [
        *(
            "--labels",
            str(tmp_path / "labels.parquet"),
            "--catalog",
            str(tmp_path / "catalog.parquet"),
            "--params",
            str(tmp_path / "params.yaml"),
        ),
        *(
            "--splits",
            str(tmp_path / "splits.parquet"),
            "--dataset",
            str(tmp_path / "dataset.parquet"),
            "--subset",
            str(tmp_path / "subset.json"),
            "--near-duplicates",
            str(tmp_path / "pairs.parquet"),
            "--leakage",
            str(tmp_path / "leakage.parquet"),
        ),
    ]


def label_rows(rows: list[tuple[str, str | None, list[str], bool]], batch: str = "b1") -> pd.DataFrame:
    """image_labels rows from (image_id, main, subs, needs_review)."""
    return pd.DataFrame(
        {
            "image_id": pd.Series([r[0] for r in rows], dtype="string"),
            "batch": pd.Series([batch] * len(rows), dtype="string"),
            "main_style": pd.Series([r[1] for r in rows], dtype="string"),
            "sub_styles": pd.Series([np.array(r[2], dtype=object) for r in rows], dtype=object),
            "needs_review": [r[3] for r in rows],
        }
    )


STYLED = label_rows(
    [("c1", "Casual", ["Sexy", "Romantic"], False), ("c2", "Casual", ["Ethnic"], False), ("c3", "Casual", [], False)]
    + [("r1", "Romantic", ["Casual"], False), ("r2", "Romantic", [], False), ("s1", "Sexy", ["Casual"], False)]
    + [("e1", "Ethnic", ["Casual", "Romantic"], False), ("tie", None, ["Casual"], True)]
)


def test_top_k_keeps_images_whose_main_style_is_selected_and_drops_other_labels(tmp_path):
    assert main(write_stage_inputs(tmp_path, STYLED, top_k=2)) == 0
    assert json.loads((tmp_path / "subset.json").read_text()) == {"labels": ["Casual", "Romantic"], "top_k": 2}
    dataset = pd.read_parquet(tmp_path / "dataset.parquet").set_index("image_id")
    assert dataset.columns.tolist() == ["path", "batch", "split", "main_style", "labels"]
    # s1 and e1 have a main style outside the subset; the tie needs review
    assert sorted(dataset.index) == ["c1", "c2", "c3", "r1", "r2"]
    assert list(dataset.loc["c1", "labels"]) == ["Casual", "Romantic"]  # main first, Sexy dropped
    assert list(dataset.loc["c2", "labels"]) == ["Casual"]
    assert list(dataset.loc["r1", "labels"]) == ["Romantic", "Casual"]
    assert dataset.loc["c1", "path"] == "b/c1.jpg" and set(dataset["split"]) <= {"train", "val", "test"}
    splits = pd.read_parquet(tmp_path / "splits.parquet")
    assert sorted(splits["image_id"]) == ["c1", "c2", "c3", "e1", "r1", "r2", "s1"]  # split for every eligible image


def test_all_labels_keep_sub_styles_in_taxonomy_order(tmp_path):
    assert main(write_stage_inputs(tmp_path, STYLED)) == 0
    dataset = pd.read_parquet(tmp_path / "dataset.parquet").set_index("image_id")
    assert list(dataset.loc["c1", "labels"]) == ["Casual", "Romantic", "Sexy"]
    assert list(dataset.loc["e1", "labels"]) == ["Ethnic", "Casual", "Romantic"]
    assert "tie" not in dataset.index


def test_tag_taxonomy_keeps_images_with_any_selected_label_and_no_main_style(tmp_path):
    tags = label_rows(
        [("t1", None, ["Sexy", "Casual"], False), ("t2", None, ["Casual"], False), ("t3", None, ["Ethnic"], False)]
    )
    assert main(write_stage_inputs(tmp_path, tags, top_k=1)) == 0
    dataset = pd.read_parquet(tmp_path / "dataset.parquet").set_index("image_id")
    assert sorted(dataset.index) == ["t1", "t2"]
    assert dataset["main_style"].isna().all()
    assert list(dataset.loc["t1", "labels"]) == ["Casual"]


def test_stage_rerun_with_an_added_batch_keeps_every_split(tmp_path):
    rng = np.random.default_rng(0)
    rows = [(f"a{k:03d}", NAMES[rng.integers(0, 4)], [], False) for k in range(120)]
    first = label_rows(rows)
    assert main(write_stage_inputs(tmp_path, first)) == 0
    before = pd.read_parquet(tmp_path / "splits.parquet")
    second = pd.concat(
        [first, label_rows([(f"b{k:03d}", NAMES[rng.integers(0, 4)], [], False) for k in range(80)], "b2")],
        ignore_index=True,
    )
    assert main(write_stage_inputs(tmp_path, second)) == 0
    after = pd.read_parquet(tmp_path / "splits.parquet").set_index("image_id")
    assert len(after) == 200
    assert (after.loc[before["image_id"], "split"].to_numpy() == before["split"].to_numpy()).all()
    dataset = pd.read_parquet(tmp_path / "dataset.parquet").set_index("image_id")
    assert (dataset.loc[before["image_id"], "split"].to_numpy() == before["split"].to_numpy()).all()


def test_near_duplicate_pairs_across_splits_are_listed_as_leakage(tmp_path):
    rng = np.random.default_rng(1)
    labels = label_rows([(f"a{k:03d}", NAMES[rng.integers(0, 4)], [], False) for k in range(60)])
    args = write_stage_inputs(tmp_path, labels)
    assert main(args) == 0
    split_of = pd.read_parquet(tmp_path / "splits.parquet").set_index("image_id")["split"]
    train, test = split_of[split_of == "train"].index[:2], split_of[split_of == "test"].index[:1]
    pairs = pd.DataFrame({"image_id_a": [train[0], train[0]], "image_id_b": [train[1], test[0]], "distance": [3, 7]})
    pairs.to_parquet(tmp_path / "near.parquet")
    assert (
        main(
            [*args, "--near-duplicates", str(tmp_path / "near.parquet"), "--leakage", str(tmp_path / "leakage.parquet")]
        )
        == 0
    )
    leakage = pd.read_parquet(tmp_path / "leakage.parquet")
    assert leakage.to_dict("records") == [
        {"image_id_a": train[0], "split_a": "train", "image_id_b": test[0], "split_b": "test", "distance": 7}
    ]
    assert (pd.read_parquet(tmp_path / "splits.parquet").set_index("image_id")["split"] == split_of).all(), (
        "nothing moved"
    )


def pairs_of(a: list[str], b: list[str], distance: int) -> pd.DataFrame:
    return pd.DataFrame({"image_id_a": a, "image_id_b": b, "distance": [distance] * len(a)})


def test_new_near_duplicates_share_one_split_and_pairs_further_apart_do_not_move():
    batch = images({"Casual": 50, "Romantic": 50}, "a")
    casual, romantic = batch["image_id"][:50].tolist(), batch["image_id"][50:].tolist()
    pairs = pd.concat([pairs_of(casual[:25], romantic[:25], 3), pairs_of(casual[25:], romantic[25:], 7)])
    none = read_splits(Path("/nonexistent"))
    apart = assign_splits(none, batch, SETTINGS).set_index("image_id")["split"]
    together = assign_splits(none, batch, SETTINGS, pairs).set_index("image_id")["split"]
    crossing = [a != b for a, b in zip(apart[casual[:25]], apart[romantic[:25]], strict=True)]
    assert any(crossing), "without grouping some close pairs cross splits: the test can tell"
    assert (together[casual[:25]].to_numpy() == together[romantic[:25]].to_numpy()).all()
    assert together[casual[25:]].equals(apart[casual[25:]]) and together[romantic[25:]].equals(apart[romantic[25:]])
    assert together[casual].equals(apart[casual]), "a group takes the split of its first image in the stratified order"
    off = SplitSettings(**(vars(SETTINGS) | {"near_duplicates_together": -1}))
    assert assign_splits(none, batch, off, pairs).set_index("image_id")["split"].equals(apart)


def test_a_new_re_post_of_an_assigned_photo_joins_its_split_through_a_chain_and_nothing_moves():
    first = images({"Casual": 20}, "a")
    before = assign_splits(read_splits(Path("/nonexistent")), first, SETTINGS)
    test_photo = before.loc[before["split"] == "test", "image_id"].iloc[0]
    second = images({"Romantic": 20}, "b")
    repost, its_copy = second["image_id"].iloc[0], second["image_id"].iloc[1]
    pairs = pairs_of([test_photo, repost], [repost, its_copy], 2)
    after = assign_splits(before, pd.concat([first, second], ignore_index=True), SETTINGS, pairs)
    split_of = after.set_index("image_id")["split"]
    assert split_of[repost] == split_of[its_copy] == "test"
    assert after.merge(before, on="image_id")["split_x"].equals(after.merge(before, on="image_id")["split_y"])
