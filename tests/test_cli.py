"""The command line of flows/exp3.py (exp3.grid.cli) without running a flow: config choice, errors, dry run."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from exp3.grid.cli import (
    PILOT_CONFIG,
    PILOT_GPU_CONFIG,
    REPO,
    SANITY_SESSIONS,
    SERVER_SETTINGS,
    config_from_args,
    run,
    start,
)


def test_each_option_chooses_its_config() -> None:
    smoke, args = config_from_args(["--smoke", "--models", "yolov8m", "--set", "train.batch=2"])
    assert smoke.train.batch == 2 and args.models == ["yolov8m"] and not args.dry_run
    sanity, args = config_from_args(["--sanity"])
    assert str(sanity.output_root) == "runs/exp3-sanity" and args.sanity
    default, _ = config_from_args([])
    assert default.output_root != smoke.output_root and list(default.models) == ["yolov8m", "rtdetr-l"]
    assert (REPO / "flows" / "exp3.py").is_file() and len(SANITY_SESSIONS) == 2


@pytest.mark.parametrize("cuda", [True, False])
def test_pilot_picks_the_gpu_config_with_cuda_and_the_cpu_config_without(cuda: bool, monkeypatch: pytest.MonkeyPatch,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    config, _ = config_from_args(["--pilot"])
    path = PILOT_GPU_CONFIG if cuda else PILOT_CONFIG
    assert capsys.readouterr().err == f"exp3 pilot: {path.relative_to(REPO)}\n"
    assert config.fingerprint() == config_from_args(["--config", str(path)])[0].fingerprint()


def test_two_config_choices_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        config_from_args(["--pilot", "--smoke"])
    assert exit_info.value.code == 2 and "each choose the config" in capsys.readouterr().err


def test_bad_names_exit_2_with_one_line_before_anything_is_written(capsys: pytest.CaptureFixture[str],
                                                                    tmp_path: Path) -> None:
    """A typo in --models or --sessions is refused before output_root and its .prefect/ and .ultralytics/ are made
    (they were, and Prefect was imported first: ~3.3 s for the line, measured; now ~1 s)."""
    root = tmp_path / "typo-root"
    for names, line in ((["--models", "yolov9"], "error: unknown model(s) yolov9: configured models are yolov8m, "
                                                 "rtdetr-l\n"),
                        (["--sessions", "S7_magic"], "error: unknown session 'S7_magic'"),
                        (["--sanity", "--models", "yolov9"], "error: unknown model(s) yolov9")):
        with pytest.raises(SystemExit) as exit_info:
            start([*names, *(["--smoke"] if "--sanity" not in names else []), "--set", f"output_root={root}"])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.startswith(line) and err.count("\n") == 1, err
        assert not root.exists()
    _, args = config_from_args(["--sanity", "--set", f"output_root={root}"])  # the sanity grid's defaults
    assert args.models == ["yolov8m"] and args.sessions == list(SANITY_SESSIONS)
    assert [session.name for session in args.grid] == [f"yolov8m__{suffix}" for suffix in SANITY_SESSIONS]


def test_dry_run_lists_the_grid_without_a_flow(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config, args = config_from_args(["--smoke", "--dry-run", "--sessions", "S1_clean_train",
                                     "--set", f"output_root={tmp_path}"])
    assert run(config, args, lambda **_: pytest.fail("no flow on a dry run")) == 0
    out = capsys.readouterr().out
    assert f"exp3 dry run: 2 sessions under {tmp_path}" in out and "rtdetr-l__S1_clean_train" in out
    assert "pending" in out and not (tmp_path / "yolov8m").exists()
    # a done folder before this config's dataset exists (another synthetic seed made it?): not known, never "done"
    from exp3.session.layout import SessionPaths
    from exp3.sessions import Session

    paths = SessionPaths.of(tmp_path, Session("yolov8m", "S1_clean_train"))
    paths.folder.mkdir(parents=True)
    paths.metrics.write_text("{}")
    paths.write_done("k", {})
    assert run(config, args, lambda **_: pytest.fail("no flow on a dry run")) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if "yolov8m__S1_clean_train" in line)
    assert line.split()[1:3] == ["unknown", "?/?"]


def test_a_failed_flow_state_exits_1(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config, args = config_from_args(["--smoke", "--sessions", "S1_clean_train", "--set", f"output_root={tmp_path}"])
    state = SimpleNamespace(is_failed=lambda: True, name="Failed", message="1 of 2 sessions failed")
    calls: list[dict] = []
    assert run(config, args, lambda **kwargs: calls.append(kwargs) or state) == 1
    assert calls[0]["sessions"] == ["S1_clean_train"] and calls[0]["return_state"] is True
    assert "exp3: flow ended Failed: 1 of 2 sessions failed" in capsys.readouterr().err


def test_an_output_root_that_cannot_hold_prefects_database_is_refused_in_one_line(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """output_root on Google Drive: SQLite's WAL mode fails there ('disk I/O error', as on a FUSE passthrough mount,
    BENCHMARKS.md), and Prefect's server retried for 3 minutes and ended in ~8,000 lines of traceback. The probe
    refuses it at once, naming the fix; a local folder passes."""
    import sqlite3

    from exp3.grid.flowenv import database_problem

    assert database_problem(tmp_path) is None and list(tmp_path.iterdir()) == []   # the probe leaves nothing

    def no_shared_memory(*args: object, **kwargs: object) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(sqlite3, "connect", no_shared_memory)
    monkeypatch.setattr(os, "environ", os.environ.copy())  # start() sets the flow's environment: this test's only
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    for name in SERVER_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    drive = ["--smoke", "--set", f"output_root={tmp_path / 'drive' / 'MyDrive' / 'exp3'}"]
    with pytest.raises(SystemExit) as exit_info:
        start(drive)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert "cannot hold the run's Prefect database (disk I/O error" in err and "set mirror.path" in err
    monkeypatch.setenv("PREFECT_API_URL", "http://prefect.lab:4200/api")  # a Prefect server keeps the database
    start(drive)


def test_a_mirror_on_the_output_roots_own_disk_is_warned_about(capsys: pytest.CaptureFixture[str],
                                                                 tmp_path: Path) -> None:
    """Drive not mounted: /content/drive/MyDrive/... is then a plain folder of the VM's disk, and a recycled VM
    loses the mirror with the root. Said in one line before the run."""
    config, args = config_from_args(["--smoke", "--dry-run", "--set", f"output_root={tmp_path / 'root'}",
                                     "--set", f"mirror.path={tmp_path / 'drive' / 'MyDrive' / 'exp3'}"])
    assert run(config, args, lambda **_: pytest.fail("no flow on a dry run")) == 0
    assert "WARNING exp3: mirror.path" in capsys.readouterr().out.splitlines()[0]


def test_an_integration_not_installed_is_refused_before_any_flow(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """It was found per session, after the data was prepared: every session failed alike, and the run rewrote the
    root's config_resolved.yaml and plan.json and built an empty report."""
    monkeypatch.setattr("exp3.train.integrations.find_spec", lambda name: None)
    config, args = config_from_args(["--smoke", "--set", f"output_root={tmp_path}", "--set", "integrations=[mlflow]"])
    assert run(config, args, lambda **_: pytest.fail("the flow must not start")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: integrations ['mlflow'] are configured but not installed") and err.count("\n") == 1
    assert not any(tmp_path.iterdir())


def test_a_gpu_this_machine_does_not_show_is_refused_before_any_flow(capsys: pytest.CaptureFixture[str],
                                                                     tmp_path: Path) -> None:
    """`gpus: [0]` on a CPU machine (a Colab CPU runtime): every session failed alike after the data was prepared
    ("Invalid CUDA 'device=0' requested"), and the run asked for --rerun-failed."""
    import torch

    count = torch.cuda.device_count()
    config, args = config_from_args(["--smoke", "--set", f"output_root={tmp_path}", "--set", f"gpus=[{count}]",
                                     "--set", "train.device=null", "--set", "parallel_sessions=1"])
    assert run(config, args, lambda **_: pytest.fail("the flow must not start")) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: gpus [{count}] / train.device None name GPU {count}, but this machine shows "
                          f"{count} GPU(s)") and err.count("\n") == 1 and not any(tmp_path.iterdir())
    config, args = config_from_args(["--smoke", "--dry-run", "--set", f"output_root={tmp_path}", "--set",
                                     f"gpus=[{count}]", "--set", "train.device=null", "--set", "parallel_sessions=1"])
    assert run(config, args, lambda **_: pytest.fail("no flow on a dry run")) == 0  # a GPU grid, looked at anywhere


