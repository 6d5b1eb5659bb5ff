"""Internal masking: mask statistics, gating, RNG isolation, site resolution, and real Ultralytics trainings.

The two training fixtures (yolov8n with a resume, rtdetr-l) attach all four sites at once and
are shared by every integration test, so the file stays within a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import random
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from exp3.config import MaskingConfig
from exp3.sessions import MASKING_SITES
from exp3.train.masking import (
    FeatureMasker,
    HeadInputMasker,
    as_masking_config,
    attach_internal_masking,
    block_size,
    build_detection_model,
    channel_keep_mask,
    mask_features,
    resolve_masking_sites,
    site_feature_shapes,
    spatial_keep_mask,
    strip_masking_hooks,
)

ALWAYS = {"schedule": "constant", "p_apply": 1.0}  # mask every training batch at full strength


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _zero_share(x: torch.Tensor) -> float:
    return (x == 0).float().mean().item()


def count_masking_hooks(module: nn.Module) -> int:
    """Number of masking hooks registered anywhere in `module`."""
    return sum(isinstance(hook, FeatureMasker) for submodule in module.modules()
               for hook in (*submodule._forward_hooks.values(), *submodule._forward_pre_hooks.values()))


# ---------------------------------------------------------------------------------------------
# Pure functions


@pytest.mark.parametrize("p", [0.1, 0.15, 0.5])
def test_channel_mask_zeroes_exact_share_per_sample_and_rescales(p: float) -> None:
    x = torch.ones(16, 80, 6, 6)
    out, zeroed = mask_features(x, "channel", p, 0.0, 0.15, "dropout", _generator())
    dropped_per_sample = (out[:, :, 0, 0] == 0).sum(dim=1)
    assert torch.all(dropped_per_sample == round(p * 80))
    assert zeroed == pytest.approx(round(p * 80) / 80)
    kept = out[out != 0]
    assert torch.allclose(kept, torch.full_like(kept, 80 / (80 - round(p * 80))))
    assert out.mean().item() == pytest.approx(1.0, abs=1e-5)  # dropout rescale keeps the expectation
    assert torch.equal(x, torch.ones_like(x))  # input untouched, output is a new tensor


@pytest.mark.parametrize(("p", "side"), [(0.1, 80), (0.3, 80), (0.1, 20), (0.3, 40)])
def test_spatial_mask_measured_drop_matches_request(p: float, side: int) -> None:
    x = torch.ones(64, 4, side, side)
    out, zeroed = mask_features(x, "spatial", 0.0, p, 0.15, "none", _generator(1))
    assert _zero_share(out) == pytest.approx(p, abs=0.03)
    assert float(zeroed) == pytest.approx(_zero_share(out), abs=1e-6)
    assert torch.equal(out[:, 0], out[:, 3])  # one region per sample, shared by all channels


def test_spatial_mask_drops_contiguous_blocks() -> None:
    keep = spatial_keep_mask(32, 40, 40, 0.1, (6, 6), _generator(2), torch.device("cpu"))
    dropped = keep[:, 0] == 0
    right_neighbour_dropped = dropped[:, :, 1:][dropped[:, :, :-1]].float().mean().item()
    assert right_neighbour_dropped > 0.7  # element-wise dropout would give ~0.1


def test_combined_mode_drop_share_and_rescale() -> None:
    x = torch.ones(64, 40, 20, 20)
    out, zeroed = mask_features(x, "channel+spatial", 0.25, 0.2, 0.15, "dropout", _generator(3))
    assert _zero_share(out) == pytest.approx(1 - 0.75 * 0.8, abs=0.03)
    assert float(zeroed) == pytest.approx(_zero_share(out), abs=1e-6)
    assert out.mean().item() == pytest.approx(1.0, abs=0.05)


def test_block_size_is_a_fraction_of_the_map() -> None:
    assert block_size(80, 80, 0.15) == (12, 12)
    assert block_size(20, 20, 0.15) == (3, 3)
    assert block_size(2, 2, 0.15) == (1, 1)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: mask_features(torch.ones(2, 3, 3), "channel", 0.1, 0.1, 0.1, "dropout", _generator()), "(N, C, H, W)"),
        (lambda: FeatureMasker("tail", MaskingConfig()), "backbone_early, backbone_late, neck, head"),
    ],
)
def test_bad_input_raises_one_line_value_error(call: Any, message: str) -> None:
    with pytest.raises(ValueError) as error:
        call()
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"mode": "pixel"}, "'channel', 'spatial' or 'channel+spatial'"),
        ({"p_channels": 1.0}, "less than 1"),
        ({"p_apply": -0.1}, "greater than or equal to 0"),
        ({"block_fraction": 1.5}, "less than or equal to 1"),
    ],
)
def test_standalone_api_refuses_a_bad_spec(spec: dict[str, Any], message: str) -> None:
    """A spec outside exp3's config reaches `MaskingConfig`'s validation (the config's own bounds)."""
    with pytest.raises(ValidationError, match=re.escape(message)):
        as_masking_config(spec)
    with pytest.raises(ValidationError, match=re.escape(message)):
        attach_internal_masking(nn.Identity(), "neck", spec)


# ---------------------------------------------------------------------------------------------
# Hook objects


class _Conv(nn.Module):
    """Stand-in layer for hook-level tests: a 1x1 conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def test_p_apply_share_and_zeroed_share_statistics() -> None:
    layer = _Conv().train()
    masker = FeatureMasker("neck", MaskingConfig(schedule="constant", p_apply=0.5, p_channels=0.25))
    layer.register_forward_hook(masker)
    for _ in range(400):
        layer(torch.ones(2, 3, 4, 4))
    stats = masker.stats.as_dict()
    assert stats["batches"] == 400
    assert stats["masked_share"] == pytest.approx(0.5, abs=0.08)
    assert stats["zeroed_share_when_masked"] == pytest.approx(0.25, abs=1e-6)
    assert stats["zeroed_share"] == pytest.approx(0.25 * stats["masked_share"], abs=1e-6)


def test_hook_is_inactive_in_eval_and_under_no_grad() -> None:
    layer = _Conv()
    masker = FeatureMasker("neck", MaskingConfig(**ALWAYS))
    layer.register_forward_hook(masker)
    x = torch.randn(2, 3, 4, 4)
    reference = layer.conv(x)
    assert torch.equal(layer.eval()(x), reference)
    with torch.no_grad():
        assert torch.equal(layer.train()(x), reference)
    assert masker.stats.batches == 0 and masker.stats.inactive_calls == 2
    assert not torch.equal(layer.train()(x), reference)
    assert masker.stats.masked_batches == 1


def test_linear_ramp_schedule() -> None:
    masker = FeatureMasker("neck", MaskingConfig(schedule="linear_ramp", ramp_fraction=0.3, p_apply=1.0))
    strengths = []
    for progress in (0.0, 0.15, 0.3, 0.9):
        masker.set_progress(progress)
        strengths.append(masker.strength())
    assert strengths == pytest.approx([0.0, 0.5, 1.0, 1.0])
    layer = _Conv().train()
    layer.register_forward_hook(masker)
    masker.set_progress(0.0)
    layer(torch.ones(1, 3, 2, 2))
    assert masker.stats.batches == 1 and masker.stats.masked_batches == 0  # nothing masked at the ramp's start
    masker.set_progress(0.03)         # strength 0.1: p_channels 0.015 of 32 channels rounds to none dropped
    assert layer(torch.ones(1, 3, 2, 2)).equal(layer(torch.ones(1, 3, 2, 2)))
    assert masker.stats.batches == 3 and masker.stats.masked_batches == 0  # counted masked only when it was


def test_head_pre_hook_masks_every_input_and_passes_other_args_through() -> None:
    module = nn.Identity().train()
    masker = HeadInputMasker("head", MaskingConfig(**ALWAYS, p_channels=0.5))
    features = [torch.ones(2, 8, 4, 4), torch.ones(2, 16, 2, 2)]
    token = object()
    new_features, passed = masker(module, (features, token))
    assert passed is token
    assert all(new is not old for new, old in zip(new_features, features))
    assert [_zero_share(level) for level in new_features] == [0.5, 0.5]
    assert all(torch.equal(level, torch.ones_like(level)) for level in features)


def test_the_heads_zeroed_share_is_of_all_its_activations() -> None:
    """Levels of other sizes zeroed at other shares (4 of 8 channels, 2 of 3): the recorded share was the mean of the
    levels' (0.583), not the share of the activations zeroed (0.514) that docs/masking.md and metrics.json name."""
    masker = HeadInputMasker("head", MaskingConfig(**ALWAYS, p_channels=0.5))
    new_features, _ = masker(nn.Identity().train(), ([torch.ones(2, 8, 4, 4), torch.ones(2, 3, 2, 2)], None))
    zeroed = sum(int((level == 0).sum()) for level in new_features) / sum(level.numel() for level in new_features)
    assert zeroed == pytest.approx(144 / 280) and float(masker.stats.zeroed_sum) == pytest.approx(zeroed)


def test_same_seed_and_epoch_give_same_masks() -> None:
    def draw(seed: int, epoch: int) -> torch.Tensor:
        masker = FeatureMasker("neck", MaskingConfig(**ALWAYS, seed=seed))
        masker.reseed(epoch)
        return masker(_Conv().train(), (), torch.ones(4, 32, 4, 4))

    assert torch.equal(draw(0, 3), draw(0, 3))
    assert not torch.equal(draw(0, 3), draw(0, 4))
    assert not torch.equal(draw(0, 3), draw(1, 3))


def test_channel_keep_mask_on_generator_device() -> None:
    keep = channel_keep_mask(3, 10, 0.3, _generator(), torch.device("cpu"))
    assert keep.shape == (3, 10, 1, 1) and torch.all(keep.sum(dim=1) == 7)


# ---------------------------------------------------------------------------------------------
# Models built from yaml (offline)


@pytest.fixture(scope="module")
def yolov8n() -> nn.Module:
    return build_detection_model("yolov8n.yaml", nc=3)


@pytest.mark.parametrize(
    ("architecture", "expected"),
    [
        ("yolov8n.yaml", (4, 9, 12, 22)),
        ("yolov8m.yaml", (4, 9, 12, 22)),
        ("yolo11n.yaml", (4, 10, 13, 23)),
        ("rtdetr-l.yaml", (3, 9, 16, 28)),
    ],
)
def test_sites_resolve_structurally(architecture: str, expected: tuple[int, ...]) -> None:
    sites = resolve_masking_sites(build_detection_model(architecture))
    assert tuple(sites[site] for site in MASKING_SITES) == expected


def test_unresolvable_model_lists_its_layers(yolov8n: nn.Module) -> None:
    broken = copy.deepcopy(yolov8n)
    broken.yaml = {**broken.yaml, "backbone": broken.yaml["backbone"][:1]}  # nothing reads layer 0
    with pytest.raises(ValueError, match=r"cannot resolve masking site 'backbone_early'.*layers: 0:Conv, 1:Conv"):
        resolve_masking_sites(broken)


def test_eval_outputs_bit_identical_and_global_rng_untouched(yolov8n: nn.Module) -> None:
    x = torch.rand(2, 3, 64, 64)
    yolov8n.eval()
    with torch.no_grad():
        reference = yolov8n(x)[0]
    handle = attach_internal_masking(yolov8n, MASKING_SITES, {**ALWAYS, "mode": "channel+spatial"})
    try:
        with torch.no_grad():
            assert torch.equal(yolov8n(x)[0], reference)
        torch_state, python_state = torch.get_rng_state(), random.getstate()
        yolov8n.train()
        yolov8n(x)
        assert torch.equal(torch.get_rng_state(), torch_state)
        assert random.getstate() == python_state
        stats = handle.read_stats()
        assert all(stats[site]["masked_batches"] == 1 for site in MASKING_SITES)
        assert all(stats[site]["inactive_calls"] == 1 for site in MASKING_SITES)  # the eval forward
    finally:
        handle.remove()
        yolov8n.eval()
    assert count_masking_hooks(yolov8n) == 0


@pytest.mark.parametrize("architecture", ["yolov8m.yaml", "rtdetr-l.yaml"])
def test_each_site_fires_alone_in_a_training_forward(architecture: str) -> None:
    model = build_detection_model(architecture, nc=3).train()
    x = torch.rand(2, 3, 64, 64)
    for site in MASKING_SITES:
        handle = attach_internal_masking(model, site, {**ALWAYS, "mode": "channel+spatial"})
        model(x)
        stats = handle.read_stats()
        handle.remove()
        assert list(stats) == [site]
        assert stats[site]["batches"] == 1 and stats[site]["masked_batches"] == 1
        assert stats[site]["zeroed_share"] > 0.1
    assert count_masking_hooks(model) == 0


def test_hooked_model_deep_copies_and_strips(yolov8n: nn.Module) -> None:
    handle = attach_internal_masking(yolov8n, MASKING_SITES, MaskingConfig())
    try:
        pickle.dumps(handle.maskers["head"])
        clone = copy.deepcopy(yolov8n)  # what ModelEMA does
        assert count_masking_hooks(clone) == 4
        assert strip_masking_hooks(clone) == 4 and count_masking_hooks(clone) == 0
        assert count_masking_hooks(yolov8n) == 4
    finally:
        handle.remove()


def test_site_feature_shapes_report(yolov8n: nn.Module) -> None:
    report = site_feature_shapes(yolov8n, imgsz=64)
    assert report["backbone_early"] == {"index": 4, "module": "C2f", "shapes": [(1, 64, 8, 8)]}
    assert report["head"]["shapes"] == [(1, 64, 8, 8), (1, 128, 4, 4), (1, 256, 2, 2)]


@pytest.mark.parametrize(("model", "problem"), [("nosuch.yaml", "no such file"), ("yolov8m.pt", "not an architecture")])
def test_sites_cli_bad_model_is_one_error_line(model: str, problem: str, capsys: pytest.CaptureFixture[str]) -> None:
    from exp3.train.masking import main

    assert main(["sites", "--model", model]) == 2
    captured = capsys.readouterr()
    assert "feature shape" not in captured.out and len(captured.err.strip().splitlines()) == 1  # no traceback
    assert captured.err.startswith(f"error: --model {model!r}") and problem in captured.err
    assert "pass e.g. yolov8m.yaml" in captured.err


# ---------------------------------------------------------------------------------------------
# Ultralytics training with MaskedDetectionTrainer / MaskedRTDETRTrainer

TRAIN_ARGS = {"epochs": 1, "imgsz": 64, "batch": 4, "device": "cpu", "amp": False, "workers": 0, "plots": False,
              "verbose": False, "exist_ok": True}
TRAIN_BATCHES = 2  # tiny_data_yaml: 8 train images / batch 4


class _Interrupt(Exception):
    """Raised by a callback to stop a training after its first epoch (checkpoint already saved)."""


class _MaskingProbe:
    """Callbacks recording, per event, what the masking hooks did; never touches the masking itself."""

    def __init__(self, interrupt_after_first_epoch: bool = False) -> None:
        self.interrupt = interrupt_after_first_epoch
        self.trainer: Any = None
        self.ema_hooks_seen: list[int] = []
        self.model_hooks_seen: list[int] = []
        self.calls_during_validation: list[int] = []
        self._calls_at_val_start = 0

    def register(self, model: Any) -> None:
        model.add_callback("on_train_start", self.on_train_start)
        model.add_callback("on_train_epoch_end", self.on_train_epoch_end)
        model.add_callback("on_val_start", self.on_val_start)
        model.add_callback("on_val_end", self.on_val_end)
        model.add_callback("on_fit_epoch_end", self.on_fit_epoch_end)

    def _calls(self) -> int:
        maskers = self.trainer.masking_handle.maskers.values()
        return sum(m.stats.batches + m.stats.inactive_calls for m in maskers)

    def on_train_start(self, trainer: Any) -> None:
        self.trainer = trainer

    def on_train_epoch_end(self, trainer: Any) -> None:
        self.ema_hooks_seen.append(count_masking_hooks(trainer.ema.ema))
        self.model_hooks_seen.append(count_masking_hooks(trainer.model))

    def on_val_start(self, validator: Any) -> None:
        if self.trainer is not None:
            self._calls_at_val_start = self._calls()

    def on_val_end(self, validator: Any) -> None:
        if self.trainer is not None:
            self.calls_during_validation.append(self._calls() - self._calls_at_val_start)

    def on_fit_epoch_end(self, trainer: Any) -> None:
        if self.interrupt and trainer.epoch == 0:
            raise _Interrupt


def _write_settings(directory: Path) -> Path:
    from exp3.train.trainers import write_masking_settings

    return write_masking_settings(directory / "spec.json", list(MASKING_SITES), {**ALWAYS, "mode": "channel+spatial"})


@pytest.fixture(scope="module")
def yolo_run(tiny_data_yaml: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """yolov8n, all sites, 2 epochs: interrupted after epoch 1, resumed in the trainer without the env var."""
    from ultralytics import YOLO

    from exp3.train.trainers import MASKING_SPEC_ENV, MaskedDetectionTrainer

    root = tmp_path_factory.mktemp("masked-yolo")
    first, resumed = _MaskingProbe(interrupt_after_first_epoch=True), _MaskingProbe()
    model = YOLO("yolov8n.yaml")
    first.register(model)
    os.environ[MASKING_SPEC_ENV] = str(_write_settings(root))
    try:
        with pytest.raises(_Interrupt):
            model.train(data=str(tiny_data_yaml), project=str(root), name="run", trainer=MaskedDetectionTrainer,
                        **{**TRAIN_ARGS, "epochs": 2})
    finally:
        del os.environ[MASKING_SPEC_ENV]
    last = root / "run" / "weights" / "last.pt"
    stats_after_interrupt = json.loads((root / "run" / "masking_stats.json").read_text())
    model = YOLO(last)
    resumed.register(model)
    model.train(resume=True, trainer=MaskedDetectionTrainer)
    return {"dir": root / "run", "probes": (first, resumed), "stats_after_interrupt": stats_after_interrupt}


@pytest.fixture(scope="module")
def rtdetr_run(tiny_data_yaml: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """rtdetr-l, all sites, 1 epoch."""
    from ultralytics import RTDETR

    from exp3.train.trainers import MASKING_SPEC_ENV, MaskedRTDETRTrainer

    root = tmp_path_factory.mktemp("masked-rtdetr")
    probe = _MaskingProbe()
    model = RTDETR("rtdetr-l.yaml")
    probe.register(model)
    os.environ[MASKING_SPEC_ENV] = str(_write_settings(root))
    try:
        model.train(data=str(tiny_data_yaml), project=str(root), name="run", trainer=MaskedRTDETRTrainer, **TRAIN_ARGS)
    finally:
        del os.environ[MASKING_SPEC_ENV]
    return {"dir": root / "run", "probes": (probe,)}


def test_yolov8m_default_spec_ramps_in_within_the_first_epoch(tiny_data_yaml: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Default MaskingConfig (linear ramp over 30 %): batch 0 runs at strength 0, batch 1 at full strength."""
    from ultralytics import YOLO

    from exp3.train.trainers import MASKING_SPEC_ENV, MaskedDetectionTrainer, write_masking_settings

    monkeypatch.setenv(MASKING_SPEC_ENV, str(write_masking_settings(tmp_path / "spec.json", "backbone_late", {})))
    YOLO("yolov8m.yaml").train(data=str(tiny_data_yaml), project=str(tmp_path), name="run",
                               trainer=MaskedDetectionTrainer, **TRAIN_ARGS)
    (row,) = json.loads((tmp_path / "run" / "masking_stats.json").read_text())["epochs"]
    stats = row["sites"]["backbone_late"]
    assert (stats["index"], stats["module"], stats["batches"], stats["strength"]) == (9, "SPPF", TRAIN_BATCHES, 1.0)
    assert stats["masked_batches"] == 1  # both seed-0 coins say "mask"; batch 0 is at strength 0
    assert stats["zeroed_share_when_masked"] == pytest.approx(MaskingConfig().p_channels, abs=0.01)


def _check_fires_in_training_only(run: dict[str, Any], epochs: int) -> None:
    stats = json.loads((run["dir"] / "masking_stats.json").read_text())
    assert [row["epoch"] for row in stats["epochs"]] == list(range(epochs))
    for row in stats["epochs"]:
        assert set(row["sites"]) == set(MASKING_SITES)
        for site_stats in row["sites"].values():
            assert site_stats["batches"] == TRAIN_BATCHES  # one call per training batch, none elsewhere
            assert site_stats["masked_batches"] == TRAIN_BATCHES
            assert site_stats["inactive_calls"] == 0  # the training model never ran in eval/no-grad
            assert 0.1 < site_stats["zeroed_share"] < 0.5
    for probe in run["probes"]:
        assert probe.model_hooks_seen and all(count == 4 for count in probe.model_hooks_seen)
        assert all(count == 0 for count in probe.ema_hooks_seen)  # the EMA never carried a hook
        assert probe.calls_during_validation and not any(probe.calls_during_validation)
        assert count_masking_hooks(probe.trainer.model) == 0  # detached at the end


def test_yolo_training_masks_only_training_batches_and_resume_keeps_masking(yolo_run: dict[str, Any]) -> None:
    assert [row["epoch"] for row in yolo_run["stats_after_interrupt"]["epochs"]] == [0]
    _check_fires_in_training_only(yolo_run, epochs=2)  # epoch 1 ran in the resumed trainer, still masked
    resumed = yolo_run["probes"][1]
    assert resumed.trainer.start_epoch == 1
    assert json.loads((yolo_run["dir"] / "masking_spec.json").read_text())["sites"] == list(MASKING_SITES)


def test_rtdetr_training_masks_only_training_batches(rtdetr_run: dict[str, Any]) -> None:
    _check_fires_in_training_only(rtdetr_run, epochs=1)



def test_an_ema_rebuilt_from_the_hooked_model_is_stripped_before_validation_and_the_save(
        tiny_data_yaml: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """NaN recovery rebuilds the EMA from the hooked training model, then trains the epoch again: simulated by
    rebuilding it at the epoch's start, the validation and the checkpoint still see an EMA without a hook."""
    from ultralytics import YOLO
    from ultralytics.utils.torch_utils import ModelEMA

    from exp3.train.trainers import MASKING_SPEC_ENV, MaskedDetectionTrainer

    seen: dict[str, list[int]] = {"rebuilt": [], "validated": [], "saved": []}
    trainers: list[Any] = []

    def rebuild(trainer: Any) -> None:
        trainers[:] = [trainer]
        trainer.ema = ModelEMA(trainer.model)
        seen["rebuilt"].append(count_masking_hooks(trainer.ema.ema))

    model = YOLO("yolov8n.yaml")
    model.add_callback("on_train_epoch_start", rebuild)
    model.add_callback("on_val_start", lambda validator: seen["validated"].append(
        count_masking_hooks(trainers[0].ema.ema)))
    model.add_callback("on_model_save", lambda trainer: seen["saved"].append(count_masking_hooks(trainer.ema.ema)))
    monkeypatch.setenv(MASKING_SPEC_ENV, str(_write_settings(tmp_path)))
    model.train(data=str(tiny_data_yaml), project=str(tmp_path), name="run", trainer=MaskedDetectionTrainer,
                **TRAIN_ARGS)
    assert seen["rebuilt"] == [4]  # the simulation really put the hooks on the EMA
    assert seen["validated"][:1] == [0] and seen["saved"] == [0]
    with zipfile.ZipFile(tmp_path / "run" / "weights" / "last.pt") as archive:
        pickled = b"".join(archive.read(name) for name in archive.namelist() if name.endswith(".pkl"))
    assert b"exp3.train.masking" not in pickled

_PLAIN_LOAD = """
import sys
sys.modules["exp3"] = None  # exp3 is pip-installed editable: block it explicitly
import numpy as np
from ultralytics import RTDETR, YOLO
for path in sys.argv[1:]:
    model = (RTDETR if "rtdetr" in path else YOLO)(path)
    model.predict(np.zeros((64, 64, 3), dtype=np.uint8), imgsz=64, device="cpu", verbose=False)
assert "exp3" not in {name.split(".")[0] for name, module in sys.modules.items() if module is not None}
print("loaded", len(sys.argv) - 1)
"""


def test_checkpoints_hold_no_hook_and_load_without_exp3(yolo_run: dict[str, Any], rtdetr_run: dict[str, Any]) -> None:
    checkpoints = [yolo_run["dir"] / "weights" / "best.pt", rtdetr_run["dir"] / "weights" / "best.pt"]
    for checkpoint in checkpoints:
        with zipfile.ZipFile(checkpoint) as archive:
            pickled = b"".join(archive.read(name) for name in archive.namelist() if name.endswith(".pkl"))
        assert b"exp3.train.masking" not in pickled and b"FeatureMasker" not in pickled
    assert "rtdetr" in str(checkpoints[1]) and "rtdetr" not in str(checkpoints[0])  # picks the model class below
    result = subprocess.run([sys.executable, "-c", _PLAIN_LOAD, *map(str, checkpoints)], capture_output=True, text=True,
                            cwd=checkpoints[0].parent, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "loaded 2" in result.stdout


def test_a_resume_under_other_masking_settings_is_refused_and_the_runs_own_copy_kept(
        yolo_run: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """EXP3_MASKING_SPEC with other settings than the resumed run's masking_spec.json was only warned about: the
    trainer overwrote that copy, the one record of what the earlier epochs ran with, and masking_stats.json put
    the new site over their rows."""
    from exp3.train.trainers import (
        MASKING_SPEC_ENV,
        MASKING_SPEC_FILENAME,
        MaskedDetectionTrainer,
        write_masking_settings,
    )

    saved = yolo_run["dir"] / MASKING_SPEC_FILENAME
    before = saved.read_text()
    monkeypatch.setenv(MASKING_SPEC_ENV, str(write_masking_settings(tmp_path / "other.json", ["neck"], ALWAYS)))
    with pytest.raises(ValueError, match="holds other masking settings than the resumed run's .*: resume with those"):
        MaskedDetectionTrainer(overrides={"resume": str(yolo_run["dir"] / "weights" / "last.pt")})
    assert saved.read_text() == before
    monkeypatch.setenv(MASKING_SPEC_ENV, str(saved))  # the same settings: taken
    assert MaskedDetectionTrainer(overrides={"resume": str(yolo_run["dir"] / "weights" / "last.pt")}).masking_settings


def test_trainer_without_settings_says_how_to_give_them(tiny_data_yaml: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from exp3.train.trainers import MASKING_SPEC_ENV, MaskedDetectionTrainer

    monkeypatch.delenv(MASKING_SPEC_ENV, raising=False)
    overrides = {"model": "yolov8n.yaml", "data": str(tiny_data_yaml), "project": str(tmp_path), "name": "run",
                 **TRAIN_ARGS}
    with pytest.raises(RuntimeError, match=f"write_masking_settings.*{MASKING_SPEC_ENV}"):
        MaskedDetectionTrainer(overrides=overrides)


def test_a_trainer_rebuilt_with_its_parents_callbacks_masks_once(tiny_data_yaml: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Ultralytics' DDP worker rebuilds the trainer from its class with the parent's callbacks (utils/dist.py,
    through cloudpickle): the masking callbacks were added a second time, so the hooks attached twice and the
    statistics read zero. exp3's config refuses DDP; the trainer classes, used directly, register them once."""
    import cloudpickle

    from exp3.train.trainers import MASKING_CALLBACKS, MASKING_SPEC_ENV, MaskedDetectionTrainer, write_masking_settings

    monkeypatch.setenv(MASKING_SPEC_ENV, str(write_masking_settings(tmp_path / "spec.json", "neck", MaskingConfig())))
    overrides = {"model": "yolov8n.yaml", "data": str(tiny_data_yaml), "project": str(tmp_path), "name": "run",
                 **TRAIN_ARGS}
    parent = MaskedDetectionTrainer(overrides=overrides)
    state = cloudpickle.loads(cloudpickle.dumps({"args": vars(parent.args), "callbacks": parent.callbacks}))
    child = MaskedDetectionTrainer(overrides=state["args"], _callbacks=state["callbacks"])
    for event, functions in MASKING_CALLBACKS.items():
        for function in functions:
            assert child.callbacks[event].count(function) == 1 == parent.callbacks[event].count(function), event
