"""Training-step cost of internal masking: the same model, batch and imgsz with and without the hooks.

One step = forward in training mode + Ultralytics detection loss + backward + AdamW step on a
fixed synthetic batch (random image, 3 random boxes per image). After warm-up, plain and masked
steps are interleaved in alternating order (ABBA...) on ONE model, so drift and noise from a
shared machine hit both arms alike; the per-pair ratio masked/plain is reported as its median.
Masking is worst case: all sites given, `p_apply=1` (every step masked), constant schedule.

    python benchmarks/bench_masking.py --model yolov8m.yaml --imgsz 128 --batch 2 --steps 30
    python benchmarks/bench_masking.py --model rtdetr-l.yaml --device cuda --imgsz 640 --batch 16 --steps 50

Prints one JSON object. Target: median ratio <= 1.03.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any

TARGET_RATIO = 1.03
"""Median masked/plain step-time ratio the masking must stay under."""


def _offline_environment() -> None:
    """Ultralytics must not reach the network or write settings outside a temp dir."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="bench-masking-yolo-"))


def synthetic_batch(batch: int, imgsz: int, nc: int, device: Any, boxes_per_image: int = 3) -> dict[str, Any]:
    """A detection batch: img (B, 3, S, S) in [0, 1], cls (M, 1), bboxes (M, 4) normalised xywh, batch_idx (M,)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    count = batch * boxes_per_image
    centres = torch.rand(count, 2, generator=generator) * 0.6 + 0.2
    sizes = torch.rand(count, 2, generator=generator) * 0.3 + 0.1
    return {
        "img": torch.rand(batch, 3, imgsz, imgsz, generator=generator).to(device),
        "cls": torch.randint(0, nc, (count, 1), generator=generator).float().to(device),
        "bboxes": torch.cat([centres, sizes], dim=1).to(device),
        "batch_idx": torch.arange(batch).repeat_interleave(boxes_per_image).float().to(device),
    }


def run_benchmark(
    architecture: str, imgsz: int, batch: int, steps: int, warmup: int, device_name: str, sites: list[str], mode: str
) -> dict[str, Any]:
    """Median plain and masked step times (ms) and the median per-pair ratio masked/plain."""
    import torch
    from ultralytics.cfg import get_cfg
    from ultralytics.utils import DEFAULT_CFG

    from exp3.config import MaskingConfig
    from exp3.train.masking import attach_internal_masking, build_detection_model

    device = torch.device(device_name)
    nc = 10
    model = build_detection_model(architecture, nc=nc).to(device).train()
    model.nc, model.args = nc, get_cfg(DEFAULT_CFG)  # what the trainer sets before the first loss
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    data = synthetic_batch(batch, imgsz, nc, device)
    spec = MaskingConfig(mode=mode, p_apply=1.0, schedule="constant")

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def step(masked: bool) -> tuple[float, float]:
        """(wall ms, process CPU ms) of one training step."""
        handle = attach_internal_masking(model, sites, spec) if masked else None
        sync()
        wall, cpu = time.perf_counter(), time.process_time()
        loss, _ = model.loss(data)
        optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()
        optimizer.step()
        sync()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if handle is not None:
            handle.remove()
        return wall * 1000.0, cpu * 1000.0

    for index in range(warmup):
        step(masked=index % 2 == 1)
    arms: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for index in range(steps):
        order = (False, True) if index % 2 == 0 else (True, False)  # ABBA: cancels within-pair drift
        for flag in order:
            arms[flag].append(step(masked=flag))
    return {
        "model": architecture,
        "device": device_name,
        "torch_threads": torch.get_num_threads(),
        "imgsz": imgsz,
        "batch": batch,
        "steps": steps,
        "warmup": warmup,
        "sites": sites,
        "spec": spec.model_dump(mode="json"),
        "wall": _summary([t[0] for t in arms[False]], [t[0] for t in arms[True]]),
        # CPU time of this process: on a shared CPU it is far less disturbed by other processes than wall time
        "cpu": _summary([t[1] for t in arms[False]], [t[1] for t in arms[True]]),
        "target_ratio": TARGET_RATIO,
    }


def _summary(plain: list[float], masked: list[float]) -> dict[str, float | bool]:
    """Medians (ms) and the per-pair masked/plain ratio: median and quartiles."""
    ratios = [m / p for p, m in zip(plain, masked)]
    quartiles = statistics.quantiles(ratios, n=4)
    return {
        "plain_ms_median": round(statistics.median(plain), 2),
        "masked_ms_median": round(statistics.median(masked), 2),
        "ratio_median": round(statistics.median(ratios), 4),
        "ratio_p25": round(quartiles[0], 4),
        "ratio_p75": round(quartiles[2], 4),
        "meets_target": statistics.median(ratios) <= TARGET_RATIO,
    }


def main(argv: list[str] | None = None) -> int:
    from exp3.sessions import MASKING_SITES  # no dependencies: Ultralytics is imported under the redirect below

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="yolov8m.yaml", help="architecture yaml (yolov8m.yaml, rtdetr-l.yaml)")
    parser.add_argument("--imgsz", type=int, default=128, help="square input side in pixels")
    parser.add_argument("--batch", type=int, default=2, help="images per step")
    parser.add_argument("--steps", type=int, default=20, help="timed plain+masked pairs")
    parser.add_argument("--warmup", type=int, default=4, help="untimed steps first (both arms)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--sites", nargs="+", default=list(MASKING_SITES), choices=MASKING_SITES)
    parser.add_argument("--mode", default="channel", choices=("channel", "spatial", "channel+spatial"))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    _offline_environment()
    with contextlib.redirect_stdout(sys.stderr):  # Ultralytics logs to stdout: keep stdout pure JSON
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        result = run_benchmark(
            args.model, args.imgsz, args.batch, args.steps, args.warmup, args.device, args.sites, args.mode
        )
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
