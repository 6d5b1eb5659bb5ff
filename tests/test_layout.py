"""A session folder's markers and state (exp3.session.layout), and the one state vocabulary."""

from __future__ import annotations

import json
from pathlib import Path

from exp3.session.layout import SessionPaths, SessionState


def done_folder(folder: Path, key: str) -> SessionPaths:
    """A finished session folder made under `key` (3 epochs, 1 s)."""
    paths = SessionPaths(folder)
    folder.mkdir(parents=True)
    paths.write_inputs({}, key)
    paths.metrics.write_text(json.dumps({"training": {"epochs_completed": 3, "wall_s": 1.0}}))
    paths.write_done(key, {})
    return paths


def test_state_under_a_key(tmp_path: Path) -> None:
    paths = done_folder(tmp_path / "m" / "m__S1_clean_train", "k-old")
    assert paths.state("k-old") is SessionState.DONE and paths.state(None) is SessionState.DONE
    assert paths.state("k-new") is SessionState.STALE
    paths.metrics.write_text("{}")  # DONE no longer matches metrics.json
    assert paths.state("k-old") is SessionState.PENDING and paths.state(None) is SessionState.PENDING
    paths.failed_marker.write_text(json.dumps({"error": "boom"}))
    assert paths.state("k-old") is SessionState.FAILED and paths.failure() == {"error": "boom"}


def test_a_folder_from_before_keys_is_stale(tmp_path: Path) -> None:
    """No inputs.json (a pre-release folder): its inputs are unknown, so it is moved aside, never trusted."""
    paths = done_folder(tmp_path / "m" / "m__S1_clean_train", "k")
    paths.inputs.unlink()
    paths.metrics.write_text("{}")
    assert paths.recorded_key() is None and paths.state("k") is SessionState.STALE


def test_move_aside_keeps_everything(tmp_path: Path) -> None:
    folder = tmp_path / "root" / "m" / "m__S1_clean_train"
    done_folder(folder, "k-old")
    (folder / "train" / "weights").mkdir(parents=True)
    (folder / "train" / "weights" / "last.pt").write_bytes(b"old weights")
    moved = SessionPaths(folder).move_aside()
    assert not folder.exists() and moved.parent == tmp_path / "root" / "stale" / "m"
    assert (moved / "train" / "weights" / "last.pt").read_bytes() == b"old weights"
    assert SessionPaths(moved).recorded_key() == "k-old"


def test_states_read_and_write_as_the_strings_files_and_logs_show() -> None:
    assert SessionState("done") is SessionState.DONE and f"{SessionState.STALE}" == "stale"
    assert json.dumps({"status": SessionState.CACHED}) == '{"status": "cached"}'
    assert len({state.value for state in SessionState}) == len(SessionState)
