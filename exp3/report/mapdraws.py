"""Bootstrap draws of the validator's mAP per model x session x split, for paired mAP intervals."""

from __future__ import annotations

import math

import numpy as np

from exp3 import stats
from exp3.layout import SessionPaths, SessionState
from exp3.mapstats import BOOTSTRAP_RESAMPLES, MapStats, common_image_ids, mean_ap, seed_mean_draws
from exp3.report.runs import SessionRun, as_number

MAP_RESAMPLES = BOOTSTRAP_RESAMPLES
"""Bootstrap draws for mAP intervals (exp3.mapstats.BOOTSTRAP_RESAMPLES): fewer than the F1s' because each
draw recomputes mAP over every prediction; sessions keep theirs in `map_stats_<split>.npz`."""


class MapDraws:
    """Bootstrap mAP draws of each model x session x split (seed mean), computed once per report.

    All sessions of a split are resampled with the same index matrix (`stats.bootstrap_indices`
    over their sorted image ids), so draw differences are paired like the F1s'. A session's kept
    draws are used when they match (n_resamples, seed); otherwise they are computed here. Stats
    that do not reproduce the run's recorded mAP (another evaluation's file) give no interval.
    """

    def __init__(self, grouped: dict[tuple[str, str], list[SessionRun]], n_resamples: int, seed: int) -> None:
        self.grouped, self.n_resamples, self.seed = grouped, n_resamples, seed
        self._cache: dict[tuple[str, str, str], tuple[tuple[str, ...], np.ndarray] | None] = {}

    def get(self, model: str, suffix: str, split: str) -> tuple[tuple[str, ...], np.ndarray] | None:
        """(image ids, (B, 2) draws) or None when a done run lacks `map_stats_<split>.npz`."""
        key = (model, suffix, split)
        if key not in self._cache:
            done = [run for run in self.grouped.get((model, suffix), []) if run.status == SessionState.DONE]
            paths = [SessionPaths(run.folder).map_stats(split) for run in done]
            self._cache[key] = None
            if done and all(path.is_file() for path in paths):
                loaded = [MapStats.load(path) for path in paths]
                if not all(_reproduces_map(kept, run, split) for kept, run in zip(loaded, done)):
                    return None                      # not the stats behind metrics.json's mAP: no interval
                ids = common_image_ids(loaded)
                if ids:
                    self._cache[key] = (ids, seed_mean_draws(loaded, self.n_resamples, self.seed))
        return self._cache[key]


def _reproduces_map(map_stats: MapStats, run: SessionRun, split: str) -> bool:
    """True when `map_stats` give exactly the mAP50 / mAP50-95 that the run's metrics.json reports for `split`."""
    part = run.view.split(split)
    recorded = (as_number(part.map50), as_number(part.map50_95))
    return all(math.isfinite(value) for value in recorded) and np.allclose(mean_ap(map_stats), recorded, rtol=0,
                                                                            atol=1e-9)


def map_interval(draws: MapDraws, a: tuple[str, str, str], b: tuple[str, str, str], column: int,
                 difference: float, confidence: float = stats.DEFAULT_CONFIDENCE) -> tuple[float, float]:
    """Percentile interval of mAP(a) - mAP(b) (column 0 = mAP50, 1 = mAP50-95); NaNs when not pairable."""
    first, second = draws.get(*a), draws.get(*b)
    if first is None or second is None or first[0] != second[0] or not math.isfinite(difference):
        return math.nan, math.nan
    return stats.percentile_interval(first[1][:, column] - second[1][:, column], confidence)
