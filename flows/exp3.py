"""exp3 as a Prefect flow: audit -> occlusion suite -> 12 x train_and_eval -> report.

    python flows/exp3.py --smoke                 # all 12 sessions, 1 epoch, embedded dataset
    python flows/exp3.py --config configs/exp3.yaml [--models yolov8m] [--sessions S1_clean_train S3_mask_neck]
    python flows/exp3.py --smoke --dry-run       # the grid, each session's cache key and state; trains nothing
    python flows/exp3.py --sanity                # 1 model x 2 sessions twice: the second run must skip both
    python flows/exp3.py --pilot                 # before the overnight run: all six sessions, short, with the
                                                 # report's positive control (S2 vs S1 on occluded images)
    python flows/exp3.py --smoke --rerun-failed  # also run sessions that have a FAILED marker

Crash safety: a session's result is cached under a key built from everything it depends on
(exp3.identity.SessionInputs) and trusted only while its DONE marker matches its metrics.json
and records that key; a folder made under other inputs is moved aside to <root>/stale/ and the
session trains again from scratch; an unfinished training of the same inputs resumes from its
own last.pt. Configured weights that cannot be found stop the flow before any session starts. Run the same command
after a crash, a reboot or a `kill -9`: finished sessions are skipped, the rest continue.
The tasks are thin: each calls one library function.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

# This file shares its name with the `exp3` package: keep flows/ off sys.path so `import exp3`
# finds the library (Python and Prefect's loader both put a script's folder first on sys.path).
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != Path(__file__).resolve().parent]
if __name__ == "exp3":  # Prefect's loader registers a script under its file stem: give the name back
    del sys.modules[__name__]

REPO = Path(__file__).resolve().parents[1]
SMOKE_CONFIG = REPO / "configs" / "smoke.yaml"
PILOT_CONFIG = REPO / "configs" / "pilot.yaml"
PILOT_GPU_CONFIG = REPO / "configs" / "pilot-gpu.yaml"
SANITY_SESSIONS = ("S1_clean_train", "S3_mask_backbone_early")


def pilot_config_path(cuda_available: bool | None = None) -> Path:
    """configs/pilot-gpu.yaml where CUDA is available (both real models), else configs/pilot.yaml (yolov8n, CPU)."""
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    return PILOT_GPU_CONFIG if cuda_available else PILOT_CONFIG


def _cli_config(argv: list[str]) -> tuple[Any, argparse.Namespace]:
    """Parse the command line and load the config (before Prefect is imported)."""
    from exp3.config import load_config

    parser = argparse.ArgumentParser(prog="python flows/exp3.py", description="Run the exp3 grid as a Prefect flow.")
    parser.add_argument("--config", type=Path, default=None, help="experiment config (default configs/exp3.yaml)")
    parser.add_argument("--smoke", action="store_true", help="configs/smoke.yaml: 12 sessions x 1 epoch")
    parser.add_argument("--sanity", action="store_true", help="1 model x 2 sessions, run twice; PASS if skipped")
    parser.add_argument("--pilot", action="store_true", help="before the overnight run: the real pipeline, short "
                        "(configs/pilot.yaml on CPU, configs/pilot-gpu.yaml where CUDA is available)")
    parser.add_argument("--models", nargs="+", default=None, help="only these models")
    parser.add_argument("--sessions", nargs="+", default=None, help="only these sessions (e.g. S1_clean_train)")
    parser.add_argument("--dry-run", action="store_true", help="print the grid with keys and states; train nothing")
    parser.add_argument("--rerun-failed", action="store_true", help="run sessions with a FAILED marker again")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    if sum((args.config is not None, args.smoke or args.sanity, args.pilot)) > 1:
        parser.error("--config, --smoke/--sanity and --pilot each choose the config: pass one of them")
    if args.pilot:
        path = pilot_config_path()
        print(f"exp3 pilot: {path.relative_to(REPO)}", file=sys.stderr)
    else:
        path = SMOKE_CONFIG if (args.smoke or args.sanity) else (args.config or REPO / "configs" / "exp3.yaml")
    overrides = list(args.overrides)
    if args.sanity:
        overrides.append("output_root=runs/exp3-sanity")
    return load_config(path, overrides), args


if __name__ == "__main__":
    from exp3.config import ConfigError, resolve_output_root
    from exp3.flowenv import configure_flow_environment

    try:
        _CONFIG, _ARGS = _cli_config(sys.argv[1:])
    except ConfigError as _error:
        print(f"error: {_error}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_flow_environment(resolve_output_root(_CONFIG))  # before `import prefect`

from prefect import allow_failure, flow, get_run_logger, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact  # noqa: E402
from prefect.artifacts import update_progress_artifact  # noqa: E402
from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402

from exp3.config import ExperimentConfig, resolve_output_root, write_resolved_config  # noqa: E402
from exp3.grid import select_sessions, write_plan  # noqa: E402
from exp3.identity import session_inputs  # noqa: E402
from exp3.layout import SessionPaths  # noqa: E402
from exp3.progress import (  # noqa: E402
    epoch_table,
    format_cached_line,
    format_done_line,
    format_epoch_line,
    format_failed_line,
    read_session_result,
)
from exp3.runner import (  # noqa: E402
    ProgressUpdate,
    SessionError,
    failure_record,
    is_out_of_memory,
    oom_retry_batch,
    run_session_subprocess,
)
from exp3.runlock import RootLock  # noqa: E402
from exp3.session import PreparedData, is_done, session_dir  # noqa: E402
from exp3.sessions import Session  # noqa: E402

STOP_MARKER = ".stop-requested"


def _cache_key_from_parameters(context: Any, parameters: dict[str, Any]) -> str:
    """The key is computed by the flow (exp3.identity.SessionInputs.key) and passed in."""
    return parameters["cache_key"]


def _retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only errors marked transient (CUDA out of memory)."""
    return isinstance(state.data, SessionError) and state.data.transient


