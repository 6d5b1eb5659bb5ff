"""The experiment grid: which sessions, their cache keys, and their state on disk.

A session's cache key is a hash of: model, session, the part of the resolved config that
session depends on (`session_config_view`), the dataset fingerprint, the occlusion-suite id
and the exp3 version. Changing anything a session's result depends on changes its key;
changing another session's settings (or the failure policy, or the output root) does not.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from exp3 import __version__
from exp3.config import ExperimentConfig
from exp3.fileio import stable_hash
from exp3.session import FAILED_MARKER, is_done, session_dir
from exp3.sessions import Session, parse_session, session_grid

SessionState = Literal["done", "failed", "running", "partial", "pending"]
RUNNING_WINDOW_S = 15 * 60
"""A session whose training files changed this recently while its root is held counts as running."""


def session_config_view(config: ExperimentConfig, session: Session) -> dict[str, Any]:
    """The config values `session`'s result depends on (JSON-ready)."""
    view: dict[str, Any] = {
        "model": config.models[session.model].model_dump(mode="json"),
        "train": config.train.model_dump(mode="json", exclude={"workers"}),
        "eval": config.eval.model_dump(mode="json"),
        "occlusion": config.occlusion.model_dump(mode="json", exclude={"train_fraction"}),
        "dataset": config.dataset.model_dump(mode="json"),
        "seed": session.training_seed(config.seeds),
    }
    if session.masking_site is not None:
        view["masking"] = config.masking.model_dump(mode="json")
    if session.train_images == "occluded":
        view["train_fraction"] = config.occlusion.train_fraction
    return view


def session_cache_key(config: ExperimentConfig, session: Session, dataset_fingerprint: str, suite_id: str) -> str:
    """Deterministic cache key (prefixed with the session name for readability)."""
    payload = {"model": session.model, "session": session.suffix,
               "config": stable_hash(session_config_view(config, session), length=16),
               "dataset": dataset_fingerprint, "suite": suite_id, "exp3": __version__}
    return f"{session.name}-{stable_hash(payload, length=16)}"


def select_sessions(config: ExperimentConfig, models: list[str] | None, sessions: list[str] | None) -> list[Session]:
    """The grid restricted by `--models` / `--sessions`; unknown names raise ValueError listing valid ones."""
    chosen_models = list(config.models)
    if models:
        unknown = [m for m in models if m not in config.models]
        if unknown:
            raise ValueError(f"unknown model(s) {', '.join(unknown)}: configured models are {', '.join(config.models)}")
        chosen_models = [m for m in config.models if m in models]
    suffixes = config.sessions
    if sessions:
        suffixes = tuple(parse_session(s.split("__")[-1], chosen_models).suffix for s in sessions)
    return session_grid(chosen_models, suffixes, config.seeds)


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


def results_rows(folder: Path) -> list[dict[str, str]]:
    results = folder / "train" / "results.csv"
    if not results.is_file():
        return []
    with results.open(newline="") as handle:
        return [{key.strip(): value for key, value in row.items()} for row in csv.DictReader(handle)]


def session_status(folder: Path, root_live: bool, epochs_total: int | None = None) -> SessionStatus:
    """State, epochs done, elapsed and ETA of the session in `folder`, from its files only."""
    name = folder.name
    if is_done(folder):
        metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
        epochs = metrics["training"].get("epochs_completed") or 0
        return SessionStatus(name, "done", epochs, epochs, metrics["training"].get("wall_s"), 0.0, None)
    rows = results_rows(folder)
    elapsed = float(rows[-1].get("time", 0) or 0) if rows else None
    eta = None
    if rows and epochs_total and elapsed:
        eta = elapsed / len(rows) * max(epochs_total - len(rows), 0)
    if (folder / FAILED_MARKER).is_file():
        error = json.loads((folder / FAILED_MARKER).read_text(encoding="utf-8")).get("error")
        return SessionStatus(name, "failed", len(rows), epochs_total, elapsed, None, error)
    train_dir = folder / "train"
    recent = train_dir.is_dir() and any(time.time() - p.stat().st_mtime < RUNNING_WINDOW_S
                                        for p in train_dir.rglob("*") if p.is_file())
    if root_live and (recent or (folder / "logs" / "train.log").is_file() and not rows):
        state: SessionState = "running"
    elif (train_dir / "weights" / "last.pt").is_file():
        state = "partial"
    else:
        state = "pending"
    return SessionStatus(name, state, len(rows), epochs_total, elapsed, eta, None)


def grid_status(config: ExperimentConfig, output_root: Path, sessions: list[Session],
                root_live: bool) -> list[SessionStatus]:
    """`session_status` for every session of the grid."""
    return [session_status(session_dir(output_root, s), root_live, config.models[s.model].epochs) for s in sessions]