def test_mlflow_beside_a_mirror_warns_that_its_store_stays_local(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config, args = config_from_args(["--smoke", "--dry-run", "--set", f"output_root={tmp_path / 'root'}",
                                     "--set", f"mirror.path={tmp_path / 'mirror'}", "--set", "integrations=[mlflow]"])
    assert run(config, args, lambda **_: pytest.fail("no flow on a dry run")) == 0
    assert f"WARNING exp3: MLflow's store {tmp_path / 'root' / 'mlruns'} stays on this machine" in \
        capsys.readouterr().out


def test_sanity_runs_and_dry_runs_what_the_user_chose(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """`--set output_root` wins over the sanity default, `--models` chooses the model; the dry run lists the grid
    the sanity check runs (it listed rtdetr-l's 6 sessions while the run took yolov8m's 2 under runs/exp3-sanity)."""
    from exp3.grid.jobs import SessionResult
    from exp3.session.layout import SessionState

    root = tmp_path / "san"
    chosen = ["--sanity", "--set", f"output_root={root}", "--models", "rtdetr-l"]
    config, args = config_from_args([*chosen, "--dry-run"])
    assert run(config, args, lambda **_: pytest.fail("no flow on a dry run")) == 0
    out = capsys.readouterr().out
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("  ") and "__" in line]
    assert f"exp3 dry run: 2 sessions under {root}" in out
    assert listed == [f"rtdetr-l__{session}" for session in SANITY_SESSIONS]
    calls: list[dict] = []

    def flow(**kwargs: object) -> dict[str, SessionResult]:
        calls.append(kwargs)
        return {name: SessionResult(session=name, status=SessionState.CACHED, cache_key="k") for name in listed}

    config, args = config_from_args(chosen)
    assert run(config, args, flow) == 0 and "sanity PASS" in capsys.readouterr().out
    assert [(call["models"], call["sessions"]) for call in calls] == [(["rtdetr-l"], list(SANITY_SESSIONS))] * 2
    assert all(call["config"].output_root == root for call in calls)
