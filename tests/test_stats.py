"""exp3.evaluate.stats against cases with known answers (and scipy's own permutation test)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as scipy_stats

from exp3.evaluate import stats
from exp3.evaluate.metrics import prf_from_counts


def _random_counts(n_images: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4, size=(n_images, 3))


def test_micro_f1_matches_metrics_prf_on_summed_counts() -> None:
    counts = _random_counts(50, seed=1)
    expected = prf_from_counts(*counts.sum(axis=0))[2]
    assert stats.micro_f1(counts) == pytest.approx(float(expected))
    assert stats.micro_f1(np.zeros((5, 3))) == 1.0   # nothing to find, nothing claimed


def test_bootstrap_interval_of_a_constant_is_that_constant() -> None:
    counts = np.tile([2, 1, 1], (40, 1))                 # every image F1 = 4 / 6
    interval = stats.bootstrap(counts)                   # micro F1 of the resampled counts
    assert interval.estimate == pytest.approx(2 / 3)
    assert interval.low == pytest.approx(2 / 3) and interval.high == pytest.approx(2 / 3)
    mean = stats.bootstrap(np.full(25, 0.4), stats.mean_statistic)
    assert (mean.estimate, mean.low, mean.high) == pytest.approx((0.4, 0.4, 0.4))


def test_bootstrap_is_reproducible_and_covers_the_estimate() -> None:
    counts = _random_counts(200, seed=2)
    first, second = stats.bootstrap(counts, seed=7), stats.bootstrap(counts, seed=7)
    assert first == second
    assert first.low < first.estimate < first.high
    assert first.high - first.low < 0.2


def test_percentile_interval_cuts_half_the_missing_confidence_from_each_tail() -> None:
    """A 95 % interval is numpy's (linear) 2.5th and 97.5th percentiles of the draws, a 90 % one the 5th and 95th."""
    draws = np.random.default_rng(15).normal(size=1001)
    for confidence, tails in ((0.95, [2.5, 97.5]), (0.9, [5.0, 95.0]), (0.5, [25.0, 75.0])):
        assert stats.percentile_interval(draws, confidence) == pytest.approx(tuple(np.percentile(draws, tails)))
    assert stats.percentile_interval(np.arange(101.0), 0.95) == pytest.approx((2.5, 97.5))
    with pytest.raises(ValueError, match="pass a level in"):
        stats.percentile_interval(draws, 95)


def test_seed_multiplicities_draw_k_minus_one_seeds_weighted_to_a_total_of_k() -> None:
    """Each draw takes K - 1 of the K seeds with replacement and weighs them K / (K - 1) (docs/report.md,
    "Intervals and tests over seeds and images"): every row sums to K, in steps of K / (K - 1); one seed: ones."""
    for n_seeds in (2, 3, 5):
        weights = stats.seed_multiplicities(n_seeds, 400, seed=0, stream=1)
        assert weights.shape == (400, n_seeds)
        np.testing.assert_allclose(weights.sum(axis=1), n_seeds)
        counts = weights * (n_seeds - 1) / n_seeds
        np.testing.assert_allclose(counts, counts.round(), atol=1e-12)
        assert (counts.round().sum(axis=1) == n_seeds - 1).all()
    assert (stats.seed_multiplicities(1, 50, seed=0, stream=0) == 1.0).all()
    assert not np.array_equal(stats.seed_multiplicities(5, 100, 0, 0), stats.seed_multiplicities(5, 100, 0, 1))


def test_identical_sessions_differ_by_zero_with_p_one() -> None:
    counts = _random_counts(60, seed=3)
    result = stats.compare_paired(counts, counts.copy())
    assert result.difference.estimate == 0.0
    assert result.difference.low == result.difference.high == 0.0   # both resampled with the same draws
    assert result.p_value == 1.0
    assert stats.permutation_pvalue(counts[:8], counts[:8].copy()) == 1.0   # exact path too


def test_a_session_better_on_every_image_gets_a_tiny_p_and_a_positive_interval() -> None:
    worse = np.tile([1, 1, 1], (40, 1))
    better = np.tile([2, 0, 0], (40, 1))
    result = stats.compare_paired(better, worse)
    assert result.difference.estimate == pytest.approx(1.0 - 0.5)
    assert result.difference.low > 0
    assert result.p_value < 0.001
    assert stats.compare_paired(worse, better).difference.high < 0


def _scipy_paired_pvalue(a: np.ndarray, b: np.ndarray, **options: object) -> float:
    """scipy's paired ('samples') permutation test of the micro-F1 difference, on row indices."""
    n = len(a)
    table = np.concatenate([a, b])

    def difference(rows_a: np.ndarray, rows_b: np.ndarray, axis: int) -> np.ndarray:
        rows_a, rows_b = np.moveaxis(rows_a, axis, -1), np.moveaxis(rows_b, axis, -1)
        return stats.micro_f1(table[rows_a.astype(int)]) - stats.micro_f1(table[rows_b.astype(int)])

    return scipy_stats.permutation_test((np.arange(float(n)), np.arange(float(n), 2.0 * n)), difference,
                                        permutation_type="samples", vectorized=True, **options).pvalue


