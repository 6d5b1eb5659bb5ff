"""`python -m exp3.status`: the last val mAP50 column and `--watch` on a fake root (no real run)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from exp3 import status
from exp3.layout import SessionPaths
from exp3.sessions import Session


def _fake_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    paths = SessionPaths.of(root, Session("yolov8n", "S1_clean_train"))
    paths.run_dir.mkdir(parents=True)
    paths.results_csv.write_text("epoch,time,train/box_loss,metrics/mAP50(B),metrics/mAP50-95(B)\n"
                                 "1,10,2.5,0.1,0.05\n2,20,2.0,0.4321,0.2\n")
    (SessionPaths.of(root, Session("yolov8n", "S3_mask_backbone_early")).folder / "logs").mkdir(parents=True)
    return root


def _rows(output: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in output.splitlines() if line.startswith("yolov8n__")}


def test_matrix_shows_the_last_val_map50(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert status.main(["--root", str(_fake_root(tmp_path))]) == 0
    output = capsys.readouterr().out
    assert "last val mAP50" in output.splitlines()[1]
    rows = _rows(output)
    assert rows["yolov8n__S1_clean_train"][1:3] == ["pending", "2/?"]  # no last.pt: pending, 2 epochs logged
    assert rows["yolov8n__S1_clean_train"][-1] == "0.432"
    assert rows["yolov8n__S3_mask_backbone_early"][-1] == "-"  # no results.csv yet
    assert len(rows) == 6  # the six sessions of the model found under the root


def test_watch_without_a_live_run_prints_once_and_exits_0(tmp_path: Path) -> None:
    root = _fake_root(tmp_path)
    result = subprocess.run([sys.executable, "-m", "exp3.status", "--root", str(root), "--watch", "--interval", "1"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("last val mAP50") == 1 and "no live run" in result.stdout and "final" in result.stdout
    assert "\033[2J" not in result.stdout  # not a terminal: blocks, no screen clearing


def test_watch_refreshes_while_live_and_ctrl_c_exits_quietly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    root = _fake_root(tmp_path)
    live = iter([True, True, False])
    monkeypatch.setattr(status, "root_is_live", lambda _root: next(live))
    sleeps: list[float] = []
    monkeypatch.setattr(status.time, "sleep", sleeps.append)
    assert status.main(["--root", str(root), "--watch", "--interval", "2.5"]) == 0
    output = capsys.readouterr().out
    assert output.count("last val mAP50") == 3 and sleeps == [2.5, 2.5]
    assert output.count("a run holds this root") == 2 and output.rstrip().endswith("final")

    def interrupted(_root: Path) -> bool:
        raise KeyboardInterrupt

    monkeypatch.setattr(status, "root_is_live", interrupted)
    assert status.main(["--root", str(root), "--watch"]) == 0
    assert capsys.readouterr() == ("", "")


def test_run_and_watch_shows_the_grid_while_a_command_runs_and_returns_its_code(tmp_path: Path) -> None:
    """What the notebooks call: the command's output goes to the log, the grid is shown at every
    interval (here before the root exists) and once at the end with the exit code."""
    from exp3.status import run_and_watch

    root, log = tmp_path / "root", tmp_path / "flow.log"
    script = f"import pathlib, sys, time; time.sleep(1.2); pathlib.Path({str(root)!r}).mkdir(); print('hello'); sys.exit(3)"
    shown: list[str] = []
    code = run_and_watch([sys.executable, "-c", script], root, log, interval_s=0.3, show=shown.append)
    assert code == 3
    assert len(shown) >= 3
    assert "not created yet" in shown[0] and "running; refreshing every 0.3 s" in shown[0]
    assert "the flow exited with code 3" in shown[-1] and "no live run" in shown[-1]
    assert "hello" in log.read_text()
