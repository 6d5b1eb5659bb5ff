"""What a training really runs with, on tiny real trainings (exp3.train.training): a user's own `.pt` gives its
weights only, and an out-of-memory retry at another batch never resumes a checkpoint trained at the first one."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from exp3.train.training import TrainPlan, run_training

TRAIN_OVERRIDES: dict[str, Any] = {"epochs": 1, "batch": 4, "workers": 0, "device": "cpu"}


def _plan(data_yaml: Path, tmp_path: Path, source: str, overrides: dict[str, Any]) -> TrainPlan:
    return TrainPlan(session="check__S1_clean_train", family="detect", source=source,
                     pretrained=source.endswith(".pt"), overrides=overrides,
                     locations={"data": str(data_yaml), "project": str(tmp_path / "s"), "name": "train",
                                "exist_ok": True},
                     masking_site=None, masking_spec=None, output_root=str(tmp_path),
                     run_dir=str(tmp_path / "s" / "train"))


def test_a_fresh_training_from_a_users_pt_takes_its_weights_not_its_training_args(
        tiny_data_yaml: Path, tmp_path: Path) -> None:
    """A `.pt` trained single_cls at imgsz 32: a session from it that sets neither trains at Ultralytics' defaults,
    as its `overrides` (the plan's) say, not at the `.pt`'s."""
    from ultralytics import YOLO
    from ultralytics.cfg import DEFAULT_CFG

    YOLO("yolov8n.yaml").train(data=str(tiny_data_yaml), epochs=1, imgsz=32, batch=4, single_cls=True, device="cpu",
                               amp=False, workers=0, plots=False, project=str(tmp_path / "user"), name="run",
                               exist_ok=True, verbose=False)
    users_pt = tmp_path / "user" / "run" / "weights" / "last.pt"
    outcome = run_training(_plan(tiny_data_yaml, tmp_path, str(users_pt), TRAIN_OVERRIDES), tmp_path / "logs")
    effective = outcome.info["effective_args"]
    assert (effective["imgsz"], effective["single_cls"]) == (DEFAULT_CFG.imgsz, DEFAULT_CFG.single_cls) == (640, False)
    assert effective["model"] == str(users_pt) and effective["pretrained"] is True  # its weights, still
