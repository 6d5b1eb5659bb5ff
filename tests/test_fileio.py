"""exp3.fileio's directory publishing: rename into place, and a concurrent build that won."""

from __future__ import annotations

from pathlib import Path

import pytest

from exp3.fileio import publish_dir


def _staged(root: Path, name: str, text: str) -> Path:
    staging = root / f".{name}.tmp"
    staging.mkdir()
    (staging / "file.txt").write_text(text)
    return staging


def test_publish_dir_renames_into_a_missing_or_empty_target(tmp_path: Path) -> None:
    assert publish_dir(_staged(tmp_path, "a", "ours"), tmp_path / "a", lambda existing: False)
    (tmp_path / "b").mkdir()  # an empty placeholder is replaced
    assert publish_dir(_staged(tmp_path, "b", "ours"), tmp_path / "b", lambda existing: False, durable=False)
    assert [(tmp_path / name / "file.txt").read_text() for name in "ab"] == ["ours", "ours"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a", "b"]


def test_publish_dir_keeps_or_refuses_a_concurrent_winner(tmp_path: Path) -> None:
    target = tmp_path / "set"
    target.mkdir()
    (target / "file.txt").write_text("winner")
    seen: list[Path] = []
    assert not publish_dir(_staged(tmp_path, "set", "ours"), target, lambda existing: seen.append(existing) or True)
    assert seen == [target] and (target / "file.txt").read_text() == "winner"
    with pytest.raises(OSError):
        publish_dir(_staged(tmp_path, "set", "ours"), target, lambda existing: False)
    with pytest.raises(ValueError, match="damaged"):
        publish_dir(_staged(tmp_path, "set", "ours"), target, lambda existing: (_ for _ in ()).throw(ValueError("damaged")))
    assert [path.name for path in tmp_path.iterdir()] == ["set"]  # every staging directory removed
    assert (target / "file.txt").read_text() == "winner"
