"""What a training really runs with, on tiny real trainings (exp3.train.training): a user's own `.pt` gives its
weights only, and an out-of-memory retry at another batch never resumes a checkpoint trained at the first one."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from exp3.fileio import read_json
from exp3.session.record import ran_batch
from exp3.train.training import TRAIN_INFO_FILENAME, TrainOutcome, TrainPlan, checkpoint_state, run_training

TRAIN_OVERRIDES: dict[str, Any] = {"epochs": 1, "batch": 4, "workers": 0, "device": "cpu"}


def _plan(data_yaml: Path, tmp_path: Path, source: str, overrides: dict[str, Any]) -> TrainPlan:
    return TrainPlan(session="check__S1_clean_train", family="detect", source=source,
                     pretrained=source.endswith(".pt"), overrides=overrides,
                     locations={"data": str(data_yaml), "project": str(tmp_path / "s"), "name": "train",
                                "exist_ok": True},
                     masking_site=None, masking_spec=None, output_root=str(tmp_path),
                     run_dir=str(tmp_path / "s" / "train"))


@contextmanager
def _extra_callbacks(monkeypatch: pytest.MonkeyPatch, extra: dict[str, list[Any]]) -> Iterator[None]:
    """Every training in the block also runs `extra` ({event: [fn]}), beside exp3's own callbacks."""
    from exp3.train import trainers

    real = trainers.add_callbacks
    with monkeypatch.context() as patch:
        patch.setattr(trainers, "add_callbacks", lambda target, callbacks: real(target, {**callbacks, **extra}))
        yield


def _killed(trainer: Any) -> None:
    raise KeyboardInterrupt("killed after epoch 0's checkpoint (simulated)")


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


def test_an_out_of_memory_retry_at_another_batch_trains_from_the_start(
        tiny_data_yaml: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Out of memory after epoch 0's checkpoint at batch 4: the retry at batch 2 does not resume that checkpoint (its
    epochs would have run at batch 4 and the rest at 2, recorded as batch 2); it is set aside, and every epoch runs at
    batch 2."""
    import torch

    def out_of_memory(trainer: Any) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")

    plan = _plan(tiny_data_yaml, tmp_path, "yolov8n.yaml", {**TRAIN_OVERRIDES, "epochs": 2, "imgsz": 64})
    with _extra_callbacks(monkeypatch, {"on_model_save": [out_of_memory]}), pytest.raises(torch.OutOfMemoryError):
        run_training(plan, tmp_path / "logs")
    retry = dataclasses.replace(plan, overrides={**plan.overrides, "batch": 2})  # as plan_training(retry_batch=2)
    events = Path(plan.run_dir) / "events.out.tfevents.1765000000.host.1.0"  # as TensorBoard's callback names it
    events.write_bytes(b"the first attempt's epochs")
    outcome = run_training(retry, tmp_path / "logs")
    assert outcome.info.get("resumed_from") is None and outcome.info["start_epoch"] == 0
    (superseded,) = Path(plan.run_dir).glob("tensorboard.superseded-*/events.out.tfevents.*")  # not merged with these
    assert superseded.read_bytes() == b"the first attempt's epochs" and not events.exists()
    assert outcome.info["ran"]["batch"] == 2 and outcome.info["epochs_completed"] == 2
    (aside,) = plan.last_pt.parent.glob("last.pt.other-batch-*")
    assert torch.load(aside, map_location="cpu", weights_only=False)["train_args"]["batch"] == 4  # kept, not resumed


def test_a_kill_in_the_final_validation_of_a_resumed_training_leaves_a_complete_record(
        tiny_data_yaml: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed during Ultralytics' final validation, after it stripped the checkpoints (epoch -1): the record kept
    no epochs, effective args or resume (a kill -9 review hit this window in 3 of 6 random kills); now the next run
    finishes it from the checkpoint, and the resume is on record from the resumed attempt's first write."""
    plan = _plan(tiny_data_yaml, tmp_path, "yolov8n.yaml", {**TRAIN_OVERRIDES, "epochs": 2, "imgsz": 64})
    with _extra_callbacks(monkeypatch, {"on_model_save": [_killed]}), pytest.raises(KeyboardInterrupt):
        run_training(plan, tmp_path / "logs")                                    # killed after epoch 1's save
    validations: list[Any] = []

    def killed_in_the_final_validation(validator: Any) -> None:
        validations.append(validator)
        if len(validations) == 2:                                               # epoch 2's, then the final one
            raise KeyboardInterrupt("killed in the final validation (simulated)")

    with _extra_callbacks(monkeypatch, {"on_val_start": [killed_in_the_final_validation]}), \
            pytest.raises(KeyboardInterrupt):
        run_training(plan, tmp_path / "logs")
    assert checkpoint_state(plan.last_pt)[1]["epoch"] == -1                    # stripped: a finished training's
    outcome = run_training(plan, tmp_path / "logs")
    assert "holds a finished training" in (tmp_path / "logs" / "train.log").read_text().split("==== exp3 train")[-1]
    info = outcome.info
    assert info["finished"] and info["epochs_completed"] == 2 and info["effective_args"]["epochs"] == 2
    assert outcome.info.get("resumed_from") == 0 and info["attempts"] == 2


