"""Paired statistics over test images: bootstrap intervals, paired permutation tests, BH correction.

Pure functions over per-image count arrays (numpy + scipy only): nothing here reads a file.
The unit of pairing is the test image: every session of a model is evaluated on the same images,
and `test_occ_fixed` holds occluded copies of the `test_clean` images (docs/references.md section 2).

The statistic is the headline metric, the **micro ingredient F1**, recomputed on every resample
from per-image counts: `counts` is an (N, 3) int array of (tp, fp, fn) per image (ingredient sets
at the session's `conf`, see `exp3.metrics.ingredient_sets`), and

    micro_f1(counts) = 2 * sum(tp) / (2 * sum(tp) + sum(fp) + sum(fn))   (1.0 when all are 0)

which is exactly `exp3.metrics.prf_from_counts` on the summed counts. Resampling images and
re-summing their counts is the correct bootstrap of a ratio of sums (averaging per-image F1 would
bootstrap the *samples* F1, a different metric).

- Intervals: percentile bootstrap, `n_resamples` (default 2000) draws of N images with
  replacement from `numpy.random.default_rng(seed)` (default seed 0: a reproducible report). The
  same (B, N) index matrix is used for every session of a comparison, so differences are paired.
- p-values: a paired permutation test of the micro-F1 difference (the null of
  `scipy.stats.permutation_test(permutation_type="samples")`: the two sessions' results are swapped
  image by image), two-sided, exact when 2**N <= n_permutations, vectorised as one matrix product
  (scipy's generic loop calls the statistic once per permutation, too slow for a report of many tests).
  Tied per-image scores are harmless: identical sessions give p = 1 exactly.
- Many comparisons: Benjamini-Hochberg via `scipy.stats.false_discovery_control` (NaNs kept).
  Which p-values form one family is the caller's decision (exp3.report: distinct unordered pairs).

Other metrics use the same pairing and the same machinery: the pooled *detection* F1 is
`micro_f1` of per-image box counts (`exp3.metrics.detection_counts`), and the *samples* F1 (the
mean of per-image F1) is compared with `compare_paired_means`: the bootstrap of a mean difference
and the paired (sign-flip) permutation test of it.
"""

from __future__ import annotations

from dataclasses import dataclass

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

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


@dataclass(frozen=True)
class PairedComparison:
    """Session A vs reference B on the same images: difference A - B of micro F1, its interval, p."""

    difference: Interval
    p_value: float
    n_images: int


def check_counts(counts: np.ndarray, name: str = "counts") -> np.ndarray:
    """Return `counts` as (N, 3) int64 (tp, fp, fn per image); raise ValueError naming the fix otherwise."""
    array = np.asarray(counts)
    if array.ndim != 2 or array.shape[1] != 3 or array.shape[0] == 0:
        raise ValueError(f"{name} has shape {array.shape}; pass an (N, 3) array of per-image (tp, fp, fn), N >= 1")
    if not np.all(np.isfinite(array)) or np.any(array < 0):
        raise ValueError(f"{name} holds negative or non-finite counts; pass non-negative integers")
    return array.astype(np.int64)


def micro_f1(counts: np.ndarray, axis: int = -2) -> np.ndarray:
    """Micro F1 of per-image counts summed along `axis`.

    Args:
        counts: (..., N, 3) counts (tp, fp, fn); the image axis is `axis` (default: second to last).

    Returns:
        (...) float64 F1; 1.0 where every summed count is 0 (the empty-set rule of exp3.metrics).
    """
    totals = np.asarray(counts).sum(axis=axis)
    tp, fp, fn = totals[..., 0], totals[..., 1], totals[..., 2]
    denominator = 2.0 * tp + fp + fn
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, 2.0 * tp / denominator, 1.0)


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