def test_permutation_pvalue_equals_scipy_exact_test() -> None:
    a, b = _random_counts(10, seed=4), _random_counts(10, seed=5)
    expected = _scipy_paired_pvalue(a, b)
    assert stats.permutation_pvalue(a, b) == pytest.approx(expected)   # 2**10 <= 9999: both exact


def test_permutation_pvalue_close_to_scipy_random_test() -> None:
    a, b = _random_counts(40, seed=6), _random_counts(40, seed=8)
    expected = _scipy_paired_pvalue(a, b, n_resamples=50000, rng=np.random.default_rng(0))
    assert stats.permutation_pvalue(a, b, n_permutations=50000) == pytest.approx(expected, abs=0.015)


def test_a_nan_score_gives_no_p_value_not_the_smallest_one() -> None:
    """NaN compares false both ways: p came out 2 / (P + 1) (0 for an exact test), and BH counted it as a test."""
    scores = np.random.default_rng(3).random(12)
    with_nan = scores.copy()
    with_nan[4] = np.nan
    assert np.isnan(stats.permutation_pvalue(with_nan, scores, stats.mean_statistic))
    assert np.isnan(stats.two_level_permutation_pvalue(with_nan[None, :], scores[None, :]))
    assert np.isfinite(stats.permutation_pvalue(scores[::-1], scores, stats.mean_statistic))


def test_benjamini_hochberg_matches_hand_computation_and_keeps_nan() -> None:
    # sorted 0.01, 0.03, 0.04, 0.20 -> raw 0.04, 0.06, 0.0533, 0.20 -> running min from the top
    adjusted = stats.benjamini_hochberg(np.array([0.01, 0.04, np.nan, 0.03, 0.20]))
    np.testing.assert_allclose(adjusted, [0.04, 0.16 / 3, np.nan, 0.16 / 3, 0.20])
    many = np.random.default_rng(14).random(300) ** 3                  # ties and small p-values, against the
    many[::7] = many[1]                                                 # textbook step-up: p_(i) m / i, min from the top
    order = np.argsort(many)
    step_up = np.empty(len(many))
    step_up[order] = np.minimum(1, np.minimum.accumulate((many[order] * len(many) / np.arange(1, 301))[::-1])[::-1])
    np.testing.assert_allclose(stats.benjamini_hochberg(many), step_up, rtol=0, atol=1e-15)


def test_ratio_interval_of_identical_splits_is_one() -> None:
    counts = _random_counts(30, seed=9)

    def ratio(numerator: np.ndarray, denominator: np.ndarray) -> stats.Interval:
        return stats.bootstrap(np.stack([numerator, denominator], axis=1), stats.ratio_f1_statistic)

    interval = ratio(counts, counts.copy())
    assert (interval.estimate, interval.low, interval.high) == pytest.approx((1.0, 1.0, 1.0))
    nothing_found = np.tile([0, 0, 2], (30, 1))
    assert np.isnan(ratio(counts, nothing_found).estimate)


def _scipy_paired_mean_pvalue(a: np.ndarray, b: np.ndarray, **options: object) -> float:
    """scipy's paired ('samples') permutation test of mean(a) - mean(b)."""
    return scipy_stats.permutation_test((a, b), lambda x, y, axis: np.mean(x, axis=axis) - np.mean(y, axis=axis),
                                        permutation_type="samples", vectorized=True, **options).pvalue


def test_mean_permutation_pvalue_equals_scipy_exact_test() -> None:
    rng = np.random.default_rng(10)
    a, b = rng.random(11), rng.random(11)
    assert stats.permutation_pvalue(a, b, stats.mean_statistic) == pytest.approx(_scipy_paired_mean_pvalue(a, b))
    ties = np.array([1.0, 1.0, 0.5, 0.0, 1.0, 0.5, 1.0, 0.0])          # per-image F1 values tie a lot
    other = np.array([1.0, 0.5, 0.5, 0.5, 1.0, 0.0, 1.0, 1.0])
    assert stats.permutation_pvalue(ties, other, stats.mean_statistic) == pytest.approx(
        _scipy_paired_mean_pvalue(ties, other))
    assert stats.permutation_pvalue(ties, ties.copy(), stats.mean_statistic) == 1.0


def test_paired_mean_comparison_of_a_constant_shift() -> None:
    base = np.random.default_rng(11).random(40)
    result = stats.compare_paired(base + 0.1, base, statistic=stats.mean_statistic)
    assert (result.difference.estimate, result.difference.low, result.difference.high) == pytest.approx((0.1,) * 3)
    assert result.p_value < 0.001 and result.n_images == 40


