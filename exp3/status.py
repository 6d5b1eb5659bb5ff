"""`python -m exp3.status --root runs/exp3 [--watch [--interval S]]`: the grid as a matrix, from the files on disk.

Reads only (no lock, no writes): safe while a run holds the root. `run_and_watch`: the notebooks' live view."""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from exp3.config import ConfigError, ExperimentConfig, load_config
from exp3.fileio import read_json
from exp3.schema import MetricsView
from exp3.session.layout import SessionPaths, SessionState
from exp3.session.plan import planned_key, read_plan
from exp3.session.progress import epoch_progress, format_seconds, format_value, results_rows
from exp3.session.runlock import RootLock
from exp3.sessions import SESSION_SUFFIXES, Session, folder_session, session_grid


@dataclass(frozen=True)
class SessionStatus:
    """What the files on disk say about one session."""

    session: str
    state: SessionState
    epochs_done: int | None  # None: a done session whose metrics.json does not say
    epochs_total: int | None
    elapsed_s: float | None
    eta_s: float | None
    error: str | None
    last_val_map50: float | None = None


def session_status(paths: SessionPaths, epochs_total: int | None = None, key: str | None = None) -> SessionStatus:
    """The folder's state and progress: RUNNING while a process holds its session lock and it is not done yet;
    with `key` (the planned cache key) a folder made under other inputs is STALE."""
    state, epochs = paths.state(key), epoch_progress(results_rows(paths), epochs_total)
    last_map50 = epochs[-1].map50 if epochs else None
    if state == SessionState.DONE:
        training = MetricsView.of(read_json(paths.metrics)).training
        done = training.epochs_completed  # the view reads numbers as floats: 3 prints 3/3, not 3.0/3.0
        done = int(done) if done is not None and math.isfinite(done) and float(done).is_integer() else done
        return SessionStatus(paths.folder.name, state, done, done, training.wall_s, None, None, last_map50)
    lock = paths.session_lock("")  # probed (a microsecond's shared hold) only while its file names a holder:
    if lock.owner() and lock.is_live():  # a clean release empties it, so a session starting then meets no probe
        state = SessionState.RUNNING
    times = [epoch.epoch_s for epoch in epochs if epoch.epoch_s is not None]
    elapsed = sum(times) if epochs and len(times) == len(epochs) else None  # an epoch without its time: not known
    eta = epochs[-1].eta_s if epochs and state == SessionState.RUNNING else None  # nothing runs a partial one
    error = None
    if state == SessionState.STALE:
        made = paths.other_exp3() or f"made under other inputs (key {paths.recorded_key() or 'unknown'})"
        error = f"{made}: re-runs from scratch"
    elif state == SessionState.FAILED:
        error = (paths.failure() or {}).get("error")
    return SessionStatus(paths.folder.name, state, len(epochs), epochs_total, elapsed, eta, error, last_map50)


def grid_status(config: ExperimentConfig, output_root: Path, sessions: list[Session],
                keys: dict[str, str]) -> list[SessionStatus]:
    """`session_status` of each session (`keys`: session name -> planned cache key, {} when unknown; a session
    they leave out is stale, `exp3.session.plan.planned_key`)."""
    return [session_status(SessionPaths.of(output_root, s), config.models[s.model].epochs, planned_key(keys, s.name))
            for s in sessions]


def format_matrix(rows: list[SessionStatus]) -> str:
    """A fixed-width table, FAILED and STALE in capitals, then the count of each state."""
    header = f"{'session':<40} {'state':<8} {'epochs':>7} {'elapsed':>8} {'ETA':>8} {'last val mAP50':>14}  error"
    lines = [header, "-" * len(header)]
    for row in rows:
        done = row.epochs_done if row.epochs_done is not None else "?"
        epochs = f"{done}/{row.epochs_total if row.epochs_total is not None else '?'}"
        state = row.state.upper() if row.state in (SessionState.FAILED, SessionState.STALE) else row.state
        lines.append(f"{row.session:<40} {state:<8} {epochs:>7} {format_seconds(row.elapsed_s):>8} "
                     f"{format_seconds(row.eta_s):>8} {format_value(row.last_val_map50):>14}  {row.error or ''}")
    counts = {state: sum(row.state == state for row in rows) for state in SessionState}
    return "\n".join([*lines, " ".join(f"{state}={count}" for state, count in counts.items() if count)])


def _session_of(folder: Path) -> Session | None:
    """The session of a folder named as one of the model folder it is in; None for anything else (a file, a folder
    set aside)."""
    session = folder_session(folder.name)
    return session if session and folder.is_dir() and session.model == folder.parent.name else None


