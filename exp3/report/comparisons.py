"""Intervals and paired comparisons (comparisons.csv): every session vs S1 and vs S2 per metric and
threshold, BH-adjusted, and how one comparison reads (its interval's side of 0)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from exp3 import stats
from exp3.layout import SessionState
from exp3.report.mapdraws import MAP_RESAMPLES, MapDraws, map_interval
from exp3.report.runs import THRESHOLDS, SessionRun, load_records, threshold_conf
from exp3.report.scores import IMAGE_COUNT_COLUMNS, IMAGE_MEAN_COLUMNS, pool_image_scores, run_image_scores
from exp3.report.tables import split_row
from exp3.sessions import REFERENCES, SESSION_LABELS, SESSION_SUFFIXES
from exp3.splits import CLEAN_SPLIT, FIXED_SPLIT, PRIMARY_SPLITS

PAIRED_METRICS: tuple[str, ...] = ("ingredient_micro_f1", "ingredient_samples_f1", "detection_f1")
"""Metrics with a per-image decomposition: paired bootstrap interval and permutation p (exp3.stats)."""
MAP_METRICS: tuple[str, ...] = ("map50", "map50_95")
"""The validator's mAP: no per-image score, but a paired bootstrap interval recomputed from the validator's
per-image matching stats (`map_stats_<split>.npz`, exp3.mapstats); no permutation p (a point estimate only
when those files are missing, e.g. a session evaluated before they existed)."""
POOLED_COLUMNS: tuple[str, ...] = ("ingredient_micro_f1", "ingredient_micro_f1_at_val", "rF1_micro")
"""summary_metrics columns whose interval or paired differences are of the seed-pooled statistic (F1 of the
per-image counts summed over a session's seeds): `attach_statistics` shows that statistic in them, so a point,
its interval and its differences are one statistic; the mean over seeds of metrics.json's values stays in
`<column>_seed_mean` (and is the value where a session has no per-image counts: then no interval either)."""
METRIC_LABELS: dict[str, str] = {"ingredient_micro_f1": "ingredient micro F1",
                                 "ingredient_samples_f1": "ingredient samples F1", "detection_f1": "detection F1",
                                 "map50": "mAP50", "map50_95": "mAP50-95"}
VAL_PLAN: tuple[tuple[str, str], ...] = (("S2_occ_train", "S1_clean_train"),)
"""(session, reference) rows compared at the val-chosen threshold (the primary threshold compares all)."""
COMPARISON_COLUMNS: tuple[str, ...] = ("model", "split", "metric", "threshold", "session", "session_label",
                                       "reference", "pair", "conf", "reference_conf", "difference", "ci_low",
                                       "ci_high", "p_value", "bh_family", "p_bh", "n_images", "interval_levels",
                                       "image_sd", "seed_sd")
"""`interval_levels`: what the interval and test resample: `images` (one seed a side: the seed spread is not in
the interval), `seeds+images` (two-level bootstrap and run-label permutation, exp3.stats.two_level_difference);
`image_sd` / `seed_sd`: the spread of the difference with only that level resampled (NaN with one seed)."""


def _paired(a: pd.DataFrame, b: pd.DataFrame) -> tuple[np.ndarray, np.ndarray] | None:
    common = a.index.intersection(b.index, sort=False)
    return (a.loc[common].to_numpy(), b.loc[common].to_numpy()) if len(common) else None


@dataclass(frozen=True)
class SessionComparison:
    """A paired comparison and the levels its interval resampled (see COMPARISON_COLUMNS)."""

    comparison: stats.PairedComparison
    interval_levels: str = "images"
    image_sd: float = math.nan
    seed_sd: float = math.nan

    def reversed(self) -> "SessionComparison":
        return SessionComparison(stats.reversed_comparison(self.comparison), self.interval_levels, self.image_sd,
                                 self.seed_sd)


def _seed_stack(frames: list[pd.DataFrame], ids: pd.Index, columns: list[str]) -> np.ndarray | None:
    """(K, N, C) per-seed values on `ids` (None when a seed lacks one of them)."""
    if not all(ids.isin(frame.index).all() for frame in frames):
        return None
    return np.stack([frame.loc[ids, columns].to_numpy(dtype=np.float64) for frame in frames])


def compare_seeds(metric: str, a: list[pd.DataFrame], b: list[pd.DataFrame],
                  n_resamples: int = stats.DEFAULT_RESAMPLES, n_permutations: int = stats.DEFAULT_PERMUTATIONS,
                  seed: int = stats.DEFAULT_SEED) -> SessionComparison | None:
    """Two sessions' per-seed frames (several seeds on a side): two-level bootstrap interval over seeds and images,
    run-label permutation p (exp3.stats), on the images every seed of both sessions has."""
    if not a or not b:
        return None
    ids = pd.Index(sorted(set.intersection(*(set(frame.index) for frame in (*a, *b)))))
    if not len(ids):
        return None
    kind = "mean" if metric in IMAGE_MEAN_COLUMNS else "micro_f1"
    columns = [IMAGE_MEAN_COLUMNS[metric]] if kind == "mean" else list(IMAGE_COUNT_COLUMNS[metric])
    stack_a, stack_b = _seed_stack(a, ids, columns), _seed_stack(b, ids, columns)
    if stack_a is None or stack_b is None:
        return None
    if kind == "mean":
        stack_a, stack_b = stack_a[..., 0], stack_b[..., 0]
    two = stats.two_level_difference(stack_a, stack_b, kind, n_resamples=n_resamples, seed=seed)
    p_value = stats.two_level_permutation_pvalue(stack_a, stack_b, kind, n_permutations, seed)
    return SessionComparison(stats.PairedComparison(two.difference, p_value, len(ids)), "seeds+images",
                             two.image_sd, two.seed_sd)


def compare_metric(metric: str, a: pd.DataFrame | None, b: pd.DataFrame | None,
                   n_resamples: int = stats.DEFAULT_RESAMPLES, n_permutations: int = stats.DEFAULT_PERMUTATIONS,
                   seed: int = stats.DEFAULT_SEED) -> stats.PairedComparison | None:
    """Session a minus session b on `metric` (one of PAIRED_METRICS), paired on their common image ids.

    `a`, `b`: `image_scores`-like frames (None: not available -> None). Micro and detection F1:
    `stats.compare_paired` on the per-image counts; samples F1: `stats.compare_paired_means` on
    the per-image F1.
    """
    if metric not in PAIRED_METRICS:
        raise ValueError(f"metric {metric!r} has no per-image decomposition; pass one of {', '.join(PAIRED_METRICS)}")
    if a is None or b is None:
        return None
    options = {"n_resamples": n_resamples, "n_permutations": n_permutations, "seed": seed}
    if metric in IMAGE_MEAN_COLUMNS:
        column = IMAGE_MEAN_COLUMNS[metric]
        pair = _paired(a[[column]], b[[column]])
        return stats.compare_paired_means(pair[0][:, 0], pair[1][:, 0], **options) if pair else None
    columns = list(IMAGE_COUNT_COLUMNS[metric])
    pair = _paired(a[columns], b[columns])
    return stats.compare_paired(*pair, **options) if pair else None


def pair_key(session: str, reference: str) -> str:
    """The unordered pair of two sessions, in S1..S6 order: `S1_clean_train|S2_occ_train` for either reading."""
    first, second = sorted((session, reference), key=SESSION_SUFFIXES.index)
    return f"{first}|{second}"


def comparison_plan(threshold: str) -> list[tuple[str, str]]:
    """(session, reference) rows of one model x split: every session vs S1 and vs S2 at the primary
    threshold (S1 vs S2 and S2 vs S1 both listed, one test), VAL_PLAN at the val-chosen threshold."""
    if threshold == "val":
        return list(VAL_PLAN)
    return [(suffix, reference) for reference in REFERENCES for suffix in SESSION_SUFFIXES if suffix != reference]


def bh_tests(comparisons: pd.DataFrame) -> pd.DataFrame:
    """The input of Benjamini-Hochberg: one row per distinct test, i.e. per bh_family x model x split x pair.

    Rows without a p-value (mAP, not-done sessions) are no test. The two readings of one pair
    (S2 vs S1, S1 vs S2) share a p-value and appear here once.
    """
    keys = ["bh_family", "model", "split", "pair"]
    tested = comparisons[comparisons["p_value"].notna() & (comparisons["bh_family"] != "")]
    return tested.drop_duplicates(keys)[keys + ["p_value"]].reset_index(drop=True)


def adjust_p_values(comparisons: pd.DataFrame) -> np.ndarray:
    """p_bh of every comparisons row: BH within each bh_family over `bh_tests` (distinct pairs), NaN for no test."""
    tests = bh_tests(comparisons)
    adjusted = []
    for _, family in tests.groupby("bh_family", sort=False):
        adjusted.append(family.assign(p_bh=stats.benjamini_hochberg(family["p_value"].to_numpy())))
    keys = ["bh_family", "model", "split", "pair"]
    if not adjusted:
        return np.full(len(comparisons), np.nan)
    lookup = pd.concat(adjusted)[keys + ["p_bh"]]
    return comparisons[keys].merge(lookup, on=keys, how="left")["p_bh"].to_numpy(dtype=np.float64)


def _mean_of(values: list[float]) -> float:
    finite = [value for value in values if value is not None and math.isfinite(value)]
    return float(np.mean(finite)) if finite else math.nan


def statistics_tables(runs: list[SessionRun], models: list[str], n_resamples: int = stats.DEFAULT_RESAMPLES,
                      n_permutations: int = stats.DEFAULT_PERMUTATIONS,
                      seed: int = stats.DEFAULT_SEED) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Bootstrap intervals per session and paired comparisons vs S1 / S2 (module docstring of exp3.stats).

    Returns:
        (intervals, comparisons).
        intervals: one row per model x session x split: ingredient_micro_f1_ci_low/high (F1 of the
            pooled counts), rF1_micro_ci_low/high (occluded / clean, paired on image ids), ci_images, and the
            pooled statistics themselves, `<column>_pooled` for POOLED_COLUMNS.
        comparisons: COMPARISON_COLUMNS, one row per model x split x metric x threshold x (session,
            reference) of `comparison_plan`: difference (session - reference), ci_low/high, p_value;
            PAIRED_METRICS at both thresholds, MAP_METRICS (mAP: threshold-free, listed under
            `primary`; paired bootstrap interval from the validator's per-image stats, `map_interval`,
            no p) at `primary`. `pair` names the unordered pair; both readings of a pair carry one test
            (negated difference, same p). p_bh: BH within `bh_family` = "<metric>@<threshold>"
            over distinct pairs of every model and split (`bh_tests`). NaN where a side is missing.
    """
    grouped: dict[tuple[str, str], list[SessionRun]] = {}
    for run in runs:
        grouped.setdefault((run.model, run.suffix), []).append(run)
    scores: dict[tuple[str, str, str, str], pd.DataFrame | None] = {}
    seed_scores: dict[tuple[str, str, str, str], list[pd.DataFrame]] = {}
    confs: dict[tuple[str, str, str, str], float] = {}
    points: dict[tuple[str, str, str], dict[str, float]] = {}
    for model in models:
        for suffix in SESSION_SUFFIXES:
            done = [run for run in grouped.get((model, suffix), []) if run.status == SessionState.DONE]
            for split in PRIMARY_SPLITS:
                rows = [split_row(run, split) for run in done]
                points[(model, suffix, split)] = {column: _mean_of([row[column] for row in rows])
                                                  for column in (*MAP_METRICS, "n_images")}
                frames: dict[str, list[pd.DataFrame]] = {threshold: [] for threshold in THRESHOLDS}
                used: dict[str, list[float]] = {threshold: [] for threshold in THRESHOLDS}
                for run in done:
                    records = load_records(run, split)
                    for threshold in THRESHOLDS if records else ():
                        frame = run_image_scores(run, split, threshold, records)
                        if frame is not None:
                            frames[threshold].append(frame)
                            used[threshold].append(threshold_conf(run.metrics, split, threshold) or math.nan)
                for threshold in THRESHOLDS:
                    scores[(model, suffix, split, threshold)] = pool_image_scores(frames[threshold])
                    seed_scores[(model, suffix, split, threshold)] = frames[threshold]
                    confs[(model, suffix, split, threshold)] = _mean_of(used[threshold])
    map_draws = MapDraws(grouped, min(n_resamples, MAP_RESAMPLES), seed)
    count_columns = list(IMAGE_COUNT_COLUMNS["ingredient_micro_f1"])
    interval_rows, comparison_rows = [], []
    for model in models:
        for suffix in SESSION_SUFFIXES:
            clean, occluded = (scores[(model, suffix, split, "primary")] for split in (CLEAN_SPLIT, FIXED_SPLIT))
            robust = _paired(occluded[count_columns], clean[count_columns]) \
                if clean is not None and occluded is not None else None
            ratio = stats.bootstrap_ratio_interval(*robust, n_resamples=n_resamples, seed=seed) if robust else None
            for split in PRIMARY_SPLITS:
                own, at_val = (scores[(model, suffix, split, threshold)] for threshold in THRESHOLDS)
                interval = stats.bootstrap_f1_interval(own[count_columns].to_numpy(), n_resamples=n_resamples,
                                                       seed=seed) if own is not None else None
                interval_rows.append({
                    "model": model, "session": suffix, "split": split,
                    "ingredient_micro_f1_pooled": interval.estimate if interval else math.nan,
                    "ingredient_micro_f1_ci_low": interval.low if interval else math.nan,
                    "ingredient_micro_f1_ci_high": interval.high if interval else math.nan,
                    "ingredient_micro_f1_at_val_pooled": math.nan if at_val is None else
                    float(stats.micro_f1(at_val[count_columns].to_numpy())),
                    "rF1_micro_pooled": ratio.estimate if ratio else math.nan,
                    "rF1_micro_ci_low": ratio.low if ratio else math.nan,
                    "rF1_micro_ci_high": ratio.high if ratio else math.nan,
                    "ci_images": len(own) if own is not None else 0})
        for split in PRIMARY_SPLITS:
            for threshold in THRESHOLDS:
                metrics = PAIRED_METRICS + (MAP_METRICS if threshold == "primary" else ())
                for metric in metrics:
                    done_pairs: dict[str, tuple[str, SessionComparison | None]] = {}
                    for suffix, reference in comparison_plan(threshold):
                        key = pair_key(suffix, reference)
                        row = {"model": model, "split": split, "metric": metric, "threshold": threshold,
                               "session": suffix, "session_label": SESSION_LABELS[suffix], "reference": reference,
                               "pair": key, "conf": math.nan, "reference_conf": math.nan,
                               "difference": math.nan, "ci_low": math.nan, "ci_high": math.nan,
                               "p_value": math.nan, "bh_family": "", "n_images": 0, "interval_levels": "",
                               "image_sd": math.nan, "seed_sd": math.nan}
                        if metric in MAP_METRICS:
                            a, b = points[(model, suffix, split)], points[(model, reference, split)]
                            row.update(difference=a[metric] - b[metric],
                                       n_images=0 if math.isnan(a["n_images"]) else int(a["n_images"]))
                            low, high = map_interval(map_draws, (model, suffix, split), (model, reference, split),
                                                     MAP_METRICS.index(metric), row["difference"])
                            row.update(ci_low=low, ci_high=high, interval_levels="images" if math.isfinite(low) else "")
                            comparison_rows.append(row)
                            continue
                        if key in done_pairs:                       # the other reading of a pair: one test
                            first, result = done_pairs[key]
                            result = result if first == suffix or result is None else result.reversed()
                        else:
                            seeds_a = seed_scores[(model, suffix, split, threshold)]
                            seeds_b = seed_scores[(model, reference, split, threshold)]
                            if max(len(seeds_a), len(seeds_b)) > 1:
                                result = compare_seeds(metric, seeds_a, seeds_b, n_resamples, n_permutations, seed)
                            else:
                                single = compare_metric(metric, scores[(model, suffix, split, threshold)],
                                                        scores[(model, reference, split, threshold)], n_resamples,
                                                        n_permutations, seed)
                                result = None if single is None else SessionComparison(single)
                            done_pairs[key] = (suffix, result)
                        row.update(conf=confs[(model, suffix, split, threshold)],
                                   reference_conf=confs[(model, reference, split, threshold)],
                                   bh_family=f"{metric}@{threshold}")
                        if result is not None:
                            found = result.comparison
                            row.update(difference=found.difference.estimate, ci_low=found.difference.low,
                                       ci_high=found.difference.high, p_value=found.p_value,
                                       n_images=found.n_images, interval_levels=result.interval_levels,
                                       image_sd=result.image_sd, seed_sd=result.seed_sd)
                        comparison_rows.append(row)
    comparisons = pd.DataFrame(comparison_rows, columns=[c for c in COMPARISON_COLUMNS if c != "p_bh"])
    comparisons.insert(COMPARISON_COLUMNS.index("p_bh"), "p_bh", adjust_p_values(comparisons))
    return pd.DataFrame(interval_rows), comparisons


def primary_f1(comparisons: pd.DataFrame) -> pd.DataFrame:
    """The rows of the headline comparisons: ingredient micro F1 at the primary threshold."""
    return comparisons[(comparisons["metric"] == "ingredient_micro_f1") & (comparisons["threshold"] == "primary")]


def attach_statistics(summary: pd.DataFrame, intervals: pd.DataFrame, comparisons: pd.DataFrame) -> pd.DataFrame:
    """summary + CI columns + per reference R in (S1, S2): diff_vs_R, diff_vs_R_ci_low/high, p_vs_R, p_bh_vs_R
    (ingredient micro F1 at the primary threshold; the other metrics are in comparisons).

    POOLED_COLUMNS then hold the seed-pooled statistic their interval and differences are of (`intervals`'
    `<column>_pooled`), the seed mean moved to `<column>_seed_mean`: with several seeds the mean of the seeds'
    F1 is not the pooled F1, and a row's point, interval and diff_vs_R must be one statistic.
    """
    keys = ["model", "session", "split"]
    merged = summary.merge(intervals, on=keys, how="left")
    for column in POOLED_COLUMNS:
        pooled = merged.pop(f"{column}_pooled")
        merged.insert(merged.columns.get_loc(column) + 1, f"{column}_seed_mean", merged[column])
        merged[column] = pooled.fillna(merged[column])
    headline = primary_f1(comparisons)
    for reference in REFERENCES:
        short = reference.split("_")[0]
        part = headline[headline["reference"] == reference][keys + ["difference", "ci_low", "ci_high",
                                                                    "p_value", "p_bh"]]
        part = part.rename(columns={"difference": f"diff_vs_{short}", "ci_low": f"diff_vs_{short}_ci_low",
                                    "ci_high": f"diff_vs_{short}_ci_high", "p_value": f"p_vs_{short}",
                                    "p_bh": f"p_bh_vs_{short}"})
        merged = merged.merge(part, on=keys, how="left")
    return merged


def ci_verdict(row: pd.Series) -> int | None:
    """+1 / -1 when the difference's 95% interval lies above / below 0, 0 when it contains 0, None without one."""
    if pd.isna(row["ci_low"]) or pd.isna(row["ci_high"]):
        return None
    return 1 if row["ci_low"] > 0 else (-1 if row["ci_high"] < 0 else 0)


def comparison_metrics(comparisons: pd.DataFrame, model: str, split: str, session: str, reference: str,
                       threshold: str = "primary") -> dict[str, pd.Series]:
    """metric -> comparisons row of one session vs reference (the rows with a difference only)."""
    part = comparisons[(comparisons["model"] == model) & (comparisons["split"] == split)
                       & (comparisons["session"] == session) & (comparisons["reference"] == reference)
                       & (comparisons["threshold"] == threshold) & comparisons["difference"].notna()]
    return {row["metric"]: row for _, row in part.iterrows()}
