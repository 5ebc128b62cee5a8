"""Resuming an interrupted training run: which settings may change, and dvclive rows the checkpoint does not hold.

`last.pt` is written after every epoch (atomically), after the epoch's dvclive rows. After
an interruption, the same command with `--resume` continues from it: each epoch re-seeds
from (seed, epoch), so the resumed run ends in the same state as an uninterrupted one,
and dvclive rows of epochs that last.pt does not hold are dropped, so each epoch is
logged once. The checkpoint records every train setting and the number of processes; a
resume under other ones is refused, except for RESUMABLE_SETTINGS (how long and how
fast, not what is trained).
"""

from __future__ import annotations

import reprlib
from pathlib import Path
from typing import Any

from common.atomic import atomic_path

# What --resume may change (names as configuration_changes writes them): how long training goes
# on and how fast it runs. workers and compile change random draws (file path) or rounding, so
# changing them makes the resumed run differ from an uninterrupted one, but not what it trains.
RESUMABLE_SETTINGS = frozenset({"train.epochs", "train.patience", "train.workers", "train.compile", "spec.epochs"})


def configuration_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """'name saved -> current' for each recorded setting in which a checkpoint's meta and this run's differ,
    RESUMABLE_SETTINGS aside.

    Names are meta keys, with those of the nested sections spelled section.key (train.lr_head, spec.kind);
    a nested setting that only repeats a top-level one's change (train.gcn_hidden, gcn_hidden) is named once.
    """
    was, now = _flat(saved), _flat(current)
    changed = {
        name: (was.get(name), now.get(name))
        for name in (was.keys() | now.keys()) - RESUMABLE_SETTINGS
        if was.get(name) != now.get(name)
    }
    repeats = {name for name, change in changed.items() if changed.get(name.partition(".")[2]) == change}
    return [
        f"{name} {reprlib.repr(old)} -> {reprlib.repr(new)}"
        for name, (old, new) in sorted(changed.items())
        if name not in repeats
    ]


def _flat(meta: dict[str, Any]) -> dict[str, Any]:
    """meta with its nested sections (train, spec) spread into section.key entries."""
    flat: dict[str, Any] = {}
    for key, value in meta.items():
        flat |= {f"{key}.{k}": v for k, v in value.items()} if isinstance(value, dict) else {key: value}
    return flat


def forget_logged_epochs(live_dir: Path, first: int) -> None:
    """Drop the rows of epochs >= `first` from every dvclive metric history in `live_dir`.

    An epoch is logged just before last.pt records it; a run killed in between leaves rows
    of an epoch that the resumed run trains and logs again.
    """
    for history in sorted((live_dir / "plots" / "metrics").rglob("*.tsv")):
        header, *rows = history.read_text(encoding="utf-8").splitlines(keepends=True)
        step = header.rstrip("\r\n").split("\t").index("step")
        kept = [row for row in rows if int(row.split("\t")[step]) < first]
        if len(kept) < len(rows):
            with atomic_path(history) as tmp:
                tmp.write_text(header + "".join(kept), encoding="utf-8")
