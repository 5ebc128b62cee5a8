"""What a crawl folder holds: its batch folders, and which paths lie inside it.

The symlink policy ingest and the labels stage share: a path is read only when it resolves
inside the crawl folder, so a crawl folder cannot be a way to read other files of the
machine (Label Studio would serve them).
"""

from __future__ import annotations

import os
from pathlib import Path


def inside(path: str, root: str) -> bool:
    """Whether the resolved `path` lies in the resolved folder `root`."""
    return os.path.commonpath([path, root]) == root


def batch_folders(crawl_dir: Path) -> tuple[list[Path], list[Path]]:
    """(batch folders, folders that link outside the crawl and are not to be read), in name order; dot-folders are no
    batches."""
    root = os.path.realpath(crawl_dir)
    batches: list[Path] = []
    outside: list[Path] = []
    for path in sorted(p for p in crawl_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        (batches if inside(os.path.realpath(path), root) else outside).append(path)
    return batches, outside
