"""Out-of-memory classification and the half-batch retry (no GPU needed)."""

from __future__ import annotations

import json
from pathlib import Path

from exp3.jobs import SessionJob
from exp3.runner import DEFAULT_BATCH, is_out_of_memory, retry_batch_for


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
    assert retry_batch_for(job.model_copy(update={"batch": 6}), 2) == 3
    assert retry_batch_for(job.model_copy(update={"batch": 1}), 3) == 1
    assert retry_batch_for(job.model_copy(update={"oom_halve_batch": False}), 2) is None


def test_progress_reader_reports_new_epochs_once(tmp_path: Path) -> None:
    """The runner's polling: each epoch is new exactly once; the end reports done = total."""
    from exp3.layout import SessionPaths
    from exp3.runner import ProgressUpdate, _ProgressReader

    paths = SessionPaths(tmp_path / "m" / "m__S1_clean_train")
    updates: list[ProgressUpdate] = []
    reader = _ProgressReader(paths, 3, updates.append)
    reader.poll()
    assert updates == [ProgressUpdate(0, 3, (), ())]  # nothing yet: 0 %
    paths.run_dir.mkdir(parents=True)
    paths.results_csv.write_text("epoch,time,train/box_loss,metrics/mAP50(B)\n1,10,2.5,0.1\n")
    reader.poll()
    reader.poll()  # nothing new: no call
    with paths.results_csv.open("a") as handle:
        handle.write("2,20,2.0,0.2\n")
    reader.poll(finished=True)
    assert [(u.done, [e.epoch for e in u.new_epochs], len(u.epochs)) for u in updates[1:]] == [
        (1, [1], 1), (3, [2], 2)]

    def broken(update: ProgressUpdate) -> None:
        raise ConnectionError("API down\nmore")

    failing = _ProgressReader(paths, 3, broken)
    failing.poll()  # a failing callback never stops the session: reporting stops, the error is kept
    assert failing.error == "ConnectionError: API down" and failing.on_progress is None


def test_a_session_that_ends_between_two_polls_still_reports_its_epoch(tmp_path: Path) -> None:
    """Issue 24 item 7: a 1-epoch session whose results.csv appears after the last poll: the read at its end
    reports the epoch, once."""
    from exp3.layout import SessionPaths
    from exp3.runner import ProgressUpdate, _ProgressReader

    paths = SessionPaths(tmp_path / "m" / "m__S3_mask_backbone_early")
    updates: list[ProgressUpdate] = []
    reader = _ProgressReader(paths, 1, updates.append)
    reader.poll()  # during the run: nothing on disk yet
    paths.run_dir.mkdir(parents=True)
    paths.results_csv.write_text("epoch,time,train/box_loss,metrics/mAP50(B)\n1,10,2.5,0.1\n")
    reader.poll(finished=True)  # the read when the process has ended
    reader.poll(finished=True)
    assert [[e.epoch for e in u.new_epochs] for u in updates] == [[], [1]] and updates[-1].done == 1


def _done_session_with_two_epochs(root: Path) -> None:
    """`m__S1_clean_train` under `root`: DONE (key "k") with two epochs in results.csv."""
    from exp3.layout import SessionPaths
    from exp3.sessions import Session

    paths = SessionPaths.of(root, Session("m", "S1_clean_train"))
    paths.run_dir.mkdir(parents=True)
    paths.results_csv.write_text("epoch,time,train/box_loss,metrics/mAP50(B)\n1,10,2.5,0.1\n2,20,2.0,0.2\n")
    paths.metrics.write_text(json.dumps({"splits": {}}))
    paths.write_done("k", {})


def test_a_session_stopped_by_a_signal_is_reported_as_stopped_not_broken() -> None:
    """The H100 pilot's `timeout` sent SIGTERM: the flow logged 'session exited with code -15'."""
    from exp3.runner import exit_reason

    assert exit_reason(-15).startswith("session stopped by SIGTERM")
    assert "resumes from its last epoch" in exit_reason(-9)
    assert "out-of-memory killer" in exit_reason(-9)  # host RAM: the training runs in the session process
    assert exit_reason(-200).startswith("session stopped by signal 200")
    assert exit_reason(3) == "session exited with code 3"


def test_adding_evaluations_to_a_done_session_replays_no_epochs(tmp_path: Path) -> None:
    """A done session short of a configured severity level runs the session CLI to evaluate it, without
    training: the live view must not log its old epochs as if it were training (seen on the pilot)."""
    import pytest

    from exp3.runner import ProgressUpdate, SessionError, run_session_subprocess

    _done_session_with_two_epochs(tmp_path)
    updates: list[ProgressUpdate] = []
    job = SessionJob(model="m", suffix="S1_clean_train", cache_key="k", config_path=str(tmp_path / "missing.yaml"),
                     output_root=str(tmp_path), epochs=2, evaluations={"test_occ_sev1": "spec"})
    assert not job.is_current
    with pytest.raises(SessionError):  # the CLI refuses the missing config: the subprocess did run
        run_session_subprocess(job, on_progress=updates.append)
    assert updates and all(update.new_epochs == () for update in updates)
    assert updates[0].done == 2


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


def test_a_session_process_dies_with_the_process_that_started_it() -> None:
    """`kill -9` of the flow's process ends its session processes (die_with_parent): nothing outlives it."""
    flow = ("import os, subprocess, sys; from functools import partial; from exp3.parallel import die_with_parent; "
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], "
            "preexec_fn=partial(die_with_parent, os.getpid())); print(child.pid, flush=True); "
            "import time; time.sleep(120)")
    assert not _child_outlives_a_kill_9_of_its_parent(flow), "the session process outlived the killed flow"


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

    from exp3.runner import start_session_process

    arguments = ["--config", str(tmp_path / "missing.yaml"), "--model", "yolov8n", "--session", "S1_clean_train"]
    with open(tmp_path / "session.log", "ab") as log:
        process = start_session_process(arguments, dict(os.environ), log)
        assert process.wait(timeout=120) == 2
    text = (tmp_path / "session.log").read_text()
    assert text.startswith("==== ") and "-m exp3.session --config" in text.splitlines()[0]
    assert "error: " in text and "missing.yaml" in text
