"""The command line of `python flows/exp3.py` (`--help` says each option), in two steps because Prefect reads its
settings when imported (no Prefect import here): `start(argv)` parses, loads the config and sets the environment;
then flows/exp3.py imports Prefect and `run(config, args, exp3_flow)` validates and runs, returning the exit code."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

from exp3.config import ConfigError, ExperimentConfig, load_config, writable_output_root
from exp3.dataset.audit import dataset_fingerprint, read_data_yaml
from exp3.grid.flowenv import configure_flow_environment, database_problem
from exp3.grid.jobs import machine_problem
from exp3.session.layout import SessionState
from exp3.session.mirror import foreign_folder, mirror_for, on_mirror_storage
from exp3.session.plan import planned_keys, select_sessions
from exp3.session.runlock import LockBusy, RootLock
from exp3.sessions import Session
from exp3.status import grid_status
from exp3.train.integrations import MLFLOW_STORE
from exp3.train.weights import WeightsError

REPO = Path(__file__).resolve().parents[2]
SMOKE_CONFIG = REPO / "configs" / "smoke.yaml"
PILOT_CONFIG = REPO / "configs" / "pilot.yaml"
PILOT_GPU_CONFIG = REPO / "configs" / "pilot-gpu.yaml"
DEFAULT_CONFIG = REPO / "configs" / "exp3.yaml"
SANITY_SESSIONS = ("S1_clean_train", "S3_mask_backbone_early")


def config_from_args(argv: list[str]) -> tuple[ExperimentConfig, argparse.Namespace]:
    """Parse the command line, load the config it names and select the grid of its --models and --sessions
    (`args.grid`); ConfigError if the config is bad or a name unknown."""
    parser = argparse.ArgumentParser(prog="python flows/exp3.py", description="Run the exp3 grid as a Prefect flow.")
    parser.add_argument("--config", type=Path, default=None, help="experiment config (default configs/exp3.yaml)")
    parser.add_argument("--smoke", action="store_true", help="configs/smoke.yaml: 12 sessions x 1 epoch")
    parser.add_argument("--sanity", action="store_true",
                        help="configs/smoke.yaml under runs/exp3-sanity: run the grid twice, PASS if the second run "
                        "skipped it all; its grid: --models (default the first model) x --sessions (default "
                        f"{' '.join(SANITY_SESSIONS)}), also in a --dry-run")
    parser.add_argument("--pilot", action="store_true", help="short real run: configs/pilot[-gpu].yaml")
    parser.add_argument("--models", nargs="+", default=None, help="only these models")
    parser.add_argument("--sessions", nargs="+", default=None, help="only these sessions (e.g. S1_clean_train)")
    parser.add_argument("--dry-run", action="store_true", help="print the grid with keys and states; train nothing")
    parser.add_argument("--rerun-failed", action="store_true", help="run sessions with a FAILED marker again")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    if sum((args.config is not None, args.smoke or args.sanity, args.pilot)) > 1:
        parser.error("--config, --smoke/--sanity and --pilot each choose the config: pass one of them")
    if args.pilot:
        import torch  # lazy: torch is heavy, and only --pilot asks it a question

        path = PILOT_GPU_CONFIG if torch.cuda.is_available() else PILOT_CONFIG  # both real models, or yolov8n on CPU
        print(f"exp3 pilot: {path.relative_to(REPO)}", file=sys.stderr)
    else:
        path = SMOKE_CONFIG if (args.smoke or args.sanity) else (args.config or DEFAULT_CONFIG)
    overrides = (["output_root=runs/exp3-sanity"] if args.sanity else []) + list(args.overrides)  # the user's win
    config = load_config(path, overrides)
    if args.sanity:  # the grid the sanity check runs twice, and its dry run shows
        args.models, args.sessions = args.models or list(config.models)[:1], args.sessions or list(SANITY_SESSIONS)
    try:  # the names, before output_root and the environment are made: a typo writes nothing
        args.grid = select_sessions(config, args.models, args.sessions)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return config, args


SERVER_SETTINGS: tuple[str, ...] = ("PREFECT_API_URL", "PREFECT_API_DATABASE_CONNECTION_URL",
                                    "PREFECT_SERVER_DATABASE_CONNECTION_URL")
"""Prefect settings that keep a run's database off PREFECT_HOME (a Prefect server, or another database)."""


def start(argv: list[str]) -> tuple[ExperimentConfig, argparse.Namespace]:
    """Parse `argv`, load the config and set the environment before `import prefect` (exit 2 on a bad config)."""
    try:
        config, args = config_from_args(argv)
        root = writable_output_root(config)  # a file, or a read-only place, refused before anything is set there
        if (problem := foreign_folder(root, "output_root")) is not None:  # a folder of the user's: nothing written
            raise ConfigError(problem)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_flow_environment(root)
    own_database = not any(os.environ.get(name) for name in SERVER_SETTINGS)
    if own_database and (problem := database_problem(Path(os.environ["PREFECT_HOME"]))) is not None:
        print(f"error: output_root {str(root)!r} cannot hold the run's Prefect database ({problem}: a Google Drive or "
              "network mount?): keep output_root on a local disk and set mirror.path to the drive folder",
              file=sys.stderr)
        raise SystemExit(2)
    return config, args


