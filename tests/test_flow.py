"""The Prefect flow for real: `python flows/exp3.py` in a subprocess on tiny workloads.

Covers: --sanity (second run skips both sessions), failure policies continue/stop with the
report still written, kill -9 mid-run then re-run on the same root and on a new one from the mirror
(each finished session trained once, the interrupted one resumed, no orphans), a live root refused, bad CLI input, and the live view
(per-epoch log lines and artifacts, read back from the run's Prefect database).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
FLOW = REPO / "flows" / "exp3.py"


def _flow(cwd: Path, *args: str, timeout: int = 600,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(FLOW), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def _config(tmp_path: Path, models: dict, **extra: object) -> Path:
    payload = {"base": str(REPO / "configs" / "smoke.yaml"), "output_root": str(tmp_path / "out"),
               "models": models, "sessions": ["S1_clean_train"],
               "parallel_sessions": 1,  # one slot: these tests reason about which session ran before which
               "occlusion": {"severities": []},  # test_clean and test_occ_fixed: the levels are test_severity's
               **extra}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(payload))
    return path


def _session_processes_of(root: Path) -> list[int]:
    """Pids of live `exp3.session.run` processes started for `root` (its Ultralytics settings directory is in
    their environment from birth)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            command = (proc / "cmdline").read_bytes()
            environment = (proc / "environ").read_bytes()
        except OSError:
            continue
        if b"exp3.session" in command and str(root).encode() in environment:
            found.append(int(proc.name))
    return found


def _train_attempts(folder: Path) -> int:
    log = folder / "logs" / "train.log"
    return log.read_text(errors="replace").count("==== exp3 train") if log.is_file() else 0


def test_sanity_passes_and_second_run_skips(tmp_path: Path, prefect_api: dict[str, str]) -> None:
    """Also runs its two sessions side by side (parallel_sessions: 2, two CPU slots): their runs overlap in time."""
    result = _flow(tmp_path, "--sanity", "--set", "models.yolov8m.architecture=yolov8n.yaml",
                   "--set", "parallel_sessions=2", env=prefect_api)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "sanity PASS" in result.stdout
    root = tmp_path / "runs" / "exp3-sanity"
    spans = []
    for session in ("yolov8m__S1_clean_train", "yolov8m__S3_mask_backbone_early"):
        assert (root / "yolov8m" / session / "DONE").is_file()
        assert _train_attempts(root / "yolov8m" / session) == 1
        folder = root / "yolov8m" / session
        spans.append(((folder / "inputs.json").stat().st_mtime, (folder / "DONE").stat().st_mtime))
    assert max(start for start, _ in spans) < min(end for _, end in spans), f"sessions did not overlap: {spans}"
    assert (root / "summary_metrics.csv").is_file() and list((root / "plots").glob("*.png"))
    assert not (root / "stale").exists()  # fresh sessions: nothing was made under other inputs
    planned = json.loads((root / "plan.json").read_text())["keys"]  # the config's grid, not only the 2 that ran
    assert len(planned) == 12 and planned["rtdetr-l__S6_mask_head"].startswith("rtdetr-l__S6_mask_head-")
    assert all(planned[s] == json.loads((root / "yolov8m" / s / "inputs.json").read_text())["key"]
               for s in ("yolov8m__S1_clean_train", "yolov8m__S3_mask_backbone_early"))
    dry = _flow(tmp_path, "--sanity", "--dry-run", "--set", "models.yolov8m.architecture=yolov8n.yaml",
                "--models", "yolov8m", "--sessions", "S1_clean_train", "S3_mask_backbone_early")
    assert dry.returncode == 0, dry.stderr[-2000:]
    keys = [line.split()[-1] for line in dry.stdout.splitlines() if line.startswith("  yolov8m__")]
    assert len(keys) == 2 and not (root / ".prefect" / "results").exists()  # "done" is the folders' word alone
    assert all(" done " in line for line in dry.stdout.splitlines() if line.startswith("  yolov8m__"))
    changed = _flow(tmp_path, "--sanity", "--dry-run", "--set", "models.yolov8m.architecture=yolov8n.yaml",
                    "--set", "models.yolov8m.epochs=2", "--models", "yolov8m", "--sessions", "S1_clean_train")
    assert changed.returncode == 0 and " stale " in changed.stdout, changed.stdout[-2000:]  # other inputs: not done
    status = subprocess.run([sys.executable, "-m", "exp3.status", "--root", str(root)], capture_output=True,
                            text=True)
    assert status.returncode == 0 and "STALE" not in status.stdout and "done=2" in status.stdout
    one = _flow(tmp_path, "--smoke", "--set", "output_root=runs/exp3-sanity", "--set",
                "models.yolov8m.architecture=yolov8n.yaml", "--models", "yolov8m",
                "--sessions", "S3_mask_backbone_early", env=prefect_api)
    assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-3000:]
    summary = (root / "summary_metrics.csv").read_text()   # the report of the config's grid, not of the one session
    assert "S1_clean_train" in summary and "S3_mask_backbone_early" in summary

    def refuse(constant: str) -> None:
        raise ValueError(f"non-strict JSON literal {constant}")

    written = [path for path in root.rglob("*.json") if ".prefect" not in path.parts]
    assert len(written) > 10
    for path in written:  # every JSON exp3 wrote parses with a strict parser
        json.loads(path.read_text(), parse_constant=refuse)


