"""Atomic outputs: a failed write keeps the old file, and what is written is readable by others."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from common.atomic import atomic_dir, atomic_path
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


def test_a_stage_replaces_its_outputs_together_or_not_at_all(tmp_path: Path) -> None:
    from common.atomic import outputs_together, write_json

    first, second = tmp_path / "catalog.json", tmp_path / "rejects.json"
    write_json({"run": 1}, first)
    write_json({"run": 1}, second)
    with pytest.raises(RuntimeError, match="the second output failed"), outputs_together():
        write_json({"run": 2}, first)
        raise RuntimeError("the second output failed")
    assert first.read_text() == second.read_text() == '{\n  "run": 1\n}\n', "the first output is not replaced alone"
    with outputs_together():
        write_json({"run": 2}, first)
        write_json({"run": 2}, second)
    assert '"run": 2' in first.read_text() and '"run": 2' in second.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["catalog.json", "rejects.json"], "no temporary left"


def test_a_full_disk_while_a_stage_writes_is_a_clear_error_and_the_old_outputs_stay(
    demo_crawl: Path, tmp_path: Path
) -> None:
    """A real write failure: the stage runs in a process whose files may not grow past 64 KiB (RLIMIT_FSIZE: the kernel
    refuses the write with EFBIG, as a full disk refuses it with ENOSPC; the same path handles both)."""
    import subprocess
    import sys

    out = tmp_path / "out"
    args = ["--crawl-dir", str(demo_crawl), "--cache-dir", str(out / "cache"),
            "--catalog", str(out / "catalog.parquet"), "--rejects", str(out / "rejects.csv"),
            "--near-duplicates", str(out / "near.parquet"), "--metrics", str(out / "metrics.json")]  # fmt: skip
    run = [sys.executable, "-c", "import sys; from pipeline.ingest import main; sys.exit(main(sys.argv[1:]))", *args]
    assert subprocess.run(run, cwd=Path(__file__).parents[1], capture_output=True).returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    big = demo_crawl / "batch-001" / "big.png"
    big.write_bytes(os.urandom(1))  # a reject whose long reason makes rejects.csv grow
    (demo_crawl / "batch-001" / ("x" * 200 + ".jpg")).write_bytes(b"not an image")
    limited = [sys.executable, "-c", "import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
               "resource.setrlimit(resource.RLIMIT_FSIZE, (1200, 1200)); "
               "from pipeline.ingest import main; sys.exit(main(sys.argv[1:]))", *args]  # fmt: skip
    done = subprocess.run(limited, cwd=Path(__file__).parents[1], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert (
        done.stderr.startswith("ingest: error: ")
        and "cannot write it (File too large)" in done.stderr
        and "is unchanged" in done.stderr
    )
    assert "Traceback" not in done.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before, "every output as it was"
    assert not [p for p in out.rglob(".*.tmp")], "no temporary left"


@pytest.mark.slow
def test_a_checkpoint_that_cannot_be_written_is_a_clear_error_and_the_old_one_stays(tmp_path: Path) -> None:
    """torch's writer fails without an errno ("basic_ios::clear" on a full disk); here a real refusal: a 64 KiB
    file-size limit."""
    import subprocess
    import sys

    path = tmp_path / "best.pt"
    save_checkpoint({"weights": torch.zeros(10)}, path)
    before = path.read_bytes()
    script = ("import resource, signal, sys, torch; from pathlib import Path; "
              "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
              "resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536)); "
              "from training.checkpoint import save_checkpoint; from common.cli import report_user_errors; "
              "sys.exit(report_user_errors('train', "
              "lambda: save_checkpoint({'weights': torch.zeros(100_000)}, Path(sys.argv[1])) or 0))")  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", script, str(path)], cwd=Path(__file__).parents[1], capture_output=True, text=True
    )
    assert done.returncode == 2 and done.stderr.startswith(f"train: error: {path}: cannot write it (torch: "), (
        done.stderr
    )
    assert "is unchanged" in done.stderr and path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]
