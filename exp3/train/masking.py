"""Training-only internal masking: zero channels or DropBlock-style regions of one network site.

Three layers, after timm's `drop.py`: pure functions build and apply masks (`mask_features`); `FeatureMasker` /
`HeadInputMasker` are thin, picklable hook objects that gate themselves, follow the schedule and count what they
did; `attach_internal_masking` resolves the site on an Ultralytics detection model and registers the hook, and its
`MaskingHandle` sets the schedule progress, reseeds, reads per-site statistics and removes the hooks.
`python -m exp3.train.masking sites --model yolov8m.yaml` prints each site's layer, module and feature shape.
Every rule and the reasoning behind it: docs/masking.md.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from exp3.config import MaskingConfig
from exp3.fileio import stable_int
from exp3.sessions import MASKING_SITES

NECK_BLOCK_TYPES: tuple[str, ...] = (
    "C2f", "C3k2", "RepC3", "C3", "C3x", "C2fAttn", "C2fCIB", "C2fPSA", "A2C2f", "RepNCSPELAN4", "ELAN1"
)
"""Module types that count as the first neck fusion block (YOLOv8/v9/v10/11/12, RT-DETR)."""


# ---------------------------------------------------------------------------------------------
# Validation


def as_masking_config(spec: MaskingConfig | Mapping[str, Any]) -> MaskingConfig:
    """`spec` as a `MaskingConfig`; a bad field raises pydantic's `ValidationError` (a `ValueError`)."""
    return spec if isinstance(spec, MaskingConfig) else MaskingConfig.model_validate(dict(spec))


def check_site(site: str) -> str:
    """Return `site` if it is a known masking site, else raise `ValueError` listing them."""
    if site not in MASKING_SITES:
        raise ValueError(f"unknown masking site {site!r}: use one of {', '.join(MASKING_SITES)}")
    return site


def block_size(height: int, width: int, block_fraction: float) -> tuple[int, int]:
    """Block side in cells for an `height` x `width` map: `round(block_fraction * side)`, at least 1 (the same share
    of the image at every site and resolution: docs/masking.md section 2)."""
    return max(1, round(block_fraction * height)), max(1, round(block_fraction * width))


# ---------------------------------------------------------------------------------------------
# Pure mask functions


@torch.no_grad()
def channel_keep_mask(batch: int, channels: int, p: float, generator: torch.Generator,
                      device: torch.device) -> torch.Tensor:
    """Keep mask (N, C, 1, 1) float32 with exactly `round(p * C)` zeroed channels per sample (an exact count, not
    Bernoulli per channel, whose noise on a 48-channel map would be +-5 points)."""
    dropped = round(p * channels)
    if dropped == 0:
        return torch.ones((batch, channels, 1, 1), device=device)
    scores = torch.rand((batch, channels), generator=generator, device=device)
    threshold = scores.kthvalue(dropped, dim=1, keepdim=True).values
    return (scores > threshold).float().view(batch, channels, 1, 1)


