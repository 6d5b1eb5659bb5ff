"""A run's grid: its sessions (`select_sessions`) and the cache key of every session its config names (`plan.json`,
whatever `--models`/`--sessions` ran: why, docs/layout.md)."""

from __future__ import annotations

from pathlib import Path

from exp3.config import ExperimentConfig
from exp3.fileio import atomic_write_json, read_json
from exp3.identity import session_inputs
from exp3.sessions import SESSION_SUFFIXES, Session, parse_session_selector, session_grid

PLAN_FILENAME = "plan.json"
UNPLANNED = "not-planned"
"""The key a reader checks a folder against when the plan has none for it: no folder holds it, so it is stale."""


def planned_keys(config: ExperimentConfig, dataset_fingerprint: str, suite_id: str,
                 weights: dict[str, str | None]) -> dict[str, str]:
    """Session name -> cache key of every session `config` names: each model in `weights` (model -> weights
    sha256, None = from scratch) x all six sessions x the config's seeds. A model whose weights cannot be had
    now gets no key: its folders cannot be checked, so readers call them stale."""
    grid = session_grid([model for model in config.models if model in weights], SESSION_SUFFIXES, config.seeds)
    return {session.name: session_inputs(config, session, dataset_fingerprint, suite_id,
                                         weights[session.model]).key for session in grid}


def write_plan(output_root: Path, keys: dict[str, str]) -> Path:
    """Record the keys of the config the flow runs (`planned_keys`): session name -> cache key."""
    return atomic_write_json(Path(output_root) / PLAN_FILENAME, {"keys": keys})


def read_plan(output_root: Path) -> dict[str, str]:
    """The keys of the last flow started on `output_root` ({} if none)."""
    plan = read_json(Path(output_root) / PLAN_FILENAME)
    keys = plan.get("keys") if isinstance(plan, dict) else None
    return dict(keys) if isinstance(keys, dict) else {}


def planned_key(plan: dict[str, str], name: str) -> str | None:
    """The key session `name`'s folder is checked against: the plan's; `UNPLANNED` if the plan does not name it
    (made under another config: stale); None without a plan (sessions run by hand: no check)."""
    return plan.get(name, UNPLANNED) if plan else None


def select_sessions(config: ExperimentConfig, models: list[str] | None, sessions: list[str] | None) -> list[Session]:
    """The grid restricted by `--models` and `--sessions` (which replaces the config's `sessions:`): a bare suffix
    selects that session of every chosen model, a `<model>__` prefix only that model's, a `__seed<N>` tail only that
    seed. Unknown names raise ValueError listing the valid ones; so does an empty list (the UI's, an API call's: the
    command line refuses `--models` without a name), which is not "all"."""
    for name, given in (("models", models), ("sessions", sessions)):
        if given is not None and not given:
            raise ValueError(f"{name} is an empty list: name at least one, or leave {name} unset (null) for all")
    if unknown := [m for m in models or [] if m not in config.models]:
        raise ValueError(f"unknown model(s) {', '.join(unknown)}: configured models are {', '.join(config.models)}")
    chosen_models = [m for m in config.models if not models or m in models]
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
                   and (seed is None or seed == session.training_seed)
                   for _, model, suffix, seed in selectors)]
