"""The experiment grid: which sessions, and their state on disk.

A session's identity (what its result depends on, and the cache key naming it) is owned by
exp3/identity.py; a session folder's layout, markers and state by exp3/layout.py. This module
selects sessions and turns folder states into status rows (epochs, elapsed, ETA).
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path


from exp3.config import ExperimentConfig
from exp3.fileio import atomic_write_json
from exp3.layout import SessionPaths, SessionState
from exp3.progress import last_val_map50
from exp3.sessions import SESSION_SUFFIXES, Session, parse_session_selector, session_grid

RUNNING_WINDOW_S = 15 * 60
"""A session whose training files changed this recently while its root is held counts as running."""
PLAN_FILENAME = "plan.json"
"""`<output_root>/plan.json`: the flow's grid with each session's cache key (read by exp3.status)."""


def write_plan(output_root: Path, keys: dict[str, str]) -> Path:
    """Record the grid the flow runs: session name -> cache key."""
    return atomic_write_json(Path(output_root) / PLAN_FILENAME, {"keys": keys})


def read_plan(output_root: Path) -> dict[str, str]:
    """The keys of the last flow started on `output_root` ({} if none)."""
    try:
        return dict(json.loads((Path(output_root) / PLAN_FILENAME).read_text(encoding="utf-8"))["keys"])
    except (OSError, KeyError, ValueError, TypeError):
        return {}


def select_sessions(config: ExperimentConfig, models: list[str] | None, sessions: list[str] | None) -> list[Session]:
    """The grid restricted by `--models` / `--sessions`; unknown names raise ValueError listing valid ones.

    A bare suffix (`S1_clean_train`) selects that session of every chosen model; a prefixed name
    (`yolov8m__S1_clean_train`) selects only that model's; a `__seed<N>` tail only that seed.
    `--sessions` replaces the config's `sessions:` list.
    """
    chosen_models = list(config.models)
    if models:
        unknown = [m for m in models if m not in config.models]
        if unknown:
            raise ValueError(f"unknown model(s) {', '.join(unknown)}: configured models are {', '.join(config.models)}")
        chosen_models = [m for m in config.models if m in models]
    if not sessions:
        return session_grid(chosen_models, config.sessions, config.seeds)
    selectors = [(text, *parse_session_selector(text, list(config.models))) for text in sessions]
    for text, model, _, seed in selectors:
        if model is not None and model not in chosen_models:
            raise ValueError(f"session {text!r} is of model {model}, which --models leaves out: "
                             f"add {model} to --models or drop the '{model}__' prefix")
        if seed is not None and seed not in config.seeds:
            raise ValueError(f"session {text!r} names seed {seed}, not in the config's seeds "
                             f"{list(config.seeds)}: pick one of them or drop the '__seed{seed}' tail")
    return [session for session in session_grid(chosen_models, SESSION_SUFFIXES, config.seeds)
            if any((model is None or model == session.model) and suffix == session.suffix
                   and (seed is None or seed == session.training_seed(config.seeds))
                   for _, model, suffix, seed in selectors)]


def failed_sessions(output_root: Path, sessions: list[Session], keys: dict[str, str]) -> frozenset[str]:
    """Names of the sessions whose folder holds a FAILED marker made under their current key."""
    return frozenset(s.name for s in sessions if SessionPaths.of(output_root, s).state(keys[s.name]) == "failed")


@dataclass(frozen=True)
class SessionStatus:
    """What the files on disk say about one session."""

    session: str
    state: SessionState
    epochs_done: int
    epochs_total: int | None
    elapsed_s: float | None
    eta_s: float | None
    error: str | None
    last_val_map50: float | None = None
    """Val mAP50 of the last epoch in train/results.csv (None before the first)."""


def results_rows(folder: Path) -> list[dict[str, str]]:
    """The rows of the session's `train/results.csv` (header names stripped; [] if none yet)."""
    results = SessionPaths(folder).results_csv
    if not results.is_file():
        return []
    with results.open(newline="") as handle:
        return [{key.strip(): value for key, value in row.items() if key is not None} for row in csv.DictReader(handle)]


def session_status(folder: Path, root_live: bool, epochs_total: int | None = None,
                   key: str | None = None) -> SessionStatus:
    """State, epochs done, elapsed and ETA of the session in `folder`, from its files only.

    With `key` (the inputs' cache key), a folder made under other inputs shows as `stale`.
    """
    paths = SessionPaths(folder)
    name = folder.name
    state: SessionState = paths.state(key)
    rows = results_rows(folder)
    val_map50 = last_val_map50(rows)
    if state == "done":
        metrics = json.loads(paths.metrics.read_text(encoding="utf-8"))
        epochs = metrics["training"].get("epochs_completed") or 0
        return SessionStatus(name, "done", epochs, epochs, metrics["training"].get("wall_s"), 0.0, None, val_map50)
    elapsed = float(rows[-1].get("time", 0) or 0) if rows else None
    eta = None
    if rows and epochs_total and elapsed:
        eta = elapsed / len(rows) * max(epochs_total - len(rows), 0)
    if state == "stale":
        return SessionStatus(name, "stale", len(rows), epochs_total, elapsed, None,
                             f"made under other inputs (key {paths.recorded_key() or 'unknown'}): re-runs from scratch",
                             val_map50)
    if state == "failed":
        return SessionStatus(name, "failed", len(rows), epochs_total, elapsed, None,
                             (paths.failure() or {}).get("error"), val_map50)
    train_dir = paths.run_dir
    recent = train_dir.is_dir() and any(time.time() - p.stat().st_mtime < RUNNING_WINDOW_S
                                        for p in train_dir.rglob("*") if p.is_file())
    if root_live and (recent or (paths.logs / "train.log").is_file() and not rows):
        state = "running"
    return SessionStatus(name, state, len(rows), epochs_total, elapsed, eta, None, val_map50)


def grid_status(config: ExperimentConfig, output_root: Path, sessions: list[Session], root_live: bool,
                keys: dict[str, str] | None = None) -> list[SessionStatus]:
    """`session_status` for every session of the grid (`keys`: session name -> cache key, when known)."""
    keys = keys or {}
    return [session_status(SessionPaths.of(output_root, s).folder, root_live, config.models[s.model].epochs,
                           keys.get(s.name)) for s in sessions]
