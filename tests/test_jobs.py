"""What crosses the task boundary (exp3.jobs): the plan of jobs on lanes, SessionJob / SessionResult,
the in-memory stop signal, and the command line that hands prepared data to a session (no training)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from exp3.config import ExperimentConfig
from exp3.grid import select_sessions
from exp3.jobs import SessionJob, SessionResult, StopSignal, outcome, plan_jobs, session_lanes
from exp3.progress import SessionHeadline
from exp3.runner import SessionError, SessionSkipped, session_arguments, session_environment
from exp3.schema import PreparedData, SeveritySuite
from exp3.session import prepared_from_json, prepared_is_current

PREPARED = PreparedData(data_yaml="/d/data.yaml", dataset_fingerprint="f" * 16, suite_dir="/s/occ-1", suite_id="occ-1",
                        suite_manifest_sha256="a" * 64, s2_data_yaml="/s/occtrain-1/data.yaml",
                        s2_manifest_sha256="b" * 64,
                        severity_suites=(SeveritySuite(level=1, split="test_occ_sev1", coverage=(0.1, 0.3),
                                                       spec_key="k" * 16, suite_dir="/s/occ-2", suite_id="occ-2",
                                                       manifest_sha256="c" * 64),))


def _config(**update: object) -> ExperimentConfig:
    return ExperimentConfig(output_root=Path("/out"), **update)  # type: ignore[arg-type]


def _plan(config: ExperimentConfig, lanes: tuple[int | None, ...], **kwargs: object) -> list[SessionJob]:
    grid = select_sessions(config, None, None)
    keys = {s.name: f"{s.name}-key" for s in grid}
    return plan_jobs(config, grid, lanes, keys=keys, config_path="/out/config_resolved.yaml", **kwargs)  # type: ignore[arg-type]


def test_lanes_gpus_cpu_slots_or_fan_out() -> None:
    assert session_lanes(_config()) == (None,)
    assert session_lanes(_config(parallel_sessions=3)) == (None, None, None)
    assert session_lanes(_config(gpus=(0, 2))) == (0, 2)
    assert session_lanes(_config(gpus=(0, 2)), "exp3-session/exp3-session", 4) == (None,) * 4


def test_plan_jobs_round_robin_each_after_the_previous_of_its_lane() -> None:
    config = _config(gpus=(0, 1), failure={"policy": "stop", "retries": 2})
    jobs = _plan(config, session_lanes(config))
    assert [job.name for job in jobs] == [s.name for s in select_sessions(config, None, None)]
    assert [job.lane for job in jobs[:4]] == [0, 1, 0, 1] and [job.gpu for job in jobs[:4]] == [0, 1, 0, 1]
    assert jobs[0].after is None and jobs[1].after is None
    assert jobs[2].after == jobs[0].name and jobs[3].after == jobs[1].name and jobs[11].after == jobs[9].name
    first = jobs[0]
    assert first.cache_key == "yolov8m__S1_clean_train-key" and first.output_root == "/out"
    assert first.epochs == config.models["yolov8m"].epochs and first.stop_on_failure and first.retries == 2
    assert first.config_path == "/out/config_resolved.yaml" and first.prepared is None and first.deployment is None
    assert first.paths.folder == Path("/out/yolov8m/yolov8m__S1_clean_train")


def test_plan_jobs_failed_before_prepared_and_one_lane() -> None:
    config = _config()
    jobs = _plan(config, (None,), failed_before=frozenset({"rtdetr-l__S2_occ_train"}), prepared=PREPARED,
                 deployment="exp3-session/exp3-session")
    skipped = [job for job in jobs if job.skip_as_failed]
    assert [job.name for job in skipped] == ["rtdetr-l__S2_occ_train"] and skipped[0].retries == 0
    assert all(job.retries == config.failure.retries for job in jobs if not job.skip_as_failed)
    assert all(job.prepared == PREPARED and job.deployment == "exp3-session/exp3-session" for job in jobs)
    assert [job.after for job in jobs[1:]] == [job.name for job in jobs[:-1]]  # one lane: a chain
    with pytest.raises(ValueError, match="no lanes"):
        _plan(config, ())


def test_plan_jobs_is_pure_and_jobs_are_frozen() -> None:
    config = _config(parallel_sessions=2)
    assert _plan(config, (None, None)) == _plan(config, (None, None))
    with pytest.raises(ValueError):
        _plan(config, (None,))[0].model = "other"  # type: ignore[misc]


def test_job_and_result_round_trip_as_json_the_way_prefect_persists_them() -> None:
    from prefect.serializers import JSONSerializer

    job = _plan(_config(), (None,), prepared=PREPARED)[0]
    assert SessionJob.model_validate_json(job.model_dump_json()) == job
    result = SessionResult(session=job.name, status="done", cache_key=job.cache_key, wall_s=12.5,
                           folder=str(job.paths.folder), headline=SessionHeadline(f1_clean=0.8, map50_occluded=0.5))
    serializer = JSONSerializer()
    assert serializer.loads(serializer.dumps(result)) == result
    assert result.ran and not result.model_copy(update={"status": "cached"}).ran


def test_outcome_of_each_task_ending() -> None:
    job = _plan(_config(), (None,))[0]
    ran = SessionResult(session=job.name, status="done", cache_key=job.cache_key, wall_s=3.0)
    assert outcome(job, "Completed", ran) == ran
    assert outcome(job, "Cached", ran).status == "cached"
    legacy = outcome(job, "Cached", {"session": job.name, "status": "done", "ran": True})  # persisted before
    assert legacy.status == "cached" and legacy.cache_key == job.cache_key
    failed = outcome(job, "Failed", SessionError(f"{job.name}: boom\ntraceback"))
    assert failed.status == "failed" and failed.reason == f"{job.name}: boom"
    skipped = outcome(job, "Failed", SessionSkipped(f"{job.name}: not run"))
    assert skipped.status == "skipped" and not skipped.ran


def test_stop_signal_is_shared_between_threads_and_keeps_the_first_reason() -> None:
    stop = StopSignal()
    assert not stop.requested
    threads = [threading.Thread(target=stop.request, args=(f"s{i}",)) for i in range(4)]
    stop.request("first")
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert stop.requested and stop.reason == "first"


def test_session_arguments_hand_down_gpu_batch_and_prepared_data() -> None:
    job = _plan(_config(gpus=(3,)), (3,), prepared=PREPARED)[0]
    arguments = session_arguments(job, retry_batch=2)
    assert "--retry-batch" in arguments and "train.device=0" in arguments
    assert prepared_from_json(arguments[arguments.index("--prepared") + 1]) == PREPARED
    assert session_environment(job)["CUDA_VISIBLE_DEVICES"] == "3"
    assert session_environment(job)["YOLO_CONFIG_DIR"].startswith(job.output_root)  # set before any import
    plain = _plan(_config(), (None,))[0]
    assert "--prepared" not in session_arguments(plain) and "--set" not in session_arguments(plain)
    assert "CUDA_VISIBLE_DEVICES" not in session_environment(plain) or os.environ.get("CUDA_VISIBLE_DEVICES")
    with pytest.raises(ValueError, match="--prepared is not a PreparedData JSON object"):
        prepared_from_json('{"data_yaml": "x"}')


def test_prepared_data_is_trusted_only_while_its_manifests_match(tmp_path: Path) -> None:
    from exp3.fileio import sha256_file

    suite, s2 = tmp_path / "occ-1", tmp_path / "occtrain-1"
    for folder in (suite, s2):
        folder.mkdir()
        (folder / "manifest.json").write_text(json.dumps({"folder": folder.name}))
    (tmp_path / "data.yaml").write_text("names: [a]\n")
    (s2 / "data.yaml").write_text("names: [a]\n")
    prepared = PreparedData(data_yaml=str(tmp_path / "data.yaml"), dataset_fingerprint="f" * 16,
                            suite_dir=str(suite), suite_id=suite.name,
                            suite_manifest_sha256=sha256_file(suite / "manifest.json"),
                            s2_data_yaml=str(s2 / "data.yaml"), s2_manifest_sha256=sha256_file(s2 / "manifest.json"))
    assert prepared_is_current(prepared)
    (s2 / "manifest.json").write_text("{}")  # rebuilt or tampered with: the session verifies for itself
    assert not prepared_is_current(prepared)
    (suite / "manifest.json").unlink()
    assert not prepared_is_current(prepared)


def test_handed_down_data_must_fit_the_sessions_config(tmp_path: Path) -> None:
    """A session given another config's prepared data (other occlusion parameters or levels) prepares its own."""
    from exp3.occlusion.identity import suite_parameters, train_set_parameters
    from exp3.session import prepared_mismatch
    from exp3.splits import severity_levels

    config = _config(occlusion={"severities": [[0.1, 0.3]]})
    suite, s2 = tmp_path / "occ-1", tmp_path / "occtrain-1"
    for folder, parameters in ((suite, suite_parameters(config.occlusion)), (s2, train_set_parameters(config.occlusion))):
        folder.mkdir()
        (folder / "manifest.json").write_text(json.dumps({"parameters": parameters}))
    level = severity_levels(config.occlusion)[0]
    prepared = PREPARED.model_copy(update={
        "suite_dir": str(suite), "s2_data_yaml": str(s2 / "data.yaml"),
        "severity_suites": (PREPARED.severity_suites[0].model_copy(update={"spec_key": level.spec_key}),)})
    assert prepared_mismatch(prepared, config) is None
    other_seed = _config(occlusion={"severities": [[0.1, 0.3]], "seed": 7})
    assert "fixed suite was built with other occlusion parameters" in prepared_mismatch(prepared, other_seed)
    assert "severity suites are not the config's levels" in prepared_mismatch(
        prepared, _config(occlusion={"severities": [[0.1, 0.3], [0.5, 0.7]]}))
    other_fraction = _config(occlusion={"severities": [[0.1, 0.3]], "train_fraction": 0.3})
    assert "S2 train set was built with other" in prepared_mismatch(prepared, other_fraction)
    (suite / "manifest.json").unlink()
    assert "unreadable" in prepared_mismatch(prepared, config)
