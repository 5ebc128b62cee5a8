"""Atomic outputs: a failed write keeps the old file, and what is written is readable by others."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from pipeline.atomic import atomic_dir, atomic_path
from training.checkpoint import save_checkpoint


@pytest.fixture
def usual_umask() -> Iterator[None]:
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "table.csv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]


def test_outputs_get_the_mode_of_a_plain_open_not_the_private_temporary_one(tmp_path: Path, usual_umask: None) -> None:
    with atomic_path(tmp_path / "table.csv") as tmp:
        tmp.write_text("a,b\n")
    save_checkpoint({"model": {"w": torch.ones(2)}}, tmp_path / "models" / "last.pt")
    with atomic_dir(tmp_path / "docs") as docs:
        (docs / "index.html").write_text("<html/>")

    assert mode(tmp_path / "table.csv") == 0o644
    assert mode(tmp_path / "models" / "last.pt") == 0o644
    assert mode(tmp_path / "docs") == 0o755
    assert torch.equal(torch.load(tmp_path / "models" / "last.pt", weights_only=True)["model"]["w"], torch.ones(2))


def test_the_mode_follows_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o077)
    try:
        with atomic_path(tmp_path / "private.json") as tmp:
            tmp.write_text("{}")
    finally:
        os.umask(previous)
    assert mode(tmp_path / "private.json") == 0o600


def test_a_folder_output_is_replaced_whole_or_not_at_all(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    with atomic_dir(docs) as tmp:
        (tmp / "old.html").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(docs) as tmp:
        (tmp / "new.html").write_text("half")
        raise RuntimeError("killed mid-write")
    assert [p.name for p in docs.iterdir()] == ["old.html"]
    with atomic_dir(docs) as tmp:
        (tmp / "new.html").write_text("new")
    assert [p.name for p in docs.iterdir()] == ["new.html"]
    assert [p.name for p in tmp_path.iterdir()] == ["docs"]  # no temporary or set-aside folder left
