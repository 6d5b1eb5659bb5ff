"""exp3 as a Prefect flow: audit -> prepare -> each session on the first free slot -> report.
`python flows/exp3.py --smoke` runs all 12 sessions for 1 epoch (`--help`, exp3/grid/cli.py). A session its folder
calls done (`SessionPaths.state(key)`) takes no slot: after a crash or a `kill -9`, the same command skips the
finished sessions and resumes an interrupted one from its own last.pt. Each task calls one library function."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

# This file shares its name with the `exp3` package (users, prefect.yaml and the notebooks call it). Python and
# Prefect's loader put flows/ first on sys.path, and Prefect's loader registers the script as a package named
# `exp3`: undo both, so that `import exp3` is the library.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != Path(__file__).resolve().parent]
if __name__ == "exp3":
    del sys.modules[__name__]

if __name__ == "__main__":  # parse the command line and set the environment before Prefect is imported
    from exp3.grid.cli import run, start

    CONFIG, ARGS = start(sys.argv[1:])

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402

from exp3.config import ExperimentConfig, load_config, write_resolved_config  # noqa: E402
from exp3.dataset.audit import AuditedData  # noqa: E402
from exp3.grid.jobs import SessionJob, SessionResult, machine_problem, plan_jobs, run_on_slots, session_slots  # noqa: E402
from exp3.grid.live import announce, fan_out_problem, publish_report, run_job  # noqa: E402
from exp3.grid.runner import STOPPED, retry_if_transient, sessions_end_first  # noqa: E402
from exp3.schema import PreparedData  # noqa: E402
from exp3.session.layout import SessionState  # noqa: E402
from exp3.session.plan import planned_keys, select_sessions, write_plan  # noqa: E402
from exp3.session.runlock import RootLock  # noqa: E402

MAX_PARALLEL_SESSIONS = 16  # threads for session tasks; the real limit is the slots (`gpus`, `parallel_sessions`)


@task(name="audit-dataset")
def audit_task(config: ExperimentConfig) -> AuditedData:
    """The data.yaml and its fingerprint, audited once per content: blocking problems fail the flow here."""
    from exp3.dataset.audit import audit_once
    from exp3.session.prepare import dataset_yaml

    audited = audit_once(dataset_yaml(config, config.output_root), config.output_root / "audits")
    for line in audited.warnings:
        get_run_logger().warning(f"dataset audit: {line}")
    return audited


@task(name="resolve-weights")
def resolve_weights_task(config: ExperimentConfig, models: list[str]) -> dict[str, str | None]:
    """Each model's weights sha256 (None = from scratch on purpose); fails the flow if one of `models` (this run's)
    cannot be had. The config's other models are resolved for plan.json only: never downloaded, left out if absent."""
    from exp3.session.prepare import resolve_model_weights
    from exp3.train.weights import WeightsError

    weights = {model: resolve_model_weights(config, model).sha256 for model in models}
    no_download = config.model_copy(update={"download_weights": False})
    for model in (model for model in config.models if model not in weights):
        with contextlib.suppress(WeightsError):
            weights[model] = resolve_model_weights(no_download, model).sha256
    return weights


@task(name="prepare-data")
def prepare_task(config: ExperimentConfig, audited: AuditedData) -> PreparedData:
    """The occlusion suites and S2's train set, built once (verified after), handed down to every session."""
    from exp3.session.prepare import prepare_data

    return prepare_data(config, config.output_root, audited=audited)


@task(name="mirror-restore")
def restore_task(config: ExperimentConfig, keys: dict[str, str]) -> list[str]:
    """What the mirror holds and the local root lacks, brought back (a done session verified, an unfinished one
    resumes); then what the mirror lacks of the local root's done sessions, copied up. One line per restored one."""
    from exp3.session.mirror import describe, done_sessions, mirror_for

    mirror = mirror_for(config.mirror, config.output_root)
    restored = mirror.restore(keys)
    for line in [describe(mirror.path), *restored]:
        get_run_logger().info(line)
    for paths in done_sessions(config.output_root, keys):
        mirror.push_done(paths)
    return restored


@task(name="mirror-report")
def mirror_report_task(config: ExperimentConfig, keys: dict[str, str]) -> None:
    """The report's files, and any done session a failed copy left out, copied to the mirror."""
    from exp3.session.mirror import describe, done_sessions, mirror_for

    mirror = mirror_for(config.mirror, config.output_root)
    mirror.push_report(done_sessions(config.output_root, keys))
    get_run_logger().info(f"{describe(mirror.path)} ({mirror.bytes_written / 1e6:.1f} MB written by this run)")


@task(name="train_and_eval", task_run_name="{job.name}", retry_condition_fn=retry_if_transient)
def train_and_eval(job: SessionJob) -> SessionResult:
    """One session: a subprocess here (`python -m exp3.session`), or a flow run of `job.deployment`."""
    from prefect.runtime import task_run

    return run_job(job, attempt=task_run.run_count)


@task(name="report")
def report_task(output_root: Path, models: list[str], seeds: list[int], sessions: list[str]) -> None:
    """Summary tables, plots and report.md from the session folders of the config's grid (also when only some are
    done); UI artifacts."""
    from exp3.report import build_report

    publish_report(build_report(output_root, models=models, seeds=seeds, sessions=sessions), models)


