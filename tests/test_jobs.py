"""What crosses the task boundary (exp3.grid.jobs): the plan, SessionJob / SessionResult, the slot pool that
starts each session on the first free slot (real Prefect flows, real subprocesses), and the command
line that hands prepared data to a session (no training)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from exp3.config import ExperimentConfig
from exp3.grid.flowenv import PREFECT_SETTINGS
from exp3.grid.jobs import SessionJob, SessionResult, done_result, outcome, plan_jobs, session_slots
from exp3.grid.runner import SessionError, session_arguments, session_environment
from exp3.schema import PreparedData, SeveritySuite
from exp3.session.layout import SessionState
from exp3.session.plan import select_sessions
from exp3.session.prepare import prepared_from_json, prepared_is_current

PREPARED = PreparedData(data_yaml="/d/data.yaml", dataset_fingerprint="f" * 16, suite_dir="/s/occ-1", suite_id="occ-1",
                        suite_manifest_sha256="a" * 64, s2_data_yaml="/s/occtrain-1/data.yaml",
                        s2_manifest_sha256="b" * 64,
                        severity_suites=(SeveritySuite(level=1, split="test_occ_sev1", coverage=(0.1, 0.3),
                                                       spec_key="k" * 16, suite_dir="/s/occ-2", suite_id="occ-2",
                                                       manifest_sha256="c" * 64),))


def _config(**update: object) -> ExperimentConfig:
    return ExperimentConfig(**({"output_root": Path("/out")} | update))  # type: ignore[arg-type]


def _plan(config: ExperimentConfig, **kwargs: object) -> list[SessionJob]:
    grid = select_sessions(config, None, None)
    keys = {s.name: f"{s.name}-key" for s in grid}
    return plan_jobs(config, grid, keys=keys, config_path="/out/config_resolved.yaml", **kwargs)  # type: ignore[arg-type]


def test_slots_gpus_with_repeats_cpu_slots_or_fan_out() -> None:
    assert session_slots(_config()) == (None,)
    assert session_slots(_config(parallel_sessions=3)) == (None, None, None)
    assert session_slots(_config(gpus=(0, 2))) == (0, 2)
    assert session_slots(_config(gpus=(0, 0, 1, 1))) == (0, 0, 1, 1)  # two sessions per GPU
    assert session_slots(_config(gpus=(0, 2)), "exp3-session/exp3-session", 4) == (None,) * 4


def test_plan_jobs_in_grid_order() -> None:
    config = _config(gpus=(0, 1), failure={"policy": "stop", "retries": 2})
    jobs = _plan(config)
    assert [job.name for job in jobs] == [s.name for s in select_sessions(config, None, None)]
    assert all(job.gpu is None for job in jobs)  # a slot is taken when the session starts, not planned
    first = jobs[0]
    assert first.cache_key == "yolov8m__S1_clean_train-key" and first.output_root == "/out"
    assert first.epochs == config.models["yolov8m"].epochs
    assert first.config_path == "/out/config_resolved.yaml" and first.prepared is None and first.deployment is None
    assert first.paths.folder == Path("/out/yolov8m/yolov8m__S1_clean_train")


def test_plan_jobs_rerun_failed_and_prepared() -> None:
    config = _config()
    jobs = _plan(config, rerun_failed=True, prepared=PREPARED, deployment="exp3-session/exp3-session")
    assert all(job.rerun_failed for job in jobs)
    assert not any(job.rerun_failed for job in _plan(config))
    assert all(job.prepared == PREPARED and job.deployment == "exp3-session/exp3-session" for job in jobs)


def test_plan_jobs_is_pure_and_jobs_are_frozen() -> None:
    config = _config(parallel_sessions=2)
    assert _plan(config) == _plan(config)
    with pytest.raises(ValueError):
        _plan(config)[0].model = "other"  # type: ignore[misc]


def test_job_and_result_round_trip_as_json() -> None:
    job = _plan(_config(), prepared=PREPARED)[0]
    assert SessionJob.model_validate_json(job.model_dump_json()) == job
    result = SessionResult(session=job.name, status="done", cache_key=job.cache_key, wall_s=12.5)
    assert SessionResult.model_validate_json(result.model_dump_json()) == result and result.status is SessionState.DONE
    assert json.loads(result.model_dump_json())["status"] == "done"  # the value, as logs and files show it


def test_outcome_of_each_task_ending() -> None:
    job = _plan(_config())[0]
    ran = SessionResult(session=job.name, status="done", cache_key=job.cache_key, wall_s=3.0)
    assert outcome(job, ran) == ran
    failed = outcome(job, SessionError(f"{job.name}: boom\ntraceback"))
    assert failed.status == "failed" and failed.reason == f"{job.name}: boom"


EXAMPLE = Path(__file__).resolve().parent / "fixtures" / "metrics_example.json"  # a real metrics.json
EXAMPLE_PLAN = {split: record["spec_key"]  # the severity evaluations it holds ({split: spec key})
                for split, record in json.loads(EXAMPLE.read_text())["severity"]["evaluations"].items()}


def _write_done(paths, key: str) -> None:  # type: ignore[no-untyped-def]
    paths.folder.mkdir(parents=True)
    paths.metrics.write_bytes(EXAMPLE.read_bytes())
    paths.write_done(key, {})


def test_done_is_decided_by_the_session_folder_alone(tmp_path: Path) -> None:
    """`done_result`: DONE matching metrics.json under this key; another key or a broken metrics.json is not done."""
    job = _plan(_config(output_root=tmp_path))[0].model_copy(update={"evaluations": EXAMPLE_PLAN})
    assert done_result(job) is None
    _write_done(job.paths, job.cache_key)
    assert done_result(job).status == "cached"  # type: ignore[union-attr]
    assert done_result(job.model_copy(update={"cache_key": "other"})) is None
    assert done_result(job.model_copy(update={"evaluations": {**EXAMPLE_PLAN, "test_occ_sev2": "k"}})) is None  # missing
    assert done_result(job.model_copy(update={"evaluations": {}})) is None  # one recorded that is not configured
    job.paths.metrics.write_text("{}")
    assert done_result(job) is None


# A real Prefect flow (ThreadPoolTaskRunner, like flows/exp3.py) whose task runs a real subprocess per session
# (`SLEEP_S` seconds; exit 1 for the sessions named in FAIL) and writes its start, end and GPU slot to the
# session's logs/session.log. Three runs: argv[1] is a JSON list of [jobs, slots, stop_on_failure, FAIL].
SLOT_FLOW = r"""
import json, subprocess, sys, time
from prefect import flow, task
from prefect.task_runners import ThreadPoolTaskRunner
from exp3.grid.jobs import SessionJob, SessionResult, run_on_slots
from exp3.grid.runner import SessionError

