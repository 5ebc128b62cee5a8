"""Child processes that end with the stage that started them.

A stage killed outright (SIGKILL: the out-of-memory killer, `kill -9`) runs no handler, so it
cannot stop its children: decode workers would stay blocked on the stage's task queue, and
`serve`'s Label Studio server, in a session of its own, would keep the port. On Linux a child
can ask the kernel for a signal when its parent dies (PR_SET_PDEATHSIG); elsewhere nothing
does this and the children outlive a killed stage.
"""

from __future__ import annotations

import ctypes
import signal
import sys
from concurrent.futures import ProcessPoolExecutor

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def end_with_parent() -> None:
    """Run in a child: Linux sends it SIGTERM when its parent dies, even by SIGKILL; elsewhere a no-op."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """A process pool whose workers end when the stage does (`end_with_parent`).

    Create it from the stage's main thread: the kernel signals a child when the thread that
    forked it ends, and this executor forks its workers in the thread that first submits.
    """
    return ProcessPoolExecutor(max_workers=workers, initializer=end_with_parent)