def _prefect_runs(prefect_home: Path) -> list[dict]:
    """Each `exp3` flow run (oldest first) with its log messages and artifacts (latest data per key), read
    from the run's Prefect database (PREFECT_HOME/prefect.db, read-only; no API server to start)."""
    with sqlite3.connect(f"file:{prefect_home / 'prefect.db'}?mode=ro", uri=True) as db:
        runs = db.execute("SELECT r.id FROM flow_run r JOIN flow f ON f.id = r.flow_id WHERE f.name = 'exp3' "
                          "ORDER BY r.created").fetchall()
        result = []
        for (run_id,) in runs:
            logs = [m for (m,) in db.execute("SELECT message FROM log WHERE flow_run_id = ? ORDER BY timestamp",
                                             (run_id,))]
            artifacts = {key: (kind, data) for key, kind, data in db.execute(
                "SELECT key, type, data FROM artifact WHERE flow_run_id = ? ORDER BY created", (run_id,))}
            result.append({"logs": logs, "artifacts": artifacts})
    return result


def test_live_view_per_epoch_lines_and_artifacts_then_cached(tmp_path: Path) -> None:
    """Issue 14: one log line per epoch and a DONE line; the second run (the session folder says done: no task
    runs) shows the session at 100 % and logs its result as already done."""
    args = ("--smoke", "--models", "yolov8m", "--sessions", "S1_clean_train",
            "--set", "models.yolov8m.architecture=yolov8n.yaml", "--set", "models.yolov8m.epochs=2")
    home = tmp_path / "prefect-home"  # explicit (an inherited PREFECT_HOME would win over <root>/.prefect)
    env = {**os.environ, "PREFECT_HOME": str(home)}
    first = _flow(tmp_path, *args, env=env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    second = _flow(tmp_path, *args, env=env)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    root = tmp_path / "runs" / "exp3-smoke"
    assert _train_attempts(root / "yolov8m" / "yolov8m__S1_clean_train") == 1
    runs = _prefect_runs(home)
    assert len(runs) == 2
    name, progress, table = "yolov8m__S1_clean_train", "progress-yolov8m--s1-clean-train", \
        "epochs-yolov8m--s1-clean-train"
    logs = "\n".join(runs[0]["logs"])
    for epoch in (1, 2):
        assert f"{name}: epoch {epoch}/2 box_loss " in logs and " | val mAP50 " in logs, logs[-3000:]
    assert sum(line.startswith(f"{name}: epoch ") for line in runs[0]["logs"]) == 2
    assert f"DONE {name}: F1 clean " in logs and " / occluded " in logs and ", wall " in logs
    assert runs[0]["artifacts"][progress] == ("progress", 100)
    kind, data = runs[0]["artifacts"][table]
    rows = json.loads(data)
    rows = json.loads(rows) if isinstance(rows, str) else rows  # a table is stored as its JSON text
    assert kind == "table" and [row["epoch"] for row in rows] == [1, 2] and "mAP50-95" in rows[0]
    again = "\n".join(runs[1]["logs"])
    assert f"{name}: already done under this key (cached), F1 clean " in again, again[-3000:]
    assert f"{name}: epoch " not in again and f"DONE {name}" not in again  # the task body did not run
    assert runs[1]["artifacts"][progress] == ("progress", 100)
    kind, markdown = runs[1]["artifacts"]["exp3-results"]                 # the final numbers, in the UI
    markdown = json.loads(markdown) if markdown.startswith('"') else markdown  # stored as its JSON text
    summary = {(row["model"], row["session"], row["split"]): row   # the config's grid: rtdetr-l too, not done
               for row in json.loads((root / "summary_metrics.json").read_text())}
    f1 = summary[("yolov8m", "S1_clean_train", "test_occ_fixed")]["ingredient_micro_f1"]
    assert kind == "markdown" and "## Headline findings" in markdown and "## Positive control" in markdown
    assert f"| {f1:.3f}" in markdown and str(root / "report.md") in markdown


@pytest.mark.parametrize("policy", ["continue", "stop"])
def test_failure_policy(tmp_path: Path, policy: str, prefect_api: dict[str, str]) -> None:
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"garbage, not a checkpoint")
    models = {"broken": {"architecture": "yolov8n.yaml", "weights": str(broken), "epochs": 1},
              "yolov8n": {"architecture": "yolov8n.yaml", "epochs": 1}}
    config = _config(tmp_path, models, failure={"policy": policy})
    result = _flow(tmp_path, "--config", str(config), "--models", "broken", "yolov8n", env=prefect_api)
    assert result.returncode == 1, result.stderr[-3000:]
    root = tmp_path / "out"
    assert (root / "broken" / "broken__S1_clean_train" / "FAILED").is_file()
    good_done = (root / "yolov8n" / "yolov8n__S1_clean_train" / "DONE").is_file()
    assert good_done is (policy == "continue")
    assert "1 of 2 sessions failed: broken__S1_clean_train" in result.stderr  # with 'stop' too, not "2 of 2"
    assert ("1 not run (failed before, or after a failure with failure.policy 'stop'): yolov8n__S1_clean_train"
            in result.stderr) is (policy == "stop")
    summary = (root / "summary_metrics.csv").read_text()  # the report runs in both cases
    assert "broken" in summary and "failed" in summary
    status = {(row["model"], row["session"]): row["status"] for row in csv.DictReader(io.StringIO(summary))}
    if policy == "continue":  # every grid cell has a row whatever its status: check the status, not the name
        assert status[("yolov8n", "S1_clean_train")] == "done", summary


