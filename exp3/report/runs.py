"""Session folders as the report reads them: discovery, each folder's state (DONE, FAILED, STALE, INCOMPLETE or
MISSING, `exp3.session.layout.SessionState`) and metrics.json, and a done session's operating points and predictions."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable

from exp3.fileio import read_json
from exp3.identity import shared_differences
from exp3.schema import MetricsView
from exp3.session.layout import SessionPaths, SessionState
from exp3.session.plan import planned_key, read_plan
from exp3.sessions import SESSION_SUFFIXES, Session, folder_session

KNOWN_MODEL_ORDER: tuple[str, ...] = ("yolov8m", "rtdetr-l")
"""Discovered models are listed in this order first, then alphabetically (fixes colours in charts)."""
THRESHOLDS: tuple[str, ...] = ("primary", "val")
"""Operating points of the comparisons: `primary` = the split's `conf` (0.25), `val` = each session's own
threshold chosen on the clean val split (`at_val_threshold.conf`)."""


@dataclass(frozen=True)
class SessionRun:
    """One session folder (or the absence of one) as read from disk: `seed` from the `__seed<N>` folder suffix, else
    metrics.json["seeds"]["train"], else None; `metrics` the parsed metrics.json of a done session, else None."""

    model: str
    suffix: str
    seed: int | None
    folder: Path
    status: SessionState
    error: str | None = None
    metrics: dict[str, Any] | None = field(default=None, repr=False)

    @cached_property
    def view(self) -> MetricsView:
        """The typed, lenient view of `metrics` (exp3.schema; empty when not done), made once."""
        return MetricsView.of(self.metrics)


def session_folders(model_dir: Path) -> list[tuple[str, int | None, Path]]:
    """(suffix, seed, folder) of each `<model>__<suffix>[__seed<N>]` folder in `model_dir`, by name."""
    if not model_dir.is_dir():
        return []
    parsed = [(folder_session(folder.name), folder) for folder in sorted(model_dir.iterdir()) if folder.is_dir()]
    return [(session.suffix, session.seed, folder) for session, folder in parsed
            if session and session.model == model_dir.name]


def discover_models(root: Path) -> list[str]:
    """Models under `root`: every directory `<root>/<model>/` holding at least one `<model>__S*` session folder;
    KNOWN_MODEL_ORDER first, then the rest alphabetically."""
    found = {child.name for child in root.iterdir() if session_folders(child)} if root.is_dir() else set()
    return [model for model in KNOWN_MODEL_ORDER if model in found] + sorted(found - set(KNOWN_MODEL_ORDER))


def load_session_run(folder: Path, model: str, suffix: str, seed: int | None,
                     key: str | None = None) -> SessionRun:
    """Read one session folder's markers and metrics.json into a `SessionRun`. `key`: the cache key the last flow
    planned for this session (`<root>/plan.json`); a folder made under other inputs is `stale`, never its old numbers.
    """
    paths = SessionPaths(folder)
    if not folder.is_dir():
        return SessionRun(model, suffix, seed, folder, SessionState.MISSING, "no session folder")
    if paths.state(key) == SessionState.STALE:
        return SessionRun(model, suffix, seed, folder, SessionState.STALE,
                          f"{paths.other_exp3() or 'made under other inputs than the current config'}: re-run the flow")
    if paths.is_done(None):
        metrics = read_json(paths.metrics)
        if isinstance(metrics, dict):
            recorded = MetricsView.of(metrics).seeds.train
            seed = int(recorded) if seed is None and recorded is not None else seed
            return SessionRun(model, suffix, seed, folder, SessionState.DONE, None, metrics)
    if (failure := paths.failure()) is not None:
        return SessionRun(model, suffix, seed, folder, SessionState.FAILED,
                          failure.get("error") or "FAILED marker without an error message")
    detail = "DONE marker does not match metrics.json" if paths.done_marker.is_file() else \
        "no DONE or FAILED marker (still running, or killed mid-way)"
    return SessionRun(model, suffix, seed, folder, SessionState.INCOMPLETE, detail)


def scan_sessions(root: Path, models: list[str], seeds: list[int] | None = None,
                  sessions: Iterable[str] = SESSION_SUFFIXES) -> list[SessionRun]:
    """Every model x session (x seed) of the grid, in model, session, seed order; absent folders as `missing`.

    Args:
        seeds: expected seeds (folders: `exp3.sessions.UNNAMED_SEED`), an absent one `missing`. None: whatever
            folders exist (a session without any folder is missing).
        sessions: the suffixes of this run; the others are not scanned (`not in run`, see `status_grid`).
    """
    keys = read_plan(root)  # the inputs the last flow's config names: other results there are stale, not done
    runs: list[SessionRun] = []
    for model in models:
        present = session_folders(root / model)
        for suffix in (suffix for suffix in SESSION_SUFFIXES if suffix in sessions):
            folders = sorted(((seed, folder) for found, seed, folder in present if found == suffix),
                             key=lambda item: -1 if item[0] is None else item[0])
            if seeds:
                folders = [(seed, SessionPaths.of(root, Session(model, suffix, seed)).folder) for seed in seeds]
            elif not folders:
                folders = [(None, SessionPaths.of(root, Session(model, suffix)).folder)]
            runs.extend(load_session_run(path, model, suffix, seed, planned_key(keys, path.name))
                        for seed, path in folders)
    return runs if keys else unplanned_mixes(runs)


def unplanned_mixes(runs: list[SessionRun]) -> list[SessionRun]:
    """Without a plan (sessions run by hand: no key to check against), a done session whose shared inputs
    (`exp3.identity.shared_differences`) differ from those most of its model's done sessions share (a tie: the first
    in grid order) is stale, naming what differs: S1 trained 1 epoch is no control for S2 trained 2."""
    stale: dict[int, list[str]] = {}
    for model in dict.fromkeys(run.model for run in runs):
        held = [(id(run), run.metrics["inputs"]) for run in runs if run.model == model and run.status ==
                SessionState.DONE and isinstance(run.metrics, dict) and isinstance(run.metrics.get("inputs"), dict)]
        if held:
            reference = max((inputs for _, inputs in held),
                            key=lambda inputs: sum(not shared_differences(inputs, other) for _, other in held))
            stale |= {key: differs for key, inputs in held if (differs := shared_differences(inputs, reference))}
    return [replace(run, status=SessionState.STALE, metrics=None,
                    error=f"made under other inputs than most {run.model} sessions (differs in: "
                          f"{', '.join(stale[id(run)])}; no plan.json to check them against): run it again with "
                          "their config") if id(run) in stale else run for run in runs]


def resumed_notes(runs: Iterable[SessionRun]) -> list[str]:
    """One line per done run whose training resumed after an interruption (`training.resumed_from_epoch`: the
    0-based epoch of the checkpoint it resumed from)."""
    resumed = [(run.folder.name, int(epoch)) for run in runs if run.status == SessionState.DONE
               and math.isfinite(epoch := as_number(run.view.training.resumed_from_epoch))]
    return [f"`{name}` resumed its training after {epoch + 1} epoch{'s' * (epoch > 0)} (an interruption): not "
            "bit-identical to an uninterrupted training, as Ultralytics restarts its data-order and augmentation "
            "random streams at a resume; its numbers are its own checkpoint's" for name, epoch in resumed]


SOFTWARE: tuple[str, ...] = ("ultralytics", "torch", "torchvision")
"""The packages whose versions `software_notes` compares, with the device: what can move a checkpoint's numbers."""


