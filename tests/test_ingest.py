"""Ingest: catalog contents, duplicates across batches, incremental re-runs, atomic outputs."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import PIL
import pytest
from PIL import Image
from test_images import png_with_exif_chunk, tiff_with_rational_strip_offsets  # bad files, built in the image tests

import pipeline.ingest as ingest_module
from demo.crawl import generate
from pipeline.ingest import ingest, main
from pipeline.near_duplicates import near_duplicate_pairs


@pytest.fixture()
def decode_spy(monkeypatch):
    """Records every file ingest decodes (workers=1 keeps decoding in this process)."""
    decoded: list[Path] = []
    real = ingest_module.inspect_image

    def spy(path, **kwargs):
        decoded.append(Path(path))
        return real(path, **kwargs)

    monkeypatch.setattr(ingest_module, "inspect_image", spy)
    return decoded


def test_every_bad_demo_file_lands_in_rejects_and_the_run_continues(tmp_path, demo_crawl, ingest_settings):
    catalog, rejects, _, counts = ingest(demo_crawl, tmp_path / "cache", ingest_settings)
    reasons = {f"{r.batch}/{r.file}": r.reason for r in rejects.itertuples()}
    for batch in ("batch-001", "batch-002"):
        assert reasons[f"{batch}/corrupt_0001.jpg"].startswith("corrupt image data")
        assert reasons[f"{batch}/truncated_0001.jpg"].startswith("truncated image")
        assert reasons[f"{batch}/error_page_0001.jpg"].startswith("not an image")
        assert reasons[f"{batch}/thumb_0001.jpg"].startswith("too small")
        assert reasons[f"{batch}/bomb_0001.png"].startswith("decompression bomb guard")
    assert len(rejects) == 10
    paths = catalog.column("path").to_pylist()
    assert any("/cmyk_" in p for p in paths) and any("/exif6_" in p for p in paths)
    assert counts.images == catalog.num_rows == counts.files - counts.rejected - counts.duplicate_files


def test_exact_duplicate_across_batches_is_one_image_with_both_sources(tmp_path, demo_crawl, ingest_settings):
    catalog = ingest(demo_crawl, tmp_path / "cache", ingest_settings)[0].to_pandas()
    repost = next(f.name for f in (demo_crawl / "batch-002").glob("repost_*"))
    row = catalog[catalog["n_sources"] == 2]
    hits = row[row["sources"].map(lambda s: any(src["file"] == repost for src in s))]
    assert len(hits) == 1
    sources = hits.iloc[0]["sources"]
    assert [s["batch"] for s in sources] == ["batch-001", "batch-002"]
    assert hits.iloc[0]["path"].startswith("batch-001/"), "the first sighting names the image"
    assert all(s["post_id"] and s["source"] for s in sources), "metadata.csv is joined onto every source"
    assert catalog["image_id"].is_unique


def test_adding_a_batch_decodes_only_the_new_batch(
    tmp_path, demo_crawl, tiny_demo, style_names, ingest_settings, decode_spy
):
    cache = tmp_path / "cache"
    ingest(demo_crawl, cache, ingest_settings)
    assert {p.parent.name for p in decode_spy} == {"batch-001", "batch-002"}
    decode_spy.clear()

    generate(tiny_demo.__class__(**{**tiny_demo.__dict__, "batches": 3}), style_names, demo_crawl, tmp_path / "exports")
    catalog, _, _, counts = ingest(demo_crawl, cache, ingest_settings)
    new_files = [p for p in (demo_crawl / "batch-003").iterdir() if p.name != "metadata.csv"]
    assert sorted(decode_spy) == sorted(new_files)
    assert counts.decoded == len(new_files) and counts.reused == counts.files - len(new_files)
    assert set(catalog.column("batch").to_pylist()) == {"batch-001", "batch-002", "batch-003"}


def test_unchanged_crawl_decodes_nothing_and_changed_file_is_decoded_again(
    tmp_path, demo_crawl, ingest_settings, decode_spy
):
    cache = tmp_path / "cache"
    ingest(demo_crawl, cache, ingest_settings)
    decode_spy.clear()
    (cache / ".batch-001.parquet.x81kd.tmp").write_bytes(
        b"left by a killed write"
    )  # the cache persists: nothing else would remove it
    ingest(demo_crawl, cache, ingest_settings)
    assert decode_spy == [] and not list(cache.glob(".*"))

    victim = next((demo_crawl / "batch-001").glob("instagram_*.jpg"), None) or next(
        (demo_crawl / "batch-001").glob("*_*.jpg")
    )
    shutil.copy(demo_crawl / "batch-001" / "truncated_0001.jpg", victim)  # a photo replaced by a broken copy
    _, rejects, _, _ = ingest(demo_crawl, cache, ingest_settings)
    assert decode_spy == [victim]
    assert victim.name in set(rejects["file"])


def test_fresh_checkout_mtimes_cost_a_rehash_not_a_decode(tmp_path, demo_crawl, ingest_settings, decode_spy):
    cache = tmp_path / "cache"
    ingest(demo_crawl, cache, ingest_settings)
    decode_spy.clear()
    for path in demo_crawl.rglob("*"):
        if path.is_file():
            os.utime(path, ns=(1_000_000_000, 1_000_000_000))  # as after `dvc checkout` / `git clone`
    _, _, _, counts = ingest(demo_crawl, cache, ingest_settings)
    assert decode_spy == [] and counts.rehashed == counts.files


def test_new_size_limits_apply_to_cached_batches_without_decoding(tmp_path, demo_crawl, ingest_settings, decode_spy):
    cache = tmp_path / "cache"
    catalog, _, _, _ = ingest(demo_crawl, cache, ingest_settings)
    decode_spy.clear()

    stricter, rejects, _, counts = ingest(
        demo_crawl, cache, dataclasses.replace(ingest_settings, min_side=100)
    )  # demo photos: 96 x 128
    assert decode_spy == [] and counts.decoded == 0
    assert stricter.num_rows == 0
    reasons = {f"{r.batch}/{r.file}": r.reason for r in rejects.itertuples()}
    for path in catalog.column("path").to_pylist():
        assert reasons[path].startswith("too small") and reasons[path].endswith("ingest.min_side = 100"), reasons[path]

    assert ingest(demo_crawl, cache, ingest_settings)[0].equals(catalog)
    assert decode_spy == []


def guarded_files(rejects: pd.DataFrame) -> set[str]:
    """batch/file of every file the decompression-bomb guard rejected."""
    guarded = rejects[rejects["reason"].str.startswith("decompression bomb guard")]
    return set(guarded["batch"] + "/" + guarded["file"])


def test_raising_max_pixels_decodes_only_the_images_it_now_admits(tmp_path, demo_crawl, ingest_settings, decode_spy):
    cache = tmp_path / "cache"
    guarded = guarded_files(
        ingest(demo_crawl, cache, dataclasses.replace(ingest_settings, max_pixels=10_000))[1]
    )  # below 96 x 128
    bombs = {"batch-001/bomb_0001.png", "batch-002/bomb_0001.png"}
    assert bombs < guarded
    decode_spy.clear()

    catalog, rejects, _, _ = ingest(demo_crawl, cache, ingest_settings)
    assert {f"{p.parent.name}/{p.name}" for p in decode_spy} == guarded - bombs and len(decode_spy) == len(
        guarded - bombs
    )
    assert guarded_files(rejects) == bombs
    assert catalog.equals(ingest(demo_crawl, tmp_path / "fresh-cache", ingest_settings)[0])


def test_a_cache_written_by_an_older_ingest_is_rebuilt(tmp_path, demo_crawl, ingest_settings, decode_spy):
    cache = tmp_path / "cache"
    catalog = ingest(demo_crawl, cache, ingest_settings)[0]
    pd.read_parquet(cache / "batch-001.parquet").drop(columns=["header_only"]).to_parquet(cache / "batch-001.parquet")
    decode_spy.clear()
    assert ingest(demo_crawl, cache, ingest_settings)[0].equals(catalog)
    assert {p.parent.name for p in decode_spy} == {"batch-001"}


def test_rejects_judged_by_another_pillow_version_are_judged_again(tmp_path, demo_crawl, ingest_settings, decode_spy):
    cache = tmp_path / "cache"
    catalog, rejects, _, _ = ingest(demo_crawl, cache, ingest_settings)
    table = pd.read_parquet(cache / "batch-001.parquet")
    table.assign(decoder="9.0.0").to_parquet(cache / "batch-001.parquet")  # as an older Pillow wrote it
    bad_bytes = set(table.loc[table["reason"].notna(), "file"])
    assert bad_bytes and len(bad_bytes) < len(table)
    decode_spy.clear()
    again = ingest(demo_crawl, cache, ingest_settings)
    assert sorted(p.name for p in decode_spy) == sorted(bad_bytes) and {p.parent.name for p in decode_spy} == {
        "batch-001"
    }
    assert again[0].equals(catalog) and again[1].equals(rejects)
    rewritten = pd.read_parquet(cache / "batch-001.parquet").set_index("file")["decoder"]
    assert set(rewritten[sorted(bad_bytes)]) == {PIL.__version__} and set(rewritten.drop(sorted(bad_bytes))) == {
        "9.0.0"
    }, "accepted images are not decoded again"


def test_a_damaged_batch_cache_is_rebuilt_with_a_warning(tmp_path, demo_crawl, ingest_settings, decode_spy, capsys):
    cache = tmp_path / "cache"
    catalog = ingest(demo_crawl, cache, ingest_settings)[0]
    (cache / "batch-001.parquet").write_bytes(b"PAR1 cut short")
    decode_spy.clear()
    assert ingest(demo_crawl, cache, ingest_settings)[0].equals(catalog)
    assert {p.parent.name for p in decode_spy} == {"batch-001"}
    assert f"ingest: warning: {cache / 'batch-001.parquet'}: not a readable Parquet table" in capsys.readouterr().err


def deny_reading(patch: pytest.MonkeyPatch, victim: Path) -> None:
    """Make `victim` unreadable to ingest (chmod does not stop root, as tests often run)."""
    real_read_bytes = Path.read_bytes

    def read_bytes(path: Path) -> bytes:
        if path == victim:
            raise PermissionError(13, "Permission denied", str(path))
        return real_read_bytes(path)

    patch.setattr(Path, "read_bytes", read_bytes)


@pytest.mark.parametrize("mtime_changed", [True, False], ids=["mtime-changed", "permissions-fixed"])
def test_a_file_that_could_not_be_read_is_read_again_on_the_next_run(
    tmp_path, demo_crawl, ingest_settings, monkeypatch, mtime_changed
):
    cache = tmp_path / "cache"
    victim = next((demo_crawl / "batch-001").glob("cmyk_*.jpg"))
    with monkeypatch.context() as patch:
        deny_reading(patch, victim)
        _, rejects, _, _ = ingest(demo_crawl, cache, ingest_settings)
    assert rejects.set_index("file").loc[victim.name, "reason"] == "unreadable file: Permission denied"
    if mtime_changed:
        os.utime(victim, ns=(1_000_000_000, 1_000_000_000))
    catalog, rejects, _, _ = ingest(demo_crawl, cache, ingest_settings)
    assert victim.name not in set(rejects["file"]) and f"batch-001/{victim.name}" in catalog.column("path").to_pylist()


def test_a_cached_file_that_can_no_longer_be_read_is_rejected_not_a_crash(
    tmp_path, demo_crawl, ingest_settings, monkeypatch
):
    cache = tmp_path / "cache"
    ingest(demo_crawl, cache, ingest_settings)
    victim = next((demo_crawl / "batch-001").glob("cmyk_*.jpg"))
    os.utime(victim, ns=(1_000_000_000, 1_000_000_000))  # a changed mtime sends it to the re-hash
    deny_reading(monkeypatch, victim)
    _, rejects, _, _ = ingest(demo_crawl, cache, ingest_settings)
    assert rejects.set_index("file").loc[victim.name, "reason"] == "unreadable file: Permission denied"


def test_files_that_make_pillow_raise_anything_are_rejected_and_the_worker_pool_goes_on(
    tmp_path, demo_crawl, ingest_settings
):
    (demo_crawl / "batch-001" / "bad_exif.png").write_bytes(png_with_exif_chunk(b"garbage, not TIFF"))
    (demo_crawl / "batch-001" / "bad_strips.tif").write_bytes(tiff_with_rational_strip_offsets())
    Image.fromarray(np.full((80, 80), 40_000, np.uint16)).save(demo_crawl / "batch-001" / "sixteen_bit.png")
    settings = dataclasses.replace(ingest_settings, workers=2)
    catalog, rejects, _, _ = ingest(demo_crawl, tmp_path / "cache", settings)
    reasons = rejects.set_index("file")["reason"]
    assert reasons["bad_exif.png"].startswith("corrupt image data (SyntaxError)")
    assert reasons["bad_strips.tif"].startswith("corrupt image data (TypeError)")
    assert "sixteen_bit.png" not in reasons, "16-bit pictures are scaled to 8-bit, not refused"
    assert {"batch-001", "batch-002"} <= set(catalog.column("batch").to_pylist())
    assert ingest(demo_crawl, tmp_path / "cache", settings)[3].decoded == 0, "rejects are cached like images"


def test_removed_batch_leaves_the_catalog(tmp_path, demo_crawl, ingest_settings):
    cache = tmp_path / "cache"
    ingest(demo_crawl, cache, ingest_settings)
    shutil.rmtree(demo_crawl / "batch-002")
    catalog = ingest(demo_crawl, cache, ingest_settings)[0]
    assert set(catalog.column("batch").to_pylist()) == {"batch-001"}
    assert not (cache / "batch-002.parquet").exists()


def test_near_duplicate_search_finds_exactly_the_pairs_a_plain_loop_finds():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, size=60, dtype=np.uint64)
    flips = np.array([np.uint64(1) << np.uint64(b) for b in rng.integers(0, 64, size=(60, 3)).ravel()]).reshape(60, 3)
    near = base ^ flips[:, 0] ^ np.where(rng.random(60) < 0.5, flips[:, 1], np.uint64(0))  # 1-2 bits away
    hashes = np.concatenate([base, near])
    ids = np.array([f"img{i}" for i in range(len(hashes))], dtype=object)
    found = near_duplicate_pairs(ids, hashes, max_distance=2)
    brute = {
        (ids[i], ids[j])
        for i in range(len(hashes))
        for j in range(i + 1, len(hashes))
        if bin(int(hashes[i]) ^ int(hashes[j])).count("1") <= 2
    }
    assert set(zip(found["image_id_a"], found["image_id_b"], strict=True)) == brute
    assert len(brute) >= 60


def test_missing_crawl_folder_is_a_clear_error_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the outputs not named below would go to their default paths
    params_file = tmp_path / "params.yaml"
    params_file.write_text((Path(__file__).parents[1] / "params.yaml").read_text())
    catalog = tmp_path / "catalog.parquet"
    rc = main(["--params", str(params_file), "--crawl-dir", str(tmp_path / "nope"), "--catalog", str(catalog)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "crawl folder" in err and "does not exist" in err and "make demo-data" in err
    assert not catalog.exists()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (
            b"file,source,post_id,posted_at\na.jpg,sns,1,2026-01-01\nb.jpg,sns,2,2026-01-01,extra,fields,here\n",
            "Expected 4 fields in line 3, saw 7",
        ),
        (b"file,source,post_id,posted_at\nb\xe9.jpg,sns,1,x\n", "can't decode byte 0xe9"),
    ],
    ids=["ragged-row", "latin-1"],
)
def test_a_malformed_metadata_csv_is_named_in_one_line(tmp_path, capsys, demo_crawl, content, problem, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the outputs not named below go to their default paths, here
    params_file = tmp_path / "params.yaml"
    params_file.write_text((Path(__file__).parents[1] / "params.yaml").read_text())
    metadata = demo_crawl / "batch-002" / "metadata.csv"
    metadata.write_bytes(content)
    catalog = tmp_path / "catalog.parquet"
    assert (
        main(
            [
                "--params",
                str(params_file),
                "--crawl-dir",
                str(demo_crawl),
                "--cache-dir",
                str(tmp_path / "cache"),
                "--catalog",
                str(catalog),
            ]
        )
        == 2
    )
    [line] = capsys.readouterr().err.splitlines()
    assert (
        line.startswith(
            f"ingest: error: {metadata}: not readable as UTF-8 CSV with the columns file,source,post_id,posted_at ("
        )
        and problem in line
    )
    assert not catalog.exists()


def test_a_crash_while_writing_keeps_the_previous_catalog(tmp_path, demo_crawl, monkeypatch):
    params_file = tmp_path / "params.yaml"
    params_file.write_text((Path(__file__).parents[1] / "params.yaml").read_text())
    outs = ["--params", str(params_file), "--crawl-dir", str(demo_crawl), "--cache-dir", str(tmp_path / "cache"),
            "--catalog", str(tmp_path / "catalog.parquet"), "--rejects", str(tmp_path / "rejects.csv"),
            "--near-duplicates", str(tmp_path / "near.parquet"), "--metrics", str(tmp_path / "m.json")]  # fmt: skip
    assert main(outs) == 0
    before = (tmp_path / "catalog.parquet").read_bytes()
    cache_before = (tmp_path / "cache" / "batch-001.parquet").read_bytes()

    def crash(table, where, **kwargs):
        if hasattr(where, "write"):
            where.write(b"half a parquet file")
        else:
            Path(where).write_bytes(b"half a parquet file")
        raise KeyboardInterrupt  # interrupted mid-write

    monkeypatch.setattr("pyarrow.parquet.write_table", crash)
    (demo_crawl / "batch-001" / "thumb_0001.jpg").unlink()  # make the new catalog differ
    with pytest.raises(KeyboardInterrupt):
        main(outs)
    assert (tmp_path / "catalog.parquet").read_bytes() == before
    assert (tmp_path / "cache" / "batch-001.parquet").read_bytes() == cache_before
    assert not list(tmp_path.rglob(".*.tmp")), "no temp file left behind"
    pd.read_parquet(tmp_path / "catalog.parquet")
