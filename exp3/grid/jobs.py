"""What crosses the flow's task boundary (a `SessionJob` in, a `SessionResult` out), and `run_on_slots`, which starts
each job, in grid order, on the first free slot: a GPU index (`gpus: [0, 0, 1]`: two sessions on GPU 0), a CPU slot
or a fan-out slot. A queue of slots, not Prefect's concurrency limits: those do not say which GPU a run got."""

from __future__ import annotations

import functools
import os
import queue
from typing import Any, Callable, Mapping, Sequence

from pydantic import BaseModel, ConfigDict

from exp3.config import ExperimentConfig, MirrorConfig
from exp3.occlusion.identity import evaluation_plan
from exp3.schema import PreparedData
from exp3.session.layout import SessionPaths, SessionState
from exp3.sessions import Session
from exp3.train.integrations import missing_packages

Slot = int | None  # a GPU index, or None (a CPU or fan-out slot: no device pinned)


class SessionJob(BaseModel):
    """Everything one `train_and_eval` task needs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    suffix: str
    seed: int | None = None
    cache_key: str  # `exp3.identity.SessionInputs.key` of the session under the prepared data and weights
    config_path: str  # the resolved config the flow wrote (`<output_root>/config_resolved.yaml`)
    output_root: str
    epochs: int
    batch: int | None = None  # the configured batch (an out-of-memory retry halves it when `oom_halve_batch`)
    oom_halve_batch: bool = True
    rerun_failed: bool = False  # run it even if it FAILED in an earlier run (`--rerun-failed`)
    gpu: int | None = None  # the GPU of the slot it got when it started, pinned with CUDA_VISIBLE_DEVICES
    deployment: str | None = None  # run as a flow run of this deployment (fan-out), not a local subprocess
    prepared: PreparedData | None = None  # what the flow prepared (data yaml, fingerprint, suites)
    evaluations: dict[str, str] = {}  # split -> spec key the config asks for (`evaluation_plan`)
    mirror: MirrorConfig = MirrorConfig()  # where its checkpoints and results are copied (exp3/session/mirror.py)
    integrations: tuple[str, ...] = ()  # the config's `integrations`: the settings file the runner writes for it

    session = property(lambda self: Session(self.model, self.suffix, self.seed))
    name = property(lambda self: self.session.name)
    paths = property(lambda self: SessionPaths.of(self.output_root, self.session))

    def result(self, status: SessionState, **fields: Any) -> SessionResult:
        return SessionResult(session=self.name, status=status, cache_key=self.cache_key, **fields)


class SessionResult(BaseModel):
    """What one session ended with in this flow run: DONE (ran to DONE here), CACHED (done before: nothing ran),
    FAILED (here) or SKIPPED (not started: FAILED in an earlier run, or failure.policy 'stop')."""

    model_config = ConfigDict(extra="forbid")

    session: str
    status: SessionState
    cache_key: str
    wall_s: float = 0.0
    reason: str | None = None  # the one-line error of a failed or skipped session
    moved_aside: str | None = None  # where results made under other inputs were moved before it trained again


def outcome(job: SessionJob, value: Any) -> SessionResult:
    """The `SessionResult` of a finished task from its result value (a failed task's value is its exception)."""
    if isinstance(value, SessionResult):
        return value
    return job.result(SessionState.FAILED, reason=(str(value) or type(value).__name__).splitlines()[0])


def done_result(job: SessionJob) -> SessionResult | None:
    """The CACHED result of a job already done under its key with every configured evaluation (nothing to run; one
    missing: evaluate only), else None."""
    current = job.paths.is_done(job.cache_key) and job.paths.evaluations_current(job.evaluations)
    return job.result(SessionState.CACHED) if current else None


def session_slots(config: ExperimentConfig, fan_out_deployment: str | None = None,
                  fan_out_width: int = 2) -> tuple[Slot, ...]:
    """The slots sessions run on: fan-out slots, else the configured GPUs (repeats allowed), else CPU slots."""
    return (None,) * fan_out_width if fan_out_deployment else (config.gpus or (None,) * config.parallel_sessions)


def machine_problem(config: ExperimentConfig) -> str | None:
    """One line when this machine cannot run the config's sessions (an integration not installed; `gpus` or a CUDA
    `train.device` naming a GPU it does not show: no CUDA, or an index beyond the GPUs CUDA_VISIBLE_DEVICES leaves):
    every session would fail alike, after the data is prepared."""
    if (missing := missing_packages(config.integrations)) is not None:
        return missing
    device = str(config.train.device or "").lower().removeprefix("cuda:")
    wanted = [*config.gpus, *([int(device)] if device.isdigit() else [])]
    if not wanted:
        return None
    import torch  # lazy: a CPU config never needs it here

    count = torch.cuda.device_count()
    if max(wanted) < count:
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    where = f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else ""
    fix = f"name GPUs 0..{count - 1}" if count else ("set gpus: [] and train.device: cpu (or null), or run on a "
                                                    "machine with a GPU")
    return (f"gpus {list(config.gpus)} / train.device {config.train.device!r} name GPU {max(wanted)}, but this "
            f"machine shows {count} GPU(s){where}: {fix}")


def plan_jobs(config: ExperimentConfig, grid: Sequence[Session], *, keys: Mapping[str, str], config_path: str,
              rerun_failed: bool = False, deployment: str | None = None,
              prepared: PreparedData | None = None) -> list[SessionJob]:
    """One `SessionJob` per session of `grid`, in grid order (`keys`: session name -> cache key). Reads no file."""
    evaluations = evaluation_plan(config.occlusion)  # once for the grid
    return [SessionJob(model=session.model, suffix=session.suffix, seed=session.seed, cache_key=keys[session.name],
                       config_path=str(config_path), output_root=str(config.output_root),
                       epochs=config.models[session.model].epochs, batch=config.train.batch,
                       oom_halve_batch=config.failure.oom_halve_batch,
                       rerun_failed=rerun_failed, deployment=deployment, prepared=prepared, evaluations=evaluations,
                       mirror=config.mirror, integrations=config.integrations)
            for session in grid]


def run_on_slots(jobs: Sequence[SessionJob], slots: Sequence[Slot], start: Callable[[SessionJob], Any], *,
                 stop_on_failure: bool = False,
                 announce: Callable[[SessionJob, SessionResult], None] = lambda job, result: None
                 ) -> dict[str, SessionResult]:
    """Start `jobs` in order, each on the first slot free (`start(job)`, `job.gpu` its slot's, returns a Prefect
    future); return every job's result. A job done (`done_result`) or FAILED before (without `rerun_failed`) takes
    no slot; with `stop_on_failure`, once one failed the jobs not started are skipped. `announce` hears those."""
    free: queue.SimpleQueue[Slot] = queue.SimpleQueue()
    for slot in slots:
        free.put(slot)
    results: dict[str, SessionResult] = {}
    failed: list[str] = []

    def ended(job: SessionJob, slot: Slot, future: Any) -> None:
        try:
            results[job.name] = outcome(job, future.result(raise_on_failure=False))
            if results[job.name].status == SessionState.FAILED:
                failed.append(job.name)
        finally:
            free.put(slot)  # after the failure is recorded: the next job sees it

    def not_started(job: SessionJob, result: SessionResult) -> None:
        results[job.name] = result
        announce(job, result)

    for job in jobs:
        if (done := done_result(job)) is not None:
            not_started(job, done)
        elif not job.rerun_failed and job.paths.state(job.cache_key) == SessionState.FAILED:
            failed.append(job.name)  # with failure.policy 'stop', a re-run starts nothing after it either
            error = (job.paths.failure() or {}).get("error")
            not_started(job, job.result(SessionState.SKIPPED, reason=f"{job.name}: failed in an earlier run ({error}); "
                                                                      "not re-run without --rerun-failed"))
        else:
            slot = free.get()  # waits until a running session ends
            if failed and stop_on_failure:
                free.put(slot)
                not_started(job, job.result(SessionState.SKIPPED, reason=f"{job.name}: not run, {failed[0]} failed "
                                                                          "and failure.policy is 'stop'"))
            else:
                start(job.model_copy(update={"gpu": slot})).add_done_callback(functools.partial(ended, job, slot))
    for _ in slots:
        free.get()  # every slot back: every started job has ended
    return {job.name: results[job.name] for job in jobs}
