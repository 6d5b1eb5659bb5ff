"""Run one session for the flow: a fresh `python -m exp3.session` that dies with the flow's process, pinned to
its slot's GPU, its output appended to `<session>/logs/session.log`, its new epochs reported while it trains.
Plain Python (no Prefect), so it is tested and reused without a flow; exp3.live adds the Prefect view.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable

from exp3.jobs import SessionJob, SessionResult
from exp3.layout import SessionPaths, SessionState
from exp3.offline import ultralytics_environment
from exp3.parallel import die_with_parent
from exp3.progress import EpochProgress, epoch_progress, results_rows

POLL_S = 5.0
OOM_PATTERNS: tuple[str, ...] = ("CUDA out of memory", "OutOfMemoryError", "CUBLAS_STATUS_ALLOC_FAILED")
DEFAULT_BATCH = 16
"""Ultralytics' default batch, halved on an out-of-memory retry when `train.batch` is unset."""


class SessionError(RuntimeError):
    """A session subprocess that failed; `transient` marks errors worth a retry (out of memory)."""

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class ProgressUpdate:
    """What `on_progress` receives: epochs done of `total`, the epochs new since the last call, all so far."""

    done: int
    total: int | None
    new_epochs: tuple[EpochProgress, ...]
    epochs: tuple[EpochProgress, ...]


class _ProgressReader:
    """Reads `train/results.csv` and calls `on_progress` when it has something new.

    Progress is a view, never a reason to stop training: the first error it raises (a broken
    CSV, the callback's) ends reporting and is kept in `error` for the session log.
    """

    def __init__(self, paths: SessionPaths, total: int | None,
                 on_progress: Callable[[ProgressUpdate], None] | None) -> None:
        self.paths, self.total, self.on_progress = paths, total, on_progress
        self.reported_done, self.reported_epochs = -1, 0
        self.error: str | None = None

    def poll(self, finished: bool = False, replay: bool = True) -> None:
        """Report new epochs; `finished` (the session is done) reports done = total; `replay=False`
        passes the epochs already on disk as seen, not new (a done session evaluated again)."""
        if self.on_progress is None:
            return
        try:
            epochs = tuple(epoch_progress(results_rows(self.paths), self.total))
            done = self.total if finished and self.total else len(epochs)
            new = epochs[self.reported_epochs:] if replay else ()
            if done == self.reported_done and not new:
                return
            self.on_progress(ProgressUpdate(done, self.total, new, epochs))
            self.reported_done, self.reported_epochs = done, len(epochs)
        except Exception as error:  # noqa: BLE001 - see the class docstring
            self.error = f"{type(error).__name__}: {error}".splitlines()[0]
            self.on_progress = None


def retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect's `retry_condition_fn` of a session task: retry only errors marked transient (out of memory)."""
    return isinstance(state.data, SessionError) and state.data.transient


def exit_reason(returncode: int) -> str:
    """Why a session process without a FAILED marker ended: a signal means it was stopped, not that it broke."""
    if returncode >= 0:
        return f"session exited with code {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    causes = ("kill -9, a pre-emption, or the kernel's out-of-memory killer: see `dmesg`" if name == "SIGKILL"
              else "a time limit, a pre-emption or Ctrl-C")
    return f"session stopped by {name} ({causes}); its training resumes from its last epoch when you run the " \
           "same command again"


def is_out_of_memory(record: dict | None) -> bool:
    """True if a FAILED marker's error or log tail shows an out-of-memory error."""
    text = f"{record.get('error', '')}\n{record.get('train_log_tail', '')}" if record else ""
    return any(pattern in text for pattern in OOM_PATTERNS)


