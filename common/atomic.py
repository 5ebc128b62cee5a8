"""Write outputs through a temporary file and a rename, so a crash never leaves half a file.

`outputs_together` makes the outputs of one stage replace the old ones together or not
at all: a stage that fails on its third output leaves the first two as they were. A full
disk or a read-only folder becomes an OutputError naming the file (`<stage>: error: ...`,
exit 2), and the previous output stays.

The temporary file (or every file of a temporary folder) is flushed to disk before the
rename and the parent folder after it, so a power loss leaves the old output or the new
one, never an empty one. `mkstemp`/`mkdtemp` create private files (0600/0700); the
result gets the mode a plain `open()` would give (0644/0755 under the usual umask), so
teammates and services can read the outputs.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from common.cli import OutputError

STORAGE_ERRORS = {
    errno.ENOSPC: "the disk is full: free space there and run again",
    errno.EDQUOT: "the disk quota is used up: free space there and run again",
    errno.EFBIG: "the file is larger than this process may write (ulimit -f): raise the limit and run again",
    errno.EROFS: "the file system is read-only: write the outputs to a writable folder",
    errno.EACCES: "no permission to write there: make the folder writable and run again",
    errno.EPERM: "no permission to write there: make the folder writable and run again",
}
_deferred: ContextVar[list[tuple[Path, Path]] | None] = ContextVar("_deferred", default=None)


@contextmanager
def storage_errors(target: Path) -> Iterator[None]:
    """A full disk or a write refused while writing `target` becomes an OutputError that names it and says what to
    do."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in STORAGE_ERRORS:
            raise
        raise OutputError(
            f"{target}: cannot write it ({os.strerror(exc.errno)}); {STORAGE_ERRORS[exc.errno]}. The previous "
            f"{target.name}, if any, is unchanged"
        ) from exc


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _sync(path: Path) -> None:
    """fsync a file or folder (folders: so that a rename in them survives a power loss).

    Some file systems (network mounts, FUSE) cannot sync a folder; the rename has
    happened by then, so that is no reason to fail the write.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if not (path.is_dir() and exc.errno in (errno.EINVAL, errno.ENOTSUP)):
            raise
    finally:
        os.close(fd)


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` only if the block succeeds."""
    target = Path(target)
    with storage_errors(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path, pending, deferred = Path(tmp), _deferred.get(), False
    try:
        with storage_errors(target):
            yield tmp_path
            tmp_path.chmod(0o666 & ~_umask())
            _sync(tmp_path)
            if pending is not None:  # inside outputs_together: renamed with the stage's other outputs
                pending.append((tmp_path, target))
                deferred = True
            else:
                os.replace(tmp_path, target)
                _sync(target.parent)
    finally:
        if not deferred:
            tmp_path.unlink(missing_ok=True)


@contextmanager
def outputs_together() -> Iterator[None]:
    """The files written in the block (write_parquet, write_csv, atomic_path, ...) replace their targets together at its
    end, or, if the block fails, none of them does."""
    pending: list[tuple[Path, Path]] = []
    token = _deferred.set(pending)
    try:
        yield
        for tmp, target in pending:
            os.replace(tmp, target)
        for folder in {target.parent for _, target in pending}:
            _sync(folder)
    finally:
        _deferred.reset(token)
        for tmp, _ in pending:
            tmp.unlink(missing_ok=True)


def remove_leftover_temporaries(folder: Path) -> None:
    """Delete the temporary files of `atomic_path` writes into `folder` that a killed process left.

    For a persistent DVC output (a cache folder that outlives runs) nothing else ever
    would, and `dvc commit` would store them as part of the output.
    """
    for leftover in folder.glob(".*.tmp"):
        leftover.unlink(missing_ok=True)


@contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a temporary directory beside `target`; it replaces `target` only if the block succeeds.

    A folder cannot be renamed onto a non-empty one, so the old `target` is first renamed
    aside and removed after: a crash in between leaves it beside the new one, not lost.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    old = tmp.with_name(f"{tmp.name}.old")
    try:
        yield tmp
        tmp.chmod(0o777 & ~_umask())
        for path in sorted(tmp.rglob("*"), reverse=True):  # files before the folders holding them
            _sync(path)
        _sync(tmp)
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        _sync(target.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def write_parquet(df: pd.DataFrame, target: str | Path) -> None:
    with atomic_path(target) as tmp:
        df.to_parquet(tmp, index=False)


def write_arrow(table: pa.Table, target: str | Path) -> None:
    with atomic_path(target) as tmp:
        pq.write_table(table, tmp)


def write_csv(df: pd.DataFrame, target: str | Path) -> None:
    with atomic_path(target) as tmp:
        df.to_csv(tmp, index=False)


def write_json(obj: Any, target: str | Path) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n", encoding="utf-8")