@task(name="dataset")
def dataset_task(config: ExperimentConfig, output_root: str) -> str:
    """The data.yaml: the embedded synthetic dataset (generated on first use) or the user's."""
    from exp3.session import dataset_yaml

    return str(dataset_yaml(config, Path(output_root)))


@task(name="audit-dataset")
def audit_dataset_task(data_yaml: str, output_root: str) -> dict[str, Any]:
    """Audit the dataset (once per content); fail the flow before anything is built if it is bad."""
    from exp3.dataset import audit_once

    report = audit_once(data_yaml, Path(output_root) / "audits")
    return {"fingerprint": report["fingerprint"], "counts": report["counts"]}


@task(name="resolve-weights")
def resolve_weights_task(config: ExperimentConfig, models: list[str]) -> dict[str, str | None]:
    """Each model's weights sha256 (None = from scratch on purpose); fails the flow if any cannot be had."""
    from exp3.session import resolve_model_weights

    return {model: resolve_model_weights(config, model).sha256 for model in models}


@task(name="prepare-data")
def prepare_data_task(config: ExperimentConfig, output_root: str) -> dict[str, Any]:
    """Embedded dataset (first use), fixed occlusion suite and S2 train set: built once, verified after."""
    from dataclasses import asdict

    from exp3.session import prepare_data

    return asdict(prepare_data(config, Path(output_root)))


def _artifact_slug(session: Session) -> str:
    """Artifact keys allow lowercase letters, digits and dashes."""
    return session.name.lower().replace("_", "-")


def _announce_done(root: Path, session: Session, epochs: int) -> None:
    """A session found done under its key (a cache hit runs no task body): progress at 100 and its result line."""
    create_progress_artifact(progress=100.0, key=f"progress-{_artifact_slug(session)}",
                             description=f"{session.name}: epochs done / {epochs} (already done under this key)")
    get_run_logger().info(format_cached_line(session.name, read_session_result(SessionPaths.of(root, session))))


