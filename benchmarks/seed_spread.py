"""Seed-to-seed spread of each headline metric next to the S2 - S1 effect (BENCHMARKS.md, docs/what-metrics-detect.md).

    python flows/exp3.py --pilot                                                    # seed 0
    python flows/exp3.py --pilot --sessions S1_clean_train S2_occ_train \\
        --set output_root=runs/exp3-pilot-seeds --set "seeds=[1,2]"                # seeds 1, 2
    python benchmarks/seed_spread.py --roots runs/exp3-pilot runs/exp3-pilot-seeds --model yolov8n

Reads metrics.json of every done S1 / S2 folder under the roots (`<model>__<session>` and
`<model>__<session>__seed<N>`) and prints, per metric on the split: each seed's value, the
seed standard deviation (ddof=1) of S1 and of S2, the per-seed effect S2 - S1, its mean and
standard deviation, and the seeds per session needed for a two-sided 5% test with 80% power to
detect the mean effect given that spread (normal approximation, n = 2 (1.96 + 0.84)^2 s^2 / d^2
per arm with s the pooled per-session seed SD). Values come from the files; nothing is retrained.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

METRICS: dict[str, tuple[str, ...]] = {
    "ingredient_micro_f1@0.25": ("ingredient", "micro", "f1"),
    "ingredient_samples_f1@0.25": ("ingredient", "samples", "f1"),
    "detection_f1@0.25": ("detection", "f1"),
    "ingredient_micro_f1@val": ("at_val_threshold", "ingredient", "micro", "f1"),
    "detection_f1@val": ("at_val_threshold", "detection", "f1"),
    "map50": ("map50",),
    "map50_95": ("map50_95",),
}
Z_ALPHA, Z_POWER = 1.96, 0.84


def _dig(payload: Any, path: tuple[str, ...]) -> float:
    for key in path:
        payload = payload[key]
    return float(payload)


def collect(roots: list[Path], model: str, split: str) -> dict[str, dict[int, dict[str, float]]]:
    """session suffix -> seed -> metric -> value, from every done folder under `roots`."""
    found: dict[str, dict[int, dict[str, float]]] = {"S1_clean_train": {}, "S2_occ_train": {}}
    pattern = re.compile(rf"^{re.escape(model)}__(S[12]_\w+?)(?:__seed(\d+))?$")
    for root in roots:
        for folder in sorted((root / model).glob(f"{model}__S[12]_*")):
            match = pattern.match(folder.name)
            if not match or not (folder / "DONE").is_file():
                continue
            metrics = json.loads((folder / "metrics.json").read_text())
            seed = int(match.group(2)) if match.group(2) else int(metrics["seeds"]["train"])
            found[match.group(1)][seed] = {name: _dig(metrics["splits"][split], path) for name, path in METRICS.items()}
    return found


def spread(found: dict[str, dict[int, dict[str, float]]]) -> dict[str, Any]:
    seeds = sorted(set(found["S1_clean_train"]) & set(found["S2_occ_train"]))
    table: dict[str, Any] = {"seeds": seeds}
    for metric in METRICS:
        s1 = np.array([found["S1_clean_train"][seed][metric] for seed in seeds])
        s2 = np.array([found["S2_occ_train"][seed][metric] for seed in seeds])
        effect = s2 - s1
        sd1, sd2 = (float(np.std(values, ddof=1)) if len(values) > 1 else math.nan for values in (s1, s2))
        pooled = math.sqrt((sd1 ** 2 + sd2 ** 2) / 2) if len(seeds) > 1 else math.nan
        mean_effect = float(effect.mean()) if len(seeds) else math.nan
        needed = (math.ceil(2 * (Z_ALPHA + Z_POWER) ** 2 * pooled ** 2 / mean_effect ** 2)
                  if len(seeds) > 1 and mean_effect != 0 else None)
        table[metric] = {"S1": s1.round(4).tolist(), "S2": s2.round(4).tolist(), "S1_seed_sd": round(sd1, 4),
                         "S2_seed_sd": round(sd2, 4), "effect_per_seed": effect.round(4).tolist(),
                         "effect_mean": round(mean_effect, 4),
                         "effect_seed_sd": round(float(np.std(effect, ddof=1)), 4) if len(seeds) > 1 else None,
                         "seeds_per_session_for_80pct_power": needed}
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--roots", type=Path, nargs="+", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--split", default="test_occ_fixed")
    args = parser.parse_args()
    print(json.dumps({"split": args.split, **spread(collect(args.roots, args.model, args.split))}, indent=2))


if __name__ == "__main__":
    main()
