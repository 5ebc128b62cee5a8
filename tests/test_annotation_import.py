"""Importers: valid annotations land in the table, every bad one in the rejects with its reason."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pandas as pd
import pytest

from annotation.consolidate import consolidate
from annotation.importers import files_in, import_label_studio, import_tag_csv, read_label_studio_export
from annotation.kfashion import import_kfashion
from annotation.sources import CatalogIndex, read_label_sources
from common.cli import InputError
from common.taxonomy import load_taxonomy
from pipeline.ingest import ingest

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
    return tasks, CatalogIndex(demo_catalog).by_key, set(demo_catalog["image_id"])


def choices(from_name: str, values: list[str]) -> dict:
    return {"type": "choices", "from_name": from_name, "to_name": "image", "value": {"choices": values}}


def expert_says(annotation_id: int, expert: int, main: str, updated_at: str) -> dict:
    return {
        "id": annotation_id,
        "completed_by": expert,
        "result": [choices("main_style", [main])],
        "was_cancelled": False,
        "updated_at": updated_at,
    }


def test_the_review_projects_vote_settles_a_tie_and_each_expert_counts_once(demo_catalog, tmp_path, styles):
    image = demo_catalog.iloc[0]["image_id"]
    main = [
        {
            "id": 1,
            "data": {"image_id": image},
            "annotations": [
                expert_says(10, 1, "Casual", "2019-07-01T10:00:00Z"),
                expert_says(11, 2, "Sporty", "2019-07-01T11:00:00Z"),
            ],
        }
    ]
    review = [
        {
            "id": 50,
            "data": {"image_id": image},
            "annotations": [
                expert_says(60, 3, "Sporty", "2019-07-09T10:00:00Z"),
                expert_says(61, 1, "Casual", "2019-07-09T11:00:00Z"),
            ],
        }
    ]
    exports = tmp_path / "label-exports"
    exports.mkdir()
    for name, tasks in (
        ("label-studio-styles.json", main),
        ("label-studio-styles-review.json", review),
        ("copy-of-main.json", main),
    ):
        (exports / name).write_text(json.dumps(tasks))
    rows, _ = read_label_sources(exports, tmp_path / "no-crawl", demo_catalog, styles, tmp_path / "cache").tables()
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
    reasons = dict(zip(rejects["record"], rejects["reason"], strict=True))
    for i, (_, reason) in planted.items():
        assert reasons[f"task {tasks[i]['id']} / annotation {tasks[i]['annotations'][0]['id']}"].startswith(reason)
    assert any(r.startswith("cancelled") for r in reasons.values())
    assert any("image not in catalog" in r and "batch-009/unknown.jpg" in r for r in reasons.values())
    assert len(rejects) == 5
    valid = rows[~rows["cancelled"]]
    assert list(valid["record"]) == [f"task {tasks[5]['id']} / annotation {tasks[5]['annotations'][0]['id']}"]
    assert rows["cancelled"].sum() == 1, "a cancelled annotation stays in the table, flagged"


def test_malformed_label_studio_tasks_are_rejected_and_the_valid_one_kept(styles):
    valid = {"id": 1, "completed_by": 3, "result": [choices("main_style", ["Casual"])]}
    tasks = [
        [1, 2],
        {"id": 2, "data": None, "annotations": [valid]},
        {"id": 3, "data": {"image_id": "x"}, "annotations": None},
        {"id": 4, "data": {"image_id": "x"}, "annotations": [{**valid, "result": None}]},
        {
            "id": 5,
            "data": {"image_id": "x"},
            "annotations": [{**valid, "result": [{"type": "choices", "from_name": "main_style", "value": None}]}],
        },
        {"id": 6, "data": {"image_id": "x"}, "annotations": ["approved", valid]},
        {"id": 7, "data": {"image_id": ["x"]}, "annotations": [valid]},
        {"id": 8, "data": {"image_id": "x"}, "annotations": [{**valid, "lead_time": "abc"}]},
        {"id": 9, "data": {"image_id": "x"}, "annotations": [{**valid, "created_at": "yesterday"}]},
        {"id": 10, "data": {"image_id": "x"}, "annotations": [{**valid, "updated_at": 5}]},
        {
            "id": 11,
            "data": {"image_id": "x"},
            "annotations": [{**valid, "result": [{**choices("main_style", ["Casual"]), "from_name": ["main_style"]}]}],
        },
        {
            "id": 12,
            "data": {"image_id": "x"},
            "annotations": [{**valid, "lead_time": 12.5, "created_at": "2019-07-08T10:00:00.123456Z"}],
        },
    ]
    rows, rejects = import_label_studio(tasks, "export.json", styles, {}, {"x"}).tables()
    assert list(rows["record"]) == ["task 6 / annotation 1", "task 12 / annotation 1"]
    assert rows["lead_time"].iloc[1] == 12.5 and rows["created_at"].iloc[1] == pd.Timestamp(
        "2019-07-08T10:00:00.123456Z"
    )
    assert dict(zip(rejects["record"], rejects["reason"], strict=True)) == {
        "task #1 in the file": "malformed task: [1, 2] is not an object",
        "task 2 / annotation 1": "image not in catalog (task data is null)",
        "task 3": "malformed task: annotations is null, not a list",
        "task 4 / annotation 1": "malformed annotation: result is null, not a list",
        "task 5 / annotation 1": 'malformed annotation: result 1 has value null, not {"choices": [names]}',
        "task 6 / annotation #1": 'malformed annotation: "approved" is not an object',
        "task 7 / annotation 1": 'image not in catalog (task data has image_id ["x"] and image null)',
        "task 8 / annotation 1": 'malformed annotation: lead_time is "abc", not a number of seconds',
        "task 9 / annotation 1": 'malformed annotation: created_at is "yesterday", not an ISO-8601 time',
        "task 10 / annotation 1": "malformed annotation: updated_at is 5, not an ISO-8601 time",
        "task 11 / annotation 1": 'malformed annotation: result 1 has from_name ["main_style"], not a control\'s name',
    }


def test_an_export_is_read_with_or_without_bom_and_one_not_in_utf8_is_named(tmp_path):
    (tmp_path / "bom.json").write_text('[{"id": 1}]', encoding="utf-8-sig")
    assert read_label_studio_export(tmp_path / "bom.json") == [{"id": 1}]
    (tmp_path / "latin1.json").write_bytes('[{"id": 1, "data": {"note": "café"}}]'.encode("latin-1"))
    with pytest.raises(InputError, match=f"{tmp_path / 'latin1.json'}: not UTF-8 text \\(byte 0xe9 on line 1\\)"):
        read_label_studio_export(tmp_path / "latin1.json")


@pytest.mark.skipif(not (SHARED / "kfashion-samples").is_dir(), reason="needs ../shared/datasets/kfashion-samples")
def test_kfashion_samples_map_korean_styles_and_report_unlabelled(styles):
    rows, rejects = import_kfashion(sorted((SHARED / "kfashion-samples").glob("*.json")), styles).tables()
    assert list(rows["main_style"]) == ["Romantic"] and rows.iloc[0]["record"] == "100026"
    assert sorted(rejects["record"]) == ["1070263", "1092253"]
    assert rejects["reason"].str.startswith("unlabelled").all()


def kfashion_file(folder: Path, stem: str, styles: object, encoding: str = "utf-8") -> Path:
    """A K-Fashion label file whose 라벨링 → 스타일 is `styles`, with an image beside it."""
    label = {"데이터셋 정보": {"데이터셋 상세설명": {"라벨링": {"스타일": styles}}}}
    (folder / f"{stem}.json").write_bytes(json.dumps(label, ensure_ascii=False).encode(encoding))
    (folder / f"{stem}.jpg").write_bytes(stem.encode())
    return folder / f"{stem}.json"


def test_kfashion_style_missing_from_taxonomy_is_named(tmp_path, styles):
    _, rejects = import_kfashion([kfashion_file(tmp_path, "1", [{"스타일": "페미닌"}])], styles).tables()
    assert "['페미닌'] not in taxonomy" in rejects.iloc[0]["reason"]


def test_kfashion_bad_files_are_rejected_one_by_one_and_no_style_is_dropped(tmp_path, styles):
    files = [
        kfashion_file(tmp_path, "later-entry", [{"스타일": "로맨틱"}, {"스타일": "섹시", "서브스타일": "스포티"}]),
        kfashion_file(tmp_path, "bom", [{"스타일": "로맨틱"}], encoding="utf-8-sig"),
        kfashion_file(tmp_path, "sub-only", [{"서브스타일": "섹시"}]),
        kfashion_file(tmp_path, "style-list", [{"스타일": ["로맨틱"]}]),
        kfashion_file(tmp_path, "names-not-entries", ["로맨틱"]),
        kfashion_file(tmp_path, "entry-not-list", {"스타일": "로맨틱"}),
        kfashion_file(tmp_path, "cp949", [{"스타일": "로맨틱"}], encoding="cp949"),
    ]
    (tmp_path / "root-list.json").write_text("[1]")
    rows, rejects = import_kfashion([*files, tmp_path / "root-list.json"], styles).tables()
    by_record = rows.set_index("record")
    assert (by_record.loc["later-entry", "main_style"], by_record.loc["later-entry", "sub_styles"]) == (
        "Romantic",
        ["Sexy", "Sporty"],
    )
    assert by_record.loc["bom", "main_style"] == "Romantic"
    reasons = dict(zip(rejects["record"], rejects["reason"], strict=True))
    assert reasons["sub-only"].startswith("no main style (스타일 missing)")
    assert reasons["style-list"] == 'style entry 1: 스타일 is ["로맨틱"], not one Korean style name'
    assert (
        "not a list of style entries" in reasons["names-not-entries"]
        and "not a list of style entries" in reasons["entry-not-list"]
    )
    assert reasons["cp949"].startswith(f"not a K-Fashion label file: {tmp_path / 'cp949.json'}: not UTF-8 text")
    assert reasons["root-list"].startswith("not a K-Fashion label file (no 데이터셋 정보")
    assert len(rejects) == 6


@pytest.mark.skipif(not (SHARED / "ccp").is_dir(), reason="needs ../shared/datasets/ccp")
def test_ccp_tags_import_cleanly_with_their_own_taxonomy():
    garments = load_taxonomy(ROOT / "taxonomies/ccp_garments.yaml")
    rows, rejects = import_tag_csv(SHARED / "ccp/labels.csv", garments, files_in(SHARED / "ccp/photos")).tables()
    assert len(rows) + len(rejects) == 1658
    assert list(rejects["reason"]) == ["no tags"]  # the one photo with an empty tag list
    assert rows["main_style"].isna().all() and rows["sub_styles"].map(len).min() >= 1


def test_tag_csv_rejects_unknown_tags_and_missing_images(tmp_path):
    garments = load_taxonomy(ROOT / "taxonomies/ccp_garments.yaml")
    (tmp_path / "a.jpg").write_bytes(b"a")
    (tmp_path / "labels.csv").write_text("image,tags\na.jpg,skirt;cape;laser-sword\nmissing.jpg,skirt\n")
    rows, rejects = import_tag_csv(tmp_path / "labels.csv", garments, files_in(tmp_path)).tables()
    assert rows.empty
    assert list(rejects["reason"]) == [
        "unknown tag(s) ['laser-sword']: not in taxonomy 'ccp-garments'",
        f"image {tmp_path / 'missing.jpg'} not found",
    ]


def test_tag_csv_rows_are_checked_one_by_one_with_their_real_line_numbers(tmp_path):
    garments = load_taxonomy(ROOT / "taxonomies/ccp_garments.yaml")
    for name in ("a.jpg", "b.jpg"):
        (tmp_path / name).write_bytes(name.encode())
    lines = [
        "\ufeffimage,tags",
        "a.jpg,skirt,oops",
        "",
        "b.jpg,skirt; hat",
        "a.jpg",
        ",skirt",
        ".,skirt",
        '"b.jpg","hat;skirt"',
    ]
    (tmp_path / "labels.csv").write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")
    rows, rejects = import_tag_csv(tmp_path / "labels.csv", garments, files_in(tmp_path)).tables()
    assert list(rows["record"]) == ["line 4 (b.jpg)", "line 8 (b.jpg)"]
    assert [sorted(tags) for tags in rows["sub_styles"]] == [["hat", "skirt"]] * 2
    assert list(zip(rejects["record"], rejects["reason"], strict=True)) == [
        (
            "line 2 (a.jpg)",
            "3 fields ['a.jpg', 'skirt', 'oops']: expected 2, as the header has (quote a field that holds a comma)",
        ),
        ("line 5 (a.jpg)", "1 fields ['a.jpg']: expected 2, as the header has (quote a field that holds a comma)"),
        ("line 6 ()", "no image file name"),
        ("line 7 (.)", f"image '.' is {tmp_path}, not a file"),
    ]


def test_tag_csv_columns_after_image_and_tags_are_ignored(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"a")
    (tmp_path / "labels.csv").write_text("image,tags,source\na.jpg,skirt;hat,street\na.jpg,skirt\n")
    rows, rejects = import_tag_csv(
        tmp_path / "labels.csv", load_taxonomy(ROOT / "taxonomies/ccp_garments.yaml"), files_in(tmp_path)
    ).tables()
    assert [sorted(tags) for tags in rows["sub_styles"]] == [["hat", "skirt"]]
    assert list(rejects["reason"]) == [
        "2 fields ['a.jpg', 'skirt']: expected 3, as the header has (quote a field that holds a comma)"
    ]


@pytest.mark.parametrize(
    ("content", "problem"),
    [(b"", "empty file; expected the header line image,tags"),
     ("image,tags\nb\xe9.jpg,skirt\n".encode("latin-1"), r"not UTF-8 text \(byte 0xe9 on line 2\)"),
     (b"file,labels\na.jpg,skirt\n", "expected the header line image,tags; found file,labels")],
    ids=["empty", "latin-1", "wrong header"],
)  # fmt: skip
def test_a_tag_csv_that_cannot_be_read_is_named(tmp_path, content, problem):
    (tmp_path / "labels.csv").write_bytes(content)
    with pytest.raises(InputError, match=f"{tmp_path / 'labels.csv'}: {problem}"):
        import_tag_csv(
            tmp_path / "labels.csv", load_taxonomy(ROOT / "taxonomies/ccp_garments.yaml"), files_in(tmp_path)
        )