def test_kill_9_then_a_rerun_here_or_on_a_new_vm_trains_each_session_once(tmp_path: Path,
                                                                          prefect_api: dict[str, str]) -> None:
    """One killed run, two ways back. The flow is killed (-9) while S3 trains, after its first mirrored checkpoint:
    its session process dies with it. (1) The same command on the same root (the mirror left out, so it keeps
    what the kill left) trains nothing finished again and resumes S3 from its own last.pt. (2) Issue 36: Colab's
    VM recycled: the local root is gone, and the same command on a new, empty root (another path) and the mirror
    restores S1 (done: not trained again), resumes S3 from the mirrored last.pt, and ends with the report."""
    from exp3.train.training import checkpoint_state  # here: the other tests drive the flow only as a process

    drive, root = tmp_path / "drive", tmp_path / "out"
    first, second = (root / "yolov8n" / f"yolov8n__{s}" for s in ("S1_clean_train", "S3_mask_backbone_early"))
    held = drive / "yolov8n" / "yolov8n__S3_mask_backbone_early"
    # The kill must fall while S3 trains, after its first mirrored last.pt (copied at a poll, up to 5 s after it is
    # written). A fast box trained 12 epochs in 5 s and finished first: then the same run is made again, 4x longer.
    for epochs in (12, 48):
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(drive, ignore_errors=True)
        config = _config(tmp_path, {"yolov8n": {"architecture": "yolov8n.yaml", "epochs": epochs}},
                         sessions=["S1_clean_train", "S3_mask_backbone_early"],
                         mirror={"path": str(drive), "checkpoint_minutes": 0})
        process = subprocess.Popen([sys.executable, str(FLOW), "--config", str(config), "--models", "yolov8n"],
                                   cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 400
        # last.pt and the train.log pushed after it (the log's attempt count is asserted below; a kill between the
        # two is tests/test_mirror.py's: the resume is from last.pt all the same)
        while not all((held / name).exists() for name in ("train/weights/last.pt", "logs/train.log")) \
                and process.poll() is None:
            assert time.time() < deadline, "no mirrored checkpoint of S3 after 400 s"
            time.sleep(0.2)
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)  # the flow process only: its children must die with it
        process.wait()
        deadline = time.time() + 3
        while _session_processes_of(root) and time.time() < deadline:
            time.sleep(0.1)
        assert _session_processes_of(root) == [], "a session process outlived the killed flow by 3 s"
        if checkpoint_state(second / "train" / "weights" / "last.pt")[0] == "partial":
            break  # killed while S3 trained (not after it, nor did the flow end first)
    else:
        pytest.fail("S3 finished training before its first mirrored checkpoint, even at 48 epochs")
    assert (first / "DONE").is_file() and not (second / "DONE").is_file()
    assert (drive / "yolov8n" / "yolov8n__S1_clean_train" / "DONE").is_file() and not (held / "DONE").exists()
    assert "-m exp3.session --config" in (second / "logs" / "session.log").read_text()  # a fresh process

    here = _flow(tmp_path, "--config", str(config), "--models", "yolov8n", "--set", "mirror.path=null")
    assert here.returncode == 0, here.stderr[-3000:]
    assert _train_attempts(first) == 1  # finished before the kill: not retrained
    assert _train_attempts(second) == 2  # interrupted: resumed once
    metrics = json.loads((second / "metrics.json").read_text())
    assert metrics["training"]["resumed_from_epoch"] is not None
    assert [row["epoch"] for row in metrics["masking"]["stats"]["epochs"]] == list(range(epochs))
    assert not (held / "DONE").exists()  # the mirror still holds what the kill left

    shutil.rmtree(root)  # the VM is gone, and everything local with it
    new_root = tmp_path / "new-vm" / "out"
    rerun = _flow(tmp_path, "--config", str(config), "--models", "yolov8n", "--set", f"output_root={new_root}",
                  env=prefect_api)  # the killed run and the rerun here: each with its server, at the root's database
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "yolov8n__S1_clean_train: done (DONE verified), not trained again" in rerun.stderr
    assert "yolov8n__S3_mask_backbone_early: unfinished (" in rerun.stderr
    first, second = (new_root / "yolov8n" / f"yolov8n__{s}" for s in ("S1_clean_train", "S3_mask_backbone_early"))
    assert _train_attempts(first) == 1  # its mirrored log: trained once, before the VM went
    assert _train_attempts(second) == 2  # the attempt before the kill, then the resume
    metrics = json.loads((second / "metrics.json").read_text())
    assert metrics["training"]["resumed_from_epoch"] is not None
    assert metrics["checkpoint"]["path"].startswith(str(new_root))  # trained and evaluated where it is now
    assert (first / "DONE").is_file() and (second / "DONE").is_file() and (new_root / "report.md").is_file()
    assert not root.exists()  # nothing went to the paths the mirrored checkpoint was made at
    assert (drive / "report.md").is_file() and (held / "DONE").is_file()
    assert not (held / "train" / "weights" / "last.pt").exists()  # done: its in-progress checkpoint is gone


