"""Intervals and paired comparisons (comparisons.csv): every session vs S1 and vs S2 per metric and
threshold, BH-adjusted, and how one comparison reads (its interval's side of 0). Columns and rules:
docs/report.md, "comparisons.csv", "Intervals and p-values" and "Several seeds"."""

from __future__ import annotations

import math
from dataclasses import astuple, dataclass, replace

import numpy as np
import pandas as pd

from exp3.evaluate import stats
from exp3.evaluate.severity import METRICS
from exp3.report.draws import ReportData, align, stack
from exp3.report.runs import THRESHOLDS, as_number, threshold_conf
from exp3.report.text import short_session
from exp3.sessions import REFERENCES, SESSION_LABELS, SESSION_SUFFIXES
from exp3.splits import CLEAN_SPLIT, FIXED_SPLIT, PRIMARY_SPLITS

PAIRED_METRICS: tuple[str, ...] = tuple(key for key, metric in METRICS.items() if metric.kind != "map")
"""Metrics with a per-image decomposition: paired bootstrap interval and permutation p (exp3.evaluate.stats)."""
MAP_METRICS: tuple[str, ...] = tuple(key for key, metric in METRICS.items() if metric.kind == "map")
"""The validator's mAP: a paired bootstrap interval from `map_stats_<split>.npz`, no permutation p."""
POOLED_COLUMNS: tuple[str, ...] = ("ingredient_micro_f1", "ingredient_micro_f1_at_val", "rF1_micro", "detection_f1",
                                   "detection_f1_at_val")
"""summary_metrics columns that hold the seed-pooled statistic (docs/report.md, "Several seeds")."""
VAL_PLAN: tuple[tuple[str, str], ...] = (("S2_occ_train", "S1_clean_train"),)
"""(session, reference) rows compared at the val-chosen threshold (the primary threshold compares all)."""
COMPARISON_COLUMNS: tuple[str, ...] = ("model", "split", "metric", "threshold", "session", "session_label",
                                       "reference", "pair", "conf", "reference_conf", "difference", "ci_low",
                                       "ci_high", "p_value", "bh_family", "p_bh", "n_images", "interval_levels",
                                       "image_sd", "seed_sd")
KINDS: dict[str, str] = {"count": "micro_f1", "mean": "mean"}
"""A metric's kind (exp3.evaluate.severity.Metric) -> the statistic of exp3.evaluate.stats that compares it."""


@dataclass(frozen=True)
class SessionComparison:
    """A paired comparison and the levels its interval resampled (see COMPARISON_COLUMNS)."""

    comparison: stats.PairedComparison
    interval_levels: str = "images"
    image_sd: float = math.nan
    seed_sd: float = math.nan

    def reversed(self) -> "SessionComparison":
        return replace(self, comparison=stats.reversed_comparison(self.comparison))


def compare_sessions(metric: str, a: list[pd.DataFrame | None], b: list[pd.DataFrame | None], data: ReportData,
                     n_permutations: int = stats.DEFAULT_PERMUTATIONS,
                     seed_weights: tuple[np.ndarray, np.ndarray] | None = None) -> SessionComparison | None:
    """Session a minus session b on `metric` (one of PAIRED_METRICS) from their per-seed score frames, on the image
    ids every seed of both holds (`draws.align`: None when a seed has none or they hold other images); with several
    seeds a side, over seeds and images (docs/report.md, "Several seeds"), each side's seeds drawn as `seed_weights`
    (`ReportData.seed_weights`: the draws of gap closed and severity too)."""
    aligned = align([*a, *b])
    if not a or not b or aligned.reason or not len(aligned.ids):
        return None
    kind, ids, weights = KINDS[METRICS[metric].kind], aligned.ids, data.image_weights(len(aligned.ids))
    values_a, values_b = (stack(frames, ids, METRICS[metric].columns) for frames in (a, b))
    if kind == "mean":
        values_a, values_b = values_a[..., 0], values_b[..., 0]
    if max(len(a), len(b)) == 1:
        return SessionComparison(stats.compare_paired(values_a[0], values_b[0], n_resamples=data.n_resamples,
                                                      n_permutations=n_permutations, seed=data.seed,
                                                      statistic=stats.STATISTICS[kind], image_weights=weights))
    two = stats.two_level_difference(values_a, values_b, kind, n_resamples=data.n_resamples, seed=data.seed,
                                     image_weights=weights, seed_weights=seed_weights)
    p_value = stats.two_level_permutation_pvalue(values_a, values_b, kind, n_permutations, data.seed)
    return SessionComparison(stats.PairedComparison(two.difference, p_value, len(ids)), "seeds+images",
                             two.image_sd, two.seed_sd)


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