def test_reversed_comparison_is_the_other_reading_of_one_test() -> None:
    a, b = _random_counts(30, seed=12), _random_counts(30, seed=13)
    forward, backward = stats.compare_paired(a, b), stats.compare_paired(b, a)
    flipped = stats.reversed_comparison(forward)
    assert flipped.p_value == forward.p_value == pytest.approx(backward.p_value)
    assert (flipped.difference.estimate, flipped.difference.low, flipped.difference.high) == pytest.approx(
        (backward.difference.estimate, backward.difference.low, backward.difference.high))
    same = stats.reversed_comparison(stats.compare_paired(a, a.copy()))
    assert f"{same.difference.estimate:+.3f}" == "+0.000"          # never "-0.000" in the report


def _simulated_experiment(rng: np.random.Generator, n_seeds: int, n_images: int, seed_sd: float, noise_sd: float,
                          effect: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-seed per-image scores of two sessions on the same images: image difficulty (shared), a planted
    seed effect per training run, per-run-per-image noise; session a is `effect` above b."""
    image = rng.normal(0.5, 0.2, n_images)
    a = image + effect + rng.normal(0, seed_sd, (n_seeds, 1)) + rng.normal(0, noise_sd, (n_seeds, n_images))
    b = image + rng.normal(0, seed_sd, (n_seeds, 1)) + rng.normal(0, noise_sd, (n_seeds, n_images))
    return a, b


def test_two_level_interval_covers_a_planted_seed_effect_95_percent() -> None:
    rng, effect, hits, dominant = np.random.default_rng(2027), 0.05, 0, []
    for experiment in range(240):
        a, b = _simulated_experiment(rng, n_seeds=5, n_images=100, seed_sd=0.05, noise_sd=0.1, effect=effect)
        result = stats.two_level_difference(a, b, n_resamples=1000, seed=experiment)
        hits += result.difference.low <= effect <= result.difference.high
        dominant.append("seeds" if result.seed_sd > result.image_sd else "images")
    assert 0.92 <= hits / 240 <= 0.98
    assert dominant.count("seeds") / 240 > 0.9              # the planted seed effect is the larger level


def test_image_only_interval_misses_the_seed_spread() -> None:
    # the same experiments, intervals over images only (seeds pooled): far below 95% coverage
    rng, effect, hits = np.random.default_rng(2027), 0.05, 0
    for experiment in range(100):
        a, b = _simulated_experiment(rng, n_seeds=5, n_images=100, seed_sd=0.05, noise_sd=0.1, effect=effect)
        interval = stats.paired_difference(a.mean(axis=0), b.mean(axis=0), stats.mean_statistic, n_resamples=1000,
                                           seed=experiment)
        hits += interval.low <= effect <= interval.high
    assert hits / 100 < 0.8


def test_two_level_f1_of_one_seed_is_the_image_bootstrap() -> None:
    a, b = _random_counts(60, seed=3), _random_counts(60, seed=4)
    two = stats.two_level_difference(a[None], b[None], kind="micro_f1", n_resamples=500, seed=7)
    one = stats.paired_difference(a, b, n_resamples=500, seed=7)
    assert (two.difference.estimate, two.difference.low, two.difference.high) == pytest.approx(
        (one.estimate, one.low, one.high))
    assert two.seed_sd == pytest.approx(0.0, abs=1e-12) and two.seed_sd <= two.image_sd
    pooled = stats.two_level_difference(np.stack([a, a]), b[None], kind="micro_f1", n_resamples=50)
    assert pooled.difference.estimate == pytest.approx(float(stats.micro_f1(a) - stats.micro_f1(b)))
    with pytest.raises(ValueError, match="aligned on the same N images"):
        stats.two_level_difference(a[None], b[None, :30], kind="micro_f1")


def test_two_level_permutation_counts_runs_not_images() -> None:
    rng = np.random.default_rng(5)
    image = rng.normal(0.5, 0.2, 200)
    a = image + 0.3 + rng.normal(0, 0.01, (3, 200))              # a far above b on every run
    b = image + rng.normal(0, 0.01, (3, 200))
    p = stats.two_level_permutation_pvalue(a, b)
    assert p == pytest.approx(0.1)                               # 2 / 20 splits: the best 3 + 3 runs can give
    assert stats.permutation_pvalue(a.mean(axis=0), b.mean(axis=0), stats.mean_statistic) < 0.001   # images only
    same = stats.two_level_permutation_pvalue(a, a.copy())
    assert same == 1.0
    counts_a = rng.integers(0, 4, (3, 50, 3))
    p_f1 = stats.two_level_permutation_pvalue(counts_a, counts_a[::-1].copy(), kind="micro_f1")
    assert p_f1 == 1.0                                           # the same runs relabelled: no difference