SLEEP_S = 1.5

@task
def work(job: SessionJob, fail: list[str]) -> SessionResult:
    start = time.time()
    code = subprocess.run([sys.executable, "-c", f"import time; time.sleep({SLEEP_S}); raise SystemExit({int(job.name in fail)})"]).returncode
    job.paths.logs.mkdir(parents=True, exist_ok=True)
    (job.paths.logs / "session.log").write_text(json.dumps({"start": start, "end": time.time(), "gpu": job.gpu}))
    if code:
        raise SessionError(f"{job.name}: session exited with code {code}")
    return SessionResult(session=job.name, status="done", cache_key=job.cache_key)

@flow(task_runner=ThreadPoolTaskRunner(max_workers=8))
def slots_flow(jobs: list[SessionJob], slots: list[int | None], stop: bool, fail: list[str]) -> dict:
    announced = []
    results = run_on_slots(jobs, slots, start=lambda job: work.submit(job, fail), stop_on_failure=stop,
                           announce=lambda job, result: announced.append([job.name, result.status]))
    return {"results": {name: r.status for name, r in results.items()}, "announced": announced}

for jobs, slots, stop, fail in json.loads(sys.argv[1]):
    print(json.dumps(slots_flow([SessionJob.model_validate(j) for j in jobs], slots, stop, fail)), flush=True)
