"""The flow's live view under Prefect: per session a log line per epoch, progress and epochs table artifacts and
one DONE / FAILED / cached line; after the report, its artifacts. Imported by flows/exp3.py only, after exp3.grid.cli
has set Prefect's environment."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from prefect import get_client, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.deployments import run_deployment

from exp3.grid.jobs import SessionJob, SessionResult
from exp3.grid.runner import STOPPED, SessionError, retry_batch_for, run_session_subprocess, worth_retrying
from exp3.session.layout import SessionState
from exp3.session.mirror import mirror_for
from exp3.session.progress import (
    EpochProgress,
    epoch_progress,
    epoch_table,
    format_epoch_line,
    format_failed_line,
    format_result,
    format_seconds,
    results_rows,
)

if TYPE_CHECKING:
    from exp3.report import ReportResult

SUMMARY_COLUMNS = ["model", "session", "split", "status", "map50", "map50_95", "ingredient_micro_f1",
                   "ingredient_samples_f1", "detection_f1", "rF1_micro"]  # of the exp3-summary table artifact


def _slug(job: SessionJob) -> str:
    return job.name.lower().replace("_", "-")  # artifact keys allow lowercase letters, digits and dashes


def announce(job: SessionJob, result: SessionResult) -> None:
    """A session that takes no slot: cached (progress at 100 and its result line) or skipped (why)."""
    if result.status != SessionState.CACHED:
        get_run_logger().warning(result.reason)
        return
    create_progress_artifact(progress=100.0, key=f"progress-{_slug(job)}",
                             description=f"{job.name}: epochs done / {job.epochs} (already done under this key)")
    get_run_logger().info(f"{job.name}: already done under this key (cached), {format_result(job.paths)}")


def run_job(job: SessionJob, attempt: int = 1, retry_batch: int | None = None) -> SessionResult:
    """Run `job` as a local subprocess with its live view, or as a flow run of `job.deployment`; an attempt
    after an out-of-memory failure trains with half the batch (`retry_batch` overrides)."""
    logger = get_run_logger()
    if retry_batch is None and (retry_batch := retry_batch_for(job, attempt)) is not None:
        logger.warning(f"{job.name}: out of memory last attempt, retrying with batch {retry_batch}")
    if job.deployment:
        return _run_via_deployment(job, retry_batch)
    start = time.perf_counter()
    view, mirror = EpochView(job, logger), mirror_for(job.mirror, job.output_root)

    def on_poll(finished: bool) -> None:
        view(finished)
        if mirror is not None and not finished:
            mirror.push_checkpoint(job.paths)  # at most every mirror.checkpoint_minutes

    if mirror is not None:
        mirror.set_aside_stale(job.paths, job.cache_key)
    try:
        result = run_session_subprocess(job, retry_batch=retry_batch, on_poll=on_poll)
    except SessionError as error:
        logger.error(format_failed_line(job.name, str(error), time.perf_counter() - start))
        raise
    if mirror is not None:
        mirror.push_done(job.paths)
    if result.moved_aside:
        logger.warning(f"{job.name}: results made under other inputs moved aside to "
                       f"{result.moved_aside}; trained again from scratch")
    logger.info(f"DONE {job.name}: {format_result(job.paths)}, wall {format_seconds(result.wall_s)}")
    return result


class EpochView:
    """One session's live view, called by the runner's polls (`finished`: it ended DONE): a log line per new epoch of
    results.csv (not those on disk when this run began: a done session's, or the epochs a resumed one trained in an
    earlier run, logged then; a training that starts over logs its epochs again), the epochs table and the progress
    artifact. Never a reason to stop training: its first error is warned about, and each poll tries again."""

    def __init__(self, job: SessionJob, logger: Any) -> None:
        self.job, self.logger, self.warned, self.done = job, logger, False, -1
        self.logged = len(self.epochs())
        self.artifact_id = create_progress_artifact(progress=0.0, key=f"progress-{_slug(job)}",
                                                    description=f"{job.name}: epochs done / {job.epochs}")

    def epochs(self) -> list[EpochProgress]:
        return epoch_progress(results_rows(self.job.paths), self.job.epochs)

    def __call__(self, finished: bool) -> None:
        job = self.job
        try:
            epochs = self.epochs()
            self.logged = self.logged if len(epochs) >= self.logged else 0  # fewer rows: a training started over
            done, new = job.epochs if finished else len(epochs), epochs[self.logged:]
            for epoch in new:
                self.logger.info(format_epoch_line(job.name, epoch))
            self.logged = len(epochs)
            if epochs and (new or self.done < 0):
                create_table_artifact(key=f"epochs-{_slug(job)}", table=epoch_table(epochs),
                                      description=f"{job.name}: epochs so far ({len(epochs)}/{job.epochs})")
            if done != self.done:
                update_progress_artifact(artifact_id=self.artifact_id, progress=100.0 * done / max(job.epochs, 1))
                self.done = done
        except Exception as error:  # noqa: BLE001 - see the class docstring
            if not self.warned:
                self.logger.warning(f"{job.name}: live view not updated ({type(error).__name__}: {error})"
                                    .splitlines()[0])
                self.warned = True


def fan_out_problem(deployment: str, width: int) -> str | None:
    """One line when the flow cannot fan its sessions out to `deployment`, `width` at a time (a width under 1; a
    name that is not `<flow>/<deployment>` of a deployment on the Prefect API in use), else None: said before the
    run's records are rewritten, not once per session after the data are prepared."""
    if width < 1:
        return f"fan_out_width {width}: give the number of sessions to run at once, 1 or more (one per GPU worker)"
    try:
        with get_client(sync_client=True) as client:
            client.read_deployment_by_name(deployment)
    except Exception as error:  # noqa: BLE001 - a bad name (ValueError), an unknown one (ObjectNotFound), no API
        return (f"fan_out_deployment {deployment!r} cannot be run ({type(error).__name__}: {str(error).splitlines()[0]}"
                "): give <flow name>/<deployment name> of a deployment on this Prefect API, e.g. "
                "exp3-session/exp3-session (`prefect deployment ls`)")
    return None