def test_bad_input_and_live_root(tmp_path: Path) -> None:
    bad = _flow(tmp_path, "--smoke", "--models", "yolov9")
    assert bad.returncode == 2 and "unknown model(s) yolov9" in bad.stderr and bad.stderr.count("\n") == 1
    bad = _flow(tmp_path, "--smoke", "--sessions", "S7_magic")
    assert bad.returncode == 2 and "unknown session 'S7_magic'" in bad.stderr
    config = tmp_path / "bad.yaml"
    config.write_text("train: {batchsize: 3}\n")
    bad = _flow(tmp_path, "--config", str(config))
    assert bad.returncode == 2 and "unknown config key 'train.batchsize'" in bad.stderr
    missing = _config(tmp_path, {"yolov8n": {"architecture": "yolov8n.yaml", "epochs": 1,
                                             "weights": str(tmp_path / "nope.pt")}})
    bad = _flow(tmp_path, "--config", str(missing))
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr[-2000:]
    assert "nope.pt" in bad.stderr and "weights: null" in bad.stderr
    assert not (tmp_path / "out" / "yolov8n").exists()  # refused before any session started
    asset = _config(tmp_path, {"yolov8m": {"architecture": "yolov8n.yaml", "epochs": 1, "weights": "yolov8m.pt"}})
    bad = _flow(tmp_path, "--config", str(asset))
    assert bad.returncode == 2 and "put yolov8m.pt in" in bad.stderr and "weights_dir" in bad.stderr, bad.stderr
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from exp3.session.runlock import RootLock; RootLock(Path(sys.argv[1])).acquire(); "
                               "time.sleep(120)", str(tmp_path / "runs" / "exp3-smoke")])
    try:
        deadline = time.time() + 30
        lock = tmp_path / "runs" / "exp3-smoke" / ".exp3.lock"
        while not (lock.exists() and lock.stat().st_size) and time.time() < deadline:  # the holder named in it
            time.sleep(0.1)
        busy = _flow(tmp_path, "--smoke")
        assert busy.returncode == 2 and "is in use by pid" in busy.stderr
        assert not (tmp_path / "runs" / "exp3-smoke" / "yolov8m").exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_mirror_path_at_a_folder_of_the_users_is_refused_before_the_run(tmp_path: Path) -> None:
    """mirror.path at an existing folder of the user's: its report.md became the run's (emptied first). Refused in one
    line before anything runs, the file as it was; a mirror exp3 filled is taken (a dry run: nothing trains)."""
    mirror, root = tmp_path / "mirrorU", tmp_path / "out"
    mirror.mkdir()
    (mirror / "report.md").write_text("# my thesis notes, only copy\n")
    args = ("--smoke", "--models", "yolov8m", "--sessions", "S1_clean_train", "--set", f"output_root={root}",
            "--set", f"mirror.path={mirror}")
    refused = _flow(tmp_path, *args)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stdout[-2000:] + refused.stderr[-2000:]
    assert f"mirror.path {str(mirror)!r} holds files exp3 did not put there (e.g. 'report.md')" in refused.stderr
    assert "point mirror.path at an empty or new folder" in refused.stderr
    assert (mirror / "report.md").read_text() == "# my thesis notes, only copy\n"
    assert not (root / "yolov8m").exists()
    (mirror / "yolov8m" / "yolov8m__S1_clean_train").mkdir(parents=True)   # a mirror exp3 filled (its report.md)
    dry = _flow(tmp_path, *args, "--dry-run")
    assert dry.returncode == 0 and "yolov8m__S1_clean_train" in dry.stdout, dry.stderr[-2000:]
    # output_root at a folder of the user's: its report.md and summary_metrics.csv would be the run's; even a dry
    # run wrote .prefect/ and .ultralytics/ there
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "summary_metrics.csv").write_text("my,table\n")
    refused = _flow(tmp_path, "--smoke", "--dry-run", "--set", f"output_root={mine}")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr[-2000:]
    assert f"output_root {str(mine)!r} holds files exp3 did not put there (e.g. 'summary_metrics.csv')" in \
        refused.stderr
    assert sorted(path.name for path in mine.iterdir()) == ["summary_metrics.csv"]


