"""The report's occlusion severity: the curve per session, mPC and rPC with intervals, paired tests vs S1,
crossings, the severity charts and report.md's section.

mPC and rPC are defined in exp3/evaluate/severity.py (`METRICS`, `split_value`, `mpc_summary`); test_occ_fixed is
not one of the levels. Intervals, tests and crossings: docs/report.md, "Occlusion severity" (one set of image draws,
exp3.report.draws, across clean and every level).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from exp3.evaluate import stats
from exp3.evaluate.severity import METRICS
from exp3.report import plots
from exp3.report.comparisons import adjust_p_values
from exp3.report.draws import ReportData, SplitDraws
from exp3.report.text import fmt, fmt_ci, fmt_p, markdown_table, short_session
from exp3.schema import SeverityLevelView
from exp3.session.layout import SessionState
from exp3.sessions import REFERENCES, SESSION_LABELS, SESSION_SUFFIXES
from exp3.splits import CLEAN_SPLIT, severity_level

CURVE_METRICS: tuple[str, ...] = ("ingredient_micro_f1", "map50")
"""The metrics the report draws and tests (F1-vs-severity and mAP50-vs-severity)."""
REFERENCE: str = REFERENCES[0]
"""The session every other is compared with: S1_clean_train (exp3.sessions owns the name)."""
CURVE_COLUMNS: tuple[str, ...] = ("model", "session", "session_label", "metric", "severity", "split", "coverage",
                                  "value", "ci_low", "ci_high", "diff_vs_S1", "diff_ci_low", "diff_ci_high", "n_images")
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
    shared = set(per_run[0]).intersection(*per_run[1:])
    return sorted((per_run[0][key] for key in shared), key=lambda level: level.level)


def mpc_f1(totals: np.ndarray, n: float = 1.0) -> np.ndarray:
    """mPC of micro F1 (an exp3.evaluate.stats statistic): (..., S, 3) counts per split, clean first -> the mean
    over the levels of their F1; `stats.permutation_pvalue(a, b, mpc_f1)` of (N, S, 3) counts swaps an image's
    results on every split at once."""
    return stats.f1_statistic(totals)[..., 1:].mean(axis=-1)


def severity_tables(data: ReportData, models: list[str],
                    n_permutations: int = stats.DEFAULT_PERMUTATIONS) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(curves, table): one curve row per model x session x metric x severity (0 = clean), one table row per
    model x session x metric with mPC / rPC, their intervals and the paired comparison vs S1.

    `data`: the report's draws (`ReportData.split_draws`, as gap closed takes them): seeds and images drawn as in
    every comparison; a predictions file made on another suite than the level's is never used, and a session on
    other images than S1's is not paired with it (named in `data.warnings`).
    """
    curve_rows: list[dict[str, Any]] = []
    table_rows: list[dict[str, Any]] = []
    for model in models:
        levels = common_levels(data.model_runs(model))
        recorded = {level.split for run in data.model_runs(model) if run.status == SessionState.DONE
                    for level in run.view.severity.levels if severity_level(level.split or "")}
        if left_out := sorted(recorded - {level.split for level in levels}, key=severity_level):
            data.warnings.append(f"severity, {model}: {', '.join(left_out)} left out (not recorded on one suite by "
                                 "every done session: mPC is over the others); run the sessions again to add it")
        if not levels:
            continue
        splits = [CLEAN_SPLIT, *(level.split for level in levels)]
        severities = [0, *(int(level.level) for level in levels)]
        coverage = ["clean", *(f"{level.coverage[0]:g}-{level.coverage[1]:g}" for level in levels)]
        suites = {level.split: level.suite_id for level in levels}
        for metric in CURVE_METRICS:
            found = {suffix: data.split_draws(model, suffix, splits, metric, suites)
                     for suffix in SESSION_SUFFIXES if data.done(model, suffix)}
            base = found.get(REFERENCE)
            for suffix, entry in found.items():
                paired = entry is not None and base is not None and entry.ids == base.ids and suffix != REFERENCE
                where = f"severity, {model} {short_session(suffix)}, {METRICS[metric].label}"
                if entry is not None and entry.unpaired:
                    data.warnings.append(f"{where}: its predictions on {', '.join(splits)} (or of its seeds) hold "
                                         "other image ids: no values; evaluate the session on the levels' suites")
                elif suffix != REFERENCE and entry is not None and base is not None and not base.unpaired \
                        and not paired:
                    data.warnings.append(f"{where}: other image ids than {short_session(REFERENCE)}'s: no paired "
                                         "difference; evaluate every session on the same suites")
                reference = base if paired else None
                n_images = 0 if entry is None or entry.unpaired else len(entry.ids)
                for index, split in enumerate(splits):
                    value, low, high, diff, diff_low, diff_high = (math.nan,) * 6
                    if entry is not None:
                        value = float(entry.points[index])
                        low, high = stats.finite_interval(entry.draws[:, index])
                        if reference is not None:
                            diff = value - float(reference.points[index])
                            diff_low, diff_high = stats.finite_interval(entry.draws[:, index]
                                                                        - reference.draws[:, index])
                    curve_rows.append({"model": model, "session": suffix, "session_label": SESSION_LABELS[suffix],
                                       "metric": metric, "severity": severities[index], "split": split,
                                       "coverage": coverage[index], "value": value, "ci_low": low, "ci_high": high,
                                       "diff_vs_S1": diff, "diff_ci_low": diff_low, "diff_ci_high": diff_high,
                                       "n_images": n_images})
                row = {**dict.fromkeys(TABLE_COLUMNS, math.nan), "model": model, "session": suffix,
                       "session_label": SESSION_LABELS[suffix], "metric": metric, "levels": len(levels),
                       "n_images": n_images, **(_mpc_columns(entry, reference) if entry is not None else {})}
                if reference is not None and entry.counts is not None:
                    row["p_mPC_vs_S1"] = _mpc_pvalue(entry.counts, reference.counts, n_permutations, data.seed)
                table_rows.append(row)
    table = pd.DataFrame(table_rows, columns=list(TABLE_COLUMNS))
    table["p_bh_mPC_vs_S1"] = adjust_p_values(table, "p_mPC_vs_S1", ["metric"], ["model", "session"])
    return pd.DataFrame(curve_rows, columns=list(CURVE_COLUMNS)), table


