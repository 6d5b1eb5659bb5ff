"""One session folder: its layout, its markers and its state. The only module that reads markers.

    <output_root>/<model>/<model>__<suffix>[__seed<N>]/
        inputs.json       SessionInputs + key, written before training starts
        DONE | FAILED     markers (JSON); DONE holds metrics.json's sha256 and the key
        metrics.json      ...  (docs/schema.md)
    <output_root>/<model>/.<folder name>.lock   the session lock (outside the folder, so a
                                                folder can be moved aside while it is held)
    <output_root>/stale/<model>/<folder name>__<YYYYmmdd-HHMMSS>/   results moved aside
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from exp3.fileio import atomic_write_bytes, atomic_write_json, canonical_json, sha256_bytes, sha256_file
from exp3.sessions import Session


class SessionState(StrEnum):
    """Where a session stands: the one vocabulary of the flow, `exp3.status` and the report.

    A folder is DONE, STALE, FAILED, PARTIAL or PENDING (`SessionPaths.state(key)`). Each view adds
    only what it alone can tell: RUNNING (exp3.status sees a live run writing), CACHED and SKIPPED
    (the flow: done before this run, not started in it), INCOMPLETE and MISSING (the report, which
    does not care whether an unfinished folder resumes). Values are what files, logs and tables show.
    """

    DONE = "done"  # DONE matches metrics.json and records this key
    STALE = "stale"  # content made under other (or unknown) inputs: moved aside (kept), trained again
    FAILED = "failed"  # FAILED marker under the same inputs (the flow: or failed in this run)
    PARTIAL = "partial"  # an unfinished training of the same inputs: its last.pt is resumed
    PENDING = "pending"  # nothing yet
    RUNNING = "running"
    CACHED = "cached"
    SKIPPED = "skipped"
    INCOMPLETE = "incomplete"  # a folder without a valid DONE or FAILED
    MISSING = "missing"  # no folder


DONE_MARKER = "DONE"
FAILED_MARKER = "FAILED"
INPUTS_FILENAME = "inputs.json"
METRICS_FILENAME = "metrics.json"
STALE_DIRNAME = "stale"
TRAIN_RUN_NAME = "train"
"""Ultralytics' run folder inside the session folder: <session>/train/weights/{last,best}.pt."""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


@dataclass(frozen=True)
class SessionPaths:
    """Paths, markers and state of one session folder."""

    folder: Path

    @classmethod
    def of(cls, output_root: str | os.PathLike[str], session: Session) -> "SessionPaths":
        """`<output_root>/<model>/<session name>`."""
        return cls(Path(output_root) / session.model / session.name)

    @property
    def output_root(self) -> Path:
        return self.folder.parent.parent

    @property
    def done_marker(self) -> Path:
        return self.folder / DONE_MARKER

    @property
    def failed_marker(self) -> Path:
        return self.folder / FAILED_MARKER

    @property
    def metrics(self) -> Path:
        return self.folder / METRICS_FILENAME

    @property
    def inputs(self) -> Path:
        return self.folder / INPUTS_FILENAME

    @property
    def lock(self) -> Path:
        return self.folder.parent / f".{self.folder.name}.lock"

    def session_lock(self, command: str) -> Any:
        """The session's `SessionLock` (exp3/runlock.py): one process per session folder at a time."""
        from exp3.runlock import SessionLock

        return SessionLock(self.lock, what=f"session {self.folder.name}", command=command)

    @property
    def logs(self) -> Path:
        return self.folder / "logs"

    @property
    def run_dir(self) -> Path:
        return self.folder / TRAIN_RUN_NAME

    @property
    def results_csv(self) -> Path:
        """Ultralytics' per-epoch log: one row per finished epoch (losses, val metrics, cumulative time)."""
        return self.run_dir / "results.csv"

    @property
    def last_pt(self) -> Path:
        return self.run_dir / "weights" / "last.pt"

    @property
    def best_pt(self) -> Path:
        return self.run_dir / "weights" / "best.pt"

    def predictions(self, split: str) -> Path:
        return self.folder / f"predictions_{split}.json"

    def map_stats(self, split: str) -> Path:
        """The validator's per-image matching statistics of `split` (exp3.mapstats): mAP's bootstrap input."""
        return self.folder / f"map_stats_{split}.npz"

    # ------------------------------------------------------------------ markers

    def failure(self) -> dict[str, Any] | None:
        """The FAILED marker (parsed), or None."""
        record = _read_json(self.failed_marker)
        return record if isinstance(record, dict) else ({"error": "unreadable FAILED marker"}
                                                         if self.failed_marker.exists() else None)

    def recorded_key(self) -> str | None:
        """The key in inputs.json (None without one: a folder from before keys counts as stale)."""
        record = _read_json(self.inputs)
        return str(record["key"]) if isinstance(record, dict) and record.get("key") else None

    def evaluations_current(self, plan: dict[str, str]) -> bool:
        """True when metrics.json holds exactly the severity evaluations of `plan` ({split: spec key},
        exp3.splits.evaluation_plan); False means a done session is to be updated (no training)."""
        from exp3.splits import severity_changes

        metrics = _read_json(self.metrics)
        return isinstance(metrics, dict) and severity_changes(metrics, plan) == ([], [])

    def is_done(self, key: str | None) -> bool:
        """DONE records `key` (None: any key, for key-less views) and the sha256 of the metrics.json on disk.

        While `replace_metrics` updates a done session, DONE also names the metrics.json it replaces
        (`replacing_metrics_sha256`): a crash between the two writes leaves the session done either way.
        """
        marker = _read_json(self.done_marker)
        if not isinstance(marker, dict) or not self.metrics.is_file() or key not in (None, marker.get("key")):
            return False
        return sha256_file(self.metrics) in (marker.get("metrics_sha256"), marker.get("replacing_metrics_sha256"))

    def has_content(self) -> bool:
        """Anything besides logs/ (the flow opens logs/session.log before the session subprocess starts)."""
        return self.folder.is_dir() and any(entry.name != "logs" for entry in self.folder.iterdir())

    def state(self, key: str | None) -> SessionState:
        """DONE, STALE, FAILED, PARTIAL or PENDING under `key` (None: a view that cannot compute one
        never says STALE)."""
        if self.is_done(key):
            return SessionState.DONE
        if key is not None and self.has_content() and self.recorded_key() != key:
            return SessionState.STALE
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
        """Replace a done session's metrics.json (evaluations added later), keeping it done throughout.

        DONE is first rewritten to accept the old and the new metrics.json, then metrics.json is
        replaced atomically, then DONE names the new one only. `extra` is merged into DONE.
        """
        marker = _read_json(self.done_marker)
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
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target_dir = self.output_root / STALE_DIRNAME / self.folder.parent.name
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / f"{self.folder.name}__{stamp}"
        suffix = 1
        while target.exists():
            target = target_dir / f"{self.folder.name}__{stamp}-{suffix}"
            suffix += 1
        os.replace(self.folder, target)
        return target
