"""One session folder, `<root>/<model>/<model>__<suffix>[__seed<N>]/`: its paths, markers and state (what it holds:
docs/schema.md). The only module that reads markers. Beside it: its lock (`SessionPaths.lock`), and
`<root>/stale/`, where a folder made under other inputs is moved aside (`SessionPaths.move_aside`)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from exp3 import SCHEMA_VERSION, __version__
from exp3.fileio import atomic_write_bytes, atomic_write_json, canonical_json, read_json, sha256_bytes, sha256_file
from exp3.schema import SessionMetrics
from exp3.session.runlock import SessionLock
from exp3.sessions import Session


class SessionState(StrEnum):
    """The one vocabulary of the flow, `exp3.status` and the report (values as files show). A folder is DONE, STALE,
    FAILED, PARTIAL or PENDING (`SessionPaths.state`); the other states are what one view alone can tell."""

    DONE = "done"  # DONE matches metrics.json and records this key
    STALE = "stale"  # content made under other (or unknown) inputs: moved aside (kept), trained again
    FAILED = "failed"  # FAILED marker under the same inputs (the flow: or failed in this run)
    PARTIAL = "partial"  # an unfinished training of the same inputs: its last.pt is resumed
    PENDING = "pending"  # nothing yet
    RUNNING = "running"  # exp3.status: a process holds its session lock (a flow's or one run by hand)
    CACHED = "cached"  # the flow: done before this run, nothing ran
    SKIPPED = "skipped"  # the flow: not started in this run
    INCOMPLETE = "incomplete"  # the report: a folder without a valid DONE or FAILED
    MISSING = "missing"  # the report: no folder
    SOME_SEEDS = "some_seeds"  # the report's summary: some seeds of a several-seed session done, not all


DONE_MARKER = "DONE"
FAILED_MARKER = "FAILED"
TRAIN_RUN_NAME = "train"  # Ultralytics' run folder in the session folder: <session>/train/weights/{last,best}.pt


def severity_changes(metrics: SessionMetrics, plan: dict[str, str]) -> tuple[list[str], list[str]]:
    """(splits to evaluate, recorded severity splits not in `plan`) of a done session's metrics, `plan` being
    {severity split: spec key} (`exp3.occlusion.identity.evaluation_plan`): a split without an evaluation recorded
    under its spec key is evaluated (docs/schema.md, "Severity splits of a finished session")."""
    recorded = metrics.severity.evaluations
    missing = [split for split, spec_key in plan.items()
               if split not in recorded or recorded[split].spec_key != spec_key or split not in metrics.splits]
    return missing, [split for split in recorded if split not in plan]


@dataclass(frozen=True)
class SessionPaths:
    """Paths, markers and state of one session folder."""

    folder: Path

    # the folder's files (docs/schema.md); the lock lives outside it: the folder can be moved aside while held
    done_marker = property(lambda self: self.folder / DONE_MARKER)
    failed_marker = property(lambda self: self.folder / FAILED_MARKER)
    metrics = property(lambda self: self.folder / "metrics.json")
    inputs = property(lambda self: self.folder / "inputs.json")
    logs = property(lambda self: self.folder / "logs")
    run_dir = property(lambda self: self.folder / TRAIN_RUN_NAME)
    results_csv = property(lambda self: self.folder / TRAIN_RUN_NAME / "results.csv")  # a row per finished epoch
    last_pt = property(lambda self: self.folder / TRAIN_RUN_NAME / "weights" / "last.pt")
    lock = property(lambda self: self.folder.parent / f".{self.folder.name}.lock")

    @classmethod
    def of(cls, output_root: str | os.PathLike[str], session: Session) -> "SessionPaths":
        return cls(Path(output_root) / session.model / session.name)

    def session_lock(self, command: str) -> SessionLock:
        """One process per session folder at a time."""
        return SessionLock(self.lock, what=f"session {self.folder.name}", command=command)

    def predictions(self, split: str) -> Path:
        return self.folder / f"predictions_{split}.json"

    def map_stats(self, split: str) -> Path:  # the validator's per-image matching statistics (exp3.evaluate.mapstats)
        return self.folder / f"map_stats_{split}.npz"

    def here(self, recorded: str | os.PathLike[str]) -> Path:
        """A path recorded inside this folder (absolute, where the folder was then) as it is now: a root moved or
        restored from a mirror keeps its session folders, not their absolute paths."""
        parts = Path(recorded).parts
        if self.folder.name not in parts:
            return Path(recorded)
        return self.folder.joinpath(*parts[len(parts) - parts[::-1].index(self.folder.name):])

    def checkpoint_differs(self) -> str | None:
        """Why the checkpoint metrics.json was evaluated from is not the one in this folder now (gone, or other bytes:
        a mirror's upload cut short, a file replaced), else None."""
        recorded = ((read_json(self.metrics) or {}).get("checkpoint") or {})
        file = self.here(str(recorded.get("path")))
        if not file.is_file():
            return f"its checkpoint {file} is gone"
        if sha256_file(file) != recorded.get("sha256"):
            return f"its checkpoint {file} is not the one its metrics were made from (sha256 differs)"
        return None

    def failure(self) -> dict[str, Any] | None:
        """The FAILED marker (parsed), or None."""
        record = read_json(self.failed_marker)
        if isinstance(record, dict) or not self.failed_marker.exists():
            return record
        return {"error": "unreadable FAILED marker"}

    def recorded_key(self) -> str | None:
        """The key in inputs.json (None without one: a folder from before keys counts as stale)."""
        record = read_json(self.inputs)
        return str(record["key"]) if isinstance(record, dict) and record.get("key") else None

    def other_exp3(self) -> str | None:
        """"made by exp3 0.1.0 (schema 1), not this exp3 (0.2.0, schema 2)" when inputs.json records another exp3
        version or file schema than this one's: both are in every key, so the folder is stale under any config, plan
        or none (a root run again after a `git pull`); None when it records this one's, or neither."""
        record = read_json(self.inputs)
        made = (record.get("exp3_version"), record.get("schema_version")) if isinstance(record, dict) else (None,) * 2
        if made == (None, None) or made == (__version__, SCHEMA_VERSION):
            return None
        schema = "no schema_version: before 2" if made[1] is None else f"schema {made[1]}"
        return f"made by exp3 {made[0]} ({schema}), not this exp3 ({__version__}, schema {SCHEMA_VERSION})"

    def evaluations_current(self, plan: dict[str, str]) -> bool:
        """metrics.json holds exactly the severity evaluations of `plan` ({split: spec key}); False: update it."""
        try:
            return severity_changes(SessionMetrics.model_validate(read_json(self.metrics)), plan) == ([], [])
        except ValidationError:  # not a metrics.json of this format: the session says so when it runs
            return False

    def is_done(self, key: str | None) -> bool:
        """DONE records `key` (None: any) and the metrics.json on disk, or the one `replace_metrics` is replacing."""
        marker = read_json(self.done_marker)
        if not isinstance(marker, dict) or not self.metrics.is_file() or key not in (None, marker.get("key")):
            return False
        return sha256_file(self.metrics) in (marker.get("metrics_sha256"), marker.get("replacing_metrics_sha256"))

    def state(self, key: str | None) -> SessionState:
        """DONE, STALE, FAILED, PARTIAL or PENDING under `key` (None, a view without keys: STALE only when made by
        another exp3, `other_exp3`)."""
        other = self.other_exp3()
        if other is None and self.is_done(key):
            return SessionState.DONE
        if (other or key is not None and self.recorded_key() != key) and self.folder.is_dir() and any(
                entry.name not in ("logs", FAILED_MARKER) for entry in self.folder.iterdir()):
            return SessionState.STALE  # logs/, which the flow opens first, or a failure before inputs.json: not made
        if self.failed_marker.exists():
            return SessionState.FAILED
        return SessionState.PARTIAL if self.last_pt.is_file() else SessionState.PENDING

    def write_inputs(self, payload: dict[str, Any], key: str) -> Path:
        """Record the inputs (and key) this folder's content is made under, before training starts."""
        return atomic_write_json(self.inputs, {**payload, "key": key})

    def write_done(self, key: str, extra: dict[str, Any]) -> Path:
        """The DONE marker for the metrics.json on disk (call after metrics.json is written)."""
        return atomic_write_json(self.done_marker, {**extra, "key": key, "metrics_sha256": sha256_file(self.metrics)})

    def replace_metrics(self, payload: dict[str, Any], extra: dict[str, Any]) -> Path:
        """Replace a done session's metrics.json, done throughout: DONE accepts old and new, metrics.json is
        replaced, DONE names the new one only. `extra` is merged into DONE."""
        marker = read_json(self.done_marker)
        if not isinstance(marker, dict) or not self.is_done(None):
            raise RuntimeError(f"{self.folder} is not done: only a done session's metrics.json is replaced")
        data = (canonical_json(payload, indent=2) + "\n").encode("utf-8")  # the bytes atomic_write_json writes
        new_sha, old_sha = sha256_bytes(data), sha256_file(self.metrics)
        base = {key: value for key, value in marker.items() if key != "replacing_metrics_sha256"}
        atomic_write_json(self.done_marker, {**base, **extra, "metrics_sha256": new_sha,
                                             "replacing_metrics_sha256": old_sha})
        atomic_write_bytes(self.metrics, data)
        return atomic_write_json(self.done_marker, {**base, **extra, "metrics_sha256": new_sha})

    def move_aside(self) -> Path:
        """Move the whole folder to `<root>/stale/<model>/<name>__<time>` (kept, never deleted); return it."""
        stamp, target_dir = time.strftime("%Y%m%d-%H%M%S"), self.folder.parents[1] / "stale" / self.folder.parent.name
        target_dir.mkdir(parents=True, exist_ok=True)
        target, suffix = target_dir / f"{self.folder.name}__{stamp}", 1
        while target.exists():
            target, suffix = target_dir / f"{self.folder.name}__{stamp}-{suffix}", suffix + 1
        os.replace(self.folder, target)
        return target