def _run_via_deployment(job: SessionJob, retry_batch: int | None) -> SessionResult:
    """Run the session as its own flow run of `job.deployment` (on a GPU work pool) and wait for it."""
    earlier = job.paths.failure()  # an earlier run's marker (--rerun-failed): never this run's reason
    flow_run = run_deployment(name=job.deployment, timeout=None, flow_run_name=job.name,
                              parameters={"job": job.model_copy(update={"deployment": None}).model_dump(mode="json"),
                                          "retry_batch": retry_batch})
    if not flow_run.state or not flow_run.state.is_completed():
        state = flow_run.state.name if flow_run.state else "unknown"
        record = job.paths.failure()
        if record == earlier:  # the session wrote no marker: the earlier one is not this run's reason
            record = None
        if state in ("Crashed", "Cancelled") and record is None:  # no error of its own
            raise SessionError(f"{job.name}: {STOPPED}its flow run {flow_run.name} ending {state} (its worker's "
                               "machine lost, or a cancel); its training goes on from its last saved epoch, if any, "
                               "when you run the same command again")
        raise SessionError(f"{job.name}: flow run {flow_run.name} of {job.deployment} ended {state}",
                           transient=worth_retrying(job, record, retry_batch))  # out of memory
    return job.result(SessionState.DONE, wall_s=flow_run.total_run_time.total_seconds())


def publish_report(result: ReportResult, models: list[str]) -> None:
    """Log each model's positive control; the summary table, results and files artifacts of the report."""
    # lazy: the report (pandas, altair, scipy) loads only in the flow that builds it, not in a session's flow run
    from exp3.report.markdown import control_verdict, dashboard_markdown

    logger = get_run_logger()
    for model in models:
        logger.info(control_verdict(result, model)[1].replace("**", ""))
    rows = json.loads(result.summary[SUMMARY_COLUMNS].to_json(orient="records"))
    create_table_artifact(key="exp3-summary", table=rows, description="exp3 summary metrics (one row per split)")
    create_markdown_artifact(key="exp3-results", markdown=dashboard_markdown(result),
                             description="positive control, headline findings and the occluded-split table")
    plots = "\n".join(f"- `{path}`" for path in result.files if path.suffix == ".png")
    files = f"Report: `{result.root}/report.md`\n\nSummary: `{result.root}/summary_metrics.csv`"
    create_markdown_artifact(key="exp3-plots", markdown=f"# exp3 files\n\n{files}\n\nPlots:\n{plots}\n")
