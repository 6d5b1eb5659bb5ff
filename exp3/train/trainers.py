"""Ultralytics trainers with atomic checkpoint writes (`Safe*Trainer`) and, for S3-S6, training-only internal masking
(`Masked*Trainer`), whose settings are the JSON file named by `EXP3_MASKING_SPEC`, copied into
`<save_dir>/masking_spec.json` for a resume. Usage, guarantees, and why the settings travel that way (not through
`train(**kwargs)`, which Ultralytics validates; through DDP's worker processes): docs/masking.md sections 6-7.

Every exp3 training hook is an Ultralytics event callback, one `{event: [fn]}` dict per concern (Ultralytics' own
form, `default_callbacks`), each registered by `add_callbacks`: `MASKING_CALLBACKS`, by the masked trainers'
`__init__` (so a resume or a DDP worker, which rebuild the trainer from its class, has them too), and
`TrainInfo.callbacks()` (train_info.json, exp3/train/training.py), on the model by `_train_with`. The integrations'
callbacks are Ultralytics' own (exp3/train/integrations.py). The one other exp3 callback is a validation one,
exp3/evaluate/evaluation.py's on_val_end.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from ultralytics.engine import trainer as engine
from ultralytics.models.rtdetr.train import RTDETRTrainer
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.utils import DEFAULT_CFG, LOGGER
from ultralytics.utils.torch_utils import unwrap_model

from exp3.config import MaskingConfig
from exp3.fileio import atomic_write_json
from exp3.train.masking import (
    MaskingHandle,
    as_masking_config,
    attach_internal_masking,
    check_site,
    strip_masking_hooks,
)

MASKING_SPEC_ENV = "EXP3_MASKING_SPEC"
"""Environment variable holding the path of the masking settings JSON file."""

MASKING_SPEC_FILENAME = "masking_spec.json"
"""The settings copy a masked run keeps in its `save_dir` (read back on resume)."""

MASKING_STATS_FILENAME = "masking_stats.json"
"""Per-epoch, per-site masking statistics a masked run writes into its `save_dir`."""


@dataclass(frozen=True)
class MaskingSettings:
    """Where to mask (one or more sites) and how (`MaskingConfig`)."""

    sites: tuple[str, ...]
    spec: MaskingConfig

    def to_json(self) -> dict[str, Any]:
        """`{"sites": [...], "spec": {...}}`, the on-disk form."""
        return {"sites": list(self.sites), "spec": self.spec.model_dump(mode="json")}


def masking_settings(site: str | list[str] | tuple[str, ...], spec: MaskingConfig | dict[str, Any]) -> MaskingSettings:
    """Validated settings; a bad site raises a one-line `ValueError`, a bad spec field pydantic's `ValidationError`."""
    sites = (site,) if isinstance(site, str) else tuple(site)
    if not sites:
        raise ValueError("no masking site given: pass one of backbone_early, backbone_late, neck, head")
    return MaskingSettings(tuple(check_site(name) for name in sites), as_masking_config(spec))


def write_masking_settings(
    path: str | os.PathLike[str], site: str | list[str] | tuple[str, ...], spec: MaskingConfig | dict[str, Any]
) -> Path:
    """Validate and write the settings JSON a masked trainer reads via `EXP3_MASKING_SPEC`; returns the path."""
    return atomic_write_json(path, masking_settings(site, spec).to_json())


def read_masking_settings(path: str | os.PathLike[str]) -> MaskingSettings:
    """Read settings written by `write_masking_settings`."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(
            f"masking settings {str(file)!r} do not exist: write them with exp3.train.trainers.write_masking_settings"
        )
    payload = json.loads(file.read_text(encoding="utf-8"))
    if not isinstance(payload, dict) or set(payload) != {"sites", "spec"}:
        raise ValueError(f"masking settings {str(file)!r} must hold exactly 'sites' and 'spec': rewrite them")
    return masking_settings(payload["sites"], payload["spec"])


Callbacks = dict[str, list[Callable[[Any], None]]]
"""`{event: [fn]}`, Ultralytics' form (`default_callbacks`); each fn is called with the trainer."""