def _run_with_progress(config_path: Path, session: Session, root: Path, cache_key: str, epochs: int,
                       gpu: int | None, retry_batch: int | None) -> dict[str, Any]:
    """`run_session_subprocess` with live reporting: one log line per finished epoch, a progress artifact
    and an epochs table artifact updated every epoch, and one DONE / FAILED line at the end."""
    logger = get_run_logger()
    artifact_id = create_progress_artifact(progress=0.0, key=f"progress-{_artifact_slug(session)}",
                                           description=f"{session.name}: epochs done / {epochs}")
    tabled = False

    def _progress(update: ProgressUpdate) -> None:
        nonlocal tabled
        for epoch in update.new_epochs:
            logger.info(format_epoch_line(session.name, epoch))
        if update.epochs and (update.new_epochs or not tabled):
            create_table_artifact(key=f"epochs-{_artifact_slug(session)}", table=epoch_table(list(update.epochs)),
                                  description=f"{session.name}: epochs so far ({len(update.epochs)}/{epochs})")
            tabled = True
        if update.total:
            update_progress_artifact(artifact_id=artifact_id, progress=100.0 * update.done / max(update.total, 1))

    start = time.perf_counter()
    try:
        run = run_session_subprocess(config_path, session, root, cache_key, gpu=gpu, retry_batch=retry_batch,
                                     on_progress=_progress, epochs_total=epochs)
    except SessionError as error:
        logger.error(format_failed_line(session.name, str(error), time.perf_counter() - start))
        raise
    if run.moved_aside:
        logger.warning(f"{session.name}: results made under other inputs moved aside to "
                       f"{run.moved_aside}; trained again from scratch")
    if run.ran:
        logger.info(format_done_line(session.name, read_session_result(SessionPaths.of(root, session)), run.wall_s))
    return {"session": run.session, "status": run.status, "ran": run.ran, "wall_s": run.wall_s,
            "folder": run.folder, "retry_batch": run.retry_batch, "moved_aside": run.moved_aside}


def _run_via_deployment(deployment: str, config_path: Path, session: Session, cache_key: str,
                        retry_batch: int | None) -> dict[str, Any]:
    """Run the session as its own flow run of `deployment` (on a GPU work pool) and wait for it."""
    from prefect.deployments import run_deployment

    flow_run = run_deployment(name=deployment, timeout=None, flow_run_name=session.name,
                              parameters={"config_file": str(config_path), "model": session.model,
                                          "suffix": session.suffix, "seed": session.seed,
                                          "cache_key": cache_key, "retry_batch": retry_batch})
    if not flow_run.state or not flow_run.state.is_completed():
        state = flow_run.state.name if flow_run.state else "unknown"
        raise SessionError(f"{session.name}: flow run {flow_run.name} of {deployment} ended {state}")
    return {"session": session.name, "status": "done", "ran": True, "wall_s": flow_run.total_run_time.total_seconds(),
            "folder": "", "retry_batch": retry_batch, "flow_run": str(flow_run.id)}


@task(name="train_and_eval", persist_result=True, result_serializer="json",
      cache_key_fn=_cache_key_from_parameters)
def train_and_eval(config_path: str, model: str, suffix: str, seed: int | None, output_root: str, cache_key: str,
                   epochs: int, batch: int | None, oom_halve_batch: bool, stop_on_failure: bool,
                   skip_as_failed: bool = False, deployment: str | None = None,
                   gpu: int | None = None) -> dict[str, Any]:
    """One session: a subprocess here (`python -m exp3.session`), or a flow run of `deployment`."""
    from prefect.runtime import task_run

    root, session = Path(output_root), Session(model, suffix, seed)
    previous = failure_record(session_dir(root, session))
    if skip_as_failed and SessionPaths.of(root, session).state(cache_key) == "failed":
        raise SessionError(f"{session.name}: failed in an earlier run ({previous.get('error')}); "
                           "not re-run without --rerun-failed")
    retry_batch: int | None = None
    if task_run.run_count > 1 and oom_halve_batch and is_out_of_memory(previous):
        retry_batch = oom_retry_batch(batch)
        get_run_logger().warning(f"{session.name}: out of memory last attempt, retrying with batch {retry_batch}")
    if (root / STOP_MARKER).exists():
        raise SessionError(f"{session.name}: not run, an earlier session failed and failure.policy is 'stop'")
    try:
        if deployment:
            return _run_via_deployment(deployment, Path(config_path), session, cache_key, retry_batch)
        return _run_with_progress(Path(config_path), session, root, cache_key, epochs, gpu, retry_batch)
    except SessionError:
        if stop_on_failure:
            (root / STOP_MARKER).touch()
        raise


