"""Out-of-memory classification and the half-batch retry (no GPU needed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from exp3.grid.jobs import SessionJob, done_result
from exp3.grid.runner import DEFAULT_BATCH, is_out_of_memory, retry_batch_for


def test_out_of_memory_is_recognised_from_error_or_log_tail() -> None:
    assert is_out_of_memory({"error": "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"})
    assert is_out_of_memory({"error": "training exited with code 1",
                             "train_log_tail": "torch.OutOfMemoryError: CUDA out of memory"})
    assert not is_out_of_memory({"error": "FileNotFoundError: weights missing", "train_log_tail": "..."})
    assert not is_out_of_memory(None)


def test_half_batch_retry_after_an_out_of_memory_failure(tmp_path: Path) -> None:
    job = SessionJob(model="m", suffix="S1_clean_train", cache_key="k", config_path="c", output_root=str(tmp_path),
                     epochs=1)
    job.paths.folder.mkdir(parents=True)
    assert retry_batch_for(job, 2) is None  # no FAILED marker
    job.paths.failed_marker.write_text(json.dumps({"error": "RuntimeError: CUDA out of memory"}))
    assert retry_batch_for(job, 1) is None  # the first attempt trains with the configured batch
    assert retry_batch_for(job, 2) == DEFAULT_BATCH // 2
    assert retry_batch_for(job, 3) == DEFAULT_BATCH // 4  # each retry halves again: never the batch that just failed
    assert [retry_batch_for(job.model_copy(update={"batch": 6}), attempt) for attempt in (2, 3, 4)] == [3, 1, 1]
    assert retry_batch_for(job.model_copy(update={"batch": 1}), 3) == 1
    assert retry_batch_for(job.model_copy(update={"oom_halve_batch": False}), 2) is None


def test_a_retry_halves_the_batch_that_ran_not_the_configured_one(tmp_path: Path) -> None:
    """`batch: null` (16): Ultralytics halved it to 8 in the first epoch, then epoch 31 ran out of memory. The
    retry at 16 // 2 = 8 resumed at the batch that had just failed; now it trains at 4 (from the start, as
    `_resume_at_own_batch` sets a larger batch's checkpoint aside)."""
    job = SessionJob(model="m", suffix="S1_clean_train", cache_key="k", config_path="c", output_root=str(tmp_path),
                     epochs=100)
    job.paths.run_dir.mkdir(parents=True)
    job.paths.failed_marker.write_text(json.dumps({"error": "RuntimeError: CUDA error: out of memory"}))
    (job.paths.run_dir / "train_info.json").write_text(json.dumps({"ran": {"batch": 8}}))
    assert retry_batch_for(job, 2) == 4 and retry_batch_for(job, 3) == 4   # attempt 3: planned at 8, ran at 8
    (job.paths.folder / "train_plan.json").write_text(json.dumps({"overrides": {"batch": 4}}))
    assert retry_batch_for(job, 3) == 2  # attempt 2 (at 4) ran out of memory before its train_info.json: was 4 again
    (job.paths.folder / "train_plan.json").unlink()
    (job.paths.run_dir / "train_info.json").write_text(json.dumps({"ran": {"batch": 16}}))  # an earlier attempt's
    assert retry_batch_for(job, 3) == 4                   # the failed attempt was planned at 8: never above that
    from exp3.grid.runner import worth_retrying

    (job.paths.run_dir / "train_info.json").write_text(json.dumps({"ran": {"batch": 1}}))
    assert not worth_retrying(job, {"error": "CUDA out of memory"}, 2)     # batch 1 ran: nothing left to halve


def test_every_out_of_memory_error_ultralytics_knows_is_one() -> None:
    for error in ("RuntimeError: CUDA error: out of memory", "RuntimeError: CUDNN_STATUS_INTERNAL_ERROR",
                  "RuntimeError: Unable to find a valid cuDNN algorithm to run convolution",
                  "RuntimeError: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"):
        assert is_out_of_memory({"error": error}), error