def test_a_training_left_at_a_smaller_batch_is_resumed_at_it(
        tiny_data_yaml: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The flow is run again after a kill while a retry at batch 2 was training (or Ultralytics' own first-epoch
    halving left the checkpoint at 2): the first attempt, planned at the configured 4, resumes it at 2 (setting it
    aside would lose the retry's epochs), and the record says batch 2 ran."""
    import torch

    plan = _plan(tiny_data_yaml, tmp_path, "yolov8n.yaml", {**TRAIN_OVERRIDES, "epochs": 2, "imgsz": 64})
    retry = dataclasses.replace(plan, overrides={**plan.overrides, "batch": 2})
    with _extra_callbacks(monkeypatch, {"on_model_save": [_killed]}), pytest.raises(KeyboardInterrupt):
        run_training(retry, tmp_path / "logs")
    outcome = run_training(plan, tmp_path / "logs")                              # planned at batch 4 again
    assert outcome.info.get("resumed_from") == 0 and outcome.info["ran"]["batch"] == 2
    assert outcome.info["epochs_completed"] == 2 and not list(plan.last_pt.parent.glob("*.other-batch-*"))
    assert torch.load(plan.last_pt, map_location="cpu", weights_only=False)["train_args"]["batch"] == 2
    assert ran_batch(plan, outcome, None, 4) == ({**plan.overrides, "batch": 2}, 2)   # metrics.json: batch 2 ran
    as_planned = TrainOutcome(1.0, {"ran": {**outcome.info["ran"], "batch": 4}})
    assert ran_batch(plan, as_planned, None, 4) == (plan.overrides, None)
    assert ran_batch(retry, outcome, 2, 4) == (retry.overrides, 2)                     # a retry's, as planned
    # out of memory in the evaluation, after the training had finished at 4: the retry at 2 trained nothing
    assert ran_batch(retry, as_planned, 2, 4) == (plan.overrides, None)
    unset = {key: value for key, value in plan.overrides.items() if key != "batch"}
    default = dataclasses.replace(plan, overrides=unset).batch                         # Ultralytics' 16
    at_default = TrainOutcome(1.0, {"ran": {"batch": default}})
    assert ran_batch(dataclasses.replace(plan, overrides={**unset, "batch": 8}), at_default, 8, None) == (unset, None)


def test_a_kill_after_the_last_checkpoint_leaves_a_complete_record(
        tiny_data_yaml: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed after the last epoch's checkpoint, before the training's end (Ultralytics' final validation): the next
    run trains nothing, and train_info.json (so metrics.json's `training`) still has the resolved args, the epochs
    and the trainer, as after an uninterrupted training."""
    plan = _plan(tiny_data_yaml, tmp_path, "yolov8n.yaml", {**TRAIN_OVERRIDES, "imgsz": 64})   # one epoch
    with _extra_callbacks(monkeypatch, {"on_model_save": [_killed]}), pytest.raises(KeyboardInterrupt):
        run_training(plan, tmp_path / "logs")
    assert (read_json(Path(plan.run_dir) / TRAIN_INFO_FILENAME) or {}).get("effective_args") is None
    outcome = run_training(plan, tmp_path / "logs")
    assert "holds a finished training" in (tmp_path / "logs" / "train.log").read_text()
    info = outcome.info
    assert info["finished"] and info["epochs_completed"] == 1 and info["trainer"] == "SafeDetectionTrainer"
    assert (info["effective_args"]["batch"], info["effective_args"]["imgsz"]) == (4, 64)
    assert info["ran"]["batch"] == 4                                        # what the killed attempt recorded, kept


def _out_of_memory_once(trainer: Any) -> None:
    """The next forward pass runs out of memory once, as a GPU's can: Ultralytics halves the batch and restarts the
    epoch (`BaseTrainer._do_train`, first epoch of a run on one device)."""
    def out_of_memory(batch: Any) -> Any:
        del trainer.preprocess_batch
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")

    if "preprocess_batch" not in vars(trainer) and not getattr(trainer, "_simulated_oom", False):
        trainer._simulated_oom = True
        trainer.preprocess_batch = out_of_memory


def test_ultralytics_halving_the_batch_in_the_first_epoch_is_recorded(
        tiny_data_yaml: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Out of memory in the first epoch of a fresh training at batch 4: Ultralytics halves the batch to 2 and goes on
    without failing, so every epoch runs at 2; train_info.json and the record say batch 2, not the planned 4."""
    plan = _plan(tiny_data_yaml, tmp_path, "yolov8n.yaml", {**TRAIN_OVERRIDES, "epochs": 2, "imgsz": 64})
    with _extra_callbacks(monkeypatch, {"on_train_batch_start": [_out_of_memory_once]}):
        outcome = run_training(plan, tmp_path / "logs")
    assert outcome.info["effective_args"]["batch"] == 2 and outcome.info["epochs_completed"] == 2  # Ultralytics halved
    assert outcome.info["ran"]["batch"] == 2
    assert ran_batch(plan, outcome, None, 4) == ({**plan.overrides, "batch": 2}, 2)    # metrics.json: batch 2 ran


def test_ultralytics_halving_the_batch_after_a_resume_is_an_out_of_memory_failure(
        tiny_data_yaml: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed after epoch 0 at batch 4, then out of memory in the first epoch after the resume: Ultralytics would halve
    the batch and run epoch 1 at 2 after epoch 0 at 4. The training fails as out of memory instead (the runner's
    retry at batch 2 then trains from the start, every epoch at one batch), before any epoch runs at 2."""
    import torch

    plan = _plan(tiny_data_yaml, tmp_path, "yolov8n.yaml", {**TRAIN_OVERRIDES, "epochs": 2, "imgsz": 64})
    with _extra_callbacks(monkeypatch, {"on_model_save": [_killed]}), pytest.raises(KeyboardInterrupt):
        run_training(plan, tmp_path / "logs")
    with _extra_callbacks(monkeypatch, {"on_train_batch_start": [_out_of_memory_once]}), \
            pytest.raises(torch.OutOfMemoryError, match="after a resume at batch 4"):
        run_training(plan, tmp_path / "logs")
    assert torch.load(plan.last_pt, map_location="cpu", weights_only=False)["epoch"] == 0   # no epoch ran at 2
    retry = dataclasses.replace(plan, overrides={**plan.overrides, "batch": 2})
    outcome = run_training(retry, tmp_path / "logs")
    assert outcome.info.get("resumed_from") is None and outcome.info["ran"]["batch"] == 2
    assert list(plan.last_pt.parent.glob("last.pt.other-batch-*"))                  # epoch 0 at batch 4: set aside