def test_an_output_root_that_is_not_a_writable_directory_is_refused_in_one_line(tmp_path: Path) -> None:
    """A file, a path under a file, or /proc: one line naming it, exit 2, the file untouched (was a traceback)."""
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    for root, reason in ((notes, "a file is there"), (notes / "exp3", "Not a directory"),
                         (Path("/proc/exp3out"), "cannot create it")):
        bad = _flow(tmp_path, "--smoke", "--dry-run", "--set", f"output_root={root}")
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr[-2000:]
        assert bad.stderr.startswith(f"error: output_root '{root}' is not a writable directory (")
        assert reason in bad.stderr and bad.stderr.rstrip().endswith("): choose another")
    assert notes.read_text() == "my notes\n" and list(tmp_path.iterdir()) == [notes]


def test_a_moved_output_root_is_refused_in_one_line(tmp_path: Path) -> None:
    """A root copied elsewhere holds its suites' absolute paths: refused in one line, exit 2, before the flow (it
    stopped in prepare-data with a traceback, exit 1, which run_experiment3.sh retried); at home it runs."""
    from exp3.occlusion.verify import moved_root

    old, root = tmp_path / "old", tmp_path / "new"
    suite = root / "suites" / "occ-x"
    suite.mkdir(parents=True)
    (suite / "test_clean.yaml").write_text(f"path: {old / 'suites' / 'occ-x' / 'test_clean'}\ntest: images\n")
    bad = _flow(tmp_path, "--smoke", "--dry-run", "--set", f"output_root={root}")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr[-2000:]
    assert f"output_root '{root}' was moved or copied from another place: suites/occ-x/test_clean.yaml points at " \
           f"'{old / 'suites' / 'occ-x' / 'test_clean'}'" in bad.stderr
    (suite / "test_clean.yaml").write_text(f"path: {suite / 'test_clean'}\ntest: images\n")
    assert moved_root(root) is None


