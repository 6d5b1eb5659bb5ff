"""Checkpoint writes that a kill cannot leave half done, on tiny real trainings (exp3.train.trainers).

A kill is simulated at a chosen instant by raising `Killed` from the call that would have been
interrupted (`os.replace` between the two renames of a save, `torch.save` halfway through the final
strip): the files on disk are then exactly what a `kill -9` at that instant leaves.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, ClassVar

import pytest

from exp3.train.trainers import SafeDetectionTrainer

TRAIN_ARGS: dict[str, Any] = {"imgsz": 64, "batch": 4, "device": "cpu", "workers": 0, "amp": False, "plots": False,
                              "verbose": False, "exist_ok": True}
FITNESS: dict[int, float] = {0: 0.1, 1: 0.5, 2: 0.3, 3: 0.4}
"""Val fitness per epoch: epoch 1 is the best, later epochs never reach it."""
KILL_EPOCH = 1  # the improving epoch whose save is killed


class Killed(Exception):
    """A kill -9 at this instant (nothing after it runs)."""


class ScriptedFitnessTrainer(SafeDetectionTrainer):
    """Validates for real, but the fitness it reports is `FITNESS[epoch]` (`redo[epoch]` for an epoch trained again
    after a resume), so which checkpoint is the best is known. `seen` collects every fitness reported."""

    redo: ClassVar[dict[int, float]] = {}
    seen: ClassVar[list[float]] = []

    def validate(self) -> tuple[dict[str, Any], float]:
        metrics = self.validator(self)
        metrics.pop("fitness", None)
        fitness = self.redo.get(self.epoch, FITNESS[self.epoch]) if self.resume else FITNESS[self.epoch]
        self.seen.append(fitness)
        if self.best_fitness is None or self.best_fitness < fitness:
            self.best_fitness = fitness
        return metrics, fitness


def _own_fitness(path: Path) -> float:
    import torch

    return float(torch.load(path, map_location="cpu", weights_only=False)["train_metrics"]["fitness"])


def _kill_between_the_renames(monkeypatch: pytest.MonkeyPatch, best_renamed: bool | None) -> None:
    """Kill the save of epoch KILL_EPOCH between its two renames. `best_renamed`: None, after whichever rename the
    trainer does first; False, after last.pt's with best.pt's not done (the order exp3 used before issue 35)."""
    real_replace = os.replace
    renames: list[str] = []

    def replace(src: Any, dst: Any) -> None:
        name = Path(dst).name
        if name not in ("last.pt", "best.pt"):
            return real_replace(src, dst)
        renames.append(name)
        if len(renames) <= 2 * KILL_EPOCH:  # the earlier epochs: every epoch so far improved, two renames each
            return real_replace(src, dst)
        if best_renamed is False and name == "best.pt":
            return None  # not reached before the kill
        real_replace(src, dst)
        raise Killed(f"killed after renaming {name}")

    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.parametrize(("best_renamed", "redo"), [
    (None, {}),                        # the resumed run trains the killed epoch again to the same fitness
    (None, {KILL_EPOCH: 0.2}),         # ... to a lower one (training is not bit-exact on every device)
    (False, {}),                       # the state the old order (last.pt first) left
], ids=["first-rename", "first-rename-lower-redo", "last-renamed-best-not"])
def test_a_kill_between_the_two_renames_never_leaves_best_pt_behind(
        tiny_data_yaml: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, best_renamed: bool | None,
        redo: dict[int, float]) -> None:
    from ultralytics import YOLO

    trainer = type("Trainer", (ScriptedFitnessTrainer,), {"redo": redo, "seen": []})
    weights = tmp_path / "run" / "weights"
    with monkeypatch.context() as patch:
        _kill_between_the_renames(patch, best_renamed)
        with pytest.raises(Killed):
            YOLO("yolov8n.yaml").train(data=str(tiny_data_yaml), epochs=len(FITNESS), trainer=trainer,
                                       project=str(tmp_path), name="run", **TRAIN_ARGS)
    YOLO(str(weights / "last.pt")).train(resume=True, trainer=trainer)
    assert _own_fitness(weights / "best.pt") == max(trainer.seen) == FITNESS[KILL_EPOCH]


def _kill_halfway_through_writing(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Kill the first `torch.save` to a file whose name holds `name` halfway through its bytes. Only the final strip
    saves to a file: the per-epoch saves serialise to memory first."""
    import torch

    real_save = torch.save

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        if not isinstance(f, (str, os.PathLike)) or name not in Path(f).name:
            return real_save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        Path(f).write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise Killed(f"killed writing {f}")

    monkeypatch.setattr(torch, "save", save)


def test_a_kill_during_the_final_strip_leaves_both_checkpoints_readable(
        tiny_data_yaml: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ultralytics rewrites last.pt and best.pt at the end of training (final_eval's strip_optimizer); killed
    halfway through best.pt's rewrite, both files must still load."""
    import torch
    from ultralytics import YOLO

    with monkeypatch.context() as patch:
        _kill_halfway_through_writing(patch, "best")
        with pytest.raises(Killed):
            YOLO("yolov8n.yaml").train(data=str(tiny_data_yaml), epochs=1, trainer=SafeDetectionTrainer,
                                       project=str(tmp_path), name="run", **TRAIN_ARGS)
    weights = tmp_path / "run" / "weights"
    for name in ("last.pt", "best.pt"):
        torch.load(weights / name, map_location="cpu", weights_only=False)  # raises on a truncated file


def test_an_unreadable_best_pt_is_restored_from_a_last_pt_of_the_same_epoch(
        tiny_data_yaml: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed in the final strip of last.pt (both files still whole, not stripped), then best.pt damaged by another
    cause: last.pt is itself the best epoch (its fitness is the run's best fitness), so Ultralytics wrote the same
    bytes to best.pt: best.pt is restored from it, the bad file is kept aside, nothing is trained again."""
    from exp3.train.training import TrainPlan, final_checkpoint, run_training

    plan = TrainPlan(session="check__S1_clean_train", family="detect", source="yolov8n.yaml", pretrained=False,
                     overrides={"epochs": 1, "imgsz": 64, "batch": 4, "workers": 0, "device": "cpu"},
                     locations={"data": str(tiny_data_yaml), "project": str(tmp_path / "s"), "name": "train",
                                "exist_ok": True},
                     masking_site=None, masking_spec=None, output_root=str(tmp_path),
                     run_dir=str(tmp_path / "s" / "train"))
    with monkeypatch.context() as patch:
        _kill_halfway_through_writing(patch, "last")
        with pytest.raises(Killed):
            run_training(plan, tmp_path / "logs")
    last = plan.last_pt.read_bytes()
    data = plan.best_pt.read_bytes()
    plan.best_pt.write_bytes(data[: len(data) // 2])
    run_training(plan, tmp_path / "logs")
    assert plan.best_pt.read_bytes() == last and plan.last_pt.read_bytes() == last  # restored; nothing trained
    assert final_checkpoint(plan)[0] == plan.best_pt
    assert len(list(plan.best_pt.parent.glob("best.pt.corrupt-*"))) == 1
    assert "best.pt restored from last.pt" in (tmp_path / "logs" / "train.log").read_text()