def _mpc_pvalue(counts_a: np.ndarray, counts_b: np.ndarray, n_permutations: int, seed: int) -> float:
    """p of the mPC difference from (K, N, S, 3) per-seed counts: one seed a side, an image's results swapped on
    every split at once; several, the training runs permuted (as every F1 comparison, docs/report.md)."""
    if len(counts_a) == len(counts_b) == 1:
        return stats.permutation_pvalue(counts_a[0], counts_b[0], mpc_f1, n_permutations, seed)
    return stats.two_level_permutation_pvalue(counts_a, counts_b, mpc_f1, n_permutations, seed)


def _mpc_rpc(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(..., S) values with clean first -> (mPC, rPC) over the last axis; rPC NaN where clean is 0."""
    mpc = values[..., 1:].mean(axis=-1)
    clean = values[..., 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        rpc = np.where(clean > 0, mpc / np.where(clean > 0, clean, 1.0), np.nan)
    return mpc, rpc


def _mpc_columns(entry: SplitDraws, reference: SplitDraws | None) -> dict[str, float]:
    """clean, mPC and rPC of one session's draws with their intervals; with S1's `reference`, the paired
    differences to it too."""
    (mpc, rpc), (mpc_draws, rpc_draws) = _mpc_rpc(entry.points), _mpc_rpc(entry.draws)
    row = {"clean": float(entry.points[0]), "mPC": float(mpc), "rPC": float(rpc)}
    row["mPC_ci_low"], row["mPC_ci_high"] = stats.finite_interval(mpc_draws)
    row["rPC_ci_low"], row["rPC_ci_high"] = stats.finite_interval(rpc_draws)
    if reference is not None:
        (ref_mpc, ref_rpc), (ref_mpc_draws, ref_rpc_draws) = _mpc_rpc(reference.points), _mpc_rpc(reference.draws)
        row["diff_mPC_vs_S1"], row["diff_rPC_vs_S1"] = float(mpc - ref_mpc), float(rpc - ref_rpc)
        row["diff_mPC_ci_low"], row["diff_mPC_ci_high"] = stats.finite_interval(mpc_draws - ref_mpc_draws)
        row["diff_rPC_ci_low"], row["diff_rPC_ci_high"] = stats.finite_interval(rpc_draws - ref_rpc_draws)
    return row


def crossings(curves: pd.DataFrame, model: str, metric: str = "ingredient_micro_f1") -> list[str]:
    """Sentences naming the sessions that are below S1 at some severity and above it at another, each side
    established by the paired 95% interval of the difference at that severity excluding 0."""
    part = curves[(curves["model"] == model) & (curves["metric"] == metric) & (curves["session"] != REFERENCE)]
    short = short_session(REFERENCE)
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

def curve_frame(curves: pd.DataFrame, model: str, metric: str) -> pd.DataFrame:
    """The rows of one model x metric with a `severity_label` ("0 clean", "1 0.1-0.26", ...) for the x axis."""
    part = curves[(curves["model"] == model) & (curves["metric"] == metric)]
    return part.assign(severity_label=part["severity"].astype(str) + " " + part["coverage"]).reset_index(drop=True)


def write_severity_charts(curves: pd.DataFrame, models: list[str], plots_dir: Path) -> list[Path]:
    """severity_<metric>_<model>.png|html per model with severity levels: one line per session."""
    written: list[Path] = []
    for model in models:
        for metric in CURVE_METRICS:
            frame = curve_frame(curves, model, metric)
            if not len(frame):
                continue
            short = "f1" if metric == "ingredient_micro_f1" else metric
            written += plots.save_chart(plots.severity_chart(
                frame, title=f"{METRICS[metric].label} vs occlusion severity: {model}",
                y_title=METRICS[metric].label,
                subtitle="severity 0 = test_clean; k = test_occ_sev<k> (each box's own occluder drawn in the range "
                         "shown; overlapping boxes more or less); bands: 95% bootstrap CI over test images"),
                plots_dir / f"severity_{short}_{model}")
    return written


def mpc_table(table: pd.DataFrame, model: str, metric: str) -> pd.DataFrame:
    """The report's mPC / rPC table of one model and metric (strings)."""
    part = table[(table["model"] == model) & (table["metric"] == metric)]
    return pd.DataFrame([{
        "session": row["session_label"], "clean": fmt(row["clean"]),
        "mPC [95% CI]": fmt_ci(row, "mPC", "mPC_ci_low", "mPC_ci_high"),
        "rPC [95% CI]": fmt_ci(row, "rPC", "rPC_ci_low", "rPC_ci_high"),
        "mPC - S1 [95% CI]": fmt_ci(row, "diff_mPC_vs_S1", "diff_mPC_ci_low", "diff_mPC_ci_high", True),
        "rPC - S1 [95% CI]": fmt_ci(row, "diff_rPC_vs_S1", "diff_rPC_ci_low", "diff_rPC_ci_high", True),
        "p_BH (mPC vs S1)": fmt_p(row["p_bh_mPC_vs_S1"])} for _, row in part.iterrows()])


def severity_findings(curves: pd.DataFrame, table: pd.DataFrame, models: list[str]) -> list[str]:
    """Headline sentences: where curves cross S1's, and the sessions whose mPC differs from S1's."""
    findings = []
    for model in models:
        for metric in CURVE_METRICS:
            if crossed := crossings(curves, model, metric):
                findings.append(f"{model}, {METRICS[metric].label} vs severity: the order changes with the "
                                "severity: " + "; ".join(crossed) + " (each side: paired 95% interval of the "
                                "difference at that severity excludes 0; severity 0 = clean)")
        part = table[(table["model"] == model) & (table["metric"] == "ingredient_micro_f1")]
        shown = [f"{SESSION_LABELS[row['session']]} {fmt(row['diff_mPC_vs_S1'], signed=True)}"
                 for _, row in part.iterrows() if row["diff_mPC_ci_low"] > 0 or row["diff_mPC_ci_high"] < 0]
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
    lines += ["Each session evaluated on the severity suites test_occ_sev1..K (object mode: each box's own occluder "
              "covers a fraction of the box drawn in the level's range, but a neighbour's occluder adds to an "
              "overlapping box, so some boxes lie outside it: the manifests record each box's covered fraction, and "
              "\"Recall by covered fraction\" bins by it; the occluders are drawn anew at each level, not nested; "
              "docs/occlusion.md). mPC = mean over the levels, rPC = mPC / clean "
              "(ImageNet-C / COCO-C). Intervals: 95% bootstrap over test images, resampled jointly across all "
              "levels (with several seeds: seeds and images, p permuting the training runs, as for gap closed); mPC - "
              "S1: paired; p_BH: paired permutation test of the mPC difference (an image's results swapped on every "
              "level at once), BH within the metric over sessions x models. mAP has intervals "
              "but no p-value. Charts: `plots/severity_f1_<model>.png`, `plots/severity_map50_<model>.png`.", ""]
    for model in models:
        for metric in CURVE_METRICS:
            shown = mpc_table(table, model, metric)
            if len(shown):
                frame = curve_frame(curves, model, metric)
                levels = ", ".join(dict.fromkeys(frame["severity_label"]))
                lines += [f"### {model}: {METRICS[metric].label}", "", f"Levels: {levels}.", "",
                          markdown_table(shown), ""]
    return lines