@task(name="report")
def report_task(output_root: str, models: list[str], seeds: list[int], sessions: list[str]) -> dict[str, Any]:
    """Summary tables, plots and report.md from the session folders (also for a partial grid)."""
    from exp3.report import build_report, dashboard_markdown, positive_control

    result = build_report(Path(output_root), models=models, seeds=seeds, sessions=sessions)
    for model in models:
        get_run_logger().info(positive_control(result.comparisons, model)[1].replace("**", ""))
    columns = ["model", "session", "split", "status", "map50", "map50_95", "ingredient_micro_f1",
               "ingredient_samples_f1", "detection_f1", "rF1_micro"]
    rows = json.loads(result.summary[columns].to_json(orient="records"))
    return {"summary_csv": str(Path(output_root) / "summary_metrics.csv"), "rows": rows,
            "plots": [str(p) for p in result.files if p.suffix == ".png"],
            "report_md": str(Path(output_root) / "report.md"), "dashboard_md": dashboard_markdown(result)}


def _publish_artifacts(report: dict[str, Any]) -> None:
    rows = report["rows"]
    create_table_artifact(key="exp3-summary", table=rows, description="exp3 summary metrics (one row per split)")
    create_markdown_artifact(key="exp3-results", markdown=report["dashboard_md"],
                             description="positive control, headline findings and the occluded-split table")
    plots = "\n".join(f"- `{path}`" for path in report["plots"])
    create_markdown_artifact(key="exp3-plots", markdown=f"# exp3 files\n\nReport: `{report['report_md']}`\n\n"
                                                       f"Summary: `{report['summary_csv']}`\n\nPlots:\n{plots}\n")


MAX_PARALLEL_SESSIONS = 16
"""Thread slots for session tasks; the real limit is the number of lanes (one per GPU, or one)."""