def adjust_p_values(table: pd.DataFrame, p_column: str, family: list[str], test: list[str]) -> np.ndarray:
    """Benjamini-Hochberg adjusted `p_column` of every row of `table`: one family per value of the `family`
    columns, one test per distinct `family + test` key (rows sharing a key share its p); NaN where untested."""
    keys = family + test
    tested = table[table[p_column].notna()].drop_duplicates(keys)[keys + [p_column]]
    parts = [part.assign(p_bh=stats.benjamini_hochberg(part[p_column].to_numpy()))
             for _, part in tested.groupby(family, sort=False)]
    if not parts:
        return np.full(len(table), np.nan)
    lookup = pd.concat(parts)[keys + ["p_bh"]]
    return table[keys].merge(lookup, on=keys, how="left")["p_bh"].to_numpy(dtype=np.float64)


def _mean_of(values: list[float]) -> float:
    """The mean over the seeds; NaN when a seed's value is missing (never the mean of some of them) or none is done."""
    return float(np.mean(values)) if values else math.nan


def _interval_columns(name: str, interval: stats.Interval | None) -> dict[str, float]:
    """`<name>_pooled`, `<name>_ci_low`, `<name>_ci_high` of an interval row (NaN without an interval)."""
    values = astuple(interval) if interval else (math.nan,) * 3
    return dict(zip((f"{name}_pooled", f"{name}_ci_low", f"{name}_ci_high"), values))


def _intervals(data: ReportData, model: str, suffix: str) -> list[dict[str, object]]:
    """The interval rows of one session (`statistics_tables`), on the report's image draws."""
    columns, detection = list(METRICS["ingredient_micro_f1"].columns), list(METRICS["detection_f1"].columns)
    clean, occluded = (data.pooled(model, suffix, split) for split in (CLEAN_SPLIT, FIXED_SPLIT))
    robust = align([occluded, clean])
    ratio = None if robust.reason else stats.bootstrap(
        np.stack([occluded.loc[robust.ids, columns], clean.loc[robust.ids, columns]], axis=1),
        stats.ratio_f1_statistic, image_weights=data.image_weights(len(robust.ids)))
    rows = []
    for split in PRIMARY_SPLITS:
        own, at_val = (data.pooled(model, suffix, split, threshold) for threshold in THRESHOLDS)
        interval = None if own is None else stats.bootstrap(own.sort_index()[columns].to_numpy(dtype=np.float64),
                                                            image_weights=data.image_weights(len(own)))
        rows.append({"model": model, "session": suffix, "split": split,
                     **_interval_columns("ingredient_micro_f1", interval),
                     "ingredient_micro_f1_at_val_pooled": math.nan if at_val is None else
                     float(stats.micro_f1(at_val[columns].to_numpy())),
                     **_interval_columns("rF1_micro", ratio), "ci_images": 0 if own is None else len(own),
                     **{f"detection_f1{name}_pooled": math.nan if frame is None else
                        float(stats.micro_f1(frame[detection].to_numpy())) for name, frame in (("", own),
                                                                                              ("_at_val", at_val))}})
    return rows


def _map_row(data: ReportData, model: str, suffix: str, reference: str, split: str, metric: str) -> dict[str, object]:
    """difference, n_images and the paired mAP interval of one comparisons row (NaN where not pairable)."""
    points = [[as_number(getattr(run.view.split(split), metric)) for run in data.done(model, name)]
              for name in (suffix, reference)]
    n_images = _mean_of([as_number(run.view.split(split).n_images) for run in data.done(model, suffix)])
    difference = _mean_of(points[0]) - _mean_of(points[1])
    first, second = (data.split_draws(model, name, [split], metric) for name in (suffix, reference))
    paired = first is not None and second is not None
    if paired and first.ids != second.ids:
        difference = math.nan  # the two were evaluated on other images: no difference, as for F1
    low = high = math.nan
    if paired and math.isfinite(difference):
        low, high = stats.percentile_interval(first.draws[:, 0] - second.draws[:, 0], stats.DEFAULT_CONFIDENCE)
    seeds = max(len(data.done(model, name)) for name in (suffix, reference))  # several: seeds drawn too
    levels = ("seeds+images" if seeds > 1 else "images") if math.isfinite(low) else ""
    return {"difference": difference, "n_images": 0 if math.isnan(n_images) else int(n_images), "ci_low": low,
            "ci_high": high, "interval_levels": levels}


