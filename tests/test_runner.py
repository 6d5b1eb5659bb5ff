"""Out-of-memory classification and the half-batch retry (no GPU needed)."""

from __future__ import annotations

import json
from pathlib import Path

from exp3.runner import DEFAULT_BATCH, is_out_of_memory, oom_retry_batch


def test_out_of_memory_is_recognised_from_error_or_log_tail() -> None:
    assert is_out_of_memory({"error": "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"})
    assert is_out_of_memory({"error": "training exited with code 1",
                             "train_log_tail": "torch.OutOfMemoryError: CUDA out of memory"})
    assert not is_out_of_memory({"error": "FileNotFoundError: weights missing", "train_log_tail": "..."})
    assert not is_out_of_memory(None)


def test_half_batch_retry() -> None:
    assert oom_retry_batch(None) == DEFAULT_BATCH // 2
    assert oom_retry_batch(6) == 3
    assert oom_retry_batch(1) == 1


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


def _done_session_with_two_epochs(root: Path) -> None:
    """`m__S1_clean_train` under `root`: DONE (key "k") with two epochs in results.csv."""
    from exp3.layout import SessionPaths
    from exp3.sessions import Session

    paths = SessionPaths.of(root, Session("m", "S1_clean_train"))
    paths.run_dir.mkdir(parents=True)
    paths.results_csv.write_text("epoch,time,train/box_loss,metrics/mAP50(B)\n1,10,2.5,0.1\n2,20,2.0,0.2\n")
    paths.metrics.write_text(json.dumps({"splits": {}}))
    paths.write_done("k", {})


def test_a_done_session_reports_100_percent_without_replaying_epochs(tmp_path: Path) -> None:
    from exp3.jobs import SessionJob
    from exp3.runner import ProgressUpdate, run_session_subprocess

    _done_session_with_two_epochs(tmp_path)
    updates: list[ProgressUpdate] = []
    job = SessionJob(model="m", suffix="S1_clean_train", cache_key="k", config_path=str(tmp_path / "unused.yaml"),
                     output_root=str(tmp_path), epochs=2)
    run = run_session_subprocess(job, on_progress=updates.append)
    assert run.status == "cached" and not run.ran and len(updates) == 1
    assert (updates[0].done, updates[0].total, updates[0].new_epochs, len(updates[0].epochs)) == (2, 2, (), 2)


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

    from exp3.jobs import SessionJob
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


def test_a_standby_process_serves_only_its_environment_and_ends_on_close(tmp_path: Path) -> None:
    """A process started ahead of need runs the session CLI with the request's arguments and sends all of
    its output to that session's log; another environment gets a fresh process; close() ends the rest."""
    import os

    from exp3.standby import Standby

    standby = Standby()
    env = dict(os.environ, EXP3_TEST_MARK="a")
    standby.prestart(env)
    waiting = standby.take(env)
    assert waiting is not None and standby.take(env) is None
    standby._waiting[standby._key(env)] = [waiting]  # put it back: launch takes it
    arguments = ["--config", str(tmp_path / "missing.yaml"), "--model", "yolov8n", "--session", "S1_clean_train"]
    with open(tmp_path / "a.log", "ab") as log:
        process = standby.launch(arguments, env, log)
    assert process.pid == waiting.process.pid and process.wait(timeout=120) == 2
    text = (tmp_path / "a.log").read_text()
    assert f"(in standby process {process.pid}, started" in text and "error: " in text and "missing.yaml" in text
    with open(tmp_path / "b.log", "ab") as log:
        fresh = standby.launch(arguments, dict(env, EXP3_TEST_MARK="b"), log)
    assert fresh.wait(timeout=120) == 2 and "in standby process" not in (tmp_path / "b.log").read_text()
    standby.prestart(env)
    leftover = standby._waiting[standby._key(env)][0].process
    standby.close()
    assert leftover.poll() is not None and standby.take(env) is None


def test_a_session_in_a_standby_process_equals_the_same_session_in_a_fresh_process(tmp_path: Path,
                                                                                   one_model_config: Path) -> None:
    """The same masked 1-epoch session twice: first in a fresh process (which starts a standby process for
    the next one), then, its folder moved away, in that standby process: same training, same results."""
    import csv
    import json

    from exp3.config import load_config
    from exp3.jobs import SessionJob
    from exp3.runner import run_session_subprocess, session_environment
    from exp3.session import session_key
    from exp3.sessions import Session
    from exp3.standby import STANDBY

    config_path = one_model_config
    config = load_config(config_path)
    root = tmp_path / "out"
    session = Session("yolov8n", "S3_mask_backbone_early")
    job = SessionJob(model=session.model, suffix=session.suffix, cache_key=session_key(config, session, root),
                     config_path=str(config_path), output_root=str(root), epochs=1, prestart_next=True)
    first = run_session_subprocess(job)
    fresh = tmp_path / "fresh"
    job.paths.folder.rename(fresh)
    second = run_session_subprocess(job.model_copy(update={"prestart_next": False}))
    assert first.status == second.status == "done"
    assert "in standby process" not in (fresh / "logs" / "session.log").read_text()
    assert "in standby process" in (job.paths.logs / "session.log").read_text()
    assert STANDBY.take(session_environment(job)) is None  # the last session of the lane started none

    def losses(folder: Path) -> list[dict[str, str]]:
        with open(folder / "train" / "results.csv", newline="") as handle:
            return [{k.strip(): v for k, v in row.items() if "time" not in k} for row in csv.DictReader(handle)]

    def splits(folder: Path) -> dict:
        return json.loads((folder / "metrics.json").read_text())["splits"]

    def drop_walls(value):  # wall times and speeds differ between any two runs
        if isinstance(value, dict):
            return {k: drop_walls(v) for k, v in value.items() if not k.endswith("wall_s") and k != "speed_ms_per_image"}
        return [drop_walls(v) for v in value] if isinstance(value, list) else value

    assert losses(fresh) == losses(job.paths.folder)
    assert drop_walls(splits(fresh)) == drop_walls(splits(job.paths.folder))
    masking = json.loads((fresh / "metrics.json").read_text())["masking"]  # fired the same, batch by batch
    assert masking["stats"]["epochs"][0]["sites"]["backbone_early"]["masked_batches"] > 0
    assert masking == json.loads((job.paths.folder / "metrics.json").read_text())["masking"]
    for name in ("predictions_test_clean.json", "predictions_test_occ_fixed.json"):
        assert (fresh / name).read_bytes() == (job.paths.folder / name).read_bytes()