def retry_batch_for(job: SessionJob, attempt: int) -> int | None:
    """Half the configured (or Ultralytics' default) batch, at least 1, on a retry after an out-of-memory
    failure (`oom_halve_batch`); None otherwise."""
    if attempt > 1 and job.oom_halve_batch and is_out_of_memory(job.paths.failure()):
        return max(1, (job.batch or DEFAULT_BATCH) // 2)
    return None


def move_aside_if_stale(paths: SessionPaths, cache_key: str) -> Path | None:
    """Move a folder made under other inputs to `<root>/stale/` before the session log is opened in it."""
    if paths.state(cache_key) != SessionState.STALE:
        return None
    with paths.session_lock("exp3 flow"):
        return paths.move_aside() if paths.state(cache_key) == SessionState.STALE else None


def session_arguments(job: SessionJob, retry_batch: int | None = None) -> list[str]:
    """The `python -m exp3.session` arguments of `job`: its config, session, seed, OOM batch, GPU and prepared data."""
    session = job.session
    arguments = ["--config", job.config_path, "--model", session.model, "--session", session.suffix]
    if session.seed is not None:
        arguments += ["--seed", str(session.seed)]
    if retry_batch is not None:
        arguments += ["--retry-batch", str(retry_batch)]
    if job.gpu is not None:
        arguments += ["--set", "train.device=0"]  # with CUDA_VISIBLE_DEVICES=<gpu>: the one visible GPU
    if job.prepared is not None:
        arguments += ["--prepared", job.prepared.model_dump_json()]
    return arguments


def session_environment(job: SessionJob) -> dict[str, str]:
    """This process's environment, Ultralytics' offline settings of the job's root (set before the session
    imports anything) and `CUDA_VISIBLE_DEVICES` of its GPU."""
    env = dict(os.environ) | ultralytics_environment(job.output_root)
    if job.gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(job.gpu)
    return env


def start_session_process(arguments: list[str], env: dict[str, str], log: BinaryIO) -> subprocess.Popen:
    """A fresh `python -m exp3.session <arguments>`, its output appended to `log`, killed if this process dies."""
    command = [sys.executable, "-m", "exp3.session", *arguments]
    log.write(f"==== {' '.join(command)} ====\n".encode())
    log.flush()
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                            preexec_fn=functools.partial(die_with_parent, os.getpid()))


def run_session_subprocess(job: SessionJob, retry_batch: int | None = None,
                           on_progress: Callable[[ProgressUpdate], None] | None = None) -> SessionResult:
    """Run the session CLI for a job that is not current (`SessionJob.is_current`); raise `SessionError`
    (transient if out of memory).

    A done session lacking configured evaluations only evaluates those (its old epochs are not replayed).
    `on_progress` is called every `POLL_S` seconds that results.csv has new epochs, and once more after
    the process ended (a session that ends between two polls still reports its last epoch).
    """
    paths, cache_key = job.paths, job.cache_key
    progress = _ProgressReader(paths, job.epochs, on_progress)
    moved = move_aside_if_stale(paths, cache_key)
    if paths.is_done(cache_key):
        progress.poll(replay=False)
    paths.logs.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(paths.logs / "session.log", "ab") as log:
        log.write(b"\n")
        if moved is not None:
            log.write(f"==== results made under other inputs moved aside to {moved} ====\n".encode())
        process = start_session_process(session_arguments(job, retry_batch), session_environment(job), log)
        while True:
            try:
                process.wait(timeout=POLL_S)  # returns the moment the session ends
                break
            except subprocess.TimeoutExpired:
                progress.poll()
        wall = round(time.perf_counter() - start, 2)
        finished = process.returncode == 0 and paths.is_done(cache_key)
        progress.poll(finished=finished)
        if progress.error:
            log.write(f"==== progress reporting stopped: {progress.error} ====\n".encode())
        log.write(f"==== exit {process.returncode} after {wall} s ====\n".encode())
    if finished:
        return SessionResult(session=job.name, status=SessionState.DONE, cache_key=cache_key, wall_s=wall,
                             moved_aside=None if moved is None else str(moved))
    if process.returncode == 0:
        raise SessionError(f"{job.name}: the session finished under another key than {cache_key} "
                           f"(see {paths.inputs}): report this as a bug")
    record = paths.failure() or {}
    error = record.get("error") or exit_reason(process.returncode)
    raise SessionError(f"{job.name}: {error} (logs in {paths.logs})", transient=is_out_of_memory(record))