@torch.no_grad()
def spatial_keep_mask(batch: int, height: int, width: int, p: float, block: tuple[int, int],
                      generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """DropBlock keep mask (N, 1, H, W) float32, shared by all channels of a sample, in which every cell is dropped
    with probability exactly `p`, overlaps included (seeds on the map padded by `block - 1` cells at rate
    `gamma`: docs/masking.md section 2)."""
    block_h, block_w = block
    if p == 0.0:
        return torch.ones((batch, 1, height, width), device=device)
    seed_rate = 1.0 - (1.0 - p) ** (1.0 / (block_h * block_w))
    noise = torch.rand((batch, 1, height + block_h - 1, width + block_w - 1), generator=generator, device=device)
    return 1.0 - F.max_pool2d((noise < seed_rate).float(), kernel_size=(block_h, block_w), stride=1)


def mask_features(x: torch.Tensor, mode: str, p_channels: float, p_spatial: float, block_fraction: float,
                  rescale: str, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | float]:
    """Mask a feature map; returns `(masked (N, C, H, W), zeroed share)`.

    `x` is (N, C, H, W) and is never modified (Ultralytics caches layer outputs): the result is a new tensor, or `x`
    itself when the rates round to nothing. `rescale`: docs/masking.md section 3. The zeroed share (a float, or a
    () float32 tensor on x's device when spatial masking is involved) is the mean over samples of the fraction of
    (C, H, W) cells set to zero.
    """
    if x.ndim != 4:
        raise ValueError(f"masking needs a (N, C, H, W) feature map, got shape {tuple(x.shape)}: pick another site")
    batch, channels, height, width = x.shape
    with torch.no_grad():
        mask: torch.Tensor | None = None
        kept_channels, scale = 1.0, 1.0
        dropped_channels = round(p_channels * channels) if "channel" in mode else 0
        if dropped_channels:
            mask = channel_keep_mask(batch, channels, p_channels, generator, x.device)
            kept_channels = 1.0 - dropped_channels / channels  # exact on every sample
            scale /= kept_channels
        kept: torch.Tensor | float = kept_channels
        if "spatial" in mode and p_spatial > 0.0:
            block = block_size(height, width, block_fraction)
            cells = spatial_keep_mask(batch, height, width, p_spatial, block, generator, x.device)
            kept = kept_channels * cells.mean(dim=(1, 2, 3)).mean()  # channel and cell masks are independent
            mask = cells if mask is None else mask * cells
            scale /= 1.0 - p_spatial
        if mask is None:
            return x, 0.0
        if rescale == "dropout":
            mask.mul_(scale)
    return x * mask.to(x.dtype), 1.0 - kept


# ---------------------------------------------------------------------------------------------
# Hook objects


@dataclass
class SiteStats:
    """Counters of one site since the last reset (training forward passes only)."""

    batches: int = 0
    masked_batches: int = 0
    zeroed_sum: torch.Tensor | float = 0.0
    inactive_calls: int = 0

    def as_dict(self) -> dict[str, float | int]:
        """JSON-able summary: shares in [0, 1]; `zeroed_share` averages over all batches."""
        zeroed = float(self.zeroed_sum)
        return {
            "batches": self.batches,
            "masked_batches": self.masked_batches,
            "masked_share": self.masked_batches / self.batches if self.batches else 0.0,
            "zeroed_share": zeroed / self.batches if self.batches else 0.0,
            "zeroed_share_when_masked": zeroed / self.masked_batches if self.masked_batches else 0.0,
            "inactive_calls": self.inactive_calls,
        }


class FeatureMasker:
    """Forward hook that masks a layer's output (N, C, H, W) during training only (docs/masking.md section 6).

    Picklable; a no-op returning `None` when the module is in eval mode, gradients are disabled, the batch's `p_apply`
    coin says no, or the scheduled drop rates are zero. Its own generators (one per device) and coin draw the masks."""

    def __init__(self, site: str, spec: MaskingConfig) -> None:
        self.site = check_site(site)
        self.spec = as_masking_config(spec)
        self.progress = 0.0
        self.stats = SiteStats()
        self.reseed(0)

    def reseed(self, epoch: int) -> None:
        """Restart this site's random streams (the coin and the masks) at a seed derived from (spec.seed, site, epoch);
        one process trains a session (the config refuses DDP: docs/masking.md section 7)."""
        self._stream_seed = stable_int(f"{self.spec.seed}:{self.site}:{epoch}")
        self._coin = random.Random(self._stream_seed)
        self._generators: dict[str, torch.Generator] = {}

    def set_progress(self, progress: float) -> None:
        """Training progress in [0, 1] (fractional epochs / epochs); drives the linear ramp."""
        self.progress = min(max(float(progress), 0.0), 1.0)

    def strength(self) -> float:
        """Schedule factor in [0, 1] applied to `p_channels` and `p_spatial` (not to `p_apply`)."""
        if self.spec.schedule == "constant" or self.spec.ramp_fraction == 0.0:
            return 1.0
        return min(1.0, self.progress / self.spec.ramp_fraction)

    def _generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(self._stream_seed)
        return self._generators[key]

    def _draw(self, module: nn.Module) -> tuple[float, float] | None:
        """Count an inactive call (eval mode, no gradients) or a training batch; return its (p_channels, p_spatial),
        None if inactive or unmasked (the caller counts it masked if a mask was applied: rates may round to none)."""
        if not (module.training and torch.is_grad_enabled()):
            self.stats.inactive_calls += 1
            return None
        self.stats.batches += 1
        strength = self.strength()
        p_channels = self.spec.p_channels * strength if "channel" in self.spec.mode else 0.0
        p_spatial = self.spec.p_spatial * strength if "spatial" in self.spec.mode else 0.0
        if self._coin.random() >= self.spec.p_apply or (p_channels == 0.0 and p_spatial == 0.0):
            return None
        return p_channels, p_spatial

    def _mask(self, x: torch.Tensor, rates: tuple[float, float], share_weight: float) -> torch.Tensor:
        spec = self.spec
        masked, zeroed = mask_features(x, spec.mode, *rates, spec.block_fraction, spec.rescale,
                                       self._generator(x.device))
        self.stats.zeroed_sum = self.stats.zeroed_sum + zeroed * share_weight
        return masked

    def __call__(self, module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor | None:
        if (rates := self._draw(module)) is None:
            return None
        masked = self._mask(output, rates, 1.0)
        self.stats.masked_batches += masked is not output  # `mask_features` returns its input when nothing is masked
        return masked


class HeadInputMasker(FeatureMasker):
    """Forward pre-hook that masks every feature map the head receives (its `.f` inputs).

    Works for `Detect(x: list)` and `RTDETRDecoder(x: list, batch)`: returns
    `(new_list, *args[1:])`, so targets for RT-DETR denoising pass through untouched. One
    `p_apply` coin per forward covers all levels; the zeroed share is of all their activations (each level
    weighted by its size; the unweighted mean of the levels read 0.151 where 0.153 were zeroed).
    """

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:  # type: ignore[override]
        if (rates := self._draw(module)) is None:
            return None
        features = list(args[0])
        total = sum(level.numel() for level in features)
        masked = [self._mask(level, rates, level.numel() / total) for level in features]
        self.stats.masked_batches += any(new is not level for new, level in zip(masked, features))
        return (masked, *args[1:])


# ---------------------------------------------------------------------------------------------
# Sites


def detection_model(model: Any) -> nn.Module:
    """The Ultralytics `DetectionModel` inside `model` (a YOLO/RTDETR wrapper, DDP or compiled module)."""
    candidate = model
    for _ in range(4):
        candidate = getattr(candidate, "module", candidate)  # DistributedDataParallel
        candidate = getattr(candidate, "_orig_mod", candidate)  # torch.compile
        layers = getattr(candidate, "model", None)
        if isinstance(getattr(candidate, "yaml", None), dict) and isinstance(layers, nn.Sequential):
            return candidate
        if layers is None:
            break
        candidate = layers
    raise TypeError(f"{type(model).__name__} is not an Ultralytics detection model: "
                    "pass YOLO(...).model or the trainer's model")


def resolve_masking_sites(model: Any) -> dict[str, int]:
    """Layer index of each site, found from the graph, not hard-coded (the rules and what they give per model:
    docs/masking.md section 4). Raises `ValueError` listing the model's layers when a rule finds nothing."""
    net = detection_model(model)
    layers = net.model
    backbone_length = len(net.yaml.get("backbone", []))

    def fail(site: str, reason: str) -> ValueError:
        listing = ", ".join(f"{index}:{type(layer).__name__}" for index, layer in enumerate(layers))
        return ValueError(f"cannot resolve masking site {site!r} in {type(net).__name__} ({reason}); layers: {listing}")

    if not 0 < backbone_length < len(layers):
        raise fail("backbone_late", f"yaml backbone has {backbone_length} layers")
    referenced = {index + source if source < 0 else source for index, layer in enumerate(layers)
                  for source in (layer.f if isinstance(layer.f, (list, tuple)) else [layer.f]) if source != -1}
    early = min((index for index in referenced if index < backbone_length - 1), default=None)
    if early is None:
        raise fail("backbone_early", "no later layer reads a backbone layer before the last one")
    names = [type(layer).__name__ for layer in layers]
    concat = next((index for index in range(backbone_length, len(layers)) if names[index] == "Concat"), None)
    if concat is None:
        raise fail("neck", "no Concat after the backbone")
    fusion = next((index for index in range(concat + 1, len(layers)) if names[index] in NECK_BLOCK_TYPES), None)
    if fusion is None:
        raise fail("neck", f"no {'/'.join(NECK_BLOCK_TYPES)} block after Concat {concat}")
    return {"backbone_early": early, "backbone_late": backbone_length - 1, "neck": fusion, "head": len(layers) - 1}


# ---------------------------------------------------------------------------------------------
# Attaching


@dataclass(eq=False)
class MaskingHandle:
    """What `attach_internal_masking` returns: schedule control, statistics, removal."""

    maskers: dict[str, FeatureMasker]
    indices: dict[str, int]
    module_types: dict[str, str]
    _hooks: list[RemovableHandle]

    def set_progress(self, progress: float) -> None:
        """Training progress in [0, 1] for every site's schedule."""
        for masker in self.maskers.values():
            masker.set_progress(progress)

    def reseed(self, epoch: int) -> None:
        """Restart every site's random streams for `epoch` (same epoch, same masks)."""
        for masker in self.maskers.values():
            masker.reseed(epoch)

    def read_stats(self, reset: bool = True) -> dict[str, dict[str, float | int | str]]:
        """Per site: index, module, strength and `SiteStats.as_dict` (the fields: docs/masking.md section 7)."""
        report: dict[str, dict[str, float | int | str]] = {
            site: {"index": self.indices[site], "module": self.module_types[site], "strength": masker.strength(),
                   **masker.stats.as_dict()}
            for site, masker in self.maskers.items()
        }
        if reset:
            for masker in self.maskers.values():
                masker.stats = SiteStats()
        return report

    def remove(self) -> None:
        """Unregister every hook (idempotent)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()


def _register(layer: nn.Module, site: str, hook: Any) -> RemovableHandle:
    """The head is masked on its inputs (a forward pre-hook), every other site on its output (a forward hook)."""
    return layer.register_forward_pre_hook(hook) if site == "head" else layer.register_forward_hook(hook)


def attach_internal_masking(model: Any, site: str | Sequence[str],
                            spec: MaskingConfig | Mapping[str, Any]) -> MaskingHandle:
    """Register training-only masking at `site` (or several sites) of an Ultralytics detection model.

    `model` is a `DetectionModel`/`RTDETRDetectionModel` (or a wrapper of one); attach to the
    model that is trained, after any EMA/deepcopy has been made. Progress starts at 0: with
    `schedule="linear_ramp"` nothing is masked until `handle.set_progress(...)` is called.
    """
    sites = [check_site(name) for name in ([site] if isinstance(site, str) else site)]
    config = as_masking_config(spec)
    net = detection_model(model)
    indices = resolve_masking_sites(net)
    chosen = {name: indices[name] for name in sites}
    maskers = {name: (HeadInputMasker if name == "head" else FeatureMasker)(name, config) for name in chosen}
    hooks = [_register(net.model[index], name, maskers[name]) for name, index in chosen.items()]
    return MaskingHandle(maskers, chosen, {name: type(net.model[i]).__name__ for name, i in chosen.items()}, hooks)


def strip_masking_hooks(module: nn.Module) -> int:
    """Remove every masking hook found anywhere in `module` (e.g. an EMA deep-copied with hooks); returns the count."""
    removed = 0
    for submodule in module.modules():
        for hooks, extras in (
            (submodule._forward_hooks, (submodule._forward_hooks_with_kwargs, submodule._forward_hooks_always_called)),
            (submodule._forward_pre_hooks, (submodule._forward_pre_hooks_with_kwargs,)),
        ):
            for key in [key for key, hook in hooks.items() if isinstance(hook, FeatureMasker)]:
                del hooks[key]
                for extra in extras:
                    extra.pop(key, None)
                removed += 1
    return removed


# ---------------------------------------------------------------------------------------------
# Inspection CLI


def build_detection_model(architecture: str, nc: int | None = None) -> nn.Module:
    """An untrained `DetectionModel` (or `RTDETRDetectionModel` if the name holds "rtdetr") from a yaml."""
    # lazy: only the inspection CLI builds Ultralytics models; the hooks need torch alone
    from ultralytics.nn.tasks import DetectionModel, RTDETRDetectionModel

    model_class = RTDETRDetectionModel if "rtdetr" in architecture.lower() else DetectionModel
    return model_class(architecture, nc=nc, verbose=False)


class _ShapeRecorder:
    """Hook remembering tensor shapes: a forward hook records the output, a pre-hook the (list) input."""

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, module: nn.Module, args: tuple[Any, ...], output: Any = None) -> None:
        seen = output if output is not None else args[0]
        tensors = seen if isinstance(seen, (list, tuple)) else [seen]
        self.shapes = [tuple(t.shape) for t in tensors if isinstance(t, torch.Tensor)]


def site_feature_shapes(model: Any, imgsz: int = 640) -> dict[str, dict[str, Any]]:
    """Each site's index, module type and masked feature shape(s) from one dummy (1, 3, imgsz, imgsz) forward."""
    net = detection_model(model)
    indices = resolve_masking_sites(net)
    recorders = {site: _ShapeRecorder() for site in indices}
    hooks = [_register(net.model[index], site, recorders[site]) for site, index in indices.items()]
    was_training = net.training
    try:
        net.eval()
        with torch.no_grad():
            net(torch.zeros(1, 3, imgsz, imgsz, device=next(net.parameters()).device))
    finally:
        net.train(was_training)
        for hook in hooks:
            hook.remove()
    return {
        site: {"index": index, "module": type(net.model[index]).__name__, "shapes": recorders[site].shapes}
        for site, index in indices.items()
    }


def main(argv: list[str] | None = None) -> int:
    """`python -m exp3.train.masking sites --model yolov8m.yaml [--imgsz 640]`."""
    parser = argparse.ArgumentParser(prog="python -m exp3.train.masking", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sites = sub.add_parser("sites", help="print each masking site's layer index, module type and feature shape")
    sites.add_argument("--model", required=True, help="architecture yaml, e.g. yolov8m.yaml or rtdetr-l.yaml")
    sites.add_argument("--imgsz", type=int, default=640, help="square input side in pixels for the dummy forward")
    args = parser.parse_args(argv)
    fix = "pass e.g. yolov8m.yaml or rtdetr-l.yaml (an Ultralytics architecture name, or a path to one)"
    try:
        if not args.model.lower().endswith((".yaml", ".yml")):
            raise ValueError(f"--model {args.model!r} is not an architecture yaml: {fix}")
        try:
            model = build_detection_model(args.model)
        except FileNotFoundError:
            raise ValueError(f"--model {args.model!r}: no such file, nor an Ultralytics architecture: {fix}") from None
        shapes_by_site = site_feature_shapes(model, args.imgsz)
    except ValueError as error:  # also resolve_masking_sites: a model whose sites cannot be found
        print(f"error: {error}".splitlines()[0], file=sys.stderr)
        return 2
    print(f"{args.model} at imgsz {args.imgsz}")
    print(f"{'site':<15}{'index':>6}  {'module':<15}feature shape(s) (N, C, H, W)")
    for site, info in shapes_by_site.items():
        print(f"{site:<15}{info['index']:>6}  {info['module']:<15}{', '.join(map(str, info['shapes']))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
