"""The `annotation` section of params.yaml: what serve, push, pull and config share."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common.settings import Settings, setting
from training.labelling_order import ORDERS


@dataclass(frozen=True)
class AnnotationSettings(Settings):
    section = "annotation"
    project: str = setting("Label Studio project title; push and pull find (or create) the project by it")
    chunk_size: int = setting("tasks per import request", interval="[1, inf)")
    port: int = setting("`python -m annotation serve` listens on 127.0.0.1:<port>", interval="[1, 65535]")
    data_dir: Path = setting("`serve`'s database and uploads (git-ignored)")
    document_root: Path = setting("local-files root: task URLs are /data/local-files/?d=<path under it>")
    order: str = setting(
        "which new tasks experts see first, given a model (docs/expert-time.md): random, or an active-learning order",
        choices=ORDERS,
    )
    round_size: int = setting(
        "entropy_diverse: tasks per round, kept apart from each other and from earlier rounds", interval="[1, inf)"
    )