def render(root: Path, live: bool) -> str:
    """The title line (`live`: a run holds `root`) and the matrix of the grid in `config_resolved.yaml`, else of
    every session of the model folders found."""
    if (root / "config_resolved.yaml").is_file():
        config = load_config(root / "config_resolved.yaml")
        sessions = session_grid(list(config.models), config.sessions, config.seeds)
        rows = grid_status(config, root, sessions, read_plan(root))
    else:  # sessions run by hand (`python -m exp3.session`): all six of each model and seed found
        seeds: dict[str, set[int | None]] = {}
        for session in filter(None, map(_session_of, sorted(root.glob("*/*__*")))):
            seeds.setdefault(session.model, set()).add(session.seed)
        rows = [session_status(SessionPaths.of(root, Session(model, suffix, seed)))
                for model, found in seeds.items() for suffix in SESSION_SUFFIXES
                for seed in sorted(found, key=lambda seed: -1 if seed is None else seed)]
    return f"{root} ({'a run holds this root' if live else 'no live run'})\n{format_matrix(rows)}"


def stamped_block(root: Path, note: str, live: bool) -> str:
    """The status block of `root` (or why there is none yet), then the time and `note`."""
    if not root.is_dir():
        block = f"{root}: not created yet (the flow is starting)"
    else:
        try:
            block = render(root, live)
        except (ConfigError, OSError, ValueError) as error:  # a config being written, a folder being moved
            block = f"{root}: status not readable right now ({type(error).__name__}: {error})".splitlines()[0]
    return f"{block}\n[{time.strftime('%H:%M:%S')}] {note}"


def watch(root: Path, interval_s: float, show: Callable[[str], None], process: subprocess.Popen | None = None) -> None:
    """`show` the block every `interval_s` while `process` runs (None: while a run holds `root`), then a final one."""
    while True:
        live = RootLock(root).is_live()
        if not (live if process is None else process.poll() is None):
            ended = "" if process is None else f": the flow exited with code {process.returncode}"
            return show(stamped_block(root, f"final{ended}", live))
        show(stamped_block(root, f"refreshing every {interval_s:g} s (Ctrl-C to stop)", live))
        if process is None:
            time.sleep(interval_s)
        else:
            with suppress(subprocess.TimeoutExpired):
                process.wait(timeout=interval_s)


def _notebook_display() -> Callable[[str], None] | None:
    """One notebook output area that each call replaces, or None outside a notebook."""
    with suppress(ImportError):
        from IPython import get_ipython  # optional: IPython is there in a notebook only
        from IPython.display import Pretty, display

        if get_ipython() is not None:
            handle = display(Pretty(""), display_id=True)
            return lambda text: handle.update(Pretty(text))
    return None


def run_and_watch(command: Sequence[str], root: str | Path, log_path: str | Path, interval_s: float = 30.0,
                  show: Callable[[str], None] | None = None) -> int:
    """Run `command` (a flow), its output appended to `log_path`, and `watch` its root (`show`: default one notebook
    output updated in place, else print); return its exit code. Ctrl-C (the notebook's stop button) stops the
    flow, which is crash-safe: running it again resumes."""
    display = show or _notebook_display() or (lambda text: print(text, flush=True))
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(list(command), stdout=log, stderr=subprocess.STDOUT)
    try:
        watch(Path(root), interval_s, lambda text: display(f"{text}; log: {log_path}"), process)
    except KeyboardInterrupt:
        process.terminate()
        process.wait()
        raise
    return process.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m exp3.status", description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("runs/exp3"))
    parser.add_argument("--watch", action="store_true", help="refresh until no run holds the root")
    parser.add_argument("--interval", type=float, default=10.0, metavar="S", help="seconds between refreshes")
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        parser.error(f"output root {str(args.root)!r} does not exist: pass --root of a run")
    if args.interval <= 0:
        parser.error(f"--interval must be positive, got {args.interval:g}")
    if not (args.watch or RootLock(args.root).is_live() or (args.root / "config_resolved.yaml").is_file()
            or any(map(_session_of, args.root.glob("*/*__*")))):  # --watch: a starting flow has made nothing yet
        parser.error(f"{str(args.root)!r} holds no exp3 run (no config_resolved.yaml, no "
                     "<model>/<model>__S1_clean_train/ ... folder): pass the output_root of a run")
    try:
        if args.watch:
            clear = "\033[2J\033[H" if sys.stdout.isatty() else ""  # a terminal: clear it, cursor home
            watch(args.root, args.interval, lambda text: print(f"{clear}{text}\n", flush=True))
        else:
            print(render(args.root, RootLock(args.root).is_live()))
    except ConfigError as error:
        parser.exit(2, f"error: {error}\n")
    except KeyboardInterrupt:
        pass  # Ctrl-C ends --watch: not an error
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
