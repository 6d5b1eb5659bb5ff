"""Paired statistics over test images: bootstrap intervals, permutation tests, Benjamini-Hochberg.

Pure functions over per-image arrays (numpy only): nothing here reads a file. One engine takes the statistic as
an argument (micro F1 of summed per-image (tp, fp, fn), a mean of per-image scores, rF1, mPC). The unit of
pairing is the test image. The rules (statistic, resamples, seeds, pairing, p-values, BH families):
docs/report.md, "Intervals and p-values" and "Intervals and tests over seeds and images".
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations
from math import comb, isfinite
from typing import Callable

import numpy as np

DEFAULT_RESAMPLES = 2000
"""Bootstrap draws per interval (percentile intervals are stable to ~0.005 at this count)."""
DEFAULT_PERMUTATIONS = 9999
"""Random permutations per test; the smallest reachable p-value is 1 / (n + 1) = 1e-4."""
DEFAULT_CONFIDENCE = 0.95
DEFAULT_SEED = 0
"""Seed of the bootstrap and permutation RNGs: the same inputs always give the same report."""


@dataclass(frozen=True)
class Interval:
    """A point estimate and its bootstrap interval (same units as the statistic, e.g. F1 in [0, 1])."""

    estimate: float
    low: float
    high: float


@dataclass(frozen=True)
class PairedComparison:
    """Session A vs reference B on the same images: difference A - B of micro F1, its interval, p."""

    difference: Interval
    p_value: float
    n_images: int


def micro_f1(counts: np.ndarray, axis: int = -2) -> np.ndarray:
    """Micro F1 of (..., N, 3) per-image counts (tp, fp, fn) summed along the image axis `axis`."""
    return f1_statistic(np.asarray(counts).sum(axis=axis))


def bootstrap_indices(n_images: int, n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> np.ndarray:
    """(n_resamples, n_images) int64 image indices drawn with replacement, reproducible from `seed`."""
    if n_images < 1 or n_resamples < 1:
        raise ValueError(f"n_images={n_images}, n_resamples={n_resamples}; both must be >= 1")
    return np.random.default_rng(seed).integers(0, n_images, size=(n_resamples, n_images))


def percentile_interval(draws: np.ndarray, confidence: float) -> tuple[float, float]:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence}; pass a level in (0, 1) such as 0.95")
    tail = 50.0 * (1.0 - confidence)
    low, high = np.percentile(draws, [tail, 100.0 - tail])
    return float(low), float(high)


# The engine ----------------------------------------------------------------------------------------------------
#
# A `Statistic` takes totals (..., *shape) of per-image values summed over images, and the number of values
# summed, and returns the metric (...). A bootstrap draw is a set of image multiplicities (`image_multiplicities`),
# so its totals are one product; a permutation swaps two sessions' values on a subset of images, so its totals
# are `sum(a) + mask @ (b - a)`.

Statistic = Callable[[np.ndarray, float], np.ndarray]


def f1_statistic(totals: np.ndarray, n: float = 1.0) -> np.ndarray:
    """Micro F1 of summed (tp, fp, fn) on the last axis; 1.0 where all are 0 (the empty-set rule of
    exp3.evaluate.metrics)."""
    tp, fp, fn = np.moveaxis(np.asarray(totals), -1, 0)
    denominator = 2.0 * tp + fp + fn
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, 2.0 * tp / denominator, 1.0)


def mean_statistic(totals: np.ndarray, n: float) -> np.ndarray:
    """The mean of per-image scores."""
    return np.asarray(totals) / n


def ratio_f1_statistic(totals: np.ndarray, n: float = 1.0) -> np.ndarray:
    """F1 of (..., 0, 3) over F1 of (..., 1, 3), e.g. rF1 = occluded / clean; NaN where the denominator is 0."""
    top, bottom = f1_statistic(np.asarray(totals)[..., 0, :]), f1_statistic(np.asarray(totals)[..., 1, :])
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(bottom > 0, top / np.where(bottom > 0, bottom, 1.0), np.nan)


def weighted_totals(values: np.ndarray, image_weights: np.ndarray,
                    seed_weights: np.ndarray | None = None) -> np.ndarray:
    """(B, *shape) sums of (N, *shape) `values` under (B, N) image multiplicities; with (B, K) `seed_weights`,
    of (K, N, *shape) per-seed values under both."""
    values = np.asarray(values, dtype=np.float64)
    if seed_weights is None:
        return np.tensordot(image_weights, values, axes=(1, 0))
    return np.einsum("bk,bn,kn...->b...", seed_weights, image_weights, values)


def finite_interval(draws: np.ndarray, confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float]:
    """`percentile_interval` of the finite draws (a draw where the statistic is undefined says nothing)."""
    finite = np.asarray(draws)[np.isfinite(draws)]
    return percentile_interval(finite, confidence) if finite.size else (float("nan"), float("nan"))


def bootstrap(values: np.ndarray, statistic: Statistic = f1_statistic, confidence: float = DEFAULT_CONFIDENCE,
              n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
              image_weights: np.ndarray | None = None) -> Interval:
    """Percentile bootstrap interval of `statistic` over the images of (N, *shape) `values`."""
    values = np.asarray(values, dtype=np.float64)
    weights = image_multiplicities(len(values), n_resamples, seed) if image_weights is None else image_weights
    draws = statistic(weighted_totals(values, weights), len(values))
    return Interval(float(statistic(values.sum(axis=0), len(values))), *finite_interval(draws, confidence))


def paired_difference(values_a: np.ndarray, values_b: np.ndarray, statistic: Statistic = f1_statistic,
                      confidence: float = DEFAULT_CONFIDENCE, n_resamples: int = DEFAULT_RESAMPLES,
                      seed: int = DEFAULT_SEED, image_weights: np.ndarray | None = None) -> Interval:
    """statistic(a) - statistic(b) with its paired bootstrap interval (both (N, *shape), aligned on the same
    images, resampled with the same draws)."""
    a, b = np.asarray(values_a, dtype=np.float64), np.asarray(values_b, dtype=np.float64)
    weights = image_multiplicities(len(a), n_resamples, seed) if image_weights is None else image_weights
    draws = statistic(weighted_totals(a, weights), len(a)) - statistic(weighted_totals(b, weights), len(b))
    point = statistic(a.sum(axis=0), len(a)) - statistic(b.sum(axis=0), len(b))
    return Interval(float(point), *finite_interval(draws, confidence))


@lru_cache(maxsize=8)
def swap_masks(n_images: int, n_resamples: int = DEFAULT_PERMUTATIONS,
               seed: int = DEFAULT_SEED) -> tuple[np.ndarray, bool]:
    """(P, N) masks (float64 0 / 1) of images whose two results are swapped, and whether they are exhaustive.

    All 2**N masks when 2**N <= n_resamples (an exact test), else `n_resamples` random ones from
    `numpy.random.default_rng(seed)`. Kept for the next test of the same N (a report runs hundreds): read-only.
    """
    if n_images < 1:
        raise ValueError(f"n_images={n_images}; a permutation test needs at least one image")
    if n_images < 63 and 2 ** n_images <= n_resamples:
        codes = np.arange(2 ** n_images, dtype=np.int64)[:, None]
        masks, exact = ((codes >> np.arange(n_images, dtype=np.int64)) & 1).astype(np.float64), True
    else:
        masks, exact = (np.random.default_rng(seed).random((n_resamples, n_images)) < 0.5).astype(np.float64), False
    masks.flags.writeable = False
    return masks, exact


@lru_cache(maxsize=8)
def _swap_masks32(n_images: int, n_resamples: int, seed: int) -> np.ndarray:
    """`swap_masks` as float32 (0 / 1): half the memory traffic, exact for sums of integer counts below 2**24."""
    return swap_masks(n_images, n_resamples, seed)[0].astype(np.float32)


def permutation_pvalue(values_a: np.ndarray, values_b: np.ndarray, statistic: Statistic = f1_statistic,
                       n_permutations: int = DEFAULT_PERMUTATIONS, seed: int = DEFAULT_SEED) -> float:
    """Two-sided p of H0 "a and b are exchangeable on every image" for statistic(a) - statistic(b): the null of
    `scipy.stats.permutation_test(permutation_type="samples")` (tests/test_stats.py checks that both agree) as one
    (P, N) @ (N, *shape) product over the `swap_masks`; p as `_two_sided_p`."""
    a, b = np.asarray(values_a, dtype=np.float64), np.asarray(values_b, dtype=np.float64)
    if np.array_equal(a, b):
        return 1.0                    # every permutation reproduces the data: the difference is exactly 0
    masks, exact = swap_masks(len(a), n_permutations, seed)
    delta = b - a
    if np.array_equal(delta, np.round(delta)) and np.abs(delta).sum() < 2 ** 24:     # counts: exact in float32
        shift = np.tensordot(_swap_masks32(len(a), n_permutations, seed), delta.astype(np.float32),
                             axes=(1, 0)).astype(np.float64)
    else:
        shift = np.tensordot(masks, delta, axes=(1, 0))                                # (P, *shape)
    total_a, total_b = a.sum(axis=0), b.sum(axis=0)
    null = statistic(total_a + shift, len(a)) - statistic(total_b - shift, len(a))
    return _two_sided_p(null, float(statistic(total_a, len(a)) - statistic(total_b, len(a))), exact)


def _two_sided_p(null: np.ndarray, observed: float, exact: bool) -> float:
    """2 * min(P(null <= observed), P(null >= observed)), capped at 1; (k + 1) / (P + 1) unless exact. NaN when a
    value is not finite (a NaN compares false both ways: it read as the smallest p there is)."""
    if not (isfinite(observed) and np.isfinite(null).all()):
        return float("nan")
    tolerance = 1e-12 * max(1.0, abs(observed))
    less, greater = np.sum(null <= observed + tolerance), np.sum(null >= observed - tolerance)
    observed_too = 0 if exact else 1
    return float(min(1.0, 2.0 * min(less + observed_too, greater + observed_too) / (len(null) + observed_too)))


def compare_paired(values_a: np.ndarray, values_b: np.ndarray, confidence: float = DEFAULT_CONFIDENCE,
                   n_resamples: int = DEFAULT_RESAMPLES, n_permutations: int = DEFAULT_PERMUTATIONS,
                   seed: int = DEFAULT_SEED, statistic: Statistic = f1_statistic,
                   image_weights: np.ndarray | None = None) -> PairedComparison:
    """Difference a - b of `statistic` (default: micro F1 of (N, 3) counts; `mean_statistic`: mean of (N,) scores)
    with its paired bootstrap interval and permutation p-value; both sides aligned on the same N >= 1 images (the
    report's caller, exp3.report.comparisons.compare_sessions, aligns them on unique image ids)."""
    return PairedComparison(paired_difference(values_a, values_b, statistic, confidence, n_resamples, seed,
                                              image_weights),
                            permutation_pvalue(values_a, values_b, statistic, n_permutations, seed), len(values_a))


def reversed_comparison(comparison: PairedComparison) -> PairedComparison:
    """b - a from the result of a - b: the estimate and interval negated, the same (two-sided) p.

    One test, two readings: a report that lists both "S2 vs S1" and "S1 vs S2" uses this so
    that both rows carry one p-value (and count once in a multiple-comparison family).
    """
    difference = comparison.difference
    return PairedComparison(Interval(0.0 - difference.estimate, 0.0 - difference.high, 0.0 - difference.low),
                            comparison.p_value, comparison.n_images)           # 0.0 - x: no "-0.000" in the text


def benjamini_hochberg(p_values: np.ndarray) -> np.ndarray:
    """BH-adjusted p-values (same shape): `scipy.stats.false_discovery_control(method="bh")` of the finite entries;
    NaN entries stay NaN and are not counted as tests."""
    from scipy.stats import false_discovery_control  # lazy: a session process imports this module, scipy.stats is slow

    array = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full(array.shape, np.nan)
    finite = np.isfinite(array)
    if finite.any():
        adjusted[finite] = false_discovery_control(array[finite], method="bh")
    return adjusted


@dataclass(frozen=True)
class GapClosed:
    """How much of the S1 -> S2 gap a session Sx closes: gap = S2 - S1, gain = Sx - S1, ratio = gain / gap.

    `ratio` is None unless the gap is established (its interval lies above 0): the positive control.
    """

    gap: Interval
    gain: Interval
    ratio: Interval | None

    @property
    def established(self) -> bool:
        return self.ratio is not None


def gap_closed(reference: float, control: float, treated: float, reference_draws: np.ndarray,
               control_draws: np.ndarray, treated_draws: np.ndarray,
               confidence: float = DEFAULT_CONFIDENCE) -> GapClosed:
    """(treated - reference) / (control - reference) with percentile intervals from paired draws.

    Args:
        reference, control, treated: the full-sample metric of S1, S2 and Sx.
        *_draws: (B,) bootstrap draws of the same metric, row b of each drawn on the same resample
            (the same image indices; with seeds, the same seed draw too), so the differences are paired.

    Draws where the gap is exactly 0 have no ratio and are left out of its interval.
    """
    reference_draws, control_draws, treated_draws = (np.asarray(draws, dtype=np.float64).reshape(-1) for draws in
                                                     (reference_draws, control_draws, treated_draws))
    if not reference_draws.shape == control_draws.shape == treated_draws.shape or reference_draws.size == 0:
        raise ValueError(f"draws differ in shape {reference_draws.shape}, {control_draws.shape}, "
                         f"{treated_draws.shape}; pass (B,) draws made on the same resamples")
    gap_draws, gain_draws = control_draws - reference_draws, treated_draws - reference_draws
    gap = Interval(float(control - reference), *percentile_interval(gap_draws, confidence))
    gain = Interval(float(treated - reference), *percentile_interval(gain_draws, confidence))
    if not gap.low > 0 or not gap.estimate > 0:
        return GapClosed(gap, gain, None)
    usable = gap_draws != 0
    ratios = gain_draws[usable] / gap_draws[usable]
    return GapClosed(gap, gain, Interval(gain.estimate / gap.estimate, *percentile_interval(ratios, confidence)))


# Two levels: training seeds and test images ------------------------------------------------------------------
#
# A session's per-image results with K seeds form a (K, N) grid (docs/report.md, "Intervals and tests over seeds
# and images"). A draw is expressed as multiplicities, `image_weights` (B, N) shared by every session and
# `seed_weights` (B, K) per session, and its pooled counts are einsum("bk,bn,knc->bc"): nothing loops over draws.


def multiplicities(draws: np.ndarray, n_items: int) -> np.ndarray:
    """(B, n_items) float64: how often each item appears in each row of (B, D) `draws`."""
    rows = draws.shape[0]
    flat = (np.arange(rows)[:, None] * n_items + draws).reshape(-1)
    return np.bincount(flat, minlength=rows * n_items).reshape(rows, n_items).astype(np.float64)


def image_multiplicities(n_images: int, n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> np.ndarray:
    """(B, N) multiplicities of the same draws as `bootstrap_indices(n_images, n_resamples, seed)`."""
    return multiplicities(bootstrap_indices(n_images, n_resamples, seed), n_images)


def seed_multiplicities(n_seeds: int, n_resamples: int, seed: int, stream: int) -> np.ndarray:
    """(B, K) seed multiplicities of one session (`stream`: the session's index, so sessions draw independently);
    all ones when K == 1 (one seed: nothing to resample, the seed spread stays out of the interval).

    K - 1 seeds are drawn (with replacement) and their multiplicities scaled by K / (K - 1), so draws keep the
    total weight K and the seed variance is unbiased (docs/report.md, "Intervals and tests over seeds and images").
    """
    if n_seeds <= 1:  # no seed done: no weights
        return np.ones((n_resamples, n_seeds))
    drawn = np.random.default_rng([seed, 1_000_003, stream]).integers(0, n_seeds, size=(n_resamples, n_seeds - 1))
    return multiplicities(drawn, n_seeds) * (n_seeds / (n_seeds - 1))


def two_level_draws(values: np.ndarray, statistic: Statistic, image_weights: np.ndarray,
                    seed_weights: np.ndarray) -> np.ndarray:
    """(B, ...) `statistic` of (K, N, *shape) per-seed per-image values under each draw's image and seed weights."""
    values = np.asarray(values, dtype=np.float64)
    return statistic(weighted_totals(values, image_weights, seed_weights), values.shape[0] * values.shape[1])


@dataclass(frozen=True)
class TwoLevelInterval:
    """A session difference with its two-level interval, and the spread each level alone gives.

    `image_sd`: sd of the draws with the seeds held fixed (images resampled); `seed_sd`: sd with the images
    held fixed (seeds resampled).
    """

    difference: Interval
    image_sd: float
    seed_sd: float


STATISTICS: dict[str, Statistic] = {"mean": mean_statistic, "micro_f1": f1_statistic}
"""The `kind` of the two-level functions: (K, N) scores whose mean is the metric, or (K, N, 3) counts."""


def _two_level_inputs(values_a: np.ndarray, values_b: np.ndarray,
                      kind: str | Statistic) -> tuple[np.ndarray, np.ndarray, Statistic]:
    """The two sides as float64 and the statistic of `kind` (a STATISTICS key, or a statistic of (K, N, ...))."""
    a, b = np.asarray(values_a, dtype=np.float64), np.asarray(values_b, dtype=np.float64)
    ndim = a.ndim if callable(kind) else {"mean": 2, "micro_f1": 3}.get(kind)
    if a.ndim != ndim or a.ndim < 2 or a.shape[1:] != b.shape[1:] or b.ndim != a.ndim or a.shape[1] == 0:
        raise ValueError(f"two-level difference of shapes {a.shape}, {b.shape} and kind {kind!r}: pass (K, N) scores "
                         "with kind 'mean' or (K, N, 3) counts with kind 'micro_f1', aligned on the same N images")
    return a, b, kind if callable(kind) else STATISTICS[kind]


def two_level_difference(values_a: np.ndarray, values_b: np.ndarray, kind: str = "mean",
                         confidence: float = DEFAULT_CONFIDENCE, n_resamples: int = DEFAULT_RESAMPLES,
                         seed: int = DEFAULT_SEED, image_weights: np.ndarray | None = None,
                         seed_weights: tuple[np.ndarray, np.ndarray] | None = None) -> TwoLevelInterval:
    """Difference a - b (seed-pooled metric) with a two-level bootstrap interval over seeds and images.

    Args:
        values_a, values_b: (K_a, N) per-seed per-image scores (kind "mean": the metric is their mean) or
            (K_a, N, 3) per-seed per-image (tp, fp, fn) (kind "micro_f1": F1 of the pooled counts); both on the
            same N images in the same order; K may differ between a and b.
        image_weights: the (B, N) image draws (default: `image_multiplicities(N, n_resamples, seed)`).
        seed_weights: the (B, K_a) and (B, K_b) seed draws (default: `seed_multiplicities` of streams 0 and 1).
    """
    a, b, statistic = _two_level_inputs(values_a, values_b, kind)

    def draw(images: np.ndarray, seeds_a: np.ndarray, seeds_b: np.ndarray) -> np.ndarray:
        return two_level_draws(a, statistic, images, seeds_a) - two_level_draws(b, statistic, images, seeds_b)

    images = image_multiplicities(a.shape[1], n_resamples, seed) if image_weights is None else image_weights
    seeds_a, seeds_b = seed_weights or (seed_multiplicities(x.shape[0], n_resamples, seed, stream)
                                        for stream, x in enumerate((a, b)))
    fixed_a, fixed_b = np.ones((n_resamples, a.shape[0])), np.ones((n_resamples, b.shape[0]))
    both, only_images = draw(images, seeds_a, seeds_b), draw(images, fixed_a, fixed_b)
    only_seeds = draw(np.ones_like(images), seeds_a, seeds_b)
    point = float(draw(np.ones_like(images[:1]), fixed_a[:1], fixed_b[:1])[0])
    return TwoLevelInterval(Interval(point, *percentile_interval(both, confidence)), float(only_images.std()),
                            float(only_seeds.std()))


def two_level_permutation_pvalue(values_a: np.ndarray, values_b: np.ndarray, kind: str | Statistic = "mean",
                                 n_resamples: int = DEFAULT_PERMUTATIONS, seed: int = DEFAULT_SEED) -> float:
    """Two-sided p of H0 "the two sessions' training runs are exchangeable" for the seed-pooled difference a - b.

    Only the session labels of the K_a + K_b runs are permuted, each run keeping its per-image results (all
    C(K_a + K_b, K_a) splits when at most `n_resamples`, else random ones; docs/report.md says what few seeds
    can tell). Args: as `two_level_difference` ((K, N) scores for "mean", (K, N, 3) counts for "micro_f1"), or a
    statistic of (K, N, ...) values (the report's mPC: (K, N, S, 3) counts).
    """
    a, b, statistic = _two_level_inputs(values_a, values_b, kind)
    per_run = np.concatenate([a, b]).sum(axis=1)                            # (R, *shape)
    k_a, total = len(a), len(a) + len(b)
    exact = comb(total, k_a) <= n_resamples
    if exact:
        masks = np.zeros((comb(total, k_a), total), dtype=bool)
        np.put_along_axis(masks, np.array(list(combinations(range(total), k_a))), True, axis=1)
    else:
        rng = np.random.default_rng([seed, 2_000_003])
        masks = np.argsort(rng.random((n_resamples, total)), axis=1) < k_a
    group_a = np.tensordot(masks / k_a, per_run, axes=(1, 0))              # seed means of each group's totals
    group_b = np.tensordot(~masks / (total - k_a), per_run, axes=(1, 0))
    n = a.shape[1]
    null = statistic(group_a, n) - statistic(group_b, n)
    observed = float(statistic(per_run[:k_a].mean(axis=0), n) - statistic(per_run[k_a:].mean(axis=0), n))
    return _two_sided_p(null, observed, exact)
