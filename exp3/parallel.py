"""The one way exp3 starts worker processes (dataset generation, occlusion suites)."""

from __future__ import annotations

import ctypes
import multiprocessing
import multiprocessing.context
import signal
import sys

PRELOADED_MODULES: list[str] = ["exp3.occlusion.worker", "exp3.synth"]
"""Imported once in the fork server, so each worker starts without re-importing numpy/PIL."""


def process_pool_context() -> multiprocessing.context.BaseContext:
    """forkserver where available (preloading `PRELOADED_MODULES`), else spawn.

    Not fork: forking a threaded caller (a Prefect flow runs tasks in threads) can deadlock the
    child. Like any spawn/forkserver pool, a calling script needs an `if __name__ == "__main__":` guard.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOADED_MODULES)  # takes effect if the server is not running yet
    return context


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """`preexec_fn` for subprocesses: SIGKILL this child when its parent dies (Linux; no-op elsewhere).

    A `kill -9` of the flow then also ends its session subprocesses (each trains in process), so a re-run
    never finds an orphan still writing into the session it is about to resume.
    """
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
