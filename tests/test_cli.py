"""The command line of flows/exp3.py (exp3.grid.cli) without running a flow: config choice, errors, dry run."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from exp3.grid.cli import (
    PILOT_CONFIG,
    PILOT_GPU_CONFIG,
    REPO,
    SANITY_SESSIONS,
    config_from_args,
    pilot_config_path,
    run,
)


def test_each_option_chooses_its_config() -> None:
    smoke, args = config_from_args(["--smoke", "--models", "yolov8m", "--set", "train.batch=2"])
    assert smoke.train.batch == 2 and args.models == ["yolov8m"] and not args.dry_run
    sanity, args = config_from_args(["--sanity"])
    assert str(sanity.output_root) == "runs/exp3-sanity" and args.sanity
    default, _ = config_from_args([])
    assert default.output_root != smoke.output_root and list(default.models) == ["yolov8m", "rtdetr-l"]
    assert pilot_config_path(True) == PILOT_GPU_CONFIG and pilot_config_path(False) == PILOT_CONFIG
    assert (REPO / "flows" / "exp3.py").is_file() and len(SANITY_SESSIONS) == 2


def test_two_config_choices_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        config_from_args(["--pilot", "--smoke"])
    assert exit_info.value.code == 2 and "each choose the config" in capsys.readouterr().err


def test_bad_names_exit_2_with_one_line_before_any_flow(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config, args = config_from_args(["--smoke", "--models", "yolov9", "--set", f"output_root={tmp_path}"])

    def never(**_: object) -> None:
        raise AssertionError("the flow must not start")

    assert run(config, args, never) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown model(s) yolov9") and err.count("\n") == 1


def test_dry_run_lists_the_grid_without_a_flow(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config, args = config_from_args(["--smoke", "--dry-run", "--sessions", "S1_clean_train",
                                     "--set", f"output_root={tmp_path}"])
    assert run(config, args, lambda **_: pytest.fail("no flow on a dry run")) == 0
    out = capsys.readouterr().out
    assert f"exp3 dry run: 2 sessions under {tmp_path}" in out and "rtdetr-l__S1_clean_train" in out
    assert "pending" in out and not (tmp_path / "yolov8m").exists()


def test_a_failed_flow_state_exits_1(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config, args = config_from_args(["--smoke", "--sessions", "S1_clean_train", "--set", f"output_root={tmp_path}"])
    state = SimpleNamespace(is_failed=lambda: True, name="Failed", message="1 of 2 sessions failed")
    calls: list[dict] = []
    assert run(config, args, lambda **kwargs: calls.append(kwargs) or state) == 1
    assert calls[0]["sessions"] == ["S1_clean_train"] and calls[0]["return_state"] is True
    assert "exp3: flow ended Failed: 1 of 2 sessions failed" in capsys.readouterr().err