def run(config: ExperimentConfig, args: argparse.Namespace, flow: Callable[..., Any]) -> int:
    """Refuse missing weights, an unreadable data.yaml or a live root (2), then dry run, sanity check or `flow`
    (1: failed). `config` and `args`: `config_from_args`'s."""
    # lazy: exp3.session.prepare loads numpy and the occlusion generator, which --help and a refused config never need
    from exp3.occlusion.verify import moved_root
    from exp3.session.prepare import resolve_model_weights

    grid = args.grid  # its names checked by `config_from_args`
    try:  # weights and the user's data.yaml before anything runs
        weights = {model: resolve_model_weights(config, model).sha256 for model in dict.fromkeys(s.model for s in grid)}
        if config.dataset.kind == "yaml" and config.dataset.data_yaml is not None:  # read only: the flow audits it
            read_data_yaml(config.dataset.data_yaml)  # DatasetError (a ValueError) naming the path
        root = config.output_root.absolute()
        if (moved := moved_root(root)) is not None:
            raise ValueError(moved)
        mirror = mirror_for(config.mirror, root)  # overlapping the root, or a folder of the user's: refused here
        if mirror is not None and "mlflow" in config.integrations and not os.environ.get("MLFLOW_TRACKING_URI"):
            print(f"WARNING exp3: MLflow's store {root / MLFLOW_STORE} stays on this machine: mirror.path does not "
                  "copy it, and sessions brought back from the mirror do not log again (set MLFLOW_TRACKING_URI to a "
                  "server to keep the runs)", flush=True)
        if mirror is not None and on_mirror_storage(root, mirror.path):
            print(f"WARNING exp3: mirror.path {mirror.path} is on the same disk as output_root {root} (is its drive "
                  "mounted?): a lost machine loses both copies", flush=True)
        if args.dry_run:  # a GPU config's grid can be looked at on a laptop
            return dry_run(config, grid, weights)
        if (problem := machine_problem(config)) is not None:
            raise ValueError(problem)
        with RootLock(root, command="exp3 start") as probe:  # a live run (named), or a root that takes no locks
            if probe.took_over:
                print(f"exp3: took over a stale lock from a dead run: {probe.took_over}", flush=True)
        if args.sanity:
            return sanity(config, flow, args.models, args.sessions)
        state = flow(config=config, models=args.models, sessions=args.sessions, rerun_failed=args.rerun_failed,
                     return_state=True)
    except (ValueError, LockBusy, WeightsError) as error:
        print(f"error: {error}".splitlines()[0], file=sys.stderr)
        return 2
    if state.is_failed():
        print(f"exp3: flow ended {state.name}: {state.message}", file=sys.stderr)
        return 1
    print(f"exp3: all sessions done; results under {root}")
    return 0


def dry_run(config: ExperimentConfig, grid: list[Session], weights: dict[str, str | None]) -> int:
    """Print `grid` with each session's state and cache key (once the dataset exists; `weights`: model -> sha256)."""
    # lazy: numpy and the occlusion generator, as in `run`
    from exp3.occlusion.suites import occlusion_suite_name
    from exp3.session.prepare import dataset_yaml

    root = config.output_root.absolute()
    data_yaml = dataset_yaml(config, root, build=False)
    ready = data_yaml.is_file()  # the synthetic dataset exists after the first run; a user's always
    fingerprint = dataset_fingerprint(read_data_yaml(data_yaml)) if ready else None
    suite = occlusion_suite_name(data_yaml, config.occlusion) if ready else None
    keys = planned_keys(config, fingerprint, suite, weights) if ready else {}  # every session of `grid` among them
    print(f"exp3 dry run: {len(grid)} sessions under {root}"
          + (f" (suite {suite})" if ready else " (dataset not generated yet: keys appear after the first run)"))
    print(f"  models: {', '.join(weights)} "
          f"(configured: {', '.join(config.models)}; `<name>: null` in a config file removes an inherited one)")
    for session, status in zip(grid, grid_status(config, root, grid, keys)):
        # without keys a folder's state is not known: made under this dataset, or under another one?
        state = status.state if ready or status.state == SessionState.PENDING else "unknown"
        epochs = "/".join("?" if count is None else str(count) for count in (status.epochs_done, status.epochs_total))
        print(f"  {session.name:<40} {state:<8} {epochs}  {keys.get(session.name, '-')}")
    return 0


def sanity(config: ExperimentConfig, flow: Callable[..., Any], models: list[str], sessions: list[str]) -> int:
    """Run the grid of `models` x `sessions` twice; PASS (0) if the second run found it all done (cached: no task
    ran)."""
    runs = [flow(config=config, models=models, sessions=sessions) for _ in range(2)]
    print(json.dumps([{name: res.model_dump(mode="json") for name, res in run.items()} for run in runs], indent=2))
    skipped = all(result.status == SessionState.CACHED for result in runs[1].values())
    print(f"sanity {'PASS' if skipped else 'FAIL'}: the second run {'skipped' if skipped else 'did NOT skip'} "
          f"{', '.join(runs[1])}")
    return 0 if skipped else 1