def test_a_user_data_yaml_that_cannot_be_read_is_refused_before_the_flow(tmp_path: Path) -> None:
    """A missing data.yaml (or one without names) is refused in one line naming it, exit 2, before the flow starts:
    run_experiment3.sh retries a run that exits 1 (it ended in a ~79-line traceback), and the dry run said nothing."""
    root = tmp_path / "out"
    yaml_set = ["--smoke", "--set", f"output_root={root}", "--set", "dataset.kind=yaml", "--set"]
    bad = _flow(tmp_path, *yaml_set, f"dataset.data_yaml={tmp_path / 'nope.yaml'}")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stdout[-2000:] + bad.stderr[-3000:]
    assert f"dataset yaml '{tmp_path / 'nope.yaml'}' does not exist" in bad.stderr
    assert not (root / "audits").exists() and not (root / "config_resolved.yaml").exists()  # no flow ran
    (tmp_path / "nameless.yaml").write_text(f"path: {tmp_path}\ntrain: images\nval: images\ntest: images\n")
    bad = _flow(tmp_path, *yaml_set, f"dataset.data_yaml={tmp_path / 'nameless.yaml'}", "--dry-run")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and bad.stdout == "", bad.stderr[-3000:]
    assert f"'{tmp_path / 'nameless.yaml'}': 'names' is missing or empty" in bad.stderr


