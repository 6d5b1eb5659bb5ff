"""What the files on disk say about each session (`session_status`), `python -m exp3.status` and `--watch` on a
fake root, and `run_and_watch` (no real run)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from test_layout import done_folder

from exp3 import status
from exp3.session.layout import SessionPaths
from exp3.sessions import SESSION_SUFFIXES, Session
from exp3.status import session_status

REPO = Path(__file__).resolve().parents[1]


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
    monkeypatch.setattr(status.RootLock, "is_live", lambda _lock: next(live))
    sleeps: list[float] = []
    monkeypatch.setattr(status.time, "sleep", sleeps.append)
    assert status.main(["--root", str(root), "--watch", "--interval", "2.5"]) == 0
    output = capsys.readouterr().out
    assert output.count("last val mAP50") == 3 and sleeps == [2.5, 2.5]
    assert output.count("a run holds this root") == 2 and output.rstrip().endswith("final")

    def interrupted(_lock: object) -> bool:
        raise KeyboardInterrupt

    monkeypatch.setattr(status.RootLock, "is_live", interrupted)
    assert status.main(["--root", str(root), "--watch"]) == 0
    assert capsys.readouterr() == ("", "")


def test_run_and_watch_shows_the_grid_while_a_command_runs_and_returns_its_code(tmp_path: Path) -> None:
    """What the notebooks call: the command's output goes to the log, the grid is shown at every
    interval (here before the root exists) and once at the end with the exit code."""
    from exp3.status import run_and_watch

    root, log = tmp_path / "root", tmp_path / "flow.log"
    script = (f"import pathlib, sys, time; time.sleep(1.2); pathlib.Path({str(root)!r}).mkdir(); "
              "print('hello'); sys.exit(3)")
    shown: list[str] = []
    code = run_and_watch([sys.executable, "-c", script], root, log, interval_s=0.3, show=shown.append)
    assert code == 3
    assert len(shown) >= 3
    assert "not created yet" in shown[0] and "refreshing every 0.3 s" in shown[0] and str(log) in shown[0]
    assert "final: the flow exited with code 3" in shown[-1] and "no live run" in shown[-1]
    assert "hello" in log.read_text()


def test_done_or_stale_under_the_planned_key(tmp_path: Path) -> None:
    paths = done_folder(tmp_path / "m" / "m__S1_clean_train", "k-old")
    done = session_status(paths, epochs_total=3, key="k-old")
    assert (done.state, done.epochs_done, done.elapsed_s) == ("done", 3, 1.0)
    assert type(done.epochs_done) is int  # printed "3/3", not "3.0/3.0"
    for value, shown in ((2.5, 2.5), (float("nan"), None), (float("inf"), None)):  # a hand-edited file: shown, no crash
        paths.metrics.write_text(json.dumps({"training": {"epochs_completed": value, "wall_s": 1.0}}))
        paths.write_done("k-old", {})
        epochs = session_status(paths, epochs_total=3, key="k-old").epochs_done
        assert epochs == shown or (shown is None and not math.isfinite(epochs))
    stale = session_status(paths, epochs_total=3, key="k-new")
    assert stale.state == "stale" and "k-old" in (stale.error or "")
    assert session_status(paths, epochs_total=3).state == "done"  # key-less view


def test_a_folder_made_by_another_exp3_is_stale_with_or_without_a_plan(tmp_path: Path) -> None:
    """A root run again after a `git pull` that changed the file schema: its plan.json is the old code's, whose keys
    its folders match, so only the versions inputs.json records (both in every key) can tell. Before, status and the
    report showed such a session done, with numbers, while the flow called it stale and trained it again."""
    import exp3

    paths = done_folder(tmp_path / "m" / "m__S1_clean_train", "k-old")
    paths.write_inputs({"exp3_version": exp3.__version__, "schema_version": exp3.SCHEMA_VERSION}, "k-old")
    assert session_status(paths, epochs_total=3, key="k-old").state == "done"  # this exp3's: as before
    paths.write_inputs({"exp3_version": exp3.__version__, "schema_version": exp3.SCHEMA_VERSION - 1}, "k-old")
    for key in ("k-old", None):                                     # the old plan's key, or no plan
        stale = session_status(paths, epochs_total=3, key=key)
        assert stale.state == "stale" and stale.error == (
            f"made by exp3 {exp3.__version__} (schema {exp3.SCHEMA_VERSION - 1}), not this exp3 ({exp3.__version__}, "
            f"schema {exp3.SCHEMA_VERSION}): re-runs from scratch")
    paths.write_inputs({"exp3_version": exp3.__version__}, "k-old")  # before schema 2 (e.g. cb9bd3c): no such field
    assert session_status(paths, epochs_total=3, key="k-old").error == (
        f"made by exp3 {exp3.__version__} (no schema_version: before 2), not this exp3 ({exp3.__version__}, schema "
        f"{exp3.SCHEMA_VERSION}): re-runs from scratch")


def test_what_the_files_do_not_say_is_shown_missing_not_as_zero(tmp_path: Path) -> None:
    """A done session whose metrics.json lacks epochs_completed, epochs logged without a `time` column: `?`, `-`."""
    done = done_folder(tmp_path / "m" / "m__S1_clean_train", "k")
    done.metrics.write_text(json.dumps({"training": {"wall_s": 1.0}}))
    done.write_done("k", {})
    partial = SessionPaths(tmp_path / "m" / "m__S2_occ_train")
    partial.last_pt.parent.mkdir(parents=True)
    partial.results_csv.write_text("epoch,metrics/mAP50(B)\n1,0.1\n2,0.2\n")
    partial.last_pt.write_bytes(b"x")
    rows = [session_status(done, epochs_total=3, key="k"), session_status(partial, epochs_total=3)]
    assert (rows[0].state, rows[0].epochs_done, rows[1].elapsed_s) == ("done", None, None)
    matrix = {line.split()[0]: line.split() for line in status.format_matrix(rows).splitlines()[2:4]}
    assert matrix["m__S1_clean_train"][2] == "?/?" and matrix["m__S2_occ_train"][2:4] == ["2/3", "-"]


def test_pending_partial_running_failed_from_files(tmp_path: Path) -> None:
    paths = SessionPaths(tmp_path / "m__S1_clean_train")
    assert session_status(paths, epochs_total=3).state == "pending"
    paths.last_pt.parent.mkdir(parents=True)
    paths.results_csv.write_text("epoch,time\n1,10.0\n2,20.0\n")
    paths.last_pt.write_bytes(b"x")
    partial = session_status(paths, epochs_total=3)
    assert partial.state == "partial" and partial.epochs_done == 2 and partial.eta_s is None  # nothing runs it
    with paths.session_lock("python -m exp3.session"):  # a process runs it (the flow's or one started by hand)
        running = session_status(paths, epochs_total=3)
        assert running.state == "running" and running.eta_s == pytest.approx(10.0)
    paths.lock.write_text(json.dumps({"pid": 1, "host": "h", "command": "killed"}))  # a kill -9 leaves the name
    assert session_status(paths, epochs_total=3).state == "partial"
    paths.failed_marker.write_text(json.dumps({"error": "boom"}))
    failed = session_status(paths, epochs_total=3)
    assert failed.state == "failed" and failed.error == "boom"
    with paths.session_lock("python -m exp3.session"):  # run again (--rerun-failed)
        assert session_status(paths, epochs_total=3).state == "running"


def test_a_folder_with_only_the_flows_log_is_pending_not_stale(tmp_path: Path) -> None:
    paths = SessionPaths(tmp_path / "m" / "m__S1_clean_train")
    paths.logs.mkdir(parents=True)
    (paths.logs / "session.log").write_text("==== python -m exp3.session ... ====\n")
    assert session_status(paths, epochs_total=3, key="k").state == "pending"
    # a failure before the session wrote its inputs.json (preparing its data): failed, not "made under other inputs"
    (paths.folder / "FAILED").write_text(json.dumps({"error": "DatasetError: ..."}))
    assert session_status(paths, epochs_total=3, key="k").state == "failed" and paths.state("k") == "failed"


def test_a_missing_root_or_a_bad_interval_says_the_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv, fix in ([["--root", str(tmp_path / "none")], "pass --root of a run"],
                      [["--root", str(tmp_path), "--interval", "0"], "--interval must be positive"]):
        with pytest.raises(SystemExit) as exit_info:
            status.main(argv)
        assert exit_info.value.code == 2 and fix in capsys.readouterr().err


def test_a_folder_that_holds_no_run_is_refused_not_shown_as_an_empty_grid(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """A mistyped --root (the parent `runs/`, a model folder) read as "nothing ran"; now one line, exit 2."""
    (tmp_path / "runs" / "yolov8m").mkdir(parents=True)
    (tmp_path / "runs" / "notes.md").write_text("mine\n")
    for root in (tmp_path / "runs", tmp_path / "runs" / "yolov8m"):
        with pytest.raises(SystemExit) as exit_info:
            status.main(["--root", str(root)])
        assert exit_info.value.code == 2 and "holds no exp3 run" in capsys.readouterr().err
    status.main(["--root", str(tmp_path / "runs"), "--watch", "--interval", "0.01"])  # a starting flow: shown
    assert "no live run" in capsys.readouterr().out


def test_a_grid_of_several_seeds_is_shown_seed_by_seed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two seeds: every session is listed once per seed, under the folder names the flow writes (seed 0's without a
    seed part, `__seed1`), from the run's config_resolved.yaml and, for sessions run by hand, from the folders found."""
    from exp3.config import load_config, write_resolved_config

    root = tmp_path / "root"
    config = load_config(REPO / "configs" / "smoke.yaml", ["seeds=[0, 1]"])
    for seed in (0, 1):
        paths = SessionPaths.of(root, Session("yolov8m", "S1_clean_train", seed))
        paths.run_dir.mkdir(parents=True)
        paths.results_csv.write_text("epoch,time,train/box_loss,metrics/mAP50(B),metrics/mAP50-95(B)\n"
                                     f"1,10,2.5,0.{seed + 1},0.05\n")
    expected = {Session(model, suffix, seed).name for model in ("yolov8m", "rtdetr-l") for suffix in SESSION_SUFFIXES
                for seed in (0, 1)}
    assert "yolov8m__S1_clean_train" in expected and "yolov8m__S1_clean_train__seed1" in expected
    by_hand = status.render(root, live=False)
    write_resolved_config(config, root)
    from_config = status.render(root, live=False)
    for output, models in ((by_hand, ("yolov8m",)), (from_config, ("yolov8m", "rtdetr-l"))):
        rows = {line.split()[0]: line.split() for line in output.splitlines()[3:-1]}
        assert set(rows) == {name for name in expected if name.split("__")[0] in models}
        assert rows["yolov8m__S1_clean_train__seed1"][-1] == "0.200"                 # its own results.csv