@flow(name="exp3", task_runner=ThreadPoolTaskRunner(max_workers=MAX_PARALLEL_SESSIONS), log_prints=True)
def exp3_flow(config: ExperimentConfig = ExperimentConfig(), config_file: str | None = None,
              overrides: list[str] | None = None, models: list[str] | None = None,
              sessions: list[str] | None = None, rerun_failed: bool = False,
              fan_out_deployment: str | None = None, fan_out_width: int = 2) -> dict[str, Any]:
    """Audit, build the occlusion suite once, run the grid, then always report.

    `config_file` (+ `overrides`), when given, replaces `config` (deployments use it).
    `fan_out_deployment` ("exp3-session/exp3-session") runs each session as a flow run of that
    deployment on its work pool, at most `fan_out_width` at a time, instead of a local subprocess.
    Ends Failed (after reporting) if any session failed.
    """
    from exp3.config import load_config
    from exp3.offline import apply_offline_environment
    from exp3.splits import evaluation_plan

    logger = get_run_logger()
    if config_file is not None:
        config = load_config(config_file, overrides)
    root = resolve_output_root(config)
    apply_offline_environment(root)
    config = config.model_copy(update={"output_root": root})
    grid = select_sessions(config, models, sessions)
    with RootLock(root, command="exp3 flow") as lock:
        if lock.took_over:
            logger.warning(f"took over a stale lock from a dead run: {lock.took_over}")
        (root / STOP_MARKER).unlink(missing_ok=True)
        config_path = write_resolved_config(config, root)
        audit_dataset_task(dataset_task(config, str(root)), str(root))
        weights = resolve_weights_task(config, list(dict.fromkeys(s.model for s in grid)))
        prepared = PreparedData(**prepare_data_task(config, str(root)))
        keys = {session.name: session_inputs(config, session, prepared.dataset_fingerprint, prepared.suite_id,
                                             weights[session.model]).key for session in grid}
        write_plan(root, keys)
        # Lanes: session i runs on lane i % n after the previous session of its lane, whatever that
        # one's outcome (allow_failure); a lane is a GPU, a CPU slot (parallel_sessions) or a fan-out slot.
        lanes: tuple[int | None, ...] = (None,) * fan_out_width if fan_out_deployment else (
            config.gpus or (None,) * config.parallel_sessions)
        lane_tail: dict[int, Any] = {}
        futures = {}
        for index, session in enumerate(grid):
            lane = index % len(lanes)
            paths, key = SessionPaths.of(root, session), keys[session.name]
            failed_before = paths.state(key) == "failed" and not rerun_failed
            done = paths.is_done(key) and paths.evaluations_current(evaluation_plan(config.occlusion))
            options = {"task_run_name": session.name, "refresh_cache": not done,
                       "retries": 0 if failed_before else config.failure.retries,
                       "retry_condition_fn": _retry_if_transient, "result_storage": root / ".prefect" / "results"}
            if failed_before:
                logger.warning(f"{session.name} has a FAILED marker: not re-run (use --rerun-failed)")
            if done:  # a cache hit runs no task body: its progress and result are announced here
                _announce_done(root, session, config.models[session.model].epochs)
            wait_for = [allow_failure(lane_tail[lane])] if lane in lane_tail else []
            futures[session.name] = lane_tail[lane] = train_and_eval.with_options(**options).submit(
                config_path=str(config_path), model=session.model, suffix=session.suffix, seed=session.seed,
                output_root=str(root), cache_key=key, epochs=config.models[session.model].epochs,
                batch=config.train.batch, oom_halve_batch=config.failure.oom_halve_batch,
                stop_on_failure=config.failure.policy == "stop", skip_as_failed=failed_before,
                deployment=fan_out_deployment, gpu=lanes[lane], wait_for=wait_for)
        outcome: dict[str, Any] = {}
        for name, future in futures.items():
            future.wait()
            state = future.state
            result = future.result(raise_on_failure=False)
            outcome[name] = {"state": state.name, "ran": result.get("ran") if isinstance(result, dict) else None,
                             "error": None if not state.is_failed() else str(result)}
        report = report_task(str(root), list(dict.fromkeys(s.model for s in grid)), list(config.seeds),
                             list(dict.fromkeys(s.suffix for s in grid)))
        _publish_artifacts(report)
    failed = [name for name, entry in outcome.items() if entry["error"]]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(outcome)} sessions failed: {', '.join(failed)} "
                           f"(FAILED markers under {root}; fix and re-run with --rerun-failed)")
    return outcome


@flow(name="exp3-session", log_prints=True)
def exp3_session_flow(config_file: str, model: str, suffix: str, seed: int | None = None,
                      cache_key: str | None = None, retry_batch: int | None = None) -> dict[str, Any]:
    """One session as its own flow run (the per-session deployment the parent flow fans out to).

    The GPU is the worker's: start one worker per GPU with CUDA_VISIBLE_DEVICES set. Without
    `cache_key` (a run started by hand) the key is computed here from the prepared inputs.
    """
    from exp3.config import load_config
    from exp3.session import session_key

    config = load_config(config_file)
    root = resolve_output_root(config)
    session = Session(model, suffix, seed)
    key = cache_key or session_key(config, session, root)
    if SessionPaths.of(root, session).is_done(key):
        _announce_done(root, session, config.models[model].epochs)
    return _run_with_progress(Path(config_file), session, root, key, config.models[model].epochs, None, retry_batch)


# ---------------------------------------------------------------------------------------------
# Command line


