"""Run one session as a subprocess for the flow: `python -m exp3.session ...`, pinned to a GPU,
its output appended to `<session>/logs/session.log`, with a progress callback per epoch.

The flow's task is a thin wrapper around `run_session_subprocess`; everything here is plain
Python so it can be tested and reused without Prefect.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from exp3.grid import results_rows
from exp3.parallel import die_with_parent
from exp3.session import FAILED_MARKER, is_done, session_dir
from exp3.sessions import Session

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
class SessionRun:
    """What one subprocess run did."""

    session: str
    status: str
    ran: bool
    wall_s: float
    folder: str
    extra_overrides: tuple[str, ...] = ()


def failure_record(folder: Path) -> dict | None:
    """The session's FAILED marker (parsed), or None."""
    marker = folder / FAILED_MARKER
    return json.loads(marker.read_text(encoding="utf-8")) if marker.is_file() else None


def is_out_of_memory(record: dict | None) -> bool:
    """True if a FAILED marker's error or log tail shows an out-of-memory error."""
    if not record:
        return False
    text = f"{record.get('error', '')}\n{record.get('train_log_tail', '')}"
    return any(pattern in text for pattern in OOM_PATTERNS)


def oom_retry_overrides(batch: int | None) -> tuple[str, ...]:
    """`--set` overrides for the out-of-memory retry: half the batch (at least 1)."""
    return (f"train.batch={max(1, (batch or DEFAULT_BATCH) // 2)}",)


def run_session_subprocess(
    config_path: Path,
    session: Session,
    output_root: Path,
    gpu: int | None = None,
    extra_overrides: tuple[str, ...] = (),
    on_progress: Callable[[int, int], None] | None = None,
    epochs_total: int | None = None,
) -> SessionRun:
    """Run the session CLI; raise `SessionError` (transient if out of memory) when it fails."""
    folder = session_dir(output_root, session)
    if is_done(folder):
        return SessionRun(session.name, "done", False, 0.0, str(folder))
    (folder / "logs").mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "exp3.session", "--config", str(config_path), "--model", session.model,
               "--session", session.suffix]
    if session.seed is not None:
        command += ["--seed", str(session.seed)]
    for override in extra_overrides:
        command += ["--set", override]
    env = dict(os.environ)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
        command += ["--set", "train.device=0"]
    start = time.perf_counter()
    with open(folder / "logs" / "session.log", "ab") as log:
        log.write(f"\n==== {' '.join(command)} ====\n".encode())
        log.flush()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   preexec_fn=die_with_parent)
        reported = -1
        while True:
            try:
                process.wait(timeout=POLL_S)  # returns the moment the session ends
                break
            except subprocess.TimeoutExpired:
                done = len(results_rows(folder))
                if on_progress is not None and epochs_total and done != reported:
                    on_progress(done, epochs_total)
                    reported = done
        wall = round(time.perf_counter() - start, 2)
        log.write(f"==== exit {process.returncode} after {wall} s ====\n".encode())
    if process.returncode == 0 and is_done(folder):
        if on_progress is not None and epochs_total:
            on_progress(epochs_total, epochs_total)
        return SessionRun(session.name, "done", True, wall, str(folder), extra_overrides)
    record = failure_record(folder) or {}
    error = record.get("error") or f"session exited with code {process.returncode}"
    raise SessionError(f"{session.name}: {error} (logs in {folder / 'logs'})", transient=is_out_of_memory(record))