def statistics_tables(data: ReportData, models: list[str],
                      n_permutations: int = stats.DEFAULT_PERMUTATIONS) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(intervals, comparisons), all drawn from `data` (exp3.report.draws: its image draws, seeds pooled, image ids
    aligned).

    intervals: one row per model x session x split: ingredient_micro_f1_ci_low/high, rF1_micro_ci_low/high,
    ci_images, and `<column>_pooled` for POOLED_COLUMNS. comparisons: COMPARISON_COLUMNS, one row per model x split
    x metric x threshold x (session, reference) of `comparison_plan` (docs/report.md, "comparisons.csv").
    """
    interval_rows = [row for model in models for suffix in SESSION_SUFFIXES for row in _intervals(data, model, suffix)]
    comparison_rows = []
    for model, split, threshold in ((m, s, t) for m in models for s in PRIMARY_SPLITS for t in THRESHOLDS):
        confs = {suffix: _mean_of([threshold_conf(run, split, threshold) for run in data.done(model, suffix)
                                   if data.scores(run, split, threshold) is not None]) for suffix in SESSION_SUFFIXES}
        for metric in PAIRED_METRICS + (MAP_METRICS if threshold == "primary" else ()):
            done_pairs: dict[str, SessionComparison | None] = {}
            for suffix, reference in comparison_plan(threshold):
                key = pair_key(suffix, reference)
                row = {**dict.fromkeys(COMPARISON_COLUMNS, math.nan), "model": model, "split": split,
                       "metric": metric, "threshold": threshold, "session": suffix,
                       "session_label": SESSION_LABELS[suffix], "reference": reference, "pair": key,
                       "bh_family": "", "n_images": 0, "interval_levels": ""}
                if metric in MAP_METRICS:
                    comparison_rows.append({**row, **_map_row(data, model, suffix, reference, split, metric)})
                    continue
                if key in done_pairs:                       # the other reading of a pair: one test
                    result = done_pairs[key] and done_pairs[key].reversed()
                else:
                    result = done_pairs[key] = compare_sessions(
                        metric, data.seed_scores(model, suffix, split, threshold),
                        data.seed_scores(model, reference, split, threshold), data, n_permutations,
                        (data.seed_weights(model, suffix), data.seed_weights(model, reference)))
                row.update(conf=confs[suffix], reference_conf=confs[reference], bh_family=f"{metric}@{threshold}")
                if result is not None:
                    found = result.comparison
                    row.update(difference=found.difference.estimate, ci_low=found.difference.low,
                               ci_high=found.difference.high, p_value=found.p_value, n_images=found.n_images,
                               interval_levels=result.interval_levels, image_sd=result.image_sd,
                               seed_sd=result.seed_sd)
                comparison_rows.append(row)
    comparisons = pd.DataFrame(comparison_rows, columns=list(COMPARISON_COLUMNS))
    comparisons["p_bh"] = adjust_p_values(comparisons, "p_value", ["bh_family"], ["model", "split", "pair"])
    return pd.DataFrame(interval_rows), comparisons


def primary_f1(comparisons: pd.DataFrame) -> pd.DataFrame:
    """The rows of the headline comparisons: ingredient micro F1 at the primary threshold."""
    return comparisons[(comparisons["metric"] == "ingredient_micro_f1") & (comparisons["threshold"] == "primary")]


def attach_statistics(summary: pd.DataFrame, intervals: pd.DataFrame, comparisons: pd.DataFrame) -> pd.DataFrame:
    """summary + CI columns + per reference R in (S1, S2): diff_vs_R, diff_vs_R_ci_low/high, p_vs_R, p_bh_vs_R
    (ingredient micro F1 at the primary threshold; the other metrics are in comparisons). POOLED_COLUMNS then hold
    the seed-pooled statistic, the seed mean moved to `<column>_seed_mean` (docs/report.md, "Several seeds")."""
    keys = ["model", "session", "split"]
    merged = summary.merge(intervals, on=keys, how="left")
    for column in POOLED_COLUMNS:
        pooled = merged.pop(f"{column}_pooled")
        merged.insert(merged.columns.get_loc(column) + 1, f"{column}_seed_mean", merged[column])
        merged[column] = pooled.fillna(merged[column])
    headline = primary_f1(comparisons)
    for reference in REFERENCES:
        short = short_session(reference)
        names = {"difference": f"diff_vs_{short}", "ci_low": f"diff_vs_{short}_ci_low",
                 "ci_high": f"diff_vs_{short}_ci_high", "p_value": f"p_vs_{short}", "p_bh": f"p_bh_vs_{short}"}
        part = headline.loc[headline["reference"] == reference, keys + list(names)].rename(columns=names)
        merged = merged.merge(part, on=keys, how="left")
    return merged


def ci_verdict(row: pd.Series, low: str = "ci_low", high: str = "ci_high") -> int | None:
    """+1 / -1 when the difference's 95% interval (`row[low]`, `row[high]`) lies above / below 0, 0 when it
    contains 0, None without one."""
    if pd.isna(row[low]) or pd.isna(row[high]):
        return None
    return 1 if row[low] > 0 else (-1 if row[high] < 0 else 0)


def comparison_metrics(comparisons: pd.DataFrame, model: str, split: str, session: str, reference: str,
                       threshold: str = "primary", with_difference: bool = True) -> dict[str, pd.Series]:
    """metric -> comparisons row of one session vs reference (`with_difference`: the rows with a difference only;
    else every metric compared, a NaN difference where the two had no paired values)."""
    part = comparisons[(comparisons["model"] == model) & (comparisons["split"] == split)
                       & (comparisons["session"] == session) & (comparisons["reference"] == reference)
                       & (comparisons["threshold"] == threshold)
                       & (comparisons["difference"].notna() if with_difference else True)]
    return {row["metric"]: row for _, row in part.iterrows()}
