"""The labels stage's sources: K-Fashion folders and files beside the photos, tag CSVs, exports; each by its shape."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

import annotation.sources
from annotation.consolidate import consolidate
from annotation.labels import main as labels_main
from annotation.sources import read_label_sources
from common.cli import InputError
from common.taxonomy import load_taxonomy
from pipeline.ingest import ingest

ROOT = Path(__file__).parents[1]


@pytest.fixture()
def styles():
    return load_taxonomy(ROOT / "taxonomies/kfashion_styles.yaml")


@pytest.fixture()
def crawl(demo_crawl, tmp_path, ingest_settings):
    """(crawl folder, catalog) of the tiny demo crawl; label files of the tests go beside."""
    return demo_crawl, ingest(demo_crawl, tmp_path / "ingest-cache", ingest_settings)[0].to_pandas()


def kfashion(path: Path, main: str | None, *subs: str) -> Path:
    entries = (
        [{"스타일": main, "서브스타일": subs[0] if subs else ""}, *({"스타일": s} for s in subs[1:])]
        if main
        else [{"서브스타일": subs[0]}]
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps({"데이터셋 정보": {"데이터셋 상세설명": {"라벨링": {"스타일": entries}}}}, ensure_ascii=False),
        encoding="utf-8",
    )
    return path


def photo(catalog: pd.DataFrame, row: int) -> tuple[str, str, str]:
    """(batch, file, image id) of a catalog image."""
    source = catalog.iloc[row]["sources"][0]
    return source["batch"], source["file"], catalog.iloc[row]["image_id"]


def test_kfashion_folder_csv_and_sidecars_are_recognised_by_shape_and_matched(crawl, tmp_path, styles):
    crawl_dir, catalog = crawl
    labels = tmp_path / "labels"
    (b0, f0, id0), (b1, f1, id1), (b2, f2, id2), (b3, f3, id3) = (photo(catalog, i) for i in range(4))
    kfashion(
        labels / "kfashion" / f"{Path(f0).stem}.json", "로맨틱", "섹시"
    )  # a folder of K-Fashion files: matched by stem
    kfashion(labels / "kfashion" / "9999999.json", "로맨틱")  # names no photo of the catalog
    kfashion(labels / "kfashion" / f"{Path(photo(catalog, 4)[1]).stem}.json", "페미닌")
    (labels / "tags.csv").write_text(
        f"image,tags,main_style\n{b1}/{f1},Sporty;Casual,Casual\n{f2},Hiphop,Tomboy\n{f3},Laser,Casual\n",
        encoding="utf-8",
    )
    kfashion(
        crawl_dir / b3 / f"{Path(f3).stem}.json", "스포티", "톰보이"
    )  # the K-Fashion layout: beside its photo in the batch
    rows, rejects = read_label_sources(labels, crawl_dir, catalog, styles, tmp_path / "cache").tables()

    got = {(r.source, r.image_id): (r.main_style, list(r.sub_styles), r.annotator) for r in rows.itertuples()}
    assert got == {
        ("kfashion:kfashion", id0): ("Romantic", ["Sexy"], "kfashion:kfashion"),
        ("csv:tags.csv", id1): ("Casual", ["Sporty"], "csv:tags.csv"),
        ("csv:tags.csv", id2): ("Tomboy", ["Hiphop"], "csv:tags.csv"),
        (f"kfashion:{b3}", id3): ("Sporty", ["Tomboy"], f"kfashion:{b3}"),
    }
    reasons = dict(zip(rejects["record"], rejects["reason"], strict=True))
    assert (
        reasons["9999999"]
        == "image 9999999.jpg not in the catalog (no crawl batch has a file of that name: ingest it first)"
    )
    assert (
        reasons[Path(photo(catalog, 4)[1]).stem] == "Korean style name(s) ['페미닌'] not in taxonomy 'kfashion-styles'"
    )
    assert reasons[f"line 4 ({f3})"] == "unknown tag(s) ['Laser']: not in taxonomy 'kfashion-styles'"
    assert len(rejects) == 3


def test_a_file_of_no_known_shape_is_an_error_naming_it(crawl, tmp_path, styles):
    crawl_dir, catalog = crawl
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "photo.jpg").write_bytes(b"skipped: K-Fashion folders come with their photos")
    (labels / ".DS_Store").write_bytes(b"skipped")
    (labels / "notes.txt").write_text("who labelled what")
    with pytest.raises(InputError, match=f"{labels / 'notes.txt'}: not a label file"):
        read_label_sources(labels, crawl_dir, catalog, styles, tmp_path / "cache")
    (labels / "notes.txt").unlink()
    (labels / "numbers.json").write_text("42")
    with pytest.raises(InputError, match="numbers.json: neither a Label Studio export .* nor a K-Fashion label file"):
        read_label_sources(labels, crawl_dir, catalog, styles, tmp_path / "cache")


def test_a_name_in_several_batches_must_say_which(crawl, tmp_path, styles, ingest_settings):
    crawl_dir, catalog = crawl
    batch, file, _ = photo(catalog, 0)
    other = next(b for b in catalog["batch"] if b != batch)
    photo_bytes = (crawl_dir / batch / file).read_bytes()
    (crawl_dir / batch / "copy.jpg").write_bytes(photo_bytes + b"\0")  # one name, two different images
    (crawl_dir / other / "copy.jpg").write_bytes(photo_bytes + b"\1")
    catalog = ingest(crawl_dir, tmp_path / "ingest-cache-2", ingest_settings)[0].to_pandas()
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "tags.csv").write_text(f"image,tags\ncopy.jpg,Casual\n{batch}/copy.jpg,Casual\n", encoding="utf-8")
    rows, rejects = read_label_sources(labels, crawl_dir, catalog, styles, tmp_path / "cache").tables()
    assert list(rejects["reason"]) == [
        "image copy.jpg names 2 different catalog images (several batches hold a file of that name): write it as "
        "<batch>/copy.jpg"
    ]
    assert len(rows) == 1


def test_kfashion_files_are_parsed_once_then_read_from_the_cache(crawl, tmp_path, styles, monkeypatch):
    crawl_dir, catalog = crawl
    labels = tmp_path / "labels"
    stems = [Path(photo(catalog, i)[1]).stem for i in range(3)]
    for stem in stems[:2]:
        kfashion(labels / "kf" / f"{stem}.json", "로맨틱")
    parsed: list[str] = []
    real_parse = annotation.sources.parse_kfashion
    monkeypatch.setattr(annotation.sources, "parse_kfashion", lambda path: parsed.append(path.stem) or real_parse(path))

    first = read_label_sources(labels, crawl_dir, catalog, styles, tmp_path / "cache").tables()[0]
    assert sorted(parsed) == sorted(stems[:2]) and len(first) == 2
    parsed.clear()
    kfashion(labels / "kf" / f"{stems[2]}.json", "섹시")  # a new file arrives
    kfashion(labels / "kf" / f"{stems[0]}.json", "스포티")  # and one is corrected (another size)
    again = read_label_sources(labels, crawl_dir, catalog, styles, tmp_path / "cache").tables()[0]
    assert sorted(parsed) == sorted([stems[0], stems[2]]), "the unchanged file is read from the cache"
    assert sorted(again["main_style"]) == ["Romantic", "Sexy", "Sporty"]


def test_a_source_that_labels_copies_of_a_photo_differently_sends_it_to_review(
    crawl, tmp_path, styles, ingest_settings
):
    crawl_dir, catalog = crawl
    batch, file, image_id = photo(catalog, 0)
    shutil.copy(crawl_dir / batch / file, crawl_dir / batch / "repost.jpg")  # byte-identical: the same catalog image
    catalog = ingest(crawl_dir, tmp_path / "ingest-cache-2", ingest_settings)[0].to_pandas()
    _, file2, id2 = photo(catalog, 1)
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "tags.csv").write_text(
        f"image,tags,main_style\n{batch}/{file},Sporty;Hiphop,Casual\n{batch}/repost.jpg,Hiphop,Romantic\n{file2},Sexy,Casual\n{file2},Sexy,Casual\n",
        encoding="utf-8",
    )
    rows, _ = read_label_sources(labels, crawl_dir, catalog, styles, tmp_path / "cache").tables()
    labels_table, review, _ = consolidate(rows, catalog)
    by_image = labels_table.set_index("image_id")
    assert by_image.loc[image_id, "needs_review"] and pd.isna(by_image.loc[image_id, "main_style"])
    assert list(by_image.loc[image_id, "sub_styles"]) == ["Hiphop"], "what both versions say is kept"
    assert not by_image.loc[id2, "needs_review"], "the same labels twice are no conflict"
    [reason] = review.loc[review["image_id"] == image_id, "reason"]
    assert (
        reason == f"csv:tags.csv labels it 2 times, differently: line 2 ({batch}/{file}): Casual | Sporty, Hiphop; "
        f"line 3 ({batch}/repost.jpg): Romantic | Hiphop"
    )


def test_the_labels_stage_reports_each_kind_of_source(crawl, tmp_path, capsys):
    crawl_dir, catalog = crawl
    labels = tmp_path / "labels"
    shutil.copytree(crawl_dir.parent / "exports", labels)
    batch, file, _ = photo(catalog, 0)
    (labels / "tags.csv").write_text(f"image,tags,main_style\n{batch}/{file},Sporty,Casual\n", encoding="utf-8")
    catalog_path = tmp_path / "catalog.parquet"
    catalog.to_parquet(catalog_path)
    out = tmp_path / "out"
    args = ["--params", str(ROOT / "params.yaml"), "--label-dir", str(labels), "--crawl-dir", str(crawl_dir),
            "--catalog", str(catalog_path), "--cache-dir", str(out / "cache"), "--out", str(out / "a.parquet"),
            "--rejects", str(out / "r.csv"), "--metrics", str(out / "m.json")]  # fmt: skip
    assert labels_main(args) == 0
    metrics = json.loads((out / "m.json").read_text())
    assert metrics["per_kind"]["csv"] == 1 and metrics["per_kind"]["label-studio"] > 0
    assert "1 csv" in capsys.readouterr().out


def test_ingest_leaves_label_files_beside_the_photos_to_the_labels_stage(crawl, tmp_path, ingest_settings):
    crawl_dir, catalog = crawl
    batch, file, _ = photo(catalog, 0)
    kfashion(crawl_dir / batch / f"{Path(file).stem}.json", "로맨틱")
    again, rejects, _, _ = ingest(crawl_dir, tmp_path / "ingest-cache-2", ingest_settings)
    assert again.num_rows == len(catalog) and not rejects["file"].astype(str).str.endswith(".json").any()


def test_label_files_of_a_batch_linking_outside_the_crawl_are_not_read(crawl, tmp_path, styles):
    crawl_dir, catalog = crawl
    outside = tmp_path / "outside-batch"
    batch, file, _ = photo(catalog, 0)
    shutil.copytree(crawl_dir / batch, outside)
    kfashion(outside / f"{Path(file).stem}.json", "로맨틱")
    (crawl_dir / "batch-009").symlink_to(outside)
    labels = tmp_path / "labels"
    labels.mkdir()
    rows, rejects = read_label_sources(labels, crawl_dir, catalog, styles, tmp_path / "cache").tables()
    assert rows.empty and rejects.empty, "the crawl folder is no way to read files elsewhere"
