"""How exp3 starts worker processes, and makes every process it starts die with its parent."""

from __future__ import annotations

import ctypes
import multiprocessing
import multiprocessing.context
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable

PRELOADED_MODULES: list[str] = ["exp3.occlusion.worker", "exp3.dataset.synth"]
"""Imported once in multiprocessing's fork server, so each worker starts without re-importing numpy/PIL."""


MIN_TASKS_PER_WORKER = 64
"""A worker process is started per this many tasks, no more: each worker runs the calling script's `__main__` again,
and flows/exp3.py imports Prefect (seconds a pool: BENCHMARKS.md, "Where CI's and the smoke's fixed seconds went").
A few dozen small images (the smoke: 32) are done inline sooner; a real dataset still gets every worker."""


def workers_worth_starting(workers: int, tasks: int) -> int:
    """At most `workers`, one per MIN_TASKS_PER_WORKER tasks; 1 means inline, no pool."""
    return max(1, min(workers, tasks // MIN_TASKS_PER_WORKER))


def process_pool_context() -> multiprocessing.context.BaseContext:
    """forkserver where available (preloading `PRELOADED_MODULES`), else spawn; not fork, which can deadlock
    a threaded caller (a Prefect flow runs tasks in threads). Callers need an `if __name__ == "__main__":` guard."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOADED_MODULES)  # takes effect if the server is not running yet
    return context


def map_tasks(function: Callable[[Any], Any], tasks: list[Any], workers: int) -> list[Any]:
    """`[function(task) for task in tasks]`, in order: inline unless `workers_worth_starting` gives more than one
    worker, else in a `process_pool_context()` pool (about eight chunks a worker). `function` must pickle."""
    workers = workers_worth_starting(workers, len(tasks))
    if workers == 1:
        return [function(task) for task in tasks]
    with ProcessPoolExecutor(max_workers=workers, mp_context=process_pool_context()) as pool:
        return list(pool.map(function, tasks, chunksize=max(1, len(tasks) // (workers * 8))))


PARENT_PID_ENV = "EXP3_PARENT_PID"
"""The pid of the process that started a session process (`parent_environment`), read by the child itself."""
_LIBC = ctypes.CDLL("libc.so.6", use_errno=True) if sys.platform.startswith("linux") else None  # loaded once, here:
# a forked child then calls prctl without a dlopen (whose lock another thread may have held at the fork)


def die_with_parent(parent: int) -> None:
    """SIGKILL this process when its parent dies (Linux), so a re-run after a `kill -9` never meets an orphan still
    writing into a session. `parent` (the pid that started it): one already gone ends it too."""
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)


def parent_environment() -> dict[str, str]:
    """The environment entry a child started with `subprocess` reads to die with this process
    (`die_with_starting_process`): no `preexec_fn`, which Python documents as unsafe in a threaded process
    (a Prefect flow runs its tasks in threads)."""
    return {PARENT_PID_ENV: str(os.getpid())}


def die_with_starting_process() -> None:
    """First thing in a child started with `parent_environment`: die with that process (gone already: die now)."""
    parent = os.environ.pop(PARENT_PID_ENV, None)  # popped: this process's own children are not its parent's
    if parent is not None:
        die_with_parent(int(parent))


_forking = [0]  # pid of the process about to fork, read by the child (any depth of forks)


def forked_children_die_with_this_process() -> None:
    """Every child this process (or its children) forks from now on gets `die_with_parent`: Ultralytics'
    DataLoader workers are forked without a `preexec_fn` and would outlive a killed session."""
    os.register_at_fork(before=lambda: _forking.__setitem__(0, os.getpid()),
                        after_in_child=lambda: die_with_parent(_forking[0]))
