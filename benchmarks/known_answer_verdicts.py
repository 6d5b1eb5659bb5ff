"""Known-answer check of the report's gap-closed verdicts (BENCHMARKS.md, docs/report.md "Gap closed").

    python benchmarks/known_answer_verdicts.py                      # the table of BENCHMARKS.md (about 6 min)
    python benchmarks/known_answer_verdicts.py --images 1000 --seeds 3 --masking-seeds 1 --seed-sd 0.1 --reps 100

Simulated experiments with a known answer go through the report's own code: `ReportData.split_draws` (its image
and seed draws), `gap._side`, `stats.gap_closed` and `gap.verdict`; only the per-image counts are made up (a
`ReportData` whose `done` / `seed_scores` serve them instead of session folders). Images share a difficulty
d ~ N(0, 1) and 1 + Poisson(2) labels across sessions (paired); a training run of a session has the logit skill
theta + u, u ~ N(0, seed_sd) drawn per run (the seed-to-seed spread of training); each label is found with
probability expit(theta + u + d), false positives are Poisson(0.6). S1 has theta 0, S2 theta 0.3 (S2 - S1 about
0.05 in micro F1); one masking session has S1's theta (true gap closed 0), another S2's (true gap closed 1).
Printed per setting: how often the verdict claims an effect where there is none, how often it says "does not
help" where masking does all occluded training does, and how often the gap-closed interval holds the truth (of the
experiments whose positive control held).
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pandas as pd
from scipy.special import expit

from exp3.evaluate import stats
from exp3.report import gap
from exp3.report.draws import ReportData

MODEL = "sim"
TRUTHS = {"S3_mask_backbone_early": 0.0, "S6_mask_head": 1.0}
"""Masking session -> its true gap closed: it trains like S1 (0) or like S2 (1)."""
THETA = {"S1_clean_train": 0.0, "S2_occ_train": 0.3}
SETTINGS = ((150, 1, 1, 0.0), (1000, 1, 1, 0.0), (1000, 1, 1, 0.1), (1000, 2, 2, 0.1), (1000, 3, 3, 0.1),
            (1000, 3, 1, 0.1), (150, 1, 1, 0.1), (150, 3, 3, 0.1))
"""(test images, seeds of S1 and S2, seeds of the masking sessions, seed_sd on the logit scale): 0.1 is an F1 sd
of about 0.017 between runs of one recipe."""


class Simulated(ReportData):
    """The report's draws over made-up per-image counts (`frames`: session -> one frame per seed)."""

    def __init__(self, frames: dict[str, list[pd.DataFrame]], weights: dict[int, np.ndarray]) -> None:
        super().__init__([])
        self.frames, self._weights = frames, weights  # the image draws: the same for every experiment of a size

    def done(self, model: str, suffix: str) -> list:
        return [SimpleNamespace()] * len(self.frames.get(suffix, []))

    def seed_scores(self, model: str, suffix: str, split: str, threshold: str = "primary",
                    suite_id: str | None = None) -> list[pd.DataFrame]:
        return list(self.frames[suffix])


