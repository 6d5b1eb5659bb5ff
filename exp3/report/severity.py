"""The report's occlusion severity: the curve per session, mPC and rPC with intervals, paired tests vs S1,
crossings, the severity charts and report.md's section.

mPC and rPC are defined in exp3/severity.py (`METRICS`, `split_value`, and the point values each
session writes into metrics.json, `mpc_summary`):

    mPC(M) = mean over levels k = 1..K of M(test_occ_sev<k>)      mean performance under occlusion
    rPC(M) = mPC(M) / M(test_clean)                               relative performance under occlusion

over the severity suites `test_occ_sev1..K` of exp3/splits.py (severity 0 = test_clean); the report
draws and tests `CURVE_METRICS` (ingredient micro F1 and mAP50). test_occ_fixed (the primary suite)
is not one of the levels: it keeps its own meaning and table.

Intervals: every split holds the same test image ids, so one bootstrap index matrix over the
sorted image ids resamples images jointly across all levels and clean (for F1: pooled per-image
counts, exp3.stats; for mAP: the validator's per-image stats, exp3.mapstats via the report's
`MapDraws`, which uses the same indices). Paired tests vs S1: bootstrap interval of the
difference of mPC (and rPC) with the same indices on both sessions, and for F1 a paired
permutation p-value that swaps an image's results between the two sessions on all levels at
once; p-values are BH-adjusted over the sessions x models of one metric. mAP has intervals but
no p-value, as in the rest of the report.

`crossings` names the sessions below S1 at one severity and above it at another, each side
established by a paired 95% interval of the per-severity difference (severity_curves.csv: diff_*).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from exp3 import stats
from exp3.layout import SessionState
from exp3.report.mapdraws import MAP_RESAMPLES, MapDraws
from exp3.report.scores import IMAGE_COUNT_COLUMNS, pool_image_scores, run_image_scores
from exp3.report.text import markdown_table
from exp3.schema import SeverityLevelView
from exp3.sessions import REFERENCES, SESSION_LABELS, SESSION_SUFFIXES
from exp3.severity import split_value
from exp3.splits import CLEAN_SPLIT

CURVE_METRICS: tuple[str, ...] = ("ingredient_micro_f1", "map50")
"""The metrics the report draws and tests (F1-vs-severity and mAP50-vs-severity)."""
REFERENCE: str = REFERENCES[0]
"""The session every other is compared with: S1_clean_train (exp3.sessions owns the name)."""
CURVE_COLUMNS: tuple[str, ...] = ("model", "session", "session_label", "metric", "severity", "split", "coverage",
                                  "value", "ci_low", "ci_high", "diff_vs_S1", "diff_ci_low", "diff_ci_high", "n_images")
"""`diff_*`: the session minus S1 at that severity, a paired 95% interval (the same image resamples)."""
TABLE_COLUMNS: tuple[str, ...] = ("model", "session", "session_label", "metric", "levels", "clean", "mPC",
                                  "mPC_ci_low", "mPC_ci_high", "rPC", "rPC_ci_low", "rPC_ci_high", "diff_mPC_vs_S1",
                                  "diff_mPC_ci_low", "diff_mPC_ci_high", "diff_rPC_vs_S1", "diff_rPC_ci_low",
                                  "diff_rPC_ci_high", "p_mPC_vs_S1", "p_bh_mPC_vs_S1", "n_images")


def common_levels(runs: Iterable[Any]) -> list[SeverityLevelView]:
    """The severity levels (metrics.json `severity.levels`) every done run of a model recorded on the
    same suite, light to heavy; a level evaluated on different suites by different runs is left out,
    and so is one recorded without its level, split, coverage or suite."""
    done = [run for run in runs if run.status == SessionState.DONE and run.metrics]
    if not done:
        return []
    per_run = [{(level.split, level.suite_id): level for level in run.view.severity.levels
                if None not in (level.level, level.split, level.coverage, level.suite_id)} for run in done]
    shared = set(per_run[0]).intersection(*per_run[1:]) if per_run else set()
    return sorted((per_run[0][key] for key in shared), key=lambda level: level.level)


def _counts(frame: pd.DataFrame | None, ids: pd.Index) -> np.ndarray | None:
    if frame is None or not ids.isin(frame.index).all():
        return None
    return frame.loc[ids, list(IMAGE_COUNT_COLUMNS["ingredient_micro_f1"])].to_numpy()


def severity_tables(runs: list[Any], models: list[str], n_resamples: int = stats.DEFAULT_RESAMPLES,
                    n_permutations: int = stats.DEFAULT_PERMUTATIONS,
                    seed: int = stats.DEFAULT_SEED) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(curves, table): one curve row per model x session x metric x severity (0 = clean), one table row per
    model x session x metric with mPC / rPC, their intervals and the paired comparison vs S1.

    `runs`: the report's `SessionRun`s; seeds of a session are pooled as in the rest of the report.
    """
    grouped: dict[tuple[str, str], list[Any]] = {}
    for run in runs:
        grouped.setdefault((run.model, run.suffix), []).append(run)
    map_draws = MapDraws(grouped, min(n_resamples, MAP_RESAMPLES), seed)
    curve_rows: list[dict[str, Any]] = []
    table_rows: list[dict[str, Any]] = []
    for model in models:
        model_runs = [run for key, group in grouped.items() if key[0] == model for run in group]
        levels = common_levels(model_runs)
        if not levels:
            continue
        splits = [CLEAN_SPLIT, *(level.split for level in levels)]
        coverage = ["clean", *(f"{level.coverage[0]:g}-{level.coverage[1]:g}" for level in levels)]
        suites = {level.split: level.suite_id for level in levels}
        scores: dict[str, list[pd.DataFrame | None]] = {}
        for suffix in SESSION_SUFFIXES:
            done = [run for run in grouped.get((model, suffix), []) if run.status == SessionState.DONE]
            if done:
                scores[suffix] = [pool_image_scores([frame for frame in (
                    _run_scores(run, split, suites.get(split)) for run in done) if frame is not None])
                    for split in splits]
        ids = _shared_ids(frames for per_split in scores.values() for frames in per_split)
        indices = stats.bootstrap_indices(len(ids), n_resamples, seed) if ids is not None and len(ids) else None
        f1: dict[str, tuple[np.ndarray, np.ndarray] | None] = {}   # suffix -> (point (S,), draws (B, S))
        counts: dict[str, np.ndarray] = {}
        for suffix, per_split in scores.items():
            arrays = [_counts(frame, ids) if ids is not None else None for frame in per_split]
            if indices is None or any(array is None for array in arrays):
                f1[suffix] = None
                continue
            stacked = np.stack(arrays, axis=1)                                    # (N, S, 3)
            counts[suffix] = stacked
            f1[suffix] = (stats.micro_f1(stacked, axis=0), _f1_draws(stacked, indices))
        maps: dict[str, tuple[np.ndarray, np.ndarray] | None] = {}
        for suffix in scores:
            got = [map_draws.get(model, suffix, split) for split in splits]
            if any(entry is None for entry in got) or len({entry[0] for entry in got}) != 1:
                maps[suffix] = None
                continue
            points = _map_points(grouped[(model, suffix)], splits)
            maps[suffix] = None if points is None else (points, np.stack([entry[1][:, 0] for entry in got], axis=1))
        for metric, source in (("ingredient_micro_f1", f1), ("map50", maps)):
            reference = source.get(REFERENCE)
            for suffix in scores:
                entry = source.get(suffix)
                for index, split in enumerate(splits):
                    value, low, high, diff, diff_low, diff_high = (math.nan,) * 6
                    if entry is not None:
                        value = float(entry[0][index])
                        low, high = stats.percentile_interval(entry[1][:, index], stats.DEFAULT_CONFIDENCE)
                        if reference is not None and suffix != REFERENCE:  # paired: same resamples for both
                            diff = value - float(reference[0][index])
                            diff_low, diff_high = stats.percentile_interval(
                                entry[1][:, index] - reference[1][:, index], stats.DEFAULT_CONFIDENCE)
                    curve_rows.append({"model": model, "session": suffix, "session_label": SESSION_LABELS[suffix],
                                       "metric": metric, "severity": index, "split": split,
                                       "coverage": coverage[index], "value": value, "ci_low": low, "ci_high": high,
                                       "diff_vs_S1": diff, "diff_ci_low": diff_low, "diff_ci_high": diff_high,
                                       "n_images": 0 if ids is None else len(ids)})
            for suffix in scores:
                table_rows.append(_table_row(model, suffix, metric, source.get(suffix), reference,
                                             counts.get(suffix) if metric == "ingredient_micro_f1" else None,
                                             counts.get(REFERENCE) if metric == "ingredient_micro_f1" else None,
                                             len(levels), 0 if ids is None else len(ids), n_permutations, seed))
    curves = pd.DataFrame(curve_rows, columns=list(CURVE_COLUMNS))
    table = pd.DataFrame(table_rows, columns=list(TABLE_COLUMNS))
    table["p_bh_mPC_vs_S1"] = _bh(table)
    return curves, table