def add_callbacks(target: Any, callbacks: Callbacks) -> None:
    """Register one concern's callbacks on `target` (an Ultralytics model or trainer), after those it has; one it
    has already is not added again (Ultralytics' DDP worker builds its trainer with the parent's callbacks, and
    the masking hooks attached twice)."""
    for event, functions in callbacks.items():
        for function in functions:
            if function not in target.callbacks.get(event, []):
                target.add_callback(event, function)


class _MaskingTrainerMixin:
    """Adds training-only internal masking to an Ultralytics detection trainer: its settings (`__init__`: the env
    var, else the resumed run's saved copy), its state and `MASKING_CALLBACKS`.

    Mixed in before `DetectionTrainer`/`RTDETRTrainer`, whose attributes (`save_dir`, `resume`,
    `model`, `ema`, `epoch`, `epochs`, `train_loader`, `start_epoch`) it uses.
    """

    masking_settings: MaskingSettings
    masking_handle: MaskingHandle | None
    masking_history: dict[int, dict[str, Any]]

    def __init__(self, cfg: Any = DEFAULT_CFG, overrides: dict[str, Any] | None = None, _callbacks: dict | None = None):
        super().__init__(cfg, overrides, _callbacks)
        saved = Path(self.save_dir) / MASKING_SPEC_FILENAME
        if env_path := os.environ.get(MASKING_SPEC_ENV):
            settings = read_masking_settings(env_path)
            if self.resume and saved.is_file() and read_masking_settings(saved) != settings:  # the earlier epochs'
                raise ValueError(f"{MASKING_SPEC_ENV} {env_path} holds other masking settings than the resumed run's "
                                 f"{saved}: resume with those (or unset {MASKING_SPEC_ENV}), or train again from "
                                 "scratch (its masking_stats.json would put the new settings over the earlier epochs)")
        elif self.resume and saved.is_file():
            settings = read_masking_settings(saved)
        else:
            raise RuntimeError(
                f"{type(self).__name__} has no masking settings: write them with "
                f"exp3.train.trainers.write_masking_settings(path, site, spec) and set {MASKING_SPEC_ENV}=path"
            )
        atomic_write_json(saved, settings.to_json())
        self.masking_settings = settings
        self.masking_handle = None
        self.masking_history = {}
        self._masking_batch = 0
        add_callbacks(self, MASKING_CALLBACKS)

    def masking_attach(self) -> None:
        """Attach the hooks to the training model at the end of `_setup_train`, after its EMA deepcopy and the resume,
        so the EMA never carries a hook."""
        self.masking_handle = attach_internal_masking(
            unwrap_model(self.model), self.masking_settings.sites, self.masking_settings.spec
        )
        stats_file = Path(self.save_dir) / MASKING_STATS_FILENAME
        if self.resume and stats_file.is_file():
            earlier = json.loads(stats_file.read_text(encoding="utf-8")).get("epochs", [])
            self.masking_history = {row["epoch"]: row for row in earlier if row["epoch"] < self.start_epoch}
        LOGGER.info(
            f"Internal masking at {', '.join(f'{s}={i}' for s, i in self.masking_handle.indices.items())}: "
            f"{self.masking_settings.spec.model_dump(mode='json')}"
        )

    def masking_detach(self) -> None:
        """Remove the hooks once the training is over, however it ended (`train()`'s finally)."""
        if self.masking_handle is not None:
            self.masking_handle.remove()

    def masking_epoch_start(self) -> None:
        """Reseed the site streams for this epoch and drop counts from an interrupted attempt."""
        self._masking_batch = 0
        if self.masking_handle is not None:
            self.masking_handle.reseed(self.epoch)
            self.masking_handle.read_stats(reset=True)

    def masking_batch_start(self) -> None:
        """Set schedule progress to fractional epochs / epochs for the batch about to run."""
        if self.masking_handle is None:
            return
        batches = max(len(self.train_loader), 1)
        self.masking_handle.set_progress((self.epoch + self._masking_batch / batches) / self.epochs)
        self._masking_batch += 1

    def masking_epoch_end(self) -> None:
        """Record this epoch's per-site statistics and write `masking_stats.json`."""
        if self.masking_handle is None:
            return
        self.masking_history[self.epoch] = {"epoch": self.epoch, "sites": self.masking_handle.read_stats(reset=True)}
        atomic_write_json(
            Path(self.save_dir) / MASKING_STATS_FILENAME,
            {
                **self.masking_settings.to_json(),
                "epochs": [self.masking_history[epoch] for epoch in sorted(self.masking_history)],
            },
        )

    def masking_strip_ema(self) -> None:
        """Remove any masking hook from the EMA before `validate` and `save_model` use it. A safeguard: NaN recovery
        rebuilds the EMA from the hooked training model, then repeats the epoch, so this comes again before either."""
        if self.ema is not None:
            strip_masking_hooks(self.ema.ema)


