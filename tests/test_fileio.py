"""exp3.fileio's directory publishing: rename into place, and a concurrent build that won."""

from __future__ import annotations

from pathlib import Path

import pytest

from exp3.fileio import publish_dir, read_json


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


def test_read_json_reads_what_it_can_and_none_else(tmp_path: Path) -> None:
    """A reader that shows what it can (status, progress, the mirror): a file half-written by a crash, not UTF-8
    (bytes from another tool) or missing reads as None, never an exception."""
    good, cut, binary = tmp_path / "good.json", tmp_path / "cut.json", tmp_path / "binary.json"
    good.write_text('{"a": [1, 2]}', encoding="utf-8")
    cut.write_text('{"a": [1,', encoding="utf-8")
    binary.write_bytes(b'{"a": "' + bytes([0xFF, 0xFE]) + b'"}')
    assert read_json(good) == {"a": [1, 2]}
    assert [read_json(path) for path in (cut, binary, tmp_path / "missing.json")] == [None, None, None]
