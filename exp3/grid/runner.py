"""Run one session for the flow: a fresh `python -m exp3.session` pinned to its slot's GPU, dying with the flow's
process, logging to `<session>/logs/session.log`, polled for progress. No Prefect: exp3.grid.live adds the view."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from exp3.fileio import read_json
from exp3.grid.jobs import SessionJob, SessionResult
from exp3.parallel import parent_environment
from exp3.session.layout import SessionState
from exp3.train.integrations import write_ultralytics_settings
from exp3.train.offline import ultralytics_environment
from exp3.train.training import TRAIN_INFO_FILENAME, TRAIN_PLAN_FILENAME

POLL_S = 5.0
OOM_PATTERNS: tuple[str, ...] = ("out of memory", "outofmemoryerror", "cublas_status_alloc_failed",
                                 "cudnn_status_internal_error", "unable to find an engine",
                                 "unable to find a valid cudnn algorithm")
"""Lower case: the errors Ultralytics itself treats as out of memory (`BaseTrainer._do_train`), and cuDNN's when it
finds no memory for a convolution."""
DEFAULT_BATCH = 16  # Ultralytics' default batch, halved on an out-of-memory retry when `train.batch` is unset
STOP_WAIT_S = 30.0  # how long `sessions_end_first` waits for a terminated session before it kills it
_RUNNING: set[subprocess.Popen] = set()  # the session processes this process started that have not ended
_STOPPING = threading.Event()  # set by `sessions_end_first`'s sweep: no session starts after it
_STARTING = threading.Lock()  # a session's start and the sweep, never both at once


class SessionError(RuntimeError):
    """A session subprocess that failed; `transient` marks errors worth a retry (out of memory)."""

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


def retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect's `retry_condition_fn` of a session task: retry only errors marked transient (out of memory)."""
    return isinstance(state.data, SessionError) and state.data.transient


STOPPED = "session stopped by "
"""How `exit_reason` begins for a session a signal ended (the flow tells those apart from failures by it)."""


def exit_reason(returncode: int, log: Path | None = None) -> str:
    """Why a session process without a FAILED marker ended: a signal means it was stopped, not that it broke; a
    refusal (exit 2: its session busy in another process, a config it cannot read) is the last `error:` line it
    printed to `log`."""
    if returncode >= 0:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines() if log and log.is_file() else []
        started = max((index for index, line in enumerate(lines) if line.startswith("==== ") and " exp3.session " in
                       line), default=-1)  # this attempt's lines only: the log keeps every attempt's
        refusal = next((line.removeprefix("error: ") for line in reversed(lines[started + 1:])
                        if line.startswith("error: ")), None)
        return refusal or f"session exited with code {returncode}"
    name = next((sig.name for sig in signal.Signals if sig == -returncode), f"signal {-returncode}")
    causes = ("kill -9, a pre-emption, or the kernel's out-of-memory killer: see `dmesg`" if name == "SIGKILL"
              else "a time limit, a pre-emption or Ctrl-C")
    return f"{STOPPED}{name} ({causes}); its training goes on from its last saved epoch, if any, when you run the " \
           "same command again"


def is_out_of_memory(record: dict | None) -> bool:
    """True if a FAILED marker's error or log tail shows an out-of-memory error."""
    text = f"{record.get('error', '')}\n{record.get('train_log_tail', '')}".lower() if record else ""
    return any(pattern in text for pattern in OOM_PATTERNS)


def failed_batch(job: SessionJob, planned: int) -> int:
    """The batch the last attempt ran at: its train_info.json's (Ultralytics may have halved the planned batch in
    the first epoch), never above the batch it was planned at: `planned`, or its train_plan.json's (an attempt that
    ran out of memory before train_info.json was written left an earlier attempt's there)."""
    ran = ((read_json(job.paths.run_dir / TRAIN_INFO_FILENAME) or {}).get("ran") or {}).get("batch")
    plan = ((read_json(job.paths.folder / TRAIN_PLAN_FILENAME) or {}).get("overrides") or {}).get("batch")
    return min([planned, *(batch for batch in (ran, plan) if isinstance(batch, int) and batch > 0)])


def retry_batch_for(job: SessionJob, attempt: int) -> int | None:
    """On a retry after an out-of-memory failure (`oom_halve_batch`): half the batch the failed attempt ran at
    (`failed_batch`; planned at the configured batch halved once per earlier retry), at least 1; else None (the
    configured batch)."""
    if attempt > 1 and job.oom_halve_batch and is_out_of_memory(job.paths.failure()):
        return max(1, failed_batch(job, max(1, (job.batch or DEFAULT_BATCH) >> (attempt - 2))) >> 1)
    return None


def worth_retrying(job: SessionJob, record: dict | None, retry_batch: int | None) -> bool:
    """An out-of-memory failure is retried while halving can still shrink the batch (or halving is off)."""
    return is_out_of_memory(record) and (not job.oom_halve_batch
                                         or failed_batch(job, retry_batch or job.batch or DEFAULT_BATCH) > 1)