MASKING_CALLBACKS: Callbacks = {
    "on_pretrain_routine_end": [_MaskingTrainerMixin.masking_attach],
    "on_train_epoch_start": [_MaskingTrainerMixin.masking_epoch_start],
    "on_train_batch_start": [_MaskingTrainerMixin.masking_batch_start],
    "on_train_epoch_end": [_MaskingTrainerMixin.masking_epoch_end, _MaskingTrainerMixin.masking_strip_ema],
    "teardown": [_MaskingTrainerMixin.masking_detach],
}
"""Masking's hooks, in event order; every fn is a `_MaskingTrainerMixin` method."""


def _temporary(path: Path) -> Path:
    """The sibling a checkpoint is written to before it replaces `path`."""
    return path.with_name(f".{path.name}.tmp")


def _promote(temporary: Path, final: Path) -> None:
    """Make `temporary` durable, then put it in `final`'s place in one step: a kill leaves the old file or the new."""
    with open(temporary, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(temporary, final)


def copy_checkpoint(source: Path, target: Path) -> None:
    """Copy `source` over `target` atomically."""
    shutil.copyfile(source, _temporary(target))
    _promote(_temporary(target), target)


def _load_or_none(path: Path) -> dict[str, Any] | None:
    """The checkpoint dict at `path`; None when it is missing or unreadable."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:  # noqa: BLE001 - missing, truncated, not a checkpoint: all unusable here
        return None
    return checkpoint if isinstance(checkpoint, dict) else None


def _own_fitness(checkpoint: dict[str, Any] | None) -> float | None:
    """The val fitness of the epoch a checkpoint holds (None if it has none)."""
    fitness = ((checkpoint or {}).get("train_metrics") or {}).get("fitness")
    return None if fitness is None else float(fitness)


def holds_best(checkpoint: dict[str, Any] | None) -> bool:
    """Whether an unstripped checkpoint is its run's best epoch: its fitness is the best fitness, so Ultralytics
    wrote the very same bytes to best.pt (ties go to the later epoch, as in `save_model`). A stripped (final)
    checkpoint has no best fitness left: False."""
    fitness = _own_fitness(checkpoint)
    return fitness is not None and (checkpoint or {}).get("best_fitness") == fitness


def _rank(checkpoint: dict[str, Any] | None) -> tuple[float, int]:
    """(fitness, epoch): the order in which Ultralytics prefers checkpoints for best.pt (ties: the later epoch)."""
    fitness = _own_fitness(checkpoint)
    return (float("-inf"), -1) if fitness is None else (fitness, int((checkpoint or {}).get("epoch", -1)))


@contextmanager
def _atomic_strips() -> Iterator[None]:
    """While it lasts, Ultralytics' `strip_optimizer` (final_eval's in-place rewrite of last.pt and best.pt) writes
    a temporary sibling and replaces the file atomically."""
    strip = engine.strip_optimizer

    def atomic_strip(f: str | Path = "best.pt", s: str = "", updates: dict[str, Any] | None = None) -> dict[str, Any]:
        target = Path(s or f)
        _temporary(target).unlink(missing_ok=True)  # a killed strip's torso is never promoted
        result = strip(f, str(_temporary(target)), updates)
        if _temporary(target).exists():  # Ultralytics writes nothing for a file it cannot read
            _promote(_temporary(target), target)
        return result

    engine.strip_optimizer = atomic_strip
    try:
        yield
    finally:
        engine.strip_optimizer = strip


class _AtomicCheckpointMixin:
    """Writes `last.pt` / `best.pt` atomically: a crash mid-save leaves the previous file intact.

    Ultralytics writes checkpoints in place (`Path.write_bytes`; `strip_optimizer` at the end), so a
    `kill -9` during a save leaves a truncated file. Here `save_model` writes to temporary siblings,
    fsyncs them and `os.replace`s them over the real names, best.pt first; only temp files written
    by this very save are promoted (a leftover from a killed save is removed first). `final_eval`'s
    strips do the same (`_atomic_strips`). These are method overrides, not callbacks: `save_model`'s one event comes
    after the write, `final_eval`'s strips run before its only event, and `resume_training` needs the checkpoint
    dict, which no event is given.

    Killed between a save's two renames, best.pt may hold a newer epoch than last.pt: on resume,
    `resume_training` makes the run's best fitness that of best.pt, so only a better epoch replaces
    it (and when last.pt holds a better epoch than best.pt, the state exp3's older last-first order
    left, best.pt becomes a copy of it). Nothing else changes.
    """

    last: Path
    best: Path
    best_fitness: Any
    resume: Any
    stopper: Any

    def save_model(self) -> Any:
        final = {"best": self.best, "last": self.last}  # best first: a kill between leaves best.pt ahead, never behind
        temporary = {name: _temporary(path) for name, path in final.items()}
        for leftover in temporary.values():
            # A temp file that exists before this save is the torso of a killed save: never promote it
            # (on a non-improving epoch it would otherwise replace a good best.pt).
            leftover.unlink(missing_ok=True)
        self.last, self.best = temporary["last"], temporary["best"]
        try:
            result = super().save_model()  # type: ignore[misc]
        finally:
            self.last, self.best = final["last"], final["best"]
        for name, tmp in temporary.items():
            if tmp.exists():
                _promote(tmp, final[name])
        return result

    def final_eval(self) -> Any:
        with _atomic_strips():
            return super().final_eval()  # type: ignore[misc]

    def resume_training(self, ckpt: dict[str, Any] | None) -> None:
        """Resume, then bring best.pt and the best fitness restored from last.pt (`ckpt`) back in line after a kill
        between the two renames of a save (see the class docstring)."""
        super().resume_training(ckpt)  # type: ignore[misc]
        if ckpt is None or not self.resume:
            return
        best = _load_or_none(self.best)
        if holds_best(ckpt) and _rank(ckpt) > _rank(best):
            copy_checkpoint(self.last, self.best)
            LOGGER.warning(f"{self.best} was behind {self.last} (epoch {ckpt.get('epoch')}, fitness "
                           f"{_own_fitness(ckpt)}): replaced by a copy of it")
            return
        fitness = _own_fitness(best)
        if fitness is not None and (self.best_fitness is None or fitness > self.best_fitness):
            LOGGER.warning(f"{self.best} (epoch {(best or {}).get('epoch')}) is ahead of {self.last}: best fitness "
                           f"{self.best_fitness} -> {fitness}, so only a better epoch replaces it")
            self.best_fitness = fitness
            self.stopper.__dict__.update((best or {}).get("stopper") or {})


class SafeDetectionTrainer(_AtomicCheckpointMixin, DetectionTrainer):
    """Ultralytics' `DetectionTrainer`, unchanged except for atomic checkpoint writes."""


class SafeRTDETRTrainer(_AtomicCheckpointMixin, RTDETRTrainer):
    """Ultralytics' `RTDETRTrainer`, unchanged except for atomic checkpoint writes."""


class MaskedDetectionTrainer(_MaskingTrainerMixin, _AtomicCheckpointMixin, DetectionTrainer):
    """YOLO `DetectionTrainer` with training-only internal masking read from `EXP3_MASKING_SPEC`."""


class MaskedRTDETRTrainer(_MaskingTrainerMixin, _AtomicCheckpointMixin, RTDETRTrainer):
    """`RTDETRTrainer` with training-only internal masking read from `EXP3_MASKING_SPEC`."""