def true_f1(theta: float, seed_sd: float) -> float:
    """The micro F1 of the expected totals over images and training runs (what the pooled statistic estimates)."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(120)
    found = float(np.sum(weights / weights.sum() * expit(theta + nodes * np.hypot(1.0, seed_sd))))
    return 2 * 3 * found / (2 * 3 * found + 0.6 + 3 * (1 - found))


def runs(rng: np.random.Generator, theta: float, labels: np.ndarray, difficulty: np.ndarray, seeds: int,
         seed_sd: float) -> list[pd.DataFrame]:
    ids = [f"img{index:05d}" for index in range(len(labels))]
    frames = []
    for _ in range(seeds):
        tp = rng.binomial(labels, expit(theta + rng.normal(0, seed_sd) + difficulty))
        fp = rng.poisson(0.6, len(labels))
        frames.append(pd.DataFrame({"ingredient_tp": tp, "ingredient_fp": fp, "ingredient_fn": labels - tp}, index=ids))
    return frames


def simulate(images: int, seeds: int, masking_seeds: int, seed_sd: float, reps: int, seed: int = 0) -> dict[str, float]:
    rng = np.random.default_rng([images, seeds, masking_seeds, int(seed_sd * 1000), seed])
    f1 = {name: true_f1(theta, seed_sd) for name, theta in THETA.items()}
    verdicts = {suffix: Counter() for suffix in TRUTHS}
    covered = {suffix: [0, 0] for suffix in TRUTHS}
    weights: dict[int, np.ndarray] = {}
    for _ in range(reps):
        labels, difficulty = rng.poisson(2, images) + 1, rng.normal(0, 1, images)
        thetas = {**THETA, **{suffix: THETA["S1_clean_train" if truth == 0 else "S2_occ_train"]
                              for suffix, truth in TRUTHS.items()}}
        data = Simulated({name: runs(rng, theta, labels, difficulty, masking_seeds if name in TRUTHS else seeds,
                                     seed_sd) for name, theta in thetas.items()}, weights)
        sides = {name: gap._side(data, MODEL, name, "ingredient_micro_f1", gap.HEADLINE_BASIS, {}) for name in thetas}
        for suffix, truth in TRUTHS.items():
            trio = [sides[name] for name in (gap.REFERENCE, gap.CONTROL, suffix)]
            result = stats.gap_closed(*(float(side.points) for side in trio), *(side.draws for side in trio))
            verdicts[suffix][gap.verdict(result)] += 1
            if result.established:
                covered[suffix][0] += result.ratio.low <= truth <= result.ratio.high
                covered[suffix][1] += 1
    null, full = verdicts["S3_mask_backbone_early"], verdicts["S6_mask_head"]
    return {"S2 - S1": f1["S2_occ_train"] - f1["S1_clean_train"],
            "control holds": 1 - null[gap.FAILED_CONTROL] / reps,
            "claims an effect (truth 0)": (null[gap.PART] + null[gap.REPLACES]) / reps,
            "says hurts (truth 0)": null[gap.HURTS] / reps,
            "says does not help (truth 1)": full[gap.NO_HELP] / reps,
            "says replaces (truth 1)": full[gap.REPLACES] / reps,
            "interval holds 0": covered["S3_mask_backbone_early"][0] / max(1, covered["S3_mask_backbone_early"][1]),
            "interval holds 1": covered["S6_mask_head"][0] / max(1, covered["S6_mask_head"][1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, help="test images (default: each of SETTINGS)")
    parser.add_argument("--seeds", type=int, default=1, help="training seeds of S1 and S2")
    parser.add_argument("--masking-seeds", type=int, help="training seeds of the masking sessions (default: --seeds)")
    parser.add_argument("--seed-sd", type=float, default=0.1, help="run-to-run spread of skill (logit)")
    parser.add_argument("--reps", type=int, default=200, help="simulated experiments per setting")
    args = parser.parse_args()
    settings = SETTINGS if args.images is None else \
        ((args.images, args.seeds, args.masking_seeds or args.seeds, args.seed_sd),)
    print("| images | seeds S1, S2 / Sx | seed_sd | S2 - S1 | control holds | claims an effect (truth 0) | "
          "says hurts (truth 0) | says does not help (truth 1) | says replaces (truth 1) | interval holds 0 | "
          "interval holds 1 | s |")
    print("|" + "---|" * 12)
    for images, seeds, masking_seeds, seed_sd in settings:
        start = time.perf_counter()
        row = simulate(images, seeds, masking_seeds, seed_sd, args.reps)
        print(f"| {images} | {seeds} / {masking_seeds} | {seed_sd:g} | "
              + " | ".join(f"{value:.3f}" for value in row.values()) + f" | {time.perf_counter() - start:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
