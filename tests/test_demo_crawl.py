"""The demo generator: deterministic, in the real crawl layout, with learnable labels."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
from collections import Counter
from pathlib import Path

from common.images import content_id
from demo.crawl import TABLE2_IMAGES, draw_labels, generate, main_style_weights, photo_rng


def digest_tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_gives_byte_identical_batches(tmp_path, tiny_demo, style_names):
    generate(tiny_demo, style_names, tmp_path / "a" / "crawl", tmp_path / "a" / "exports")
    generate(tiny_demo, style_names, tmp_path / "b" / "crawl", tmp_path / "b" / "exports")
    assert digest_tree(tmp_path / "a") == digest_tree(tmp_path / "b")


def test_growing_the_crawl_keeps_earlier_batches_and_another_seed_changes_them(tmp_path, tiny_demo, style_names):
    generate(dataclasses.replace(tiny_demo, batches=1), style_names, tmp_path / "one", tmp_path / "one-x")
    written = generate(tiny_demo, style_names, tmp_path / "one", tmp_path / "one-x")
    assert written == ["batch-002"], "existing batches are not rewritten"
    generate(tiny_demo, style_names, tmp_path / "two", tmp_path / "two-x")
    assert digest_tree(tmp_path / "one") == digest_tree(tmp_path / "two")
    generate(dataclasses.replace(tiny_demo, seed=7), style_names, tmp_path / "other", tmp_path / "other-x")
    assert digest_tree(tmp_path / "other") != digest_tree(tmp_path / "two")


def test_batch_layout_and_label_export_match_a_real_crawl(tmp_path, demo_crawl, style_names):
    batch = demo_crawl / "batch-001"
    with open(batch / "metadata.csv", newline="") as fh:
        meta = list(csv.DictReader(fh))
    files = {p.name for p in batch.iterdir()} - {"metadata.csv"}
    assert {row["file"] for row in meta} == files
    assert all(row["source"] and row["post_id"] and row["posted_at"].startswith("2019-07") for row in meta)

    tasks = json.loads((demo_crawl.parent / "exports" / "batch-001.json").read_text())
    for task in tasks:
        image_file = task["data"]["image"].split("?d=crawl/")[1]
        assert task["data"]["image_id"] == content_id((demo_crawl / image_file).read_bytes())
        for annotation in task["annotations"]:
            by_name = {r["from_name"]: r["value"]["choices"] for r in annotation["result"]}
            assert len(by_name["main_style"]) == 1
            assert set(by_name["main_style"] + by_name.get("sub_styles", [])) <= set(style_names)
            assert by_name["main_style"][0] not in by_name.get("sub_styles", [])
    labelled = {t["data"]["image"].rsplit("/", 1)[1] for t in tasks}
    assert not labelled & {"corrupt_0001.jpg", "truncated_0001.jpg", "error_page_0001.jpg", "bomb_0001.png"}


def test_label_statistics_follow_the_paper_shape(style_names):
    """Main styles follow Table 2 (Casual first, rare styles rare); sub-styles cluster."""
    weights = main_style_weights(style_names, batch_index=0)
    labels = [draw_labels(photo_rng(1, 0, i), style_names, weights) for i in range(4000)]
    mains = Counter(main for main, _ in labels)
    assert mains.most_common(1)[0][0] == "Casual"
    assert 0.30 < mains["Casual"] / 4000 < 0.42  # Table 2: 36.25 %
    assert mains["Romantic"] > mains["Modern"] > mains["Preppy"]
    romantic_subs = Counter(s for main, subs in labels if main == "Romantic" for s in subs)
    assert romantic_subs["Elegant"] > romantic_subs["Military"] * 5, "Romantic-Elegant co-occur"
    assert set(TABLE2_IMAGES) == set(style_names)


def test_cli_refuses_a_taxonomy_it_cannot_draw(tmp_path, capsys):
    from demo.crawl import main

    taxonomy = tmp_path / "tags.yaml"
    taxonomy.write_text("labels:\n  - {id: skirt, name: skirt, words: [skirt]}\n")
    params = (
        (Path(__file__).parents[1] / "params.yaml")
        .read_text()
        .replace("taxonomies/kfashion_styles.yaml", str(taxonomy))
    )
    (tmp_path / "params.yaml").write_text(params)
    assert main(["--params", str(tmp_path / "params.yaml"), "--crawl-dir", str(tmp_path / "c")]) == 2
    assert "no demo look: ['skirt']" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
