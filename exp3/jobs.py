"""What crosses the flow's task boundary (a `SessionJob` in, a `SessionResult` out) and how jobs get
the machine: `run_on_slots` starts each job, in grid order, on the first slot that is free.

    jobs = plan_jobs(config, grid, keys=..., config_path=...)
    results = run_on_slots(jobs, session_slots(config), start=start_session)   # name -> SessionResult

A slot is a GPU index (`gpus: [0, 0, 1]`: two sessions on GPU 0, one on GPU 1) or a CPU slot
(`parallel_sessions`), or a fan-out slot (a flow run of the per-session deployment). A queue of
slots rather than Prefect's concurrency limits: those count runs but do not say which GPU a run got.
"""

from __future__ import annotations

import queue
from typing import Any, Callable, Literal, Mapping, Sequence

from pydantic import BaseModel, ConfigDict

from exp3.config import ExperimentConfig
from exp3.layout import SessionPaths
from exp3.progress import SessionHeadline, read_session_headline
from exp3.schema import PreparedData
from exp3.sessions import Session

Slot = int | None
"""A GPU index, or None (a CPU slot or a fan-out slot: no device pinned)."""
ResultStatus = Literal["done", "cached", "failed", "skipped"]


class SessionJob(BaseModel):
    """Everything one `train_and_eval` task needs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    suffix: str
    seed: int | None = None
    cache_key: str
    """`exp3.identity.SessionInputs.key` of the session under the prepared data and weights."""
    config_path: str
    """The resolved config the flow wrote (`<output_root>/config_resolved.yaml`)."""
    output_root: str
    epochs: int
    batch: int | None = None
    """The configured batch (an out-of-memory retry halves it when `oom_halve_batch`)."""
    oom_halve_batch: bool = True
    retries: int = 0
    skip_as_failed: bool = False
    """FAILED in an earlier run and not `--rerun-failed`: `run_on_slots` does not start it."""
    gpu: int | None = None
    """The GPU of the slot it got when it started (`run_on_slots`), pinned with CUDA_VISIBLE_DEVICES."""
    deployment: str | None = None
    """Run as a flow run of this deployment (fan-out) instead of a local subprocess."""
    prepared: PreparedData | None = None
    """What the flow prepared (data yaml, dataset fingerprint, suite ids and hashes), handed to the session."""
    evaluations: dict[str, str] = {}
    """The severity evaluations the config asks for, split -> spec key (`exp3.splits.evaluation_plan`):
    a done session lacking one runs again, evaluating only those from its checkpoint (no training)."""

    @property
    def session(self) -> Session:
        return Session(self.model, self.suffix, self.seed)

    @property
    def name(self) -> str:
        return self.session.name

    @property
    def paths(self) -> SessionPaths:
        return SessionPaths.of(self.output_root, self.session)

    @property
    def is_current(self) -> bool:
        """Done under `cache_key` with every configured evaluation: nothing to run."""
        paths = self.paths
        return paths.state(self.cache_key) == "done" and paths.evaluations_current(self.evaluations)


class SessionResult(BaseModel):
    """What one session ended with (the flow's outcome per session)."""

    model_config = ConfigDict(extra="forbid")

    session: str
    status: ResultStatus
    """done: ran to DONE here; cached: already done under its key (`SessionPaths.state`), nothing ran;
    failed: the session failed; skipped: not run (failure.policy 'stop', or FAILED before)."""
    cache_key: str
    wall_s: float = 0.0
    folder: str = ""
    headline: SessionHeadline | None = None
    """Headline numbers of its metrics.json (done and cached sessions)."""
    reason: str | None = None
    """The one-line error of a failed or skipped session."""
    retry_batch: int | None = None
    moved_aside: str | None = None
    """Where results made under other inputs were moved before it trained again."""
    flow_run: str | None = None
    """The flow run id of a fan-out session."""

    @property
    def ran(self) -> bool:
        return self.status in ("done", "failed")


def outcome(job: SessionJob, value: Any) -> SessionResult:
    """The `SessionResult` of a finished task from its result value (a failed task's value is its exception)."""
    if isinstance(value, SessionResult):
        return value
    reason = (str(value) or type(value).__name__).splitlines()[0]
    return SessionResult(session=job.name, status="failed", cache_key=job.cache_key, folder=str(job.paths.folder),
                         reason=reason)


def done_result(job: SessionJob) -> SessionResult | None:
    """The "cached" result of a job already done under its key with every configured evaluation, else None."""
    if not job.is_current:
        return None
    return SessionResult(session=job.name, status="cached", cache_key=job.cache_key, folder=str(job.paths.folder),
                         headline=read_session_headline(job.paths))


def session_slots(config: ExperimentConfig, fan_out_deployment: str | None = None,
                  fan_out_width: int = 2) -> tuple[Slot, ...]:
    """The slots sessions run on: fan-out slots, else the configured GPUs (repeats allowed), else CPU slots."""
    if fan_out_deployment:
        return (None,) * fan_out_width
    return config.gpus or (None,) * config.parallel_sessions


def plan_jobs(config: ExperimentConfig, grid: Sequence[Session], *, keys: Mapping[str, str], config_path: str,
              failed_before: frozenset[str] = frozenset(), deployment: str | None = None,
              prepared: PreparedData | None = None) -> list[SessionJob]:
    """One `SessionJob` per session of `grid`, in grid order.

    `config.output_root` must be resolved; `keys`: session name -> cache key; `failed_before`:
    names of sessions FAILED in an earlier run that must not run again (no retries either).
    """
    from exp3.splits import evaluation_plan

    evaluations = evaluation_plan(config.occlusion)  # once for the grid
    return [SessionJob(model=session.model, suffix=session.suffix, seed=session.seed, cache_key=keys[session.name],
                       config_path=str(config_path), output_root=str(config.output_root),
                       epochs=config.models[session.model].epochs, batch=config.train.batch,
                       oom_halve_batch=config.failure.oom_halve_batch,
                       retries=0 if session.name in failed_before else config.failure.retries,
                       skip_as_failed=session.name in failed_before, deployment=deployment, prepared=prepared,
                       evaluations=evaluations)
            for session in grid]


def run_on_slots(jobs: Sequence[SessionJob], slots: Sequence[Slot], start: Callable[[SessionJob], Any], *,
                 stop_on_failure: bool = False,
                 announce: Callable[[SessionJob, SessionResult], None] = lambda job, result: None
                 ) -> dict[str, SessionResult]:
    """Run `jobs` in order, each on the first free slot the moment one frees; return every job's result.

    `start(job)` (`job.gpu` set to its slot's) returns a future with `add_done_callback` and
    `result(raise_on_failure=False)`: a Prefect future. A job already done (`done_result`) or FAILED
    before (`skip_as_failed`) takes no slot; with `stop_on_failure` (failure.policy 'stop'), once a
    session has failed, the jobs not started yet are skipped. `announce(job, result)` is called for
    each job that starts no session (cached or skipped).
    """
    if not slots:
        raise ValueError("no slots to run sessions on: set gpus, or parallel_sessions >= 1, or fan_out_width >= 1")
    free: queue.SimpleQueue[Slot] = queue.SimpleQueue()
    for slot in slots:
        free.put(slot)
    results: dict[str, SessionResult] = {}
    failed: list[str] = []

    def release(job: SessionJob, slot: Slot) -> Callable[[Any], None]:
        def ended(future: Any) -> None:
            try:
                results[job.name] = outcome(job, future.result(raise_on_failure=False))
                if results[job.name].status == "failed":
                    failed.append(job.name)
            finally:
                free.put(slot)  # after the failure is recorded: the next job sees it
        return ended

    def not_started(job: SessionJob, result: SessionResult) -> None:
        results[job.name] = result
        announce(job, result)

    for job in jobs:
        if (done := done_result(job)) is not None:
            not_started(job, done)
        elif job.skip_as_failed:
            error = (job.paths.failure() or {}).get("error")
            not_started(job, _skipped(job, f"failed in an earlier run ({error}); not re-run without --rerun-failed"))
        else:
            slot = free.get()  # waits until a running session ends
            if failed and stop_on_failure:
                free.put(slot)
                not_started(job, _skipped(job, f"not run, {failed[0]} failed and failure.policy is 'stop'"))
            else:
                start(job.model_copy(update={"gpu": slot})).add_done_callback(release(job, slot))
    for _ in slots:
        free.get()  # every slot back: every started job has ended
    return {job.name: results[job.name] for job in jobs}


def _skipped(job: SessionJob, reason: str) -> SessionResult:
    return SessionResult(session=job.name, status="skipped", cache_key=job.cache_key, folder=str(job.paths.folder),
                         reason=f"{job.name}: {reason}")