def test_a_gpu_slot_is_counted_within_the_gpus_this_process_was_given(monkeypatch) -> None:
    """A worker started with CUDA_VISIBLE_DEVICES=1 (deployments/start_workers.sh) and `gpus: [0, 0]` put both
    sessions on physical GPU 0, beside another worker's."""
    from exp3.grid.runner import visible_gpu

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert [visible_gpu(slot) for slot in (0, 1, 0)] == ["2", "3", "2"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert visible_gpu(1) == "1"


def test_out_of_memory_is_retried_while_the_batch_can_shrink(tmp_path: Path) -> None:
    from exp3.grid.runner import worth_retrying

    job = SessionJob(model="m", suffix="S1_clean_train", cache_key="k", config_path="c", output_root=str(tmp_path),
                     epochs=1, batch=4)
    oom = {"error": "torch.OutOfMemoryError: CUDA out of memory"}
    assert worth_retrying(job, oom, None) and worth_retrying(job, oom, 2)
    assert not worth_retrying(job, oom, 1)  # batch 1 failed: a retry would run the same again
    assert worth_retrying(job.model_copy(update={"oom_halve_batch": False}), oom, None)  # same batch, on purpose
    assert not worth_retrying(job, {"error": "FileNotFoundError: x"}, None)


class _Recorder:
    """A logger and Prefect's artifact calls, recorded (the real ones are checked in test_flow's live view test)."""

    def __init__(self, monkeypatch, fail_artifacts: bool = False) -> None:
        import exp3.grid.live

        self.lines: list[tuple[str, str]] = []
        self.tables: list[list[int]] = []
        self.progress: list[float] = []

        def table(key: str, table: list, description: str) -> None:
            if fail_artifacts:
                raise ConnectionError("API down\nmore")
            self.tables.append([row["epoch"] for row in table])

        monkeypatch.setattr(exp3.grid.live, "create_progress_artifact", lambda **kwargs: "artifact-id")
        monkeypatch.setattr(exp3.grid.live, "create_table_artifact", table)
        monkeypatch.setattr(exp3.grid.live, "update_progress_artifact",
                            lambda artifact_id, progress: self.progress.append(progress))

    def info(self, line: str) -> None:
        self.lines.append(("info", line))

    def warning(self, line: str) -> None:
        self.lines.append(("warning", line))


def _job(root: Path, suffix: str = "S1_clean_train", epochs: int = 3) -> SessionJob:
    return SessionJob(model="m", suffix=suffix, cache_key="k", config_path="c", output_root=str(root), epochs=epochs)


def test_the_live_view_logs_each_new_epoch_once(tmp_path: Path, monkeypatch) -> None:
    """The runner's polls: each epoch is logged exactly once; the end reports 100 %."""
    from exp3.grid.live import EpochView

    record, job = _Recorder(monkeypatch), _job(tmp_path)
    view = EpochView(job, record)
    view(False)
    assert record.lines == [] and record.tables == [] and record.progress == [0.0]  # nothing yet: 0 %
    job.paths.run_dir.mkdir(parents=True)
    job.paths.results_csv.write_text("epoch,time,train/box_loss,metrics/mAP50(B)\n1,10,2.5,0.1\n")
    view(False)
    view(False)  # nothing new: nothing logged or updated
    with job.paths.results_csv.open("a") as handle:
        handle.write("2,20,2.0,0.2\n")
    view(True)
    assert [line.split(" box_loss")[0] for _, line in record.lines] == ["m__S1_clean_train: epoch 1/3",
                                                                       "m__S1_clean_train: epoch 2/3"]
    assert record.tables == [[1], [1, 2]] and record.progress == [0.0, 100 / 3, 100.0]


def test_a_resumed_session_logs_only_the_epochs_it_trains_now(tmp_path: Path, monkeypatch) -> None:
    """A session resumed after 6 of 8 epochs logged epochs 1-6 again in one burst, with their old ETAs; a training
    that starts over (an out-of-memory retry from the start) logs its epochs from 1."""
    from exp3.grid.live import EpochView

    record, job = _Recorder(monkeypatch), _job(tmp_path, epochs=4)
    job.paths.run_dir.mkdir(parents=True)
    job.paths.results_csv.write_text("epoch,time,train/box_loss,metrics/mAP50(B)\n1,10,2.5,0.1\n2,20,2.0,0.2\n")
    view = EpochView(job, record)                                      # the earlier run trained epochs 1 and 2
    with job.paths.results_csv.open("a") as handle:
        handle.write("3,30,1.8,0.3\n")
    view(False)
    job.paths.results_csv.write_text("epoch,time,train/box_loss,metrics/mAP50(B)\n1,11,2.6,0.1\n")  # started over
    view(False)
    assert [line.split(" box_loss")[0] for _, line in record.lines] == ["m__S1_clean_train: epoch 3/4",
                                                                       "m__S1_clean_train: epoch 1/4"]


def test_a_failing_artifact_call_is_warned_once_and_never_stops_the_epoch_lines(tmp_path: Path, monkeypatch) -> None:
    from exp3.grid.live import EpochView

    record, job = _Recorder(monkeypatch, fail_artifacts=True), _job(tmp_path)
    view = EpochView(job, record)
    job.paths.run_dir.mkdir(parents=True)
    job.paths.results_csv.write_text("epoch,time,train/box_loss,metrics/mAP50(B)\n1,10,2.5,0.1\n")
    view(False)
    with job.paths.results_csv.open("a") as handle:
        handle.write("2,20,2.0,0.2\n")
    view(False)
    assert [kind for kind, _ in record.lines] == ["info", "warning", "info"]
    assert record.lines[1][1] == "m__S1_clean_train: live view not updated (ConnectionError: API down"


def test_a_session_that_ends_between_two_polls_still_reports_its_epoch(tmp_path: Path, monkeypatch) -> None:
    """Issue 24 item 7: a 1-epoch session whose results.csv appears after the last poll: the read at its end
    logs the epoch, once."""
    from exp3.grid.live import EpochView

    record, job = _Recorder(monkeypatch), _job(tmp_path, "S3_mask_backbone_early", epochs=1)
    view = EpochView(job, record)
    view(False)  # during the run: nothing on disk yet
    job.paths.run_dir.mkdir(parents=True)
    job.paths.results_csv.write_text("epoch,time,train/box_loss,metrics/mAP50(B)\n1,10,2.5,0.1\n")
    view(True)  # the read when the process has ended
    view(True)
    assert [line.split(" box_loss")[0] for _, line in record.lines] == ["m__S3_mask_backbone_early: epoch 1/1"]
    assert record.progress == [0.0, 100.0]


def _done_session_with_two_epochs(root: Path) -> None:
    """`m__S1_clean_train` under `root`: DONE (key "k") with two epochs in results.csv."""
    from exp3.session.layout import SessionPaths
    from exp3.sessions import Session

    paths = SessionPaths.of(root, Session("m", "S1_clean_train"))
    paths.run_dir.mkdir(parents=True)
    paths.results_csv.write_text("epoch,time,train/box_loss,metrics/mAP50(B)\n1,10,2.5,0.1\n2,20,2.0,0.2\n")
    paths.metrics.write_text(json.dumps({"splits": {}}))
    paths.write_done("k", {})


def test_a_session_stopped_by_a_signal_is_reported_as_stopped_not_broken() -> None:
    """The H100 pilot's `timeout` sent SIGTERM: the flow logged 'session exited with code -15'."""
    from exp3.grid.runner import exit_reason

    assert exit_reason(-15).startswith("session stopped by SIGTERM")
    assert "goes on from its last saved epoch, if any" in exit_reason(-9)
    assert "out-of-memory killer" in exit_reason(-9)  # host RAM: the training runs in the session process
    assert exit_reason(-200).startswith("session stopped by signal 200")
    assert exit_reason(3) == "session exited with code 3"


def test_a_session_refused_without_a_failed_marker_says_its_own_line(tmp_path: Path) -> None:
    """Exit 2 without a FAILED marker (its session held by another process): the flow said "stopped by a signal ...
    run the same command again"; now the session's own `error:` line, and a failure."""
    from exp3.grid.runner import STOPPED, exit_reason

    log = tmp_path / "session.log"
    log.write_text("==== python -m exp3.session ... ====\nerror: session a__S1_clean_train is in use by pid 7 on h "
                   "(python -m exp3.session): wait for it to finish or stop it\n==== exit 2 after 3.1 s ====\n")
    assert exit_reason(2, log) == ("session a__S1_clean_train is in use by pid 7 on h (python -m exp3.session): wait "
                                   "for it to finish or stop it")
    assert not exit_reason(2, log).startswith(STOPPED) and exit_reason(-15, log).startswith(STOPPED)
    with log.open("a") as handle:  # a later attempt that printed no error line: not the earlier attempt's
        handle.write("==== /usr/bin/python -m exp3.session --config c ====\n==== exit 3 after 1.0 s ====\n")
    assert exit_reason(3, log) == "session exited with code 3"


def test_an_earlier_runs_failed_marker_is_not_this_attempts_reason(tmp_path: Path) -> None:
    """--rerun-failed on a session whose FAILED marker says out of memory, refused this time (held by a run by hand):
    the flow gave the old out-of-memory error as this attempt's reason, and retried it at half batch."""
    import pytest

    from exp3.config import load_config, write_resolved_config
    from exp3.fileio import atomic_write_json
    from exp3.grid.runner import SessionError, run_session_subprocess

    config = load_config(Path(__file__).parents[1] / "configs" / "smoke.yaml", [f"output_root={tmp_path}"])
    job = SessionJob(model="yolov8m", suffix="S1_clean_train", cache_key="k", output_root=str(tmp_path),
                     config_path=str(write_resolved_config(config, tmp_path)), epochs=1, batch=4, rerun_failed=True)
    job.paths.folder.mkdir(parents=True)
    job.paths.write_inputs({}, "k")
    atomic_write_json(job.paths.failed_marker, {"session": job.name, "time": "yesterday",
                                                "error": "OutOfMemoryError: CUDA out of memory. Tried to allocate"})
    with job.paths.session_lock("python -m exp3.session (by hand)"), pytest.raises(SessionError) as caught:
        run_session_subprocess(job)
    assert "is in use by pid" in str(caught.value) and "out of memory" not in str(caught.value)
    assert not caught.value.transient                            # no retry at half batch: nothing ran out of memory


def test_adding_evaluations_to_a_done_session_replays_no_epochs(tmp_path: Path, monkeypatch) -> None:
    """A done session short of a configured severity level runs the session CLI to evaluate it, without
    training: the live view must not log its old epochs as if it were training (seen on the pilot)."""
    import pytest

    from exp3.grid.live import EpochView
    from exp3.grid.runner import SessionError, run_session_subprocess

    _done_session_with_two_epochs(tmp_path)
    record = _Recorder(monkeypatch)
    job = SessionJob(model="m", suffix="S1_clean_train", cache_key="k", config_path=str(tmp_path / "missing.yaml"),
                     output_root=str(tmp_path), epochs=2, evaluations={"test_occ_sev1": "spec"})
    assert done_result(job) is None
    with pytest.raises(SessionError):  # the CLI refuses the missing config: the subprocess did run
        run_session_subprocess(job, on_poll=EpochView(job, record))
    assert record.lines == [] and record.progress == [100.0]  # its 2 epochs: done, none logged again


def _child_outlives_a_kill_9_of_its_parent(parent_script: str) -> bool:
    """Run `parent_script` (it starts a child and prints its pid), `kill -9` it: is the child alive 3 s later?"""
    import os
    import signal
    import subprocess
    import sys
    import time

    parent = subprocess.Popen([sys.executable, "-c", parent_script], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    assert Path(f"/proc/{child}").exists()
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 3
    while Path(f"/proc/{child}").exists() and time.time() < deadline:
        time.sleep(0.05)
    alive = Path(f"/proc/{child}").exists() and Path(f"/proc/{child}/stat").read_text().split(") ")[1][0] != "Z"
    if alive:
        os.kill(child, signal.SIGKILL)
    return alive


SESSION_START = ("from exp3.parallel import die_with_starting_process; die_with_starting_process(); "
                 "import time; time.sleep(120)")  # what `python -m exp3.session` does first


def test_a_session_process_dies_with_the_process_that_started_it() -> None:
    """`kill -9` of the flow's process ends its session processes: the child ties itself to the flow at start
    (`parent_environment`, no `preexec_fn`), and the flow starts it from a task thread, as Prefect does."""
    flow = ("import os, subprocess, sys, threading, time; from exp3.parallel import parent_environment; "
            f"start = lambda: print(subprocess.Popen([sys.executable, '-c', {SESSION_START!r}], "
            "env=os.environ | parent_environment()).pid, flush=True) or time.sleep(120); "
            "threading.Thread(target=start, daemon=True).start(); time.sleep(120)")
    assert not _child_outlives_a_kill_9_of_its_parent(flow), "the session process outlived the killed flow"


def test_a_session_process_whose_flow_died_before_it_started_ends_at_once() -> None:
    """The flow killed between the child's start and its `die_with_starting_process`: the parent pid it was given is
    not its parent any more, so it ends instead of training into a folder nobody watches."""
    from exp3.parallel import PARENT_PID_ENV

    child = subprocess.run([sys.executable, "-c", SESSION_START], env=os.environ | {PARENT_PID_ENV: "1"},
                           timeout=60)
    assert child.returncode == -signal.SIGKILL


def test_the_runner_starts_a_session_without_preexec_fn(tmp_path: Path, monkeypatch) -> None:
    """Issue 35 item 8: Python documents `preexec_fn` as unsafe in a threaded process (the flow's): the session
    process gets the flow's pid in its environment and ties itself to it."""
    import exp3.grid.runner
    from exp3.parallel import PARENT_PID_ENV

    seen: list[dict] = []
    real = subprocess.Popen
    monkeypatch.setattr(exp3.grid.runner.subprocess, "Popen", lambda *a, **kw: seen.append(kw) or real(*a, **kw))
    with open(tmp_path / "session.log", "ab") as log:
        exp3.grid.runner.start_session_process(["--help"], dict(os.environ), log).wait(timeout=120)
    assert "preexec_fn" not in seen[0] and seen[0]["env"][PARENT_PID_ENV] == str(os.getpid())


def test_children_forked_by_a_session_process_die_with_it() -> None:
    """DataLoader workers are forked (multiprocessing "fork"), not started with a preexec_fn: they die with it too."""
    session = ("import multiprocessing, time; from exp3.parallel import forked_children_die_with_this_process; "
               "forked_children_die_with_this_process(); "
               "worker = multiprocessing.get_context('fork').Process(target=time.sleep, args=(120,)); worker.start(); "
               "print(worker.pid, flush=True); time.sleep(120)")
    assert not _child_outlives_a_kill_9_of_its_parent(session), "a forked worker outlived its killed session process"


def test_a_session_process_logs_its_command_line_and_exit(tmp_path: Path) -> None:
    """A fresh `python -m exp3.session`: its command line first in the session log, then its own output."""
    import os

    from exp3.grid.runner import start_session_process

    arguments = ["--config", str(tmp_path / "missing.yaml"), "--model", "yolov8n", "--session", "S1_clean_train"]
    with open(tmp_path / "session.log", "ab") as log:
        process = start_session_process(arguments, dict(os.environ), log)
        assert process.wait(timeout=120) == 2
    text = (tmp_path / "session.log").read_text()
    assert text.startswith("==== ") and "-m exp3.session --config" in text.splitlines()[0]
    assert "error: " in text and "missing.yaml" in text


def test_a_signal_ends_the_sessions_before_the_root_lock_goes(tmp_path: Path) -> None:
    """Prefect turns SIGTERM into an exception in the flow's thread: `with RootLock(...)` released the lock at once
    while the session process trained on to its end, so a second run took the root under it. Now the session
    processes this process started are ended (and waited for) first, inside the lock, and a session task that was
    still starting up starts none after that (it did, and trained to its end with the lock free)."""
    import pytest

    from exp3.grid import runner
    from exp3.session.runlock import RootLock

    session = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    runner._RUNNING.add(session)
    seen: list[object] = []
    try:
        with pytest.raises(KeyboardInterrupt):
            with RootLock(tmp_path, command="exp3 flow"), runner.sessions_end_first():
                raise KeyboardInterrupt  # what the signal raises in the flow's thread
        seen.append(session.poll())
        job = _job(tmp_path)  # its task past its start-up as the signal came: it starts no session after the sweep
        with pytest.raises(runner.SessionError, match=rf"^{job.name}: {runner.STOPPED}the flow's stop before it"):
            runner.run_session_subprocess(job)
        seen.append("==== " in (job.paths.logs / "session.log").read_text())
    finally:
        session.kill()
        runner._RUNNING.discard(session)
        runner._STOPPING.clear()
    assert seen == [-signal.SIGTERM, False] and not RootLock(tmp_path).is_live()