def _dry_run(config: ExperimentConfig, args: argparse.Namespace) -> int:
    from exp3.dataset import dataset_fingerprint, read_data_yaml
    from exp3.grid import grid_status
    from exp3.occlusion import occlusion_suite_name
    from exp3.runlock import root_is_live
    from exp3.session import resolve_model_weights

    root = resolve_output_root(config)
    grid = select_sessions(config, args.models, args.sessions)
    weights = {model: resolve_model_weights(config, model).sha256 for model in dict.fromkeys(s.model for s in grid)}
    data_dir = root / "data" / f"synthetic-{config.dataset.preset}-seed{config.dataset.synthetic_seed}"
    data_yaml = Path(config.dataset.data_yaml) if config.dataset.kind == "yaml" else data_dir / "data.yaml"
    ready = data_yaml.is_file()  # the synthetic dataset exists after the first run; a user's always
    fingerprint = dataset_fingerprint(read_data_yaml(data_yaml)) if ready else None
    suite = occlusion_suite_name(data_yaml, config.occlusion) if ready else None
    keys = {s.name: session_inputs(config, s, fingerprint, suite, weights[s.model]).key for s in grid} if ready else {}
    print(f"exp3 dry run: {len(grid)} sessions under {root}"
          + (f" (suite {suite})" if ready else " (dataset not generated yet: keys appear after the first run)"))
    print(f"  models: {', '.join(dict.fromkeys(s.model for s in grid))} "
          f"(configured: {', '.join(config.models)}; `<name>: null` in a config file removes an inherited one)")
    for session, status in zip(grid, grid_status(config, root, grid, root_is_live(root), keys)):
        print(f"  {session.name:<40} {status.state:<8} {status.epochs_done}/{status.epochs_total}  "
              f"{keys.get(session.name, '-')}")
    return 0


def _train_headers(root: Path, session: Session) -> int:
    log = session_dir(root, session) / "logs" / "train.log"
    return log.read_text(errors="replace").count("==== exp3 train") if log.is_file() else 0


def _sanity(config: ExperimentConfig) -> int:
    """Run 1 model x 2 sessions twice; PASS if the second run trained and evaluated nothing."""
    model = next(iter(config.models))
    grid = [Session(model, suffix) for suffix in SANITY_SESSIONS]
    root = resolve_output_root(config)
    first = exp3_flow(config=config, models=[model], sessions=list(SANITY_SESSIONS))
    headers_first = {s.name: _train_headers(root, s) for s in grid}
    second = exp3_flow(config=config, models=[model], sessions=list(SANITY_SESSIONS))
    headers_second = {s.name: _train_headers(root, s) for s in grid}
    skipped = all(entry["state"] == "Cached" or entry["ran"] is False for entry in second.values())
    untouched = headers_first == headers_second and all(is_done(session_dir(root, s)) for s in grid)
    verdict = "PASS" if skipped and untouched else "FAIL"
    print(json.dumps({"first_run": first, "second_run": second, "train_attempts": headers_second}, indent=2))
    print(f"sanity {verdict}: second run {'skipped' if skipped else 'did NOT skip'} both sessions; "
          f"training attempts per session {headers_second}")
    return 0 if verdict == "PASS" else 1


def main(config: ExperimentConfig, args: argparse.Namespace) -> int:
    """Entry point after the environment is set (see the `__main__` block at the top)."""
    from exp3.runlock import RootBusy, check_free

    from exp3.session import resolve_model_weights
    from exp3.weights import WeightsError

    try:
        grid = select_sessions(config, args.models, args.sessions)  # validate names before anything runs
        for model in dict.fromkeys(session.model for session in grid):
            resolve_model_weights(config, model)  # refuse missing weights before any session starts
        root = resolve_output_root(config)
        if not args.dry_run:
            check_free(root)  # raises RootBusy naming the live run
        if args.dry_run:
            return _dry_run(config, args)
        if args.sanity:
            return _sanity(config)
        state = exp3_flow(config=config, models=args.models, sessions=args.sessions,
                          rerun_failed=args.rerun_failed, return_state=True)
    except (ValueError, RootBusy, WeightsError) as error:
        print(f"error: {error}".splitlines()[0], file=sys.stderr)
        return 2
    if state.is_failed():
        print(f"exp3: flow ended {state.name}: {state.message}", file=sys.stderr)
        return 1
    print(f"exp3: all sessions done; results under {resolve_output_root(config)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(_CONFIG, _ARGS))