def _run_scores(run: Any, split: str, suite_id: str | None) -> pd.DataFrame | None:
    """`run_image_scores` of one run and split, from predictions_<split>.json only when that file was made
    on `suite_id` (None: no check, test_clean); a file of another suite gives None, never its numbers."""
    from exp3.metrics import records_from_json

    try:
        payload = json.loads((run.folder / f"predictions_{split}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if suite_id is not None and payload.get("suite_id") != suite_id:
        return None
    return run_image_scores(run, split, records=records_from_json(payload.get("images") or []) or None)


def _shared_ids(frames: Iterable[pd.DataFrame | None]) -> pd.Index | None:
    """Sorted image ids present in every frame (None when there is no frame)."""
    present = [frame.index for frame in frames if frame is not None]
    if not present:
        return None
    common = present[0]
    for index in present[1:]:
        common = common.intersection(index, sort=False)
    return pd.Index(sorted(common))


def _f1_draws(stacked: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """(B, S) micro F1 of each split under each resample (same images for every split)."""
    return stats.micro_f1(stacked[indices], axis=1)       # (B, N, S, 3) summed over images -> (B, S)


def _map_points(runs: list[Any], splits: list[str]) -> np.ndarray | None:
    """(S,) recorded mAP50 per split, the seed mean (what metrics.json reports)."""
    values = []
    for split in splits:
        recorded = [split_value(run.view.split(split), "map50") for run in runs if run.status == SessionState.DONE]
        if not recorded or any(value is None for value in recorded):
            return None
        values.append(float(np.mean(recorded)))
    return np.array(values)


def _mpc_rpc(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(..., S) values with clean first -> (mPC, rPC) over the last axis; rPC NaN where clean is 0."""
    mpc = values[..., 1:].mean(axis=-1)
    clean = values[..., 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        rpc = np.where(clean > 0, mpc / np.where(clean > 0, clean, 1.0), np.nan)
    return mpc, rpc


def _interval(draws: np.ndarray) -> tuple[float, float]:
    finite = draws[np.isfinite(draws)]
    return stats.percentile_interval(finite, stats.DEFAULT_CONFIDENCE) if finite.size else (math.nan, math.nan)


def _table_row(model: str, suffix: str, metric: str, entry: tuple[np.ndarray, np.ndarray] | None,
               reference: tuple[np.ndarray, np.ndarray] | None, counts: np.ndarray | None,
               reference_counts: np.ndarray | None, n_levels: int, n_images: int, n_permutations: int,
               seed: int) -> dict[str, Any]:
    row: dict[str, Any] = {column: math.nan for column in TABLE_COLUMNS}
    row.update(model=model, session=suffix, session_label=SESSION_LABELS[suffix], metric=metric, levels=n_levels,
               n_images=n_images)
    if entry is None:
        return row
    point, draws = entry
    mpc, rpc = _mpc_rpc(point)
    mpc_draws, rpc_draws = _mpc_rpc(draws)
    row.update(clean=float(point[0]), mPC=float(mpc), rPC=float(rpc))
    row["mPC_ci_low"], row["mPC_ci_high"] = _interval(mpc_draws)
    row["rPC_ci_low"], row["rPC_ci_high"] = _interval(rpc_draws)
    if reference is None or suffix == REFERENCE or reference[1].shape != draws.shape:
        return row
    ref_mpc, ref_rpc = _mpc_rpc(reference[0])
    ref_mpc_draws, ref_rpc_draws = _mpc_rpc(reference[1])
    row["diff_mPC_vs_S1"], row["diff_rPC_vs_S1"] = float(mpc - ref_mpc), float(rpc - ref_rpc)
    row["diff_mPC_ci_low"], row["diff_mPC_ci_high"] = _interval(mpc_draws - ref_mpc_draws)
    row["diff_rPC_ci_low"], row["diff_rPC_ci_high"] = _interval(rpc_draws - ref_rpc_draws)
    if counts is not None and reference_counts is not None:
        row["p_mPC_vs_S1"] = mpc_permutation_pvalue(counts, reference_counts, n_permutations, seed)
    return row


def mpc_permutation_pvalue(counts_a: np.ndarray, counts_b: np.ndarray, n_permutations: int = stats.DEFAULT_PERMUTATIONS,
                           seed: int = stats.DEFAULT_SEED) -> float:
    """Two-sided p of H0 "a and b are exchangeable on every image" for mPC(micro F1) of a - b.

    `counts_*`: (N, S, 3) per-image (tp, fp, fn) per split, clean first. A permutation swaps an
    image's results of the two sessions on all splits together (the image is the unit).
    """
    if counts_a.shape != counts_b.shape:
        raise ValueError(f"paired counts differ in shape {counts_a.shape} vs {counts_b.shape}: align the image ids")
    if np.array_equal(counts_a, counts_b):
        return 1.0
    masks, exact = stats.swap_masks(len(counts_a), n_permutations, seed)
    delta = (counts_b - counts_a).astype(np.float64)                                    # (N, S, 3)
    shift = np.einsum("pn,nsc->psc", masks.astype(np.float64), delta)                   # (P, S, 3)
    total_a, total_b = counts_a.sum(axis=0).astype(np.float64), counts_b.sum(axis=0).astype(np.float64)
    null_a = stats.micro_f1((total_a + shift)[:, None], axis=1)                         # (P, S)
    null_b = stats.micro_f1((total_b - shift)[:, None], axis=1)
    null = null_a[:, 1:].mean(axis=1) - null_b[:, 1:].mean(axis=1)
    observed = float(stats.micro_f1(counts_a, axis=0)[1:].mean() - stats.micro_f1(counts_b, axis=0)[1:].mean())
    return stats._two_sided_p(null, observed, exact)


def _bh(table: pd.DataFrame) -> np.ndarray:
    """BH-adjusted p_mPC_vs_S1 within each metric over every model x session tested."""
    adjusted = np.full(len(table), np.nan)
    for _, part in table.groupby("metric", sort=False):
        tested = part["p_mPC_vs_S1"].notna()
        if tested.any():
            positions = table.index.get_indexer(part.index[tested])
            adjusted[positions] = stats.benjamini_hochberg(part.loc[tested, "p_mPC_vs_S1"].to_numpy())
    return adjusted


def crossings(curves: pd.DataFrame, model: str, metric: str = "ingredient_micro_f1",
              reference: str = REFERENCE) -> list[str]:
    """Sentences naming the sessions that are below the reference at some severity and above it at another,
    each side established by the paired 95% interval of the difference at that severity (excluding 0).

    Point estimates that merely swap order inside the noise are not crossings: a session whose
    difference interval includes 0 at a level is "not distinguishable" there.
    """
    part = curves[(curves["model"] == model) & (curves["metric"] == metric) & (curves["session"] != reference)]
    short = SESSION_LABELS[reference].split()[0]
    found = []
    for suffix, rows in part.groupby("session", sort=False):
        rows = rows.sort_values("severity")
        above = [int(k) for k, low in zip(rows["severity"], rows["diff_ci_low"]) if low > 0]
        below = [int(k) for k, high in zip(rows["severity"], rows["diff_ci_high"]) if high < 0]
        if above and below:
            def levels(found_at: list[int]) -> str:
                return ("severity " if len(found_at) == 1 else "severities ") + ", ".join(map(str, found_at))

            first, second = (("below", below), ("above", above)) if below[0] < above[0] else \
                (("above", above), ("below", below))
            found.append(f"{SESSION_LABELS[suffix]} is {first[0]} {short} at {levels(first[1])} and "
                         f"{second[0]} it at {levels(second[1])}")
    return found


# ----------------------------------------------------------------------------- charts and report.md

METRIC_TITLES: dict[str, str] = {"ingredient_micro_f1": "Ingredient F1 (micro)", "map50": "mAP50"}


def curve_frame(curves: pd.DataFrame, model: str, metric: str) -> pd.DataFrame:
    """The rows of one model x metric with a `severity_label` ("0 clean", "1 0.1-0.26", ...) for the x axis."""
    part = curves[(curves["model"] == model) & (curves["metric"] == metric)].copy()
    part["severity_label"] = [f"{severity} {coverage}" for severity, coverage in zip(part["severity"],
                                                                                       part["coverage"])]
    return part.reset_index(drop=True)


def write_severity_charts(curves: pd.DataFrame, models: list[str], plots_dir: Path) -> list[Path]:
    """severity_<metric>_<model>.png|html per model with severity levels: one line per session."""
    from exp3 import plots

    written: list[Path] = []
    for model in models:
        for metric in CURVE_METRICS:
            frame = curve_frame(curves, model, metric)
            if not len(frame):
                continue
            short = "f1" if metric == "ingredient_micro_f1" else metric
            written += plots.save_chart(plots.severity_chart(
                frame, title=f"{METRIC_TITLES[metric]} vs occlusion severity: {model}",
                y_title=METRIC_TITLES[metric],
                subtitle="severity 0 = test_clean; k = test_occ_sev<k> (each box covered within the range shown); "
                         "bands: 95% bootstrap CI over test images"), plots_dir / f"severity_{short}_{model}")
    return written


def _fmt(value: Any, signed: bool = False) -> str:
    return "n/a" if value is None or not math.isfinite(value) else (f"{value:+.3f}" if signed else f"{value:.3f}")


def _ci(row: pd.Series, value: str, low: str, high: str, signed: bool = False) -> str:
    if not math.isfinite(row[value]):
        return "n/a"
    return f"{_fmt(row[value], signed)} [{_fmt(row[low], signed)}, {_fmt(row[high], signed)}]"


def mpc_table(table: pd.DataFrame, model: str, metric: str) -> pd.DataFrame:
    """The report's mPC / rPC table of one model and metric (strings)."""
    part = table[(table["model"] == model) & (table["metric"] == metric)]
    rows = []
    for _, row in part.iterrows():
        p = row["p_bh_mPC_vs_S1"]
        rows.append({"session": row["session_label"], "clean": _fmt(row["clean"]),
                     "mPC [95% CI]": _ci(row, "mPC", "mPC_ci_low", "mPC_ci_high"),
                     "rPC [95% CI]": _ci(row, "rPC", "rPC_ci_low", "rPC_ci_high"),
                     "mPC - S1 [95% CI]": _ci(row, "diff_mPC_vs_S1", "diff_mPC_ci_low", "diff_mPC_ci_high", True),
                     "rPC - S1 [95% CI]": _ci(row, "diff_rPC_vs_S1", "diff_rPC_ci_low", "diff_rPC_ci_high", True),
                     "p_BH (mPC vs S1)": "n/a" if not math.isfinite(p) else f"{p:.3g}"})
    return pd.DataFrame(rows)


def severity_findings(curves: pd.DataFrame, table: pd.DataFrame, models: list[str]) -> list[str]:
    """Headline sentences: where curves cross S1's, and the sessions whose mPC differs from S1's."""
    findings = []
    for model in models:
        for metric in CURVE_METRICS:
            crossed = crossings(curves, model, metric)
            if crossed:
                findings.append(f"{model}, {METRIC_TITLES[metric]} vs severity: the order changes with the "
                                "severity: " + "; ".join(crossed) + " (each side: paired 95% interval of the "
                                "difference at that severity excludes 0; severity 0 = clean)")
        part = table[(table["model"] == model) & (table["metric"] == "ingredient_micro_f1")]
        shown = [f"{SESSION_LABELS[row['session']]} {_fmt(row['diff_mPC_vs_S1'], True)}"
                 for _, row in part.iterrows()
                 if math.isfinite(row["diff_mPC_ci_low"]) and (row["diff_mPC_ci_low"] > 0 or row["diff_mPC_ci_high"] < 0)]
        if len(part) and math.isfinite(part["levels"].max()):
            levels = int(part["levels"].max())
            what = f"mPC (mean ingredient micro F1 over {levels} severity levels)"
            findings.append(f"{model}: {what} differs from S1's for {', '.join(shown)} (paired 95% interval "
                            "excludes 0)" if shown else
                            f"{model}: no session's {what} differs from S1's (every paired 95% interval includes 0)")
    return findings


def severity_section(curves: pd.DataFrame, table: pd.DataFrame, models: list[str]) -> list[str]:
    """report.md's severity section (lines)."""
    lines = ["## Occlusion severity", ""]
    if not len(table):
        return lines + ["n/a: no done session has severity splits (occlusion.severities is empty, or the sessions "
                        "have not been run since it was set).", ""]
    lines += ["Each session evaluated on the severity suites test_occ_sev1..K (object mode, each box covered within "
              "the level's range; docs/occlusion.md). mPC = mean over the levels, rPC = mPC / clean "
              "(ImageNet-C / COCO-C). Intervals: 95% bootstrap over test images, resampled jointly across all "
              "levels; mPC - S1: paired; p_BH: paired permutation test of the mPC difference (an image's results "
              "swapped on every level at once), BH within the metric over sessions x models. mAP has intervals "
              "but no p-value. Charts: `plots/severity_f1_<model>.png`, `plots/severity_map50_<model>.png`.", ""]
    for model in models:
        for metric in CURVE_METRICS:
            shown = mpc_table(table, model, metric)
            if len(shown):
                frame = curve_frame(curves, model, metric)
                levels = ", ".join(dict.fromkeys(frame["severity_label"]))
                lines += [f"### {model}: {METRIC_TITLES[metric]}", "", f"Levels: {levels}.", "",
                          markdown_table(shown), ""]
    return lines
