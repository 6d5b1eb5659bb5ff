"""exp3.forkserver: session processes forked from one that imported torch and Ultralytics once."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path



MISSING = ["--model", "yolov8n", "--session", "S1_clean_train"]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_forked_sessions_run_the_session_cli_in_new_processes(tmp_path: Path) -> None:
    """Each request is a child of the server running `exp3.session.main` with its arguments, all of its
    output in its log, its exit code reported; another environment gets another server; close() ends
    them."""
    from exp3.forkserver import ForkServers

    forks = ForkServers()
    env = dict(os.environ, EXP3_TEST_MARK="a")
    arguments = ["--config", str(tmp_path / "missing.yaml"), *MISSING]
    with open(tmp_path / "a.log", "ab") as log:
        first = forks.launch(arguments, env, log)
    assert first is not None and first.wait(timeout=120) == 2
    server = forks._servers[tuple(sorted(env.items()))].process
    text = (tmp_path / "a.log").read_text()
    assert f"(forked from fork server {server.pid}) ====" in text and "missing.yaml' does not exist" in text
    with open(tmp_path / "b.log", "ab") as log:
        second = forks.launch(["--help"], env, log)
    assert second is not None and second.wait(timeout=60) == 0 and second.pid not in (first.pid, server.pid)
    assert "usage: python -m exp3.session" in (tmp_path / "b.log").read_text()

    other_env = dict(env, EXP3_TEST_MARK="b")
    with open(tmp_path / "c.log", "ab") as log:
        other = forks.launch(["--help"], other_env, log)
    assert other is not None and other.wait(timeout=120) == 0
    other_server = forks._servers[tuple(sorted(other_env.items()))].process
    assert other_server.pid != server.pid
    forks.close()
    assert forks._servers == {} and server.wait(timeout=30) == 0 and other_server.wait(timeout=30) == 0


def test_a_forked_session_equals_the_same_session_in_a_fresh_process(tmp_path: Path, one_model_config: Path) -> None:
    """The same masked 1-epoch session twice: in a fresh process, then, its folder moved away, forked from
    the fork server: same training (losses), same masking, same metrics, byte-identical predictions."""
    import csv

    from exp3.config import load_config
    from exp3.forkserver import FORKS
    from exp3.jobs import SessionJob
    from exp3.runner import run_session_subprocess
    from exp3.session import session_key
    from exp3.sessions import Session

    config_path = one_model_config
    config = load_config(config_path)
    root = tmp_path / "out"
    session = Session("yolov8n", "S3_mask_backbone_early")
    job = SessionJob(model=session.model, suffix=session.suffix, cache_key=session_key(config, session, root),
                     config_path=str(config_path), output_root=str(root), epochs=1)
    first = run_session_subprocess(job)
    fresh = tmp_path / "fresh"
    job.paths.folder.rename(fresh)
    second = run_session_subprocess(job.model_copy(update={"forked": True}))
    FORKS.close()
    assert first.status == second.status == "done"
    assert "forked from fork server" not in (fresh / "logs" / "session.log").read_text()
    assert "forked from fork server" in (job.paths.logs / "session.log").read_text()

    def losses(folder: Path) -> list[dict[str, str]]:
        with open(folder / "train" / "results.csv", newline="") as handle:
            return [{k.strip(): v for k, v in row.items() if "time" not in k} for row in csv.DictReader(handle)]

    def metrics(folder: Path) -> dict:
        return json.loads((folder / "metrics.json").read_text())

    def drop_walls(value):  # wall times and speeds differ between any two runs
        if isinstance(value, dict):
            return {k: drop_walls(v) for k, v in value.items() if not k.endswith("wall_s") and k != "speed_ms_per_image"}
        return [drop_walls(v) for v in value] if isinstance(value, list) else value

    assert losses(fresh) == losses(job.paths.folder)
    assert drop_walls(metrics(fresh)["splits"]) == drop_walls(metrics(job.paths.folder)["splits"])
    assert metrics(fresh)["masking"]["stats"]["epochs"][0]["sites"]["backbone_early"]["masked_batches"] > 0
    assert metrics(fresh)["masking"] == metrics(job.paths.folder)["masking"]
    for name in ("predictions_test_clean.json", "predictions_test_occ_fixed.json"):
        assert (fresh / name).read_bytes() == (job.paths.folder / name).read_bytes()


def _training(forks, env: dict[str, str], config: Path, suffix: str) -> tuple[object, Path]:
    """A forked session of `config` (yolov8n, 3 epochs), once its first epoch is saved: mid-training."""
    folder = config.parent / "out" / "yolov8n" / f"yolov8n__{suffix}"
    folder.joinpath("logs").mkdir(parents=True)
    with open(folder / "logs" / "session.log", "ab") as log:
        child = forks.launch(["--config", str(config), "--model", "yolov8n", "--session", suffix,
                              "--set", "models.yolov8n.epochs=3"], env, log)
    assert child is not None
    deadline = time.monotonic() + 300
    while not (folder / "train" / "weights" / "last.pt").exists():
        assert child.poll() is None and time.monotonic() < deadline, (folder / "logs" / "session.log").read_text()
        time.sleep(0.2)
    return child, folder


def test_ctrl_c_stops_a_session_not_its_server_and_kill_9_of_the_server_ends_its_sessions(tmp_path: Path,
                                                                                          one_model_config: Path) -> None:
    """Ctrl-C (SIGINT to the process group): the server ignores it, a training child ends by SIGINT as a
    Python process does (the runner reports it stopped, not broken), the server forks on. kill -9 of
    the server (as of the flow, which takes its servers along): its training child dies too, reported
    ended by SIGKILL, and a dead server forks nothing more (None: the runner starts a fresh process)."""
    from exp3.forkserver import ForkServers
    from exp3.offline import ultralytics_environment
    from exp3.runner import exit_reason

    config = one_model_config
    forks = ForkServers()
    env = dict(os.environ) | ultralytics_environment(tmp_path / "out")
    first, folder = _training(forks, env, config, "S1_clean_train")
    server = forks._servers[tuple(sorted(env.items()))].process
    os.kill(server.pid, signal.SIGINT)
    os.kill(first.pid, signal.SIGINT)
    assert first.wait(timeout=60) == -signal.SIGINT and "stopped by SIGINT" in exit_reason(first.returncode)
    assert "KeyboardInterrupt" in (folder / "logs" / "session.log").read_text()
    assert server.poll() is None

    second, _ = _training(forks, env, config, "S3_mask_backbone_early")
    assert second.pid != first.pid and _alive(second.pid)
    server.send_signal(signal.SIGKILL)
    assert second.wait(timeout=30) == -signal.SIGKILL
    deadline = time.monotonic() + 10
    while _alive(second.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(second.pid), "a forked session outlived its server"
    with open(tmp_path / "after.log", "ab") as log:
        assert forks.launch(["--help"], env, log) is None
    assert "no fork server (the fork server ended (exit -9)): a fresh process instead" in (tmp_path / "after.log").read_text()
    forks.close()


def test_a_server_whose_imports_fail_forks_nothing_and_says_why(tmp_path: Path) -> None:
    """A server that cannot import torch answers not-ready: launch returns None (the runner then starts a
    fresh process, which fails with its own traceback in the session log) and the log says why."""
    from exp3.forkserver import ForkServers

    broken = tmp_path / "site" / "torch"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('this torch is broken on purpose')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(broken.parent), os.environ.get("PYTHONPATH", "")]))
    forks = ForkServers()
    with open(tmp_path / "a.log", "ab") as log:
        assert forks.launch(["--help"], env, log) is None
    text = (tmp_path / "a.log").read_text()
    assert "no fork server (ImportError: this torch is broken on purpose): a fresh process instead" in text
    forks.close()
