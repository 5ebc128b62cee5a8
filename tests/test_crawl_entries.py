"""Hostile crawl folders: every entry of a batch is judged on its own; nothing crashes ingest or reads outside the
crawl."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pandas as pd
import pytest

from pipeline.ingest import ingest
from pipeline.ingest import main as ingest_main


@pytest.fixture()
def clean(demo_crawl, tmp_path, ingest_settings):
    """(crawl folder, catalog ids, rejects count) of the tiny demo crawl before anything hostile is added."""
    catalog, rejects, _, _ = ingest(demo_crawl, tmp_path / "cache-clean", ingest_settings)
    return demo_crawl, set(catalog.column("image_id").to_pylist()), len(rejects)


def photo_in(crawl: Path) -> Path:
    return next(p for p in sorted((crawl / "batch-001").iterdir()) if p.suffix == ".jpg")


def test_every_hostile_entry_is_a_reject_with_its_reason_and_the_batch_goes_on(
    clean, tmp_path, ingest_settings, monkeypatch
):
    crawl, clean_ids, clean_rejects = clean
    batch = crawl / "batch-001"
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    private = outside / "private.jpg"
    private.write_bytes(photo_in(crawl).read_bytes()[:-1] + b"\xd9")  # another valid photo, outside the crawl
    (batch / "loop-a.jpg").symlink_to(batch / "loop-b.jpg")
    (batch / "loop-b.jpg").symlink_to(batch / "loop-a.jpg")
    (batch / "dangling.jpg").symlink_to(batch / "gone.jpg")
    (batch / "escape.jpg").symlink_to(private)
    (batch / "passwd.jpg").symlink_to("/etc/passwd")
    (batch / "repost.jpg").symlink_to(photo_in(crawl))  # inside the crawl: allowed, one more source of a known photo
    os.mkfifo(batch / "pipe.jpg")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(batch / "sock.jpg"))
    (batch / "subfolder").mkdir()
    with open(os.path.join(os.fsencode(batch), b"caf\xe9.jpg"), "wb") as f:  # a Latin-1 name: not UTF-8
        f.write(photo_in(crawl).read_bytes())
    shutil.copy(photo_in(crawl), batch / "locked.jpg")
    real_read = Path.read_bytes
    # Tests run as root here, which reads any file whatever its mode; the OS's refusal is simulated for this one file.
    monkeypatch.setattr(
        Path,
        "read_bytes",
        lambda self: (
            (_ for _ in ()).throw(PermissionError(13, "Permission denied"))
            if self.name == "locked.jpg"
            else real_read(self)
        ),
    )

    catalog, rejects, _, _ = ingest(crawl, tmp_path / "cache", ingest_settings)

    reasons = dict(zip(rejects["file"], rejects["reason"], strict=True))
    assert reasons["loop-a.jpg"] == reasons["loop-b.jpg"] == "symlink loop"
    assert reasons["dangling.jpg"].startswith(f"dangling symlink: its target {batch / 'gone.jpg'} does not exist")
    assert reasons["escape.jpg"].startswith(f"symlink to {private}, outside the crawl folder")
    assert reasons["passwd.jpg"].startswith("symlink to /etc/passwd, outside the crawl folder")
    assert reasons["pipe.jpg"] == "a FIFO, not an image file (batches are flat folders of files)"
    assert reasons["sock.jpg"] == "a socket, not an image file (batches are flat folders of files)"
    assert reasons["subfolder"] == "a folder, not an image file (batches are flat folders of files)"
    assert reasons["caf\\xe9.jpg"].startswith("file name is not valid UTF-8")
    assert reasons["locked.jpg"] == "unreadable file: Permission denied"
    assert len(rejects) == clean_rejects + 10
    ids = set(catalog.column("image_id").to_pylist())
    assert ids == clean_ids, "every valid photo is in, nothing from outside the crawl"
    sources = [s["file"] for row in catalog.column("sources").to_pylist() for s in row]
    assert "repost.jpg" in sources


def test_the_stage_writes_its_outputs_with_a_name_that_is_not_utf8(clean, tmp_path):
    crawl, _, _ = clean
    with open(os.path.join(os.fsencode(crawl / "batch-001"), b"\xff\xfe.jpg"), "wb") as f:
        f.write(b"junk")
    out = tmp_path / "out"
    args = ["--crawl-dir", str(crawl), "--cache-dir", str(out / "cache"), "--catalog", str(out / "catalog.parquet"),
            "--rejects", str(out / "rejects.csv"), "--near-duplicates", str(out / "near.parquet"),
            "--metrics", str(out / "metrics.json")]  # fmt: skip
    assert ingest_main(args) == 0
    rejects = pd.read_csv(out / "rejects.csv", encoding="utf-8")
    assert rejects.set_index("file").loc["\\xff\\xfe.jpg", "reason"].startswith("file name is not valid UTF-8")


def test_a_batch_folder_linking_outside_the_crawl_is_not_read(clean, tmp_path, ingest_settings, capsys):
    crawl, clean_ids, _ = clean
    shutil.copytree(crawl / "batch-001", tmp_path / "outside-batch")
    (tmp_path / "outside-batch" / "extra.jpg").write_bytes(photo_in(crawl).read_bytes()[:-1] + b"\xd9")
    (crawl / "batch-009").symlink_to(tmp_path / "outside-batch")
    catalog, _, _, counts = ingest(crawl, tmp_path / "cache", ingest_settings)
    assert set(catalog.column("image_id").to_pylist()) == clean_ids and counts.batches == 2
    assert "batch-009 links to" in capsys.readouterr().err
