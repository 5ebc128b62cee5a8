"""Importers: valid annotations land in the table, every bad one in the rejects with its reason."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from annotation.importers import import_kfashion, import_label_studio, import_tag_csv, read_label_studio_export
from annotation.consolidate import consolidate
from annotation.pull import catalog_lookup, import_exports
from pipeline.ingest import ingest
from pipeline.taxonomy import load_taxonomy

ROOT = Path(__file__).parents[1]
SHARED = ROOT.parent / "shared" / "datasets"


@pytest.fixture()
def styles():
    return load_taxonomy(ROOT / "taxonomies/kfashion_styles.yaml")


@pytest.fixture()
def demo_catalog(demo_crawl, tmp_path, ingest_settings):
    return ingest(demo_crawl, tmp_path / "cache", ingest_settings)[0].to_pandas()


@pytest.fixture()
def demo_export(demo_crawl, demo_catalog):
    """(tasks of batch-001, 'batch/file' -> image id, catalog ids) for the tiny demo crawl."""
    tasks = read_label_studio_export(demo_crawl.parent / "exports" / "batch-001.json")
    return tasks, catalog_lookup(demo_catalog), set(demo_catalog["image_id"])


def choices(from_name: str, values: list[str]) -> dict:
    return {"type": "choices", "from_name": from_name, "to_name": "image", "value": {"choices": values}}


def expert_says(annotation_id: int, expert: int, main: str, updated_at: str) -> dict:
    return {"id": annotation_id, "completed_by": expert, "result": [choices("main_style", [main])], "was_cancelled": False, "updated_at": updated_at}


def test_the_review_projects_vote_settles_a_tie_and_each_expert_counts_once(demo_catalog, tmp_path, styles):
    image = demo_catalog.iloc[0]["image_id"]
    main = [{"id": 1, "data": {"image_id": image}, "annotations": [expert_says(10, 1, "Casual", "2019-07-01T10:00:00Z"), expert_says(11, 2, "Sporty", "2019-07-01T11:00:00Z")]}]
    review = [{"id": 50, "data": {"image_id": image}, "annotations": [expert_says(60, 3, "Sporty", "2019-07-09T10:00:00Z"), expert_says(61, 1, "Casual", "2019-07-09T11:00:00Z")]}]
    exports = tmp_path / "label-exports"
    exports.mkdir()
    for name, tasks in (("label-studio-styles.json", main), ("label-studio-styles-review.json", review), ("copy-of-main.json", main)):
        (exports / name).write_text(json.dumps(tasks))
    rows, _ = import_exports(exports, demo_catalog, styles).tables()
    labels, review_list, _ = consolidate(rows, demo_catalog)
    label = labels.set_index("image_id").loc[image]
    assert (label["main_style"], label["n_annotators"], label["needs_review"]) == ("Sporty", 3, False)
    assert review_list.empty


def test_demo_export_imports_completely(demo_export, styles):
    tasks, lookup, ids = demo_export
    result = import_label_studio(tasks, "batch-001.json", styles, lookup, ids)
    rows, rejects = result.tables()
    assert rejects.empty
    assert len(rows) == sum(len(t["annotations"]) for t in tasks)
    assert rows["main_style"].notna().all() and not rows["cancelled"].any()
    assert rows["created_at"].dt.tz is not None


def test_each_bad_annotation_is_rejected_with_its_reason_and_valid_ones_kept(demo_export, styles):
    tasks, lookup, ids = demo_export
    tasks = copy.deepcopy(tasks[:6])
    planted = {
        0: ([choices("sub_styles", ["Sexy"])], "no main style"),
        1: ([choices("main_style", ["Casual", "Sexy"])], "2 main styles ['Casual', 'Sexy']"),
        2: ([choices("main_style", ["Boho"]), choices("sub_styles", ["Sexy"])], "unknown style(s) ['Boho']"),
    }
    for i, (result, _) in planted.items():
        tasks[i]["annotations"] = [{**tasks[i]["annotations"][0], "result": result}]
    tasks[3]["annotations"] = [{**tasks[3]["annotations"][0], "was_cancelled": True}]
    tasks[4]["data"] = {"image": "/data/local-files/?d=crawl/batch-009/unknown.jpg"}
    tasks[4]["annotations"] = tasks[4]["annotations"][:1]
    tasks[5]["annotations"] = tasks[5]["annotations"][:1]
    del tasks[5]["data"]["image_id"]  # resolved through the local-files URL instead

    rows, rejects = import_label_studio(tasks, "export.json", styles, lookup, ids).tables()
    reasons = dict(zip(rejects["record"], rejects["reason"]))
    for i, (_, reason) in planted.items():
        assert reasons[f"task {tasks[i]['id']} / annotation {tasks[i]['annotations'][0]['id']}"].startswith(reason)
    assert any(r.startswith("cancelled") for r in reasons.values())
    assert any("image not in catalog" in r and "batch-009/unknown.jpg" in r for r in reasons.values())
    assert len(rejects) == 5
    valid = rows[~rows["cancelled"]]
    assert list(valid["record"]) == [f"task {tasks[5]['id']} / annotation {tasks[5]['annotations'][0]['id']}"]
    assert rows["cancelled"].sum() == 1, "a cancelled annotation stays in the table, flagged"


@pytest.mark.skipif(not (SHARED / "kfashion-samples").is_dir(), reason="needs ../shared/datasets/kfashion-samples")
def test_kfashion_samples_map_korean_styles_and_report_unlabelled(styles):
    rows, rejects = import_kfashion(sorted((SHARED / "kfashion-samples").glob("*.json")), styles).tables()
    assert list(rows["main_style"]) == ["Romantic"] and rows.iloc[0]["record"] == "100026"
    assert sorted(rejects["record"]) == ["1070263", "1092253"]
    assert rejects["reason"].str.startswith("unlabelled").all()


def test_kfashion_style_missing_from_taxonomy_is_named(tmp_path, styles):
    label = {"데이터셋 정보": {"데이터셋 상세설명": {"라벨링": {"스타일": [{"스타일": "페미닌"}]}}}}
    (tmp_path / "1.json").write_text(json.dumps(label, ensure_ascii=False))
    (tmp_path / "1.jpg").write_bytes(b"bytes")
    _, rejects = import_kfashion([tmp_path / "1.json"], styles).tables()
    assert "['페미닌'] not in taxonomy" in rejects.iloc[0]["reason"]


@pytest.mark.skipif(not (SHARED / "ccp").is_dir(), reason="needs ../shared/datasets/ccp")
def test_ccp_tags_import_cleanly_with_their_own_taxonomy():
    garments = load_taxonomy(ROOT / "taxonomies/ccp_garments.yaml")
    rows, rejects = import_tag_csv(SHARED / "ccp/labels.csv", garments, SHARED / "ccp/photos").tables()
    assert len(rows) + len(rejects) == 1658
    assert list(rejects["reason"]) == ["no tags"]  # the one photo with an empty tag list
    assert rows["main_style"].isna().all() and rows["sub_styles"].map(len).min() >= 1


def test_tag_csv_rejects_unknown_tags_and_missing_images(tmp_path):
    garments = load_taxonomy(ROOT / "taxonomies/ccp_garments.yaml")
    (tmp_path / "a.jpg").write_bytes(b"a")
    (tmp_path / "labels.csv").write_text("image,tags\na.jpg,skirt;cape;laser-sword\nmissing.jpg,skirt\n")
    rows, rejects = import_tag_csv(tmp_path / "labels.csv", garments, tmp_path).tables()
    assert rows.empty
    assert list(rejects["reason"]) == ["unknown tag(s) ['laser-sword']: not in taxonomy 'ccp-garments'", f"image {tmp_path / 'missing.jpg'} not found"]