"""


def _spans(jobs: list[SessionJob]) -> dict[str, dict]:
    return {job.name: json.loads((job.paths.logs / "session.log").read_text()) for job in jobs
            if (job.paths.logs / "session.log").is_file()}


def _most_at_once(spans: list[dict]) -> int:
    """The most sessions running at one moment (the count just after each start)."""
    return max(sum(other["start"] <= span["start"] < other["end"] for other in spans) for span in spans)


def test_sessions_take_the_first_free_slot_when_they_start(tmp_path: Path) -> None:
    """Issue 24: a resume whose 4 remaining sessions were all on one lane of the old round-robin plan keeps both
    slots busy; GPU slots with repeats pack sessions; failure.policy 'stop' starts nothing after a failure."""
    def plan(name: str, count: int) -> list[SessionJob]:
        return [job.model_copy(update={"evaluations": EXAMPLE_PLAN})
                for job in _plan(_config(output_root=tmp_path / name))[:count]]

    resume = plan("resume", 8)
    for job in resume[0::2]:  # lane 0 of the old plan: done before the resume
        _write_done(job.paths, job.cache_key)
    remaining = resume[1::2]  # lane 1 of the old plan: the night's second GPU would have idled
    packed, stopped = plan("packed", 6), plan("stopped", 3)
    runs = [([job.model_dump(mode="json") for job in resume], [0, 1], False, []),
            ([job.model_dump(mode="json") for job in packed], [0, 0, 1], False, []),
            ([job.model_dump(mode="json") for job in stopped], [None], True, [stopped[0].name])]
    result = subprocess.run([sys.executable, "-c", SLOT_FLOW, json.dumps(runs)], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1], timeout=600,
                            env={**os.environ, **PREFECT_SETTINGS, "PREFECT_HOME": str(tmp_path / "prefect")})
    assert result.returncode == 0, result.stderr[-3000:]
    first, second, third = (json.loads(line) for line in result.stdout.splitlines()[-3:])

    assert first["results"] == {job.name: "cached" if job in resume[0::2] else "done" for job in resume}
    assert first["announced"] == [[job.name, "cached"] for job in resume[0::2]]
    spans = _spans(resume)
    assert set(spans) == {job.name for job in remaining}  # done sessions took no slot
    assert sorted(span["gpu"] for span in spans.values()) == [0, 0, 1, 1]  # both slots, two sessions each
    assert _most_at_once(list(spans.values())) == 2
    starts = sorted(span["start"] for span in spans.values())
    assert starts[1] < min(span["end"] for span in spans.values())  # the second slot was busy from the start

    assert set(second["results"].values()) == {"done"}
    spans = list(_spans(packed).values())
    assert {span["gpu"] for span in spans} == {0, 1}
    for gpu, slots in ((0, 2), (1, 1)):
        assert _most_at_once([span for span in spans if span["gpu"] == gpu]) <= slots
    assert _most_at_once(spans) == 3  # all three slots busy at once

    assert list(third["results"].values()) == ["failed", "skipped", "skipped"]
    assert third["announced"] == [[job.name, "skipped"] for job in stopped[1:]]
    assert set(_spans(stopped)) == {stopped[0].name}  # the sessions after the failure never started


def test_session_arguments_hand_down_gpu_batch_and_prepared_data() -> None:
    job = _plan(_config(gpus=(3,)), prepared=PREPARED)[0].model_copy(update={"gpu": 3})  # the slot it got
    arguments = session_arguments(job, retry_batch=2)
    assert "--retry-batch" in arguments and "train.device=0" in arguments
    assert prepared_from_json(arguments[arguments.index("--prepared") + 1]) == PREPARED
    assert session_environment(job)["CUDA_VISIBLE_DEVICES"] == "3"
    assert session_environment(job)["YOLO_CONFIG_DIR"].startswith(job.output_root)  # set before any import
    plain = _plan(_config())[0]
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
                            s2_data_yaml=str(s2 / "data.yaml"), s2_manifest_sha256=sha256_file(s2 / "manifest.json"),
                            severity_suites=())
    assert prepared_is_current(prepared)
    (s2 / "manifest.json").write_text("{}")  # rebuilt or tampered with: the session verifies for itself
    assert not prepared_is_current(prepared)
    (suite / "manifest.json").unlink()
    assert not prepared_is_current(prepared)


def test_handed_down_data_must_fit_the_sessions_config(tmp_path: Path) -> None:
    """A session given another config's prepared data (another dataset, other occlusion parameters or levels)
    prepares its own."""
    from exp3.occlusion.identity import severity_spec_key, suite_parameters, train_set_parameters
    from exp3.session.prepare import dataset_yaml, prepared_mismatch

    config = _config(occlusion={"severities": [[0.1, 0.3]]})
    suite, s2 = tmp_path / "occ-1", tmp_path / "occtrain-1"
    for folder, parameters in ((suite, suite_parameters(config.occlusion)), (s2, train_set_parameters(config.occlusion))):
        folder.mkdir()
        (folder / "manifest.json").write_text(json.dumps({"parameters": parameters}))
    spec_key = severity_spec_key(config.occlusion, 1)
    prepared = PREPARED.model_copy(update={
        "data_yaml": str(dataset_yaml(config, tmp_path, build=False)),
        "suite_dir": str(suite), "s2_data_yaml": str(s2 / "data.yaml"),
        "severity_suites": (PREPARED.severity_suites[0].model_copy(update={"spec_key": spec_key}),)})
    assert prepared_mismatch(prepared, config, tmp_path) is None
    other_dataset = _config(occlusion={"severities": [[0.1, 0.3]]}, dataset={"kind": "synthetic", "preset": "smoke"})
    assert "prepared for the dataset" in prepared_mismatch(prepared, other_dataset, tmp_path)  # trained on A as B
    users = _config(occlusion={"severities": [[0.1, 0.3]]}, dataset={"kind": "yaml", "data_yaml": "/drive/data.yaml"})
    copy = tmp_path / "data" / "user-0123" / "data.yaml"  # `local_dataset`'s copy of a dataset on the mirror's storage
    copy.parent.mkdir(parents=True)
    (copy.parent / "source.json").write_text(json.dumps({"data_yaml": "/drive/data.yaml"}))
    assert prepared_mismatch(prepared.model_copy(update={"data_yaml": str(copy)}), users, tmp_path) is None
    assert "prepared for the dataset" in prepared_mismatch(prepared, users, tmp_path)
    other_seed = _config(occlusion={"severities": [[0.1, 0.3]], "seed": 7})
    assert "fixed suite was built with other occlusion parameters" in prepared_mismatch(prepared, other_seed, tmp_path)
    assert "severity suites are not the config's levels" in prepared_mismatch(
        prepared, _config(occlusion={"severities": [[0.1, 0.3], [0.5, 0.7]]}), tmp_path)
    other_fraction = _config(occlusion={"severities": [[0.1, 0.3]], "train_fraction": 0.3})
    assert "S2 train set was built with other" in prepared_mismatch(prepared, other_fraction, tmp_path)
    (suite / "manifest.json").unlink()
    assert "unreadable" in prepared_mismatch(prepared, config, tmp_path)


def test_a_session_failed_before_takes_no_slot_unless_rerun(tmp_path: Path) -> None:
    """FAILED under the current key: skipped with its error, no slot taken; `--rerun-failed` starts it."""
    from exp3.grid.jobs import run_on_slots

    job = _plan(_config(output_root=tmp_path))[0]
    job.paths.folder.mkdir(parents=True)
    job.paths.write_inputs({}, job.cache_key)
    job.paths.failed_marker.write_text(json.dumps({"error": "boom"}))

    class Finished:  # a Prefect future that has already ended
        def __init__(self, started: SessionJob) -> None:
            self.started = started

        def add_done_callback(self, callback) -> None:  # type: ignore[no-untyped-def]
            callback(self)

        def result(self, raise_on_failure: bool) -> SessionResult:
            return SessionResult(session=self.started.name, status="done", cache_key=self.started.cache_key)

    skipped = run_on_slots([job], [None], start=lambda _: pytest.fail("a session FAILED before was started"))
    assert skipped[job.name].status == SessionState.SKIPPED and "boom" in (skipped[job.name].reason or "")
    rerun = run_on_slots([job.model_copy(update={"rerun_failed": True})], [None], start=Finished)
    assert rerun[job.name].status == SessionState.DONE
    # failure.policy 'stop' holds on a re-run too (run_experiment3.sh makes them): nothing starts after it
    later = _plan(_config(output_root=tmp_path))[1]
    stopped = run_on_slots([job, later], [None], start=lambda _: pytest.fail("started after a failure"),
                           stop_on_failure=True)
    assert stopped[later.name].status == SessionState.SKIPPED
    assert "failure.policy is 'stop'" in (stopped[later.name].reason or "")
    assert run_on_slots([job, later], [None], start=Finished)[later.name].status == SessionState.DONE  # 'continue'


def test_a_fanned_out_session_out_of_memory_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A session run as a flow run of the per-session deployment fails out of memory: the parent's task is retried
    (at half the batch) as on one machine; another failure is not."""
    from types import SimpleNamespace

    from exp3.grid import live
    from exp3.grid.runner import SessionError

    job = _plan(_config(output_root=tmp_path), deployment="exp3-session/exp3-session")[0]
    job.paths.folder.mkdir(parents=True)
    ended = SimpleNamespace(name="x", state=SimpleNamespace(name="Failed", is_completed=lambda: False))
    written: list[str] = []  # the marker the session's flow run writes (an earlier one is not its reason)

    def run_deployment(**kwargs: object) -> SimpleNamespace:
        if written:
            job.paths.failed_marker.write_text(json.dumps({"error": written[-1]}))
        return ended

    monkeypatch.setattr(live, "run_deployment", run_deployment)
    for error, transient in (("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2 GiB", True),
                             ("ValueError: boom", False)):
        written.append(error)
        with pytest.raises(SessionError) as failed:
            live._run_via_deployment(job, None)
        assert failed.value.transient is transient
    written.clear()  # an earlier run's out-of-memory marker, none written now: neither retried nor named
    job.paths.failed_marker.write_text(json.dumps({"error": "torch.OutOfMemoryError: CUDA out of memory."}))
    with pytest.raises(SessionError) as failed:
        live._run_via_deployment(job, None)
    assert failed.value.transient is False
    # its worker's machine lost: Prefect's heartbeat automation (deployments/crash_lost_runs.py) marks it Crashed;
    # no FAILED marker: stopped, resumable, not a failure to fix with --rerun-failed
    job.paths.failed_marker.unlink()
    ended.state = SimpleNamespace(name="Crashed", is_completed=lambda: False)
    with pytest.raises(SessionError, match=rf"^{job.name}: session stopped by its flow run x ending Crashed") as lost:
        live._run_via_deployment(job, None)
    assert lost.value.transient is False