def test_a_ui_or_deployment_run_refused_late_leaves_the_roots_record_as_it_was(tmp_path: Path,
                                                                               prefect_api: dict[str, str]) -> None:
    """The flow called as a deployment or the UI calls it (no command line): missing weights, a mirror at a folder of
    the user's, a UI config beside a config_file, a fan-out width under 1, a deployment name that cannot be run, an
    output_root at a folder of the user's or a moved root are refused before config_resolved.yaml and plan.json of a
    finished root are rewritten (they were, so status and the report called its done sessions stale)."""
    from exp3.grid.flowenv import PREFECT_SETTINGS  # the settings a flow process gets (no telemetry writer)

    root, mine, moved = tmp_path / "out", tmp_path / "userfolder", tmp_path / "copied"
    root.mkdir()
    mine.mkdir()
    (mine / "thesis.txt").write_text("mine\n")
    record = {"config_resolved.yaml": "output_root: kept\n", "plan.json": '{"keys": {}}\n'}
    for name, text in record.items():
        (root / name).write_text(text)
        (moved / name).parent.mkdir(parents=True, exist_ok=True)
        (moved / name).write_text(text)
    (moved / "suites" / "occ-1").mkdir(parents=True)  # a root copied from another place: its yamls point there
    (moved / "suites" / "occ-1" / "data.yaml").write_text(f"path: {root / 'suites' / 'occ-1'}\n")
    code = f"""
import importlib.util
from exp3.config import ExperimentConfig
spec = importlib.util.spec_from_file_location("flow_module", {str(FLOW)!r})
flows = importlib.util.module_from_spec(spec)
spec.loader.exec_module(flows)
common = dict(config_file={str(REPO / "configs" / "smoke.yaml")!r}, models=["yolov8m"], sessions=["S1_clean_train"],
              return_state=True)
base = ["output_root={root}", "models.yolov8m.architecture=yolov8n.yaml"]
for name, call in (("weights", dict(overrides=[*base, "models.yolov8m.weights={tmp_path / 'nope.pt'}"])),
                   ("mirror", dict(overrides=[*base, "mirror.path={mine}"])),
                   ("both", dict(overrides=base, config=ExperimentConfig(output_root="{tmp_path / 'ui'}"))),
                   ("width", dict(overrides=base, fan_out_deployment="exp3-session/exp3-session", fan_out_width=0)),
                   ("deployment", dict(overrides=base, fan_out_deployment="exp3-session")),
                   ("root", dict(overrides=["output_root={mine}", *base[1:]])),
                   ("moved", dict(overrides=["output_root={moved}", *base[1:]]))):
    state = flows.exp3_flow(**common, **call)
    print("STATE", name, state.name, (state.message or "").replace(chr(10), " ")[:300])
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                            env={**prefect_api, **PREFECT_SETTINGS, "PREFECT_HOME": str(tmp_path / "prefect-home")})
    states = [line for line in result.stdout.splitlines() if line.startswith("STATE")]
    assert len(states) == 7 and all(" Failed " in line for line in states), \
        result.stdout[-3000:] + result.stderr[-3000:]
    assert "nope.pt" in states[0] and "holds files exp3 did not put there" in states[1]
    assert "both config_file" in states[2]
    assert "fan_out_width 0: give the number of sessions to run at once" in states[3]  # were: after the data,
    assert "fan_out_deployment 'exp3-session' cannot be run (ValueError" in states[4]  # records rewritten; per session
    assert f"output_root {str(mine)!r} holds files exp3 did not put there (e.g. 'thesis.txt')" in states[5]
    assert f"output_root {str(moved)!r} was moved or copied from another place" in states[6]  # was: told to delete
    assert {name: (root / name).read_text() for name in record} == record  # its suites, which then read the old root
    assert sorted(path.name for path in mine.iterdir()) == ["thesis.txt"] and not (tmp_path / "ui").exists()


def test_prefect_loads_the_flows_by_entrypoint_in_a_fresh_process(tmp_path: Path) -> None:
    """Workers load `flows/exp3.py:exp3_flow` by path, which registers the script as `exp3`."""
    code = ("from prefect.flows import load_flow_from_entrypoint as load; "
            "a = load('flows/exp3.py:exp3_flow'); b = load('flows/exp3.py:exp3_session_flow'); "
            "import exp3.config; print(a.name, b.name, exp3.config.__name__); "
            "task = a.fn.__globals__['train_and_eval']; print(task.name, task.cache_key_fn, task.persist_result)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "PREFECT_HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-6:] == ["exp3", "exp3-session", "exp3.config", "train_and_eval", "None", "None"]


def test_prefect_yaml_deployments_point_at_real_flows() -> None:
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    names = {d["name"]: d for d in spec["deployments"]}
    assert {"exp3-full", "exp3-smoke", "exp3-full-fanout", "exp3-session"} <= set(names)
    assert names["exp3-full"]["schedules"][0]["active"] is False  # shipped inactive
    assert names["exp3-full-fanout"]["parameters"]["fan_out_deployment"] == "exp3-session/exp3-session"
    assert spec["pull"][0]["prefect.deployments.steps.set_working_directory"]["directory"] == "{{ $EXP3_REPO }}"
    for deployment in spec["deployments"]:
        config_file = deployment.get("parameters", {}).get("config_file")
        assert config_file is None or (REPO / config_file).is_file()


def test_pilot_configs_and_cli(tmp_path: Path) -> None:
    """`--pilot`: configs/pilot.yaml on CPU (only yolov8n, all four masking sites, the full dataset, its own
    root), configs/pilot-gpu.yaml with CUDA (both real models); the CLI path lists its six sessions."""
    from exp3.config import load_config
    from exp3.train.masking import build_detection_model, resolve_masking_sites

    cpu, gpu = (load_config(REPO / "configs" / name) for name in ("pilot.yaml", "pilot-gpu.yaml"))
    assert list(cpu.models) == ["yolov8n"] and cpu.models["yolov8n"].weights is None
    assert set(resolve_masking_sites(build_detection_model(cpu.models["yolov8n"].architecture, nc=8))) == {
        "backbone_early", "backbone_late", "neck", "head"}
    assert cpu.dataset.preset == "full" and cpu.sessions == load_config(None).sessions
    assert list(gpu.models) == ["yolov8m", "rtdetr-l"] and gpu.train.device == "0"
    assert len({str(c.output_root) for c in (cpu, gpu, load_config(REPO / "configs" / "exp3.yaml"))}) == 3
    dry = _flow(tmp_path, "--pilot", "--dry-run", timeout=300)
    assert dry.returncode == 0, dry.stderr
    gpu_chosen = "exp3 pilot: configs/pilot-gpu.yaml" in dry.stderr           # only where CUDA is available
    assert gpu_chosen or "exp3 pilot: configs/pilot.yaml" in dry.stderr
    assert f"exp3 dry run: {12 if gpu_chosen else 6} sessions under {tmp_path / 'runs'}" in dry.stdout
    assert ("rtdetr-l" if gpu_chosen else "yolov8n") + "__S6_mask_head" in dry.stdout
    both = _flow(tmp_path, "--pilot", "--smoke", timeout=300)
    assert both.returncode == 2 and "each choose the config" in both.stderr


def test_a_session_stopped_by_a_signal_is_named_as_such_not_as_a_failure_to_fix(tmp_path: Path,
                                                                                 prefect_api: dict[str, str]) -> None:
    """A session process killed (kill -9, the kernel's OOM killer) leaves no FAILED marker: the closing line said
    "fix and re-run with --rerun-failed", though nothing was broken and a plain re-run goes on."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(  # the session of model `killed` dies at its start, as by kill -9;
        "import os, signal, sys\n"          # `busy`'s is refused as one another process holds (exit 2, no FAILED)
        "if 'exp3.session' in sys.orig_argv and 'killed' in sys.orig_argv:\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "if 'exp3.session' in sys.orig_argv and 'busy' in sys.orig_argv:\n"
        "    print('error: session busy__S1_clean_train is in use by pid 1 on elsewhere', file=sys.stderr)\n"
        "    sys.exit(2)\n")
    config = _config(tmp_path, {"killed": {"architecture": "yolov8n.yaml", "epochs": 1},
                                "busy": {"architecture": "yolov8n.yaml", "epochs": 1}})
    env = {**prefect_api, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    result = _flow(tmp_path, "--config", str(config), "--models", "killed", "busy", env=env)  # not smoke's two too
    assert result.returncode == 1, result.stderr[-3000:]
    assert not (tmp_path / "out" / "killed" / "killed__S1_clean_train" / "FAILED").exists()
    assert ("1 stopped before they ended (a signal, or a lost worker): killed__S1_clean_train (run the same command "
            "again: they go on from their last saved epoch, if any)") in result.stderr
    assert "sessions failed: busy__S1_clean_train (each FAILED" in result.stderr      # a refusal is no signal
    assert "FAILED busy__S1_clean_train: session busy__S1_clean_train is in use by pid 1 on elsewhere" in \
        result.stdout + result.stderr                                                # its own line, not "code 2"