def bootstrap_f1_interval(counts: np.ndarray, confidence: float = DEFAULT_CONFIDENCE,
                          n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                          indices: np.ndarray | None = None) -> Interval:
    """Percentile bootstrap interval of micro F1 over images.

    Args:
        counts: (N, 3) per-image (tp, fp, fn).
        indices: optional (B, N) resample indices (share them to pair several calls); drawn from
            `seed` when None.
    """
    counts = check_counts(counts)
    if indices is None:
        indices = bootstrap_indices(len(counts), n_resamples, seed)
    draws = micro_f1(counts[indices])                                   # (B,)
    low, high = percentile_interval(draws, confidence)
    return Interval(float(micro_f1(counts)), low, high)


def bootstrap_mean_interval(values: np.ndarray, confidence: float = DEFAULT_CONFIDENCE,
                            n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> Interval:
    """Percentile bootstrap interval of a mean over images, e.g. (N,) per-image F1 -> samples F1."""
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size == 0 or not np.all(np.isfinite(array)):
        raise ValueError("values must be a non-empty array of finite per-image scores")
    draws = array[bootstrap_indices(array.size, n_resamples, seed)].mean(axis=1)
    low, high = percentile_interval(draws, confidence)
    return Interval(float(array.mean()), low, high)


def bootstrap_ratio_interval(numerator_counts: np.ndarray, denominator_counts: np.ndarray,
                             confidence: float = DEFAULT_CONFIDENCE, n_resamples: int = DEFAULT_RESAMPLES,
                             seed: int = DEFAULT_SEED) -> Interval:
    """Paired bootstrap interval of micro_f1(numerator) / micro_f1(denominator), e.g. rF1 = occluded / clean.

    Both (N, 3) arrays must be aligned on the same images. Resamples whose denominator F1 is 0 are
    dropped (the ratio is undefined there); the estimate is NaN when the full-sample denominator is 0.
    """
    numerator, denominator = _aligned(numerator_counts, denominator_counts)
    indices = bootstrap_indices(len(numerator), n_resamples, seed)
    top, bottom = micro_f1(numerator[indices]), micro_f1(denominator[indices])
    valid = bottom > 0
    full_bottom = float(micro_f1(denominator))
    estimate = float(micro_f1(numerator)) / full_bottom if full_bottom > 0 else float("nan")
    if not valid.any():
        return Interval(estimate, float("nan"), float("nan"))
    low, high = percentile_interval(top[valid] / bottom[valid], confidence)
    return Interval(estimate, low, high)


def _aligned(values_a: np.ndarray, values_b: np.ndarray, check: Callable[..., np.ndarray] | None = None,
             what: str = "counts") -> tuple[np.ndarray, np.ndarray]:
    """Both sides validated by `check` (default `check_counts`) and of one shape (the same images)."""
    check = check or check_counts
    a, b = check(values_a, f"{what}_a"), check(values_b, f"{what}_b")
    if a.shape != b.shape:
        raise ValueError(f"paired {what} differ in shape {a.shape} vs {b.shape}; align both on the same image ids")
    return a, b


def paired_difference_interval(counts_a: np.ndarray, counts_b: np.ndarray,
                               confidence: float = DEFAULT_CONFIDENCE, n_resamples: int = DEFAULT_RESAMPLES,
                               seed: int = DEFAULT_SEED) -> Interval:
    """Paired bootstrap interval of micro_f1(a) - micro_f1(b); both (N, 3), aligned on the same images."""
    a, b = _aligned(counts_a, counts_b)
    indices = bootstrap_indices(len(a), n_resamples, seed)
    draws = micro_f1(a[indices]) - micro_f1(b[indices])
    low, high = percentile_interval(draws, confidence)
    return Interval(float(micro_f1(a) - micro_f1(b)), low, high)


def swap_masks(n_images: int, n_resamples: int = DEFAULT_PERMUTATIONS,
               seed: int = DEFAULT_SEED) -> tuple[np.ndarray, bool]:
    """(P, N) bool masks of images whose two results are swapped, and whether they are exhaustive.

    All 2**N masks when 2**N <= n_resamples (an exact test), else `n_resamples` random ones from
    `numpy.random.default_rng(seed)`.
    """
    if n_images < 1:
        raise ValueError(f"n_images={n_images}; a permutation test needs at least one image")
    if n_images < 63 and 2 ** n_images <= n_resamples:
        codes = np.arange(2 ** n_images, dtype=np.int64)[:, None]
        return ((codes >> np.arange(n_images, dtype=np.int64)) & 1).astype(bool), True
    return np.random.default_rng(seed).random((n_resamples, n_images)) < 0.5, False


def paired_permutation_pvalue(counts_a: np.ndarray, counts_b: np.ndarray,
                              n_resamples: int = DEFAULT_PERMUTATIONS, seed: int = DEFAULT_SEED) -> float:
    """Two-sided p-value of H0 "a and b are exchangeable on every image" for the micro-F1 difference.

    The null of `scipy.stats.permutation_test(permutation_type="samples")` (tests/test_stats.py checks
    that both agree), vectorised: a permutation swaps the two sessions' (tp, fp, fn) on a subset of
    images, so its summed counts are `sum(a) + mask @ (b - a)`: one (P, N) @ (N, 3) product.
    p = 2 * min(P(null <= observed), P(null >= observed)), capped at 1; random permutations count
    the observed data as one of them ((k + 1) / (P + 1)), as scipy does.
    """
    a, b = _aligned(counts_a, counts_b)
    if np.array_equal(a, b):
        return 1.0                    # every permutation reproduces the data: the difference is exactly 0
    masks, exact = swap_masks(len(a), n_resamples, seed)
    shift = masks.astype(np.float64) @ (b - a).astype(np.float64)          # (P, 3)
    total_a, total_b = a.sum(axis=0).astype(np.float64), b.sum(axis=0).astype(np.float64)
    null = micro_f1((total_a + shift)[:, None, :]) - micro_f1((total_b - shift)[:, None, :])   # (P,)
    return _two_sided_p(null, float(micro_f1(a) - micro_f1(b)), exact)


def _two_sided_p(null: np.ndarray, observed: float, exact: bool) -> float:
    """2 * min(P(null <= observed), P(null >= observed)), capped at 1; (k + 1) / (P + 1) unless exact."""
    tolerance = 1e-12 * max(1.0, abs(observed))
    less, greater = np.sum(null <= observed + tolerance), np.sum(null >= observed - tolerance)
    if exact:
        p_less, p_greater = less / len(null), greater / len(null)
    else:
        p_less, p_greater = (less + 1) / (len(null) + 1), (greater + 1) / (len(null) + 1)
    return float(min(1.0, 2.0 * min(p_less, p_greater)))


def compare_paired(counts_a: np.ndarray, counts_b: np.ndarray, confidence: float = DEFAULT_CONFIDENCE,
                   n_resamples: int = DEFAULT_RESAMPLES, n_permutations: int = DEFAULT_PERMUTATIONS,
                   seed: int = DEFAULT_SEED) -> PairedComparison:
    """Difference a - b of micro F1 with its paired bootstrap interval and permutation p-value."""
    a, b = _aligned(counts_a, counts_b)
    return PairedComparison(difference=paired_difference_interval(a, b, confidence, n_resamples, seed),
                            p_value=paired_permutation_pvalue(a, b, n_permutations, seed), n_images=len(a))


def check_scores(values: np.ndarray, name: str = "values") -> np.ndarray:
    """Return `values` as (N,) float64 per-image scores; raise ValueError naming the fix otherwise."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0 or not np.all(np.isfinite(array)):
        raise ValueError(f"{name} has shape {array.shape} or non-finite entries; pass an (N,) array of finite "
                         "per-image scores, N >= 1")
    return array


def _aligned_scores(values_a: np.ndarray, values_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return _aligned(values_a, values_b, check_scores, "scores")


def paired_mean_difference_interval(values_a: np.ndarray, values_b: np.ndarray,
                                    confidence: float = DEFAULT_CONFIDENCE, n_resamples: int = DEFAULT_RESAMPLES,
                                    seed: int = DEFAULT_SEED) -> Interval:
    """Paired bootstrap interval of mean(a) - mean(b); both (N,) per-image scores (e.g. per-image F1).

    The same (B, N) indices as `paired_difference_interval` for the same N and seed, so intervals
    of different metrics of one comparison resample the same images.
    """
    a, b = _aligned_scores(values_a, values_b)
    difference = a - b
    draws = difference[bootstrap_indices(len(a), n_resamples, seed)].mean(axis=1)      # (B,)
    low, high = percentile_interval(draws, confidence)
    return Interval(float(difference.mean()), low, high)


def paired_mean_permutation_pvalue(values_a: np.ndarray, values_b: np.ndarray,
                                   n_resamples: int = DEFAULT_PERMUTATIONS, seed: int = DEFAULT_SEED) -> float:
    """Two-sided paired permutation p-value of mean(a) - mean(b) (the sign-flip test of the differences).

    Swapping a and b on an image flips the sign of its difference d = a - b, so a permutation's
    statistic is (sum(d) - 2 * mask @ d) / N: one (P, N) @ (N,) product, same masks and p rule as
    `paired_permutation_pvalue` (the null of scipy's `permutation_type="samples"`).
    """
    a, b = _aligned_scores(values_a, values_b)
    difference = a - b
    if not np.any(difference):
        return 1.0
    masks, exact = swap_masks(len(a), n_resamples, seed)
    null = (difference.sum() - 2.0 * (masks.astype(np.float64) @ difference)) / len(a)      # (P,)
    return _two_sided_p(null, float(difference.mean()), exact)


def compare_paired_means(values_a: np.ndarray, values_b: np.ndarray, confidence: float = DEFAULT_CONFIDENCE,
                         n_resamples: int = DEFAULT_RESAMPLES, n_permutations: int = DEFAULT_PERMUTATIONS,
                         seed: int = DEFAULT_SEED) -> PairedComparison:
    """Difference a - b of mean per-image scores (e.g. samples F1) with paired bootstrap interval and p."""
    a, b = _aligned_scores(values_a, values_b)
    return PairedComparison(difference=paired_mean_difference_interval(a, b, confidence, n_resamples, seed),
                            p_value=paired_mean_permutation_pvalue(a, b, n_permutations, seed), n_images=len(a))


def reversed_comparison(comparison: PairedComparison) -> PairedComparison:
    """b - a from the result of a - b: the estimate and interval negated, the same (two-sided) p.

    One test, two readings: a report that lists both "S2 vs S1" and "S1 vs S2" uses this so
    that both rows carry one p-value (and count once in a multiple-comparison family).
    """
    difference = comparison.difference
    return PairedComparison(Interval(0.0 - difference.estimate, 0.0 - difference.high, 0.0 - difference.low),
                            comparison.p_value, comparison.n_images)           # 0.0 - x: no "-0.000" in the text


def benjamini_hochberg(p_values: np.ndarray) -> np.ndarray:
    """BH-adjusted p-values (same shape); NaN entries stay NaN and are not counted as tests."""
    from scipy import stats as scipy_stats  # here, not at the top: a session's mAP draws import this module

    array = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full(array.shape, np.nan)
    finite = np.isfinite(array)
    if finite.any():
        adjusted[finite] = scipy_stats.false_discovery_control(array[finite], method="bh")
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
# With K > 1 seeds per session, a session's per-image results form a (K, N) grid (seed x image). An interval that
# resamples images only treats the K trained models as fixed and leaves the seed-to-seed spread out. The
# two-level bootstrap draws, on every resample, N images with replacement (one draw shared by every session:
# the images stay paired) and, for each session separately, K of its seeds with replacement (different seeds
# of different sessions are different trainings: nothing pairs them). A draw is expressed as multiplicities:
# `image_weights` (B, N) and `seed_weights` (B, K), and the pooled counts of a draw are
# einsum("bk,bn,knc->bc"), so nothing loops over draws.


def multiplicities(n_items: int, n_resamples: int, rng: np.random.Generator, n_draws: int | None = None) -> np.ndarray:
    """(B, n_items) float64: how often each item is drawn in each of B draws of `n_draws` (default n_items) items
    with replacement."""
    draws = rng.integers(0, n_items, size=(n_resamples, n_items if n_draws is None else n_draws))
    weights = np.zeros((n_resamples, n_items))
    np.add.at(weights, (np.arange(n_resamples)[:, None], draws), 1.0)
    return weights


def image_multiplicities(n_images: int, n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> np.ndarray:
    """(B, N) multiplicities of the same draws as `bootstrap_indices(n_images, n_resamples, seed)`."""
    indices = bootstrap_indices(n_images, n_resamples, seed)
    weights = np.zeros((n_resamples, n_images))
    np.add.at(weights, (np.arange(n_resamples)[:, None], indices), 1.0)
    return weights


def seed_multiplicities(n_seeds: int, n_resamples: int, seed: int, stream: int) -> np.ndarray:
    """(B, K) seed multiplicities of one session (`stream`: the session's index, so sessions draw independently);
    all ones when K == 1 (one seed: nothing to resample, the seed spread stays out of the interval).

    K - 1 seeds are drawn (with replacement) and their multiplicities scaled by K / (K - 1): the variance of a
    mean of K - 1 draws from the K seen seeds is s^2 / K with s^2 the unbiased seed variance, where drawing K
    gives (K - 1) / K of it (an interval too narrow by that factor: 84 % coverage at K = 3 in the simulation of
    tests/test_stats.py, 94-95 % with K - 1). Draws keep the total weight K.
    """
    if n_seeds == 1:
        return np.ones((n_resamples, 1))
    drawn = multiplicities(n_seeds, n_resamples, np.random.default_rng([seed, 1_000_003, stream]), n_seeds - 1)
    return drawn * (n_seeds / (n_seeds - 1))


def two_level_f1_draws(counts: np.ndarray, image_weights: np.ndarray, seed_weights: np.ndarray) -> np.ndarray:
    """(B,) micro F1 of per-seed per-image counts (K, N, 3) under each draw's image and seed multiplicities."""
    totals = np.einsum("bk,bn,knc->bc", seed_weights, image_weights, np.asarray(counts, dtype=np.float64))
    return micro_f1(totals[:, None, :])


def two_level_mean_draws(values: np.ndarray, image_weights: np.ndarray, seed_weights: np.ndarray) -> np.ndarray:
    """(B,) mean of per-seed per-image scores (K, N) under each draw's image and seed multiplicities."""
    values = np.asarray(values, dtype=np.float64)
    return np.einsum("bk,bn,kn->b", seed_weights, image_weights, values) / (values.shape[0] * values.shape[1])


@dataclass(frozen=True)
class TwoLevelInterval:
    """A session difference with its two-level interval, and the spread each level alone gives.

    `image_sd`: sd of the draws with the seeds held fixed (images resampled); `seed_sd`: sd with the images
    held fixed (seeds resampled); `dominant` names the larger ("images" / "seeds").
    """

    difference: Interval
    image_sd: float
    seed_sd: float

    @property
    def dominant(self) -> str:
        return "seeds" if self.seed_sd > self.image_sd else "images"


def two_level_difference(values_a: np.ndarray, values_b: np.ndarray, kind: str = "mean",
                         confidence: float = DEFAULT_CONFIDENCE, n_resamples: int = DEFAULT_RESAMPLES,
                         seed: int = DEFAULT_SEED) -> TwoLevelInterval:
    """Difference a - b (seed-pooled metric) with a two-level bootstrap interval over seeds and images.

    Args:
        values_a, values_b: (K_a, N) per-seed per-image scores (kind "mean": the metric is their mean) or
            (K_a, N, 3) per-seed per-image (tp, fp, fn) (kind "micro_f1": F1 of the pooled counts); both on the
            same N images in the same order; K may differ between a and b.
    """
    a, b = np.asarray(values_a, dtype=np.float64), np.asarray(values_b, dtype=np.float64)
    if kind not in ("mean", "micro_f1") or a.ndim != (2 if kind == "mean" else 3) or a.shape[1:] != b.shape[1:] \
            or b.ndim != a.ndim or a.shape[1] == 0:
        raise ValueError(f"two-level difference of shapes {a.shape}, {b.shape} and kind {kind!r}: pass (K, N) scores "
                         "with kind 'mean' or (K, N, 3) counts with kind 'micro_f1', aligned on the same N images")
    draw = two_level_mean_draws if kind == "mean" else two_level_f1_draws
    images = image_multiplicities(a.shape[1], n_resamples, seed)
    seeds_a, seeds_b = (seed_multiplicities(x.shape[0], n_resamples, seed, stream) for stream, x in enumerate((a, b)))
    fixed_images = np.ones_like(images)
    fixed_a, fixed_b = np.ones((n_resamples, a.shape[0])), np.ones((n_resamples, b.shape[0]))
    both = draw(a, images, seeds_a) - draw(b, images, seeds_b)
    only_images = draw(a, images, fixed_a) - draw(b, images, fixed_b)
    only_seeds = draw(a, fixed_images, seeds_a) - draw(b, fixed_images, seeds_b)
    point = float(draw(a, fixed_images[:1], fixed_a[:1])[0] - draw(b, fixed_images[:1], fixed_b[:1])[0])
    return TwoLevelInterval(Interval(point, *percentile_interval(both, confidence)), float(only_images.std()),
                            float(only_seeds.std()))


def two_level_permutation_pvalue(values_a: np.ndarray, values_b: np.ndarray, kind: str = "mean",
                                 n_resamples: int = DEFAULT_PERMUTATIONS, seed: int = DEFAULT_SEED) -> float:
    """Two-sided p of H0 "the two sessions' training runs are exchangeable" for the seed-pooled difference a - b.

    The permutation respects the paired design: a training run (one seed) keeps all its per-image results, every
    run is evaluated on the same images, and only the session labels of the K_a + K_b runs are permuted (all
    C(K_a + K_b, K_a) splits when at most `n_resamples`, else random ones). With few seeds the test is coarse:
    3 + 3 runs give 20 splits, so p >= 0.1 two-sided; this is the honest resolution of 3 seeds.

    Args: as `two_level_difference` ((K, N) scores for "mean", (K, N, 3) counts for "micro_f1").
    """
    from itertools import combinations
    from math import comb

    a, b = np.asarray(values_a, dtype=np.float64), np.asarray(values_b, dtype=np.float64)
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"runs of shapes {a.shape} and {b.shape}: align both sessions on the same images")
    runs = np.concatenate([a, b])                                           # (R, N[, 3])
    k_a, total = len(a), len(a) + len(b)
    per_run = runs.sum(axis=1)                                              # (R,) or (R, 3)
    if comb(total, k_a) <= n_resamples:
        masks = np.zeros((comb(total, k_a), total), dtype=bool)
        for row, chosen in enumerate(combinations(range(total), k_a)):
            masks[row, list(chosen)] = True
        exact = True
    else:
        rng = np.random.default_rng([seed, 2_000_003])
        masks = np.argsort(rng.random((n_resamples, total)), axis=1) < k_a
        exact = False
    weight_a, weight_b = masks / k_a, ~masks / (total - k_a)               # seed means of each group
    if kind == "mean":
        null = (weight_a - weight_b) @ per_run / a.shape[1]
        observed = float(a.mean() - b.mean())
    else:
        null = micro_f1((weight_a @ per_run)[:, None]) - micro_f1((weight_b @ per_run)[:, None])
        observed = float(micro_f1(a.sum(axis=0)) - micro_f1(b.sum(axis=0)))
    return _two_sided_p(null, observed, exact)