@flow(name="exp3", task_runner=ThreadPoolTaskRunner(max_workers=MAX_PARALLEL_SESSIONS), log_prints=True)
def exp3_flow(config: ExperimentConfig = ExperimentConfig(), config_file: str | None = None,
              overrides: list[str] | None = None, models: list[str] | None = None,
              sessions: list[str] | None = None, rerun_failed: bool = False,
              fan_out_deployment: str | None = None, fan_out_width: int = 2) -> dict[str, SessionResult]:
    """Audit, prepare the data once, run each session on the first free slot, then always report; Failed (after
    the report) if any session failed.

    Args:
        config: the experiment, used when config_file is empty; with a config_file (the shipped deployments) this
            form's values are not used, and a changed one is refused: change the file's values in overrides.
        config_file: a config file (configs/*.yaml) that replaces config.
        overrides: KEY=VALUE changes to config_file's values (e.g. models.yolov8m.epochs=50).
        models: run only these models (default: all in the config).
        sessions: run only these sessions (e.g. S1_clean_train, or yolov8m__S2_occ_train).
        rerun_failed: run sessions that FAILED in an earlier run again.
        fan_out_deployment: "<flow>/<deployment>" (exp3-session/exp3-session): each session a flow run of it.
        fan_out_width: sessions in flight at once when fanned out (the number of GPU workers).
    """
    from exp3.occlusion.verify import moved_root
    from exp3.session.mirror import foreign_folder, mirror_for
    from exp3.train.offline import apply_offline_environment

    logger = get_run_logger()
    if config_file is not None and config != ExperimentConfig():  # the UI's form beside a deployment's file
        raise ValueError(f"both config_file {config_file!r} and a config were given: edit the file's values with "
                         "overrides (KEY=VALUE), or leave config_file empty to run the config given")
    if overrides and config_file is None:
        raise ValueError(f"overrides {overrides} need config_file: they apply to a config file's values")
    if fan_out_deployment and (problem := fan_out_problem(fan_out_deployment, fan_out_width)) is not None:
        raise ValueError(problem)
    if config_file is not None:
        config = load_config(config_file, overrides)
    root = config.output_root.absolute()
    # the UI's and a deployment's runs meet the command line's refusals here, before anything is written there
    if (problem := foreign_folder(root, "output_root") or moved_root(root)) is not None:
        raise ValueError(problem)
    apply_offline_environment(root)
    config = config.model_copy(update={"output_root": root})
    grid = select_sessions(config, models, sessions)
    model_names = list(dict.fromkeys(s.model for s in grid))
    mirror_for(config.mirror, root)  # a mirror overlapping the root, or a folder of the user's: refused first
    if not fan_out_deployment and (problem := machine_problem(config)) is not None:  # sessions run on this machine
        raise ValueError(problem)
    with RootLock(root, command="exp3 flow") as lock, sessions_end_first():  # a signal: sessions end, then the lock
        if lock.took_over:
            logger.warning(f"took over a stale lock from a dead run: {lock.took_over}")
        # every refusal (weights, data) before config_resolved.yaml and plan.json are rewritten: a refused run
        # leaves a finished root's record as it was
        weights = resolve_weights_task(config, model_names)
        audited = audit_task(config)
        prepared = prepare_task(config, audited)
        config_path = write_resolved_config(config, root)
        keys = planned_keys(config, prepared.dataset_fingerprint, prepared.suite_id, weights)  # the config's grid
        write_plan(root, keys)
        if config.mirror.path is not None:
            restore_task(config, keys)
        jobs = plan_jobs(config, grid, keys=keys, config_path=str(config_path), rerun_failed=rerun_failed,
                         deployment=fan_out_deployment, prepared=prepared)
        start = train_and_eval.with_options(retries=config.failure.retries).submit  # retries: out of memory
        results = run_on_slots(jobs, session_slots(config, fan_out_deployment, fan_out_width), start=start,
                               stop_on_failure=config.failure.policy == "stop", announce=announce)
        # the config's grid, not this run's selection: a run of one session never replaces the report of the others
        report_task(root, [model for model in config.models if model in weights], list(config.seeds),
                    list(config.sessions))
        if config.mirror.path is not None:
            mirror_report_task(config, keys)
    failed, not_run = ([job for job in jobs if job.name in results and results[job.name].status == state]
                       for state in (SessionState.FAILED, SessionState.SKIPPED))
    stopped = [job.name for job in failed if (results[job.name].reason or "").startswith(f"{job.name}: {STOPPED}")]
    problems = []
    if broken := [job.name for job in failed if job.name not in stopped]:
        problems.append(f"{len(broken)} of {len(results)} sessions failed: {', '.join(broken)} (each FAILED line "
                        "above says why; fix and re-run with --rerun-failed)")
    if stopped:
        problems.append(f"{len(stopped)} stopped before they ended (a signal, or a lost worker): {', '.join(stopped)} "
                        "(run the same command again: they go on from their last saved epoch, if any)")
    if not_run:
        problems.append(f"{len(not_run)} not run (failed before, or after a failure with failure.policy 'stop'): "
                        f"{', '.join(job.name for job in not_run)} (--rerun-failed runs them)")
    if problems:
        raise RuntimeError("; ".join(problems))
    return results


@flow(name="exp3-session", log_prints=True)
def exp3_session_flow(job: SessionJob, retry_batch: int | None = None) -> SessionResult:
    """One session as a flow run of the per-session deployment the parent fans out to, with the `job` it planned.
    The GPU is the worker's: start one worker per GPU with CUDA_VISIBLE_DEVICES set."""
    return run_job(job, retry_batch=retry_batch)


if __name__ == "__main__":
    raise SystemExit(run(CONFIG, ARGS, exp3_flow))
