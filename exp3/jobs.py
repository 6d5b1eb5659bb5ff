"""What crosses the flow's task boundary: a `SessionJob` in, a `SessionResult` out, and the plan
that turns the grid into jobs on lanes. No Prefect here; `plan_jobs` is pure (reads no files).

    plan_jobs(config, grid, lanes, keys=..., config_path=...)  -> [SessionJob, ...]
    train_and_eval(job, stop)                                  -> SessionResult (persisted as JSON)

Lanes: session i runs on lane i % len(lanes), after the previous session of its lane (`after`),
whatever that one's outcome; a lane is a GPU (`gpus`), a CPU slot (`parallel_sessions`) or a
fan-out slot (a flow run of the per-session deployment).

`StopSignal` is failure.policy 'stop' between the tasks of one flow run (threads of one
process): the first failed session sets it, sessions that have not started see it and are skipped.
"""

from __future__ import annotations

import threading
from typing import Any, Literal, Mapping, Sequence

from pydantic import BaseModel, ConfigDict

from exp3.config import ExperimentConfig
from exp3.layout import SessionPaths
from exp3.progress import SessionHeadline, read_session_headline
from exp3.schema import PreparedData
from exp3.sessions import Session

Lane = int | None
"""A GPU index, or None (a CPU slot or a fan-out slot: no device pinned)."""
ResultStatus = Literal["done", "cached", "failed", "skipped"]


class SessionJob(BaseModel):
    """Everything one `train_and_eval` task needs. The Prefect cache key is `cache_key`."""

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
    stop_on_failure: bool = False
    retries: int = 0
    skip_as_failed: bool = False
    """FAILED in an earlier run and not `--rerun-failed`: the task refuses to run it."""
    lane: int = 0
    gpu: int | None = None
    after: str | None = None
    """The session before this one on its lane (it waits for that one to end)."""
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
        return paths.is_done(self.cache_key) and paths.evaluations_current(self.evaluations)


class SessionResult(BaseModel):
    """What one session task ended with (the flow's outcome per session; persisted as JSON)."""

    model_config = ConfigDict(extra="forbid")

    session: str
    status: ResultStatus
    """done: ran to DONE here; cached: already done under its key, nothing ran;
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


def outcome(job: SessionJob, state_name: str, value: Any) -> SessionResult:
    """The `SessionResult` of a finished task from its Prefect state's name and result value.

    A cache hit returns the result persisted by the run that made it (a dict for results of
    exp3 before `SessionResult`); a failed task's value is its exception.
    """
    from exp3.runner import SessionSkipped

    if isinstance(value, BaseException):
        status: ResultStatus = "skipped" if isinstance(value, SessionSkipped) else "failed"
        reason = str(value).splitlines()[0] if str(value) else type(value).__name__
        return SessionResult(session=job.name, status=status, cache_key=job.cache_key, folder=str(job.paths.folder),
                             reason=reason)
    result = value if isinstance(value, SessionResult) else SessionResult(
        session=job.name, status="done", cache_key=job.cache_key, folder=str(job.paths.folder),
        headline=read_session_headline(job.paths))
    return result.model_copy(update={"status": "cached"}) if state_name == "Cached" else result


class StopSignal:
    """failure.policy 'stop' within one flow run: set by the first failed session, read by the rest.

    In memory (a `threading.Event`): the tasks of a flow run are threads of one process. A plain
    class on purpose: Prefect passes task arguments it cannot visit (not a dataclass or model) as is.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason: str | None = None

    def request(self, reason: str) -> None:
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()


def session_lanes(config: ExperimentConfig, fan_out_deployment: str | None = None,
                  fan_out_width: int = 2) -> tuple[Lane, ...]:
    """The lanes sessions run on: fan-out slots, else the configured GPUs, else `parallel_sessions` CPU slots."""
    if fan_out_deployment:
        return (None,) * fan_out_width
    return config.gpus or (None,) * config.parallel_sessions


def plan_jobs(config: ExperimentConfig, grid: Sequence[Session], lanes: Sequence[Lane], *,
              keys: Mapping[str, str], config_path: str, failed_before: frozenset[str] = frozenset(),
              deployment: str | None = None, prepared: PreparedData | None = None) -> list[SessionJob]:
    """One `SessionJob` per session of `grid`, in grid order, spread over `lanes` round robin.

    `config.output_root` must be resolved; `keys`: session name -> cache key; `failed_before`:
    names of sessions FAILED in an earlier run that must not run again (no retries either).
    """
    if not lanes:
        raise ValueError("no lanes to run sessions on: set gpus, or parallel_sessions >= 1, or fan_out_width >= 1")
    from exp3.splits import evaluation_plan

    evaluations = evaluation_plan(config.occlusion)  # once for the grid
    jobs: list[SessionJob] = []
    tail: dict[int, str] = {}
    for index, session in enumerate(grid):
        lane = index % len(lanes)
        skip = session.name in failed_before
        jobs.append(SessionJob(
            model=session.model, suffix=session.suffix, seed=session.seed, cache_key=keys[session.name],
            config_path=str(config_path), output_root=str(config.output_root),
            epochs=config.models[session.model].epochs, batch=config.train.batch,
            oom_halve_batch=config.failure.oom_halve_batch, stop_on_failure=config.failure.policy == "stop",
            retries=0 if skip else config.failure.retries, skip_as_failed=skip, lane=lane, gpu=lanes[lane],
            after=tail.get(lane),
            deployment=deployment, prepared=prepared, evaluations=evaluations))
        tail[lane] = session.name
    return jobs
