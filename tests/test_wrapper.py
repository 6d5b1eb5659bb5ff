"""run_experiment3.sh, the overnight wrapper, on a real root with a stand-in flow that crashes (no training)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from test_layout import done_folder

from exp3.config import load_config, write_resolved_config
from exp3.session.layout import SessionPaths
from exp3.session.plan import write_plan

REPO = Path(__file__).resolve().parents[1]


def test_the_wrapper_tries_again_while_a_session_is_stale(tmp_path: Path) -> None:
    """A config edit left yolov8m's S1 stale (made under another key), rtdetr-l's failed; the flow crashes. Work is
    left (the stale session trains again under the new key), so the wrapper makes its next attempt instead of
    stopping as if every session were done or failed."""
    root = tmp_path / "root"
    overrides = [f"output_root={root}", "sessions=[S1_clean_train]"]
    write_resolved_config(load_config(REPO / "configs" / "smoke.yaml", overrides), root)
    write_plan(root, {"yolov8m__S1_clean_train": "k-new", "rtdetr-l__S1_clean_train": "k-new"})
    done_folder(root / "yolov8m" / "yolov8m__S1_clean_train", "k-old")
    failed = SessionPaths(root / "rtdetr-l" / "rtdetr-l__S1_clean_train")
    failed.folder.mkdir(parents=True)
    failed.write_inputs({}, "k-new")
    failed.failed_marker.write_text(json.dumps({"error": "boom"}))
    shim = tmp_path / "python"  # the flow crashes at once; everything else is the real interpreter
    shim.write_text(f'#!/bin/sh\n[ "$1" = flows/exp3.py ] && exit 1\nexec {sys.executable} "$@"\n')
    shim.chmod(0o755)
    result = subprocess.run(["bash", str(REPO / "run_experiment3.sh"), "--smoke", *[f"--set={o}" for o in overrides]],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHON": str(shim), "EXP3_MAX_ATTEMPTS": "2",
                                 "PREFECT_HOME": str(tmp_path / "prefect")})
    assert "attempt 2/2" in result.stdout, result.stdout + result.stderr[-2000:]
    assert "STALE" in result.stdout and "not retrying" not in result.stdout


def test_the_wrapper_tries_again_after_a_crash_before_any_session(tmp_path: Path) -> None:
    """The flow crashes before it wrote anything (Prefect's server did not start): nothing is done or failed, so the
    wrapper tries again (it said "every session is DONE or FAILED" and gave up the night)."""
    root = tmp_path / "root"
    shim = tmp_path / "python"
    shim.write_text(f'#!/bin/sh\n[ "$1" = flows/exp3.py ] && exit 1\nexec {sys.executable} "$@"\n')
    shim.chmod(0o755)
    result = subprocess.run(["bash", str(REPO / "run_experiment3.sh"), "--smoke", f"--set=output_root={root}"],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHON": str(shim), "EXP3_MAX_ATTEMPTS": "2",
                                 "PREFECT_HOME": str(tmp_path / "prefect")})
    assert "attempt 2/2" in result.stdout and "not retrying" not in result.stdout, result.stdout + result.stderr


def test_the_wrapper_starts_the_real_flow_on_a_new_root_and_refuses_a_folder_of_yours(tmp_path: Path) -> None:
    """It made `<root>/logs/` for its attempt logs before the flow's first start, and the flow then refused the root
    as a folder of the user's (holding files exp3 did not put there: 'logs'): the documented overnight command
    failed on every new root. A folder of yours is refused in one line, as by the flow, with nothing written."""
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    root = tmp_path / "new-root"
    result = subprocess.run(["bash", str(REPO / "run_experiment3.sh"), "--smoke", "--dry-run", "--sessions",
                             "S1_clean_train", f"--set=output_root={root}"], capture_output=True, text=True,
                            timeout=300, env=env)
    assert "run_experiment3: attempt 1 exited 0" in result.stdout, result.stdout + result.stderr[-2000:]
    (log,) = (root / "logs").glob("flow-attempt-*-1.log")
    assert "exp3 dry run: 2 sessions under" in log.read_text()
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "report.md").write_text("my notes\n")
    result = subprocess.run(["bash", str(REPO / "run_experiment3.sh"), "--smoke", f"--set=output_root={mine}"],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 2 and result.stdout == "" and result.stderr.count("\n") == 1, result.stderr
    assert f"output_root {str(mine)!r} holds files exp3 did not put there (e.g. 'report.md')" in result.stderr
    assert [path.name for path in mine.iterdir()] == ["report.md"]