def _software(provenance: Any) -> str | None:
    """`provenance`'s SOFTWARE versions and device (each distinct card or CPU name once: two T4s are a T4), as one
    text; None where it records none of SOFTWARE."""
    packages, names = provenance.packages, provenance.device.names
    if not isinstance(packages, dict) or not any(packages.get(name) for name in SOFTWARE):
        return None
    device = " + ".join(sorted({str(name) for name in names})) if isinstance(names, list) and names else "?"
    return ", ".join(f"{name} {packages.get(name)}" for name in SOFTWARE) + f" on {device}"


def software_notes(runs: Iterable[SessionRun]) -> list[str]:
    """One line per model whose done sessions were trained and tested with other SOFTWARE versions or on other
    devices (a grid run over several VMs): which, so that a difference is not read as the training's alone."""
    found: dict[str, dict[str, list[str]]] = {}
    for run in (run for run in runs if run.status == SessionState.DONE):
        where = found.setdefault(run.model, {})
        if (software := _software(run.view.provenance)) is not None:
            where.setdefault(software, []).append(f"`{run.folder.name}`")
    return [f"{model}: its numbers were computed with different software or devices ("
            + "; ".join(f"{software}: {', '.join(names)}" for software, names in where.items())
            + "): a difference between these sessions may be partly the software's or the device's"
            for model, where in found.items() if len(where) > 1]


def as_number(value: Any) -> float:
    """A JSON number as float; NaN for anything else (None, bool, text)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def class_name(entry: Any) -> str:
    """The name of one `per_class` entry of metrics.json's view (its class id when it has none)."""
    return str(entry.name if entry.name is not None else int(entry.class_id))


def threshold_conf(run: SessionRun, split: str, threshold: str = "primary") -> float | None:
    """The confidence threshold of one operating point of a session and split (`primary`: `splits[split].conf`;
    `val`: `splits[split].at_val_threshold.conf`), or None when not recorded."""
    part = run.view.split(split)
    number = as_number(part.conf if threshold == "primary" else part.at_val_threshold.conf)
    return number if math.isfinite(number) else None


def run_sessions(sessions: Iterable[str] | None) -> tuple[str, ...]:
    """This run's suffixes in S1..S6 order (None: all six); ValueError naming the valid ones otherwise."""
    if sessions is None:
        return SESSION_SUFFIXES
    sessions = list(sessions)
    unknown = [suffix for suffix in sessions if suffix not in SESSION_SUFFIXES]
    if unknown or not sessions:
        problem = f"unknown session {unknown[0]!r}" if unknown else "no session given"
        raise ValueError(f"{problem}: pass suffixes among {', '.join(SESSION_SUFFIXES)}")
    return tuple(suffix for suffix in SESSION_SUFFIXES if suffix in sessions)