def session_arguments(job: SessionJob, retry_batch: int | None = None) -> list[str]:
    """The `python -m exp3.session` arguments of `job` (on a GPU: the one CUDA_VISIBLE_DEVICES leaves visible)."""
    return ["--config", job.config_path, "--model", job.model, "--session", job.suffix,
            *(["--seed", str(job.seed)] if job.seed is not None else []),
            *(["--retry-batch", str(retry_batch)] if retry_batch is not None else []),
            *(["--set", "train.device=0"] if job.gpu is not None else []),
            *(["--prepared", job.prepared.model_dump_json()] if job.prepared is not None else [])]


def visible_gpu(slot: int) -> str:
    """The GPU a `gpus` entry names: the slot-th of the CUDA_VISIBLE_DEVICES this process was started with (a
    worker's, a scheduler's allocation), as CUDA numbers them; the GPU of that number when it is unset."""
    inherited = [gpu.strip() for gpu in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if gpu.strip()]
    return inherited[slot] if inherited else str(slot)


def session_environment(job: SessionJob) -> dict[str, str]:
    """This environment, Ultralytics' offline settings (before the session imports anything) and the job's GPU."""
    gpu = {"CUDA_VISIBLE_DEVICES": visible_gpu(job.gpu)} if job.gpu is not None else {}
    return dict(os.environ) | ultralytics_environment(job.output_root) | gpu


@contextlib.contextmanager
def sessions_end_first() -> Iterator[None]:
    """Left with an exception (Prefect's SIGTERM, Ctrl-C), end the session processes this process started, and wait
    for them, before going on: inside the root lock, so that it is never released while a session of this run still
    trains (a second run would take it and rewrite plan.json under that session)."""
    _STOPPING.clear()
    try:
        yield
    except BaseException:
        with _STARTING:  # a session task past its start-up but not yet started: it starts none now
            _STOPPING.set()
        for process in list(_RUNNING):
            process.terminate()
        for process in list(_RUNNING):
            try:
                process.wait(timeout=STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        raise


def start_session_process(arguments: list[str], env: dict[str, str], log: BinaryIO) -> subprocess.Popen:
    """A fresh `python -m exp3.session <arguments>`, its output appended to `log`, killed if this process dies."""
    command = [sys.executable, "-m", "exp3.session", *arguments]
    log.write(f"==== {' '.join(command)} ====\n".encode())
    log.flush()
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env | parent_environment())


def run_session_subprocess(job: SessionJob, retry_batch: int | None = None,
                           on_poll: Callable[[bool], None] = lambda finished: None) -> SessionResult:
    """Run the session CLI for a job without a `done_result`; raise `SessionError` (transient if out of memory).
    A folder made under other inputs is first moved aside. `on_poll(finished)` is called every `POLL_S` s while
    the process runs and once after it ends (`finished`: it ended DONE): it reads the epochs (exp3.grid.live)."""
    paths, cache_key = job.paths, job.cache_key
    # the root's Ultralytics settings file complete (the job's `integrations` on, every other off) before the session
    # imports Ultralytics, which then never writes it itself; an integration not installed is the session's refusal
    write_ultralytics_settings(ultralytics_environment(job.output_root)["YOLO_CONFIG_DIR"], job.integrations)
    moved = None
    if paths.state(cache_key) == SessionState.STALE:
        with paths.session_lock("exp3 flow"):
            moved = paths.move_aside() if paths.state(cache_key) == SessionState.STALE else None
    paths.logs.mkdir(parents=True, exist_ok=True)
    earlier = paths.failure()  # an earlier run's marker (--rerun-failed): never this attempt's reason
    start = time.perf_counter()
    with open(paths.logs / "session.log", "ab") as log:
        log.write(b"\n")
        if moved is not None:
            log.write(f"==== results made under other inputs moved aside to {moved} ====\n".encode())
        with _STARTING:
            if _STOPPING.is_set():
                raise SessionError(f"{job.name}: {STOPPED}the flow's stop before it started; it starts when you run "
                                   "the same command again")
            process = start_session_process(session_arguments(job, retry_batch), session_environment(job), log)
            _RUNNING.add(process)
        try:
            while process.poll() is None:
                try:
                    process.wait(timeout=POLL_S)  # returns the moment the session ends
                except subprocess.TimeoutExpired:
                    on_poll(False)
        finally:
            _RUNNING.discard(process)
        wall = round(time.perf_counter() - start, 2)
        finished = process.returncode == 0 and paths.is_done(cache_key)
        on_poll(finished)
        log.write(f"==== exit {process.returncode} after {wall} s ====\n".encode())
    if finished:
        return job.result(SessionState.DONE, wall_s=wall, moved_aside=None if moved is None else str(moved))
    if process.returncode == 0:
        raise SessionError(f"{job.name}: the session finished under another key than {cache_key} "
                           f"(see {paths.inputs}): report this as a bug")
    record = paths.failure()
    if record == earlier:  # the session wrote no marker (refused, stopped): the earlier one is not its reason
        record = None
    error = (record or {}).get("error") or exit_reason(process.returncode, paths.logs / "session.log")
    raise SessionError(f"{job.name}: {error} (logs in {paths.logs})",
                       transient=worth_retrying(job, record, retry_batch))
