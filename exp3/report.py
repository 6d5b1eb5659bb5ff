"""Rebuild the exp3 report from session folders: tables, statistics, charts and report.md.

    python -m exp3.report --root runs/exp3 [--models yolov8m rtdetr-l] [--seeds 0 1 2] [--sessions S1_clean_train ...]

The flow's final task calls `build_report(root, models)`; it reads only the session folders
(`<root>/<model>/<model>__<suffix>[__seed<N>]/`) and writes, atomically:

    <root>/summary_metrics.csv|json   one row per model x session x split (seed mean when several seeds)
    <root>/summary_by_seed.csv|json   one row per model x session x seed x split (every folder)
    <root>/comparisons.csv|json       one row per model x split x metric x threshold x session x reference
    <root>/per_class_f1.csv           per-class ingredient F1 per model x session x split
    <root>/severity_curves.csv        metric per model x session x severity (0 = clean), with CIs (exp3.severity)
    <root>/severity_summary.csv       mPC / rPC per model x session x metric, CIs, paired tests vs S1
    <root>/plots/*.png|html           charts (exp3.plots)
    <root>/report.md                  tables, charts and headline findings written from the data

A session's status: `done` (valid DONE marker), `failed` (FAILED marker: its error is kept),
`incomplete` (a folder without DONE or FAILED: running, or killed mid-way) or `missing` (no folder).
A session outside this run's `sessions` (the config's `sessions:` list) is `not in run` in the status
grid and left out of every table, finding and chart.
Nothing is dropped: a not-done session keeps its rows, with NaN metrics. With several seeds the
summary status is `done` when every seed is, `partial` when some are. Columns: docs/report.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from exp3 import severity, stats
from exp3.config import SESSION_SUFFIXES
from exp3.fileio import atomic_write_json, atomic_write_text
from exp3.mapstats import BOOTSTRAP_RESAMPLES
from exp3.layout import SessionPaths
from exp3.sessions import SESSION_SEPARATOR, Session, parse_session
from exp3.plots import SESSION_LABELS
from exp3.schema import MetricsView

SPLITS: tuple[str, ...] = ("test_clean", "test_occ_fixed")
REFERENCES: tuple[str, ...] = ("S1_clean_train", "S2_occ_train")
"""Every session is compared with these two: the clean baseline and the occluded-training anchor."""
KNOWN_MODEL_ORDER: tuple[str, ...] = ("yolov8m", "rtdetr-l")
"""Discovered models are listed in this order first, then alphabetically (fixes colours in charts)."""

INGREDIENT_COLUMNS: tuple[str, ...] = tuple(f"ingredient_{average}_{score}" for average in ("micro", "macro", "samples")
                                            for score in ("precision", "recall", "f1"))
DETECTION_COLUMNS: tuple[str, ...] = ("detection_precision", "detection_recall", "detection_f1")
VAL_COLUMNS: tuple[str, ...] = ("conf_val", "ingredient_micro_f1_at_val", "ingredient_samples_f1_at_val",
                                "detection_f1_at_val")
"""The secondary operating point: each session's threshold chosen on the clean val split and the test metrics
at it (`splits[split]["at_val_threshold"]`; NaN when metrics.json predates it)."""
ROBUSTNESS_COLUMNS: tuple[str, ...] = ("rF1_micro", "rF1_samples", "rF1_macro", "rF1_detection", "rmAP50", "rmAP50_95")
METRIC_COLUMNS: tuple[str, ...] = ("n_images", "conf", "map50", "map50_95", *INGREDIENT_COLUMNS, *DETECTION_COLUMNS,
                                   *VAL_COLUMNS, *ROBUSTNESS_COLUMNS, "train_wall_s", "eval_wall_s",
                                   "epochs_completed")
"""Numeric columns read from metrics.json (per split; the r* columns are per session, repeated on both splits)."""
SPREAD_COLUMNS: tuple[str, ...] = ("ingredient_micro_f1", "ingredient_samples_f1", "map50", "map50_95", "rF1_micro",
                                   "rmAP50_95")
"""Headline metrics that get `_std`, `_min`, `_max` columns across seeds in summary_metrics."""

NOT_IN_RUN = "not in run"
"""Status-grid cell of a session outside this run's `sessions` (the config's `sessions:` list)."""

THRESHOLDS: tuple[str, ...] = ("primary", "val")
"""Operating points of the comparisons: `primary` = the split's `conf` (0.25), `val` = each session's own
threshold chosen on the clean val split (`at_val_threshold.conf`)."""
PAIRED_METRICS: tuple[str, ...] = ("ingredient_micro_f1", "ingredient_samples_f1", "detection_f1")
"""Metrics with a per-image decomposition: paired bootstrap interval and permutation p (exp3.stats)."""
MAP_METRICS: tuple[str, ...] = ("map50", "map50_95")
"""The validator's mAP: no per-image score, but a paired bootstrap interval recomputed from the validator's
per-image matching stats (`map_stats_<split>.npz`, exp3.mapstats); no permutation p (a point estimate only
when those files are missing, e.g. a session evaluated before they existed)."""
MAP_RESAMPLES = BOOTSTRAP_RESAMPLES
"""Bootstrap draws for mAP intervals (exp3.mapstats.BOOTSTRAP_RESAMPLES): fewer than the F1s' because each
draw recomputes mAP over every prediction; sessions keep theirs in `map_stats_<split>.npz`."""
METRIC_LABELS: dict[str, str] = {"ingredient_micro_f1": "ingredient micro F1",
                                 "ingredient_samples_f1": "ingredient samples F1", "detection_f1": "detection F1",
                                 "map50": "mAP50", "map50_95": "mAP50-95"}
VAL_PLAN: tuple[tuple[str, str], ...] = (("S2_occ_train", "S1_clean_train"),)
"""(session, reference) rows compared at the val-chosen threshold (the primary threshold compares all)."""
COMPARISON_COLUMNS: tuple[str, ...] = ("model", "split", "metric", "threshold", "session", "session_label",
                                       "reference", "pair", "conf", "reference_conf", "difference", "ci_low",
                                       "ci_high", "p_value", "bh_family", "p_bh", "n_images")


# ----------------------------------------------------------------------------- discovery and loading

@dataclass(frozen=True)
class SessionRun:
    """One session folder (or the absence of one) as read from disk.

    Attributes:
        status: done | failed | incomplete | missing.
        seed: from the `__seed<N>` folder suffix, else metrics.json["seeds"]["train"], else None.
        metrics: the parsed metrics.json of a done session, else None (`view`: the fields the report reads).
    """

    model: str
    suffix: str
    seed: int | None
    folder: Path
    status: str
    error: str | None = None
    metrics: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def view(self) -> MetricsView:
        """The typed, lenient view of `metrics` (exp3.schema; empty when not done)."""
        return MetricsView.of(self.metrics)


def parse_session_folder_name(name: str) -> tuple[str, str, int | None] | None:
    """`<model>__<suffix>[__seed<N>]` -> (model, suffix, seed or None); None if `name` is not a session folder."""
    if SESSION_SEPARATOR not in name:
        return None
    model = name.split(SESSION_SEPARATOR, 1)[0]  # model names never contain the separator (config check)
    try:
        session = parse_session(name, [model])
    except ValueError:
        return None
    return session.model, session.suffix, session.seed


def order_models(models: Iterable[str]) -> list[str]:
    """Known models first (KNOWN_MODEL_ORDER), then the rest alphabetically, without duplicates."""
    unique = set(models)
    return [model for model in KNOWN_MODEL_ORDER if model in unique] + sorted(unique - set(KNOWN_MODEL_ORDER))


def discover_models(root: Path) -> list[str]:
    """Models under `root`: every directory `<root>/<model>/` holding at least one `<model>__S*` session folder."""
    found = []
    for child in sorted(path for path in root.iterdir() if path.is_dir()) if root.is_dir() else []:
        for grandchild in child.iterdir():
            parsed = parse_session_folder_name(grandchild.name) if grandchild.is_dir() else None
            if parsed and parsed[0] == child.name:
                found.append(child.name)
                break
    return order_models(found)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def load_session_run(folder: Path, model: str, suffix: str, seed: int | None,
                     key: str | None = None) -> SessionRun:
    """Read one session folder's markers and metrics.json into a `SessionRun`.

    `key`: the cache key the last flow planned for this session (`<root>/plan.json`); a folder
    made under other inputs is reported as `stale`, never with its old numbers.
    """
    paths = SessionPaths(folder)
    if not folder.is_dir():
        return SessionRun(model, suffix, seed, folder, "missing", "no session folder")
    if key is not None and paths.state(key) == "stale":
        return SessionRun(model, suffix, seed, folder, "stale",
                          "made under other inputs than the current config: re-run the flow")
    if paths.is_done(None):
        metrics = _read_json(paths.metrics)
        if isinstance(metrics, dict):
            recorded_seed = MetricsView.of(metrics).seeds.train
            if seed is None and recorded_seed is not None:
                seed = int(recorded_seed)
            return SessionRun(model, suffix, seed, folder, "done", None, metrics)
    failure = paths.failure()
    if failure is not None:
        return SessionRun(model, suffix, seed, folder, "failed",
                          failure.get("error") or "FAILED marker without an error message")
    detail = "DONE marker does not match metrics.json" if paths.done_marker.is_file() else \
        "no DONE or FAILED marker (still running, or killed mid-way)"
    return SessionRun(model, suffix, seed, folder, "incomplete", detail)


def scan_sessions(root: Path, models: list[str], seeds: list[int] | None = None,
                  sessions: Iterable[str] = SESSION_SUFFIXES) -> list[SessionRun]:
    """Every model x session (x seed) of the grid, in model, session, seed order; absent folders as `missing`.

    Args:
        seeds: expected seeds; with several, folders are `<model>__<suffix>__seed<N>` and an absent
            seed is `missing`. None: whatever folders exist (a session without any folder is missing).
        sessions: the suffixes of this run; the others are not scanned (`not in run`, see `status_grid`).
    """
    from exp3.grid import read_plan

    keys = read_plan(root)  # the inputs the last flow planned: older results there are stale, not done
    runs: list[SessionRun] = []
    multi_seed = seeds is not None and len(seeds) > 1
    for model in models:
        model_dir = root / model
        present: dict[str, list[tuple[int | None, Path]]] = {suffix: [] for suffix in SESSION_SUFFIXES}
        if model_dir.is_dir():
            for folder in sorted(model_dir.iterdir()):
                parsed = parse_session_folder_name(folder.name) if folder.is_dir() else None
                if parsed and parsed[0] == model:
                    present[parsed[1]].append((parsed[2], folder))
        for suffix in (suffix for suffix in SESSION_SUFFIXES if suffix in sessions):
            folders = sorted(present[suffix], key=lambda item: -1 if item[0] is None else item[0])
            if multi_seed:
                assert seeds is not None
                by_seed = {seed: path for seed, path in folders}
                folders = [(seed, by_seed.get(seed, SessionPaths.of(root, Session(model, suffix, seed)).folder))
                           for seed in seeds]
            elif not folders:
                seed = seeds[0] if seeds else None
                folders = [(seed, SessionPaths.of(root, Session(model, suffix)).folder)]  # one seed: no __seed
            runs.extend(load_session_run(path, model, suffix, seed, keys.get(path.name)) for seed, path in folders)
    return runs


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def split_row(run: SessionRun, split: str) -> dict[str, Any]:
    """One summary_by_seed row: identifiers, status and every METRIC_COLUMNS value (NaN when not done)."""
    row: dict[str, Any] = {"model": run.model, "session": run.suffix, "session_label": SESSION_LABELS[run.suffix],
                           "split": split, "status": run.status, "error": run.error or "",
                           "seed": math.nan if run.seed is None else run.seed, "folder": str(run.folder)}
    row.update({column: math.nan for column in METRIC_COLUMNS})
    if run.metrics is None:
        return row
    view = run.view
    part = view.split(split)
    row.update({"n_images": _number(part.n_images), "conf": _number(part.conf), "map50": _number(part.map50),
                "map50_95": _number(part.map50_95), "eval_wall_s": _number(part.eval_wall_s)})
    for average in ("micro", "macro", "samples"):
        for score in ("precision", "recall", "f1"):
            row[f"ingredient_{average}_{score}"] = _number(getattr(getattr(part.ingredient, average), score))
    for score in ("precision", "recall", "f1"):
        row[f"detection_{score}"] = _number(getattr(part.detection, score))
    at_val = part.at_val_threshold
    row.update({"conf_val": _number(threshold_conf(run.metrics, split, "val")),
                "ingredient_micro_f1_at_val": _number(at_val.ingredient.micro.f1),
                "ingredient_samples_f1_at_val": _number(at_val.ingredient.samples.f1),
                "detection_f1_at_val": _number(at_val.detection.f1)})
    row.update({column: _number(getattr(view.robustness, column)) for column in ROBUSTNESS_COLUMNS})
    row["train_wall_s"] = _number(view.training.wall_s)
    row["epochs_completed"] = _number(view.training.epochs_completed)
    return row


def by_seed_table(runs: list[SessionRun]) -> pd.DataFrame:
    """summary_by_seed: one row per run x split, in grid order."""
    return pd.DataFrame([split_row(run, split) for run in runs for split in SPLITS])


def _combined_status(statuses: list[str]) -> str:
    if all(status == "done" for status in statuses):
        return "done"
    if "done" in statuses:
        return "partial"
    for status in ("failed", "stale", "incomplete"):
        if status in statuses:
            return status
    return "missing"


def summary_table(by_seed: pd.DataFrame) -> pd.DataFrame:
    """summary_metrics: one row per model x session x split; metrics are the mean over done seeds.

    Adds `n_seeds` (expected or found), `n_seeds_done`, `seeds` ("0;1;2") and, for SPREAD_COLUMNS,
    `<col>_std` (ddof 1, NaN below 2 done seeds), `<col>_min`, `<col>_max`.
    """
    rows = []
    for (model, session, split), group in by_seed.groupby(["model", "session", "split"], sort=False):
        done = group[group["status"] == "done"]
        seeds = [int(seed) for seed in group["seed"] if not pd.isna(seed)]
        errors = [(f"seed {int(seed)}: {error}" if len(group) > 1 and not pd.isna(seed) else error)
                  for seed, error, status in zip(group["seed"], group["error"], group["status"])
                  if status != "done" and error]
        row: dict[str, Any] = {"model": model, "session": session, "session_label": SESSION_LABELS[session],
                               "split": split, "status": _combined_status(list(group["status"])),
                               "error": "; ".join(errors), "n_seeds": len(group), "n_seeds_done": len(done),
                               "seeds": ";".join(str(seed) for seed in seeds)}
        for column in METRIC_COLUMNS:
            row[column] = float(done[column].mean()) if len(done) else math.nan
        for column in SPREAD_COLUMNS:
            values = done[column].astype(float)
            row[f"{column}_std"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
            row[f"{column}_min"] = float(values.min()) if len(values) else math.nan
            row[f"{column}_max"] = float(values.max()) if len(values) else math.nan
        row["folder"] = ";".join(group["folder"])
        rows.append(row)
    return pd.DataFrame(rows)


def per_class_table(runs: list[SessionRun]) -> pd.DataFrame:
    """Per-class ingredient F1: one row per model x session x split x class (mean over done seeds)."""
    rows = []
    for run in runs:
        for split in SPLITS:
            part = ((run.metrics or {}).get("splits") or {}).get(split) or {}
            for entry in part.get("per_class") or []:
                rows.append({"model": run.model, "session": run.suffix, "session_label": SESSION_LABELS[run.suffix],
                             "split": split, "seed": run.seed, "class_id": int(entry["class_id"]),
                             "class_name": str(entry.get("name", entry["class_id"])), "f1": _number(entry.get("f1")),
                             "support": _number(entry.get("support"))})
    columns = ["model", "session", "session_label", "split", "class_id", "class_name", "f1", "support", "n_seeds"]
    if not rows:
        return pd.DataFrame(columns=columns)
    frame = pd.DataFrame(rows)
    grouped = frame.groupby(["model", "session", "session_label", "split", "class_id", "class_name"], sort=False)
    table = grouped.agg(f1=("f1", "mean"), support=("support", "mean"), n_seeds=("f1", "size")).reset_index()
    return table[columns]


# ----------------------------------------------------------------------------- per-image counts and statistics

IMAGE_COUNT_COLUMNS: dict[str, tuple[str, str, str]] = {
    "ingredient_micro_f1": ("ingredient_tp", "ingredient_fp", "ingredient_fn"),
    "detection_f1": ("detection_tp", "detection_fp", "detection_fn")}
"""Per-image (tp, fp, fn) columns of `image_scores` behind each pooled (micro) F1."""
IMAGE_MEAN_COLUMNS: dict[str, str] = {"ingredient_samples_f1": "ingredient_f1"}
"""Per-image score columns of `image_scores` whose mean over images is the metric (samples F1)."""


def threshold_conf(metrics: dict[str, Any] | None, split: str, threshold: str = "primary") -> float | None:
    """The confidence threshold of one operating point of a session and split, or None when not recorded.

    `primary`: `splits[split]["conf"]` (0.25 when absent, the evaluation default). `val`:
    `splits[split]["at_val_threshold"]["conf"]`, else `thresholds["val_chosen"]` (absent in old files).
    """
    if threshold not in THRESHOLDS:
        raise ValueError(f"threshold {threshold!r}; pass one of {', '.join(THRESHOLDS)}")
    view = MetricsView.of(metrics)
    part = view.split(split)
    if threshold == "primary":
        value = part.conf if "conf" in part.model_fields_set else 0.25
    else:
        value = part.at_val_threshold.conf
        if value is None:
            value = view.thresholds.val_chosen
    number = _number(value)
    return number if math.isfinite(number) else None


def load_records(run: SessionRun, split: str) -> list[Any] | None:
    """The `ImageRecord`s of a done run's predictions_<split>.json, or None when absent or empty."""
    from exp3.metrics import records_from_json

    payload = _read_json(run.folder / f"predictions_{split}.json") if run.status == "done" else None
    if not isinstance(payload, dict):
        return None
    return records_from_json(payload.get("images") or []) or None


def image_scores(records: list[Any], num_classes: int, conf: float, match_iou: float) -> pd.DataFrame:
    """Per-image counts and scores of one split at threshold `conf`, indexed by image_id.

    Returns:
        (N, 7) frame: ingredient_tp/fp/fn (ingredient sets, `exp3.metrics.ingredient_sets`),
        ingredient_f1 (per-image F1, whose mean is the samples F1) and detection_tp/fp/fn
        (`exp3.metrics.detection_counts` at `conf` and `match_iou`).
    """
    from exp3.metrics import detection_counts, ingredient_sets, prf_from_counts

    gt, pred = ingredient_sets(records, num_classes, conf)
    tp, fp, fn = (gt & pred).sum(axis=1), (~gt & pred).sum(axis=1), (gt & ~pred).sum(axis=1)
    detection = np.array([detection_counts(record, conf, match_iou) for record in records],
                         dtype=np.int64).reshape(-1, 3)
    return pd.DataFrame({"ingredient_tp": tp, "ingredient_fp": fp, "ingredient_fn": fn,
                         "ingredient_f1": prf_from_counts(tp, fp, fn)[2], "detection_tp": detection[:, 0],
                         "detection_fp": detection[:, 1], "detection_fn": detection[:, 2]},
                        index=[record.image_id for record in records])


def run_image_scores(run: SessionRun, split: str, threshold: str = "primary",
                     records: list[Any] | None = None) -> pd.DataFrame | None:
    """`image_scores` of one done run at one operating point (`threshold_conf`), None when it lacks what is needed.

    `records`: the split's records when already loaded (`load_records`), to read the file once.
    """
    part = ((run.metrics or {}).get("splits") or {}).get(split) or {}
    conf = threshold_conf(run.metrics, split, threshold)
    if run.status != "done" or not part.get("num_classes") or conf is None:
        return None
    records = load_records(run, split) if records is None else records
    if not records:
        return None
    match_iou = _number(part.get("match_iou", ((run.metrics or {}).get("eval") or {}).get("match_iou", 0.5)))
    return image_scores(records, int(part["num_classes"]), conf, match_iou if math.isfinite(match_iou) else 0.5)


def pool_image_scores(frames: list[pd.DataFrame]) -> pd.DataFrame | None:
    """One session's seeds pooled on the images every seed has: counts summed, per-image F1 averaged.

    Summed counts give the pooled micro / detection F1; the averaged per-image F1 has the seed mean
    of the samples F1 as its mean. None when there is no frame or no common image.
    """
    if not frames:
        return None
    common = frames[0].index
    for frame in frames[1:]:
        common = common.intersection(frame.index, sort=False)
    if not len(common):
        return None
    total = sum(frame.loc[common] for frame in frames)
    total["ingredient_f1"] = total["ingredient_f1"] / len(frames)
    return total


def _paired(a: pd.DataFrame, b: pd.DataFrame) -> tuple[np.ndarray, np.ndarray] | None:
    common = a.index.intersection(b.index, sort=False)
    return (a.loc[common].to_numpy(), b.loc[common].to_numpy()) if len(common) else None


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
            from exp3.layout import SessionPaths
            from exp3.mapstats import MapStats, common_image_ids, seed_mean_draws

            done = [run for run in self.grouped.get((model, suffix), []) if run.status == "done"]
            paths = [SessionPaths(run.folder).map_stats(split) for run in done]
            self._cache[key] = None
            if done and all(path.is_file() for path in paths):
                loaded = [MapStats.load(path) for path in paths]
                if not all(_reproduces_map(stats, run, split) for stats, run in zip(loaded, done)):
                    return None                      # not the stats behind metrics.json's mAP: no interval
                ids = common_image_ids(loaded)
                if ids:
                    self._cache[key] = (ids, seed_mean_draws(loaded, self.n_resamples, self.seed))
        return self._cache[key]


def _reproduces_map(stats: Any, run: SessionRun, split: str) -> bool:
    """True when `stats` give exactly the mAP50 / mAP50-95 that the run's metrics.json reports for `split`."""
    from exp3.mapstats import mean_ap

    part = ((run.metrics or {}).get("splits") or {}).get(split) or {}
    recorded = (_number(part.get("map50")), _number(part.get("map50_95")))
    return all(math.isfinite(value) for value in recorded) and np.allclose(mean_ap(stats), recorded, rtol=0,
                                                                            atol=1e-9)


def map_interval(draws: MapDraws, a: tuple[str, str, str], b: tuple[str, str, str], column: int,
                 difference: float, confidence: float = stats.DEFAULT_CONFIDENCE) -> tuple[float, float]:
    """Percentile interval of mAP(a) - mAP(b) (column 0 = mAP50, 1 = mAP50-95); NaNs when not pairable."""
    first, second = draws.get(*a), draws.get(*b)
    if first is None or second is None or first[0] != second[0] or not math.isfinite(difference):
        return math.nan, math.nan
    return stats.percentile_interval(first[1][:, column] - second[1][:, column], confidence)


def statistics_tables(runs: list[SessionRun], models: list[str], n_resamples: int = stats.DEFAULT_RESAMPLES,
                      n_permutations: int = stats.DEFAULT_PERMUTATIONS,
                      seed: int = stats.DEFAULT_SEED) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Bootstrap intervals per session and paired comparisons vs S1 / S2 (module docstring of exp3.stats).

    Returns:
        (intervals, comparisons).
        intervals: one row per model x session x split: ingredient_micro_f1_ci_low/high (F1 of the
            pooled counts), rF1_micro_ci_low/high (occluded / clean, paired on image ids), ci_images.
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
    confs: dict[tuple[str, str, str, str], float] = {}
    points: dict[tuple[str, str, str], dict[str, float]] = {}
    for model in models:
        for suffix in SESSION_SUFFIXES:
            done = [run for run in grouped.get((model, suffix), []) if run.status == "done"]
            for split in SPLITS:
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
                    confs[(model, suffix, split, threshold)] = _mean_of(used[threshold])
    map_draws = MapDraws(grouped, min(n_resamples, MAP_RESAMPLES), seed)
    count_columns = list(IMAGE_COUNT_COLUMNS["ingredient_micro_f1"])
    interval_rows, comparison_rows = [], []
    for model in models:
        for suffix in SESSION_SUFFIXES:
            clean, occluded = (scores[(model, suffix, split, "primary")] for split in ("test_clean", "test_occ_fixed"))
            robust = _paired(occluded[count_columns], clean[count_columns]) \
                if clean is not None and occluded is not None else None
            ratio = stats.bootstrap_ratio_interval(*robust, n_resamples=n_resamples, seed=seed) if robust else None
            for split in SPLITS:
                own = scores[(model, suffix, split, "primary")]
                interval = stats.bootstrap_f1_interval(own[count_columns].to_numpy(), n_resamples=n_resamples,
                                                       seed=seed) if own is not None else None
                interval_rows.append({
                    "model": model, "session": suffix, "split": split,
                    "ingredient_micro_f1_ci_low": interval.low if interval else math.nan,
                    "ingredient_micro_f1_ci_high": interval.high if interval else math.nan,
                    "rF1_micro_ci_low": ratio.low if ratio else math.nan,
                    "rF1_micro_ci_high": ratio.high if ratio else math.nan,
                    "ci_images": len(own) if own is not None else 0})
        for split in SPLITS:
            for threshold in THRESHOLDS:
                metrics = PAIRED_METRICS + (MAP_METRICS if threshold == "primary" else ())
                for metric in metrics:
                    done_pairs: dict[str, tuple[str, stats.PairedComparison | None]] = {}
                    for suffix, reference in comparison_plan(threshold):
                        key = pair_key(suffix, reference)
                        row = {"model": model, "split": split, "metric": metric, "threshold": threshold,
                               "session": suffix, "session_label": SESSION_LABELS[suffix], "reference": reference,
                               "pair": key, "conf": math.nan, "reference_conf": math.nan,
                               "difference": math.nan, "ci_low": math.nan, "ci_high": math.nan,
                               "p_value": math.nan, "bh_family": "", "n_images": 0}
                        if metric in MAP_METRICS:
                            a, b = points[(model, suffix, split)], points[(model, reference, split)]
                            row.update(difference=a[metric] - b[metric],
                                       n_images=0 if math.isnan(a["n_images"]) else int(a["n_images"]))
                            low, high = map_interval(map_draws, (model, suffix, split), (model, reference, split),
                                                     MAP_METRICS.index(metric), row["difference"])
                            row.update(ci_low=low, ci_high=high)
                            comparison_rows.append(row)
                            continue
                        if key in done_pairs:                       # the other reading of a pair: one test
                            first, result = done_pairs[key]
                            result = result if first == suffix or result is None else stats.reversed_comparison(result)
                        else:
                            result = compare_metric(metric, scores[(model, suffix, split, threshold)],
                                                    scores[(model, reference, split, threshold)], n_resamples,
                                                    n_permutations, seed)
                            done_pairs[key] = (suffix, result)
                        row.update(conf=confs[(model, suffix, split, threshold)],
                                   reference_conf=confs[(model, reference, split, threshold)],
                                   bh_family=f"{metric}@{threshold}")
                        if result is not None:
                            row.update(difference=result.difference.estimate, ci_low=result.difference.low,
                                       ci_high=result.difference.high, p_value=result.p_value,
                                       n_images=result.n_images)
                        comparison_rows.append(row)
    comparisons = pd.DataFrame(comparison_rows, columns=[c for c in COMPARISON_COLUMNS if c != "p_bh"])
    comparisons.insert(COMPARISON_COLUMNS.index("p_bh"), "p_bh", adjust_p_values(comparisons))
    return pd.DataFrame(interval_rows), comparisons


def primary_f1(comparisons: pd.DataFrame) -> pd.DataFrame:
    """The rows of the headline comparisons: ingredient micro F1 at the primary threshold."""
    return comparisons[(comparisons["metric"] == "ingredient_micro_f1") & (comparisons["threshold"] == "primary")]


def attach_statistics(summary: pd.DataFrame, intervals: pd.DataFrame, comparisons: pd.DataFrame) -> pd.DataFrame:
    """summary + CI columns + per reference R in (S1, S2): diff_vs_R, diff_vs_R_ci_low/high, p_vs_R, p_bh_vs_R
    (ingredient micro F1 at the primary threshold; the other metrics are in comparisons)."""
    keys = ["model", "session", "split"]
    merged = summary.merge(intervals, on=keys, how="left")
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


# ----------------------------------------------------------------------------- tidy frames for the charts

def _status_text(status: str) -> str:
    return "" if status == "done" else status


def bar_frame(summary: pd.DataFrame, split: str, value: str, models: list[str],
              ci: tuple[str, str] | None = None) -> pd.DataFrame:
    """One row per model x session (all six, all `models`) for `session_bar_chart`.

    Columns: model, session_label, value, ci_low, ci_high, status_text (value NaN for a not-done session).
    """
    part = summary[(summary["split"] == split) & summary["model"].isin(models)]
    frame = pd.DataFrame({
        "model": part["model"], "session_label": part["session_label"],
        "value": part[value].where(part["n_seeds_done"] > 0),
        "ci_low": part[ci[0]] if ci else math.nan, "ci_high": part[ci[1]] if ci else math.nan,
        "status_text": part["status"].map(_status_text)})
    return frame.reset_index(drop=True)


def split_frame(summary: pd.DataFrame, model: str, value: str) -> pd.DataFrame:
    """One row per session x split of one model for `split_bar_chart`."""
    part = summary[summary["model"] == model]
    return pd.DataFrame({"model": part["model"], "session_label": part["session_label"], "split": part["split"],
                         "value": part[value], "status_text": part["status"].map(_status_text)}).reset_index(drop=True)


def heatmap_frame(per_class: pd.DataFrame, model: str) -> pd.DataFrame:
    """One row per session x split x class of one model for `class_heatmap` (classes in class_id order)."""
    part = per_class[per_class["model"] == model].sort_values(["class_id"], kind="stable")
    return pd.DataFrame({"session_label": part["session_label"], "split": part["split"],
                         "class_name": part["class_name"], "f1": part["f1"], "support": part["support"],
                         "f1_text": part["f1"].map(lambda f1: "" if pd.isna(f1) else f"{f1:.2f}"),
                         }).reset_index(drop=True)


def _p_text(p_bh: float) -> str:
    if pd.isna(p_bh):
        return ""
    return "p_BH<0.001" if p_bh < 0.001 else f"p_BH={p_bh:.3f}"


def difference_frame(comparisons: pd.DataFrame, split: str, models: list[str]) -> pd.DataFrame:
    """One row per model x session x reference on `split` for `difference_chart` (done pairs only; ingredient
    micro F1 at the primary threshold, `primary_f1`)."""
    headline = primary_f1(comparisons)
    part = headline[(headline["split"] == split) & headline["model"].isin(models) & headline["difference"].notna()]
    return pd.DataFrame({"model": part["model"], "session_label": part["session_label"],
                         "reference": "vs " + part["reference"].map(SESSION_LABELS),
                         "difference": part["difference"], "ci_low": part["ci_low"], "ci_high": part["ci_high"],
                         "p_bh_text": part["p_bh"].map(_p_text)}).reset_index(drop=True)


# ----------------------------------------------------------------------------- charts

def write_charts(summary: pd.DataFrame, comparisons: pd.DataFrame, per_class: pd.DataFrame, models: list[str],
                 plots_dir: Path) -> list[Path]:
    """Build every chart of the report from the tables and save PNG + HTML under `plots_dir`."""
    from exp3 import plots

    f1_ci = ("ingredient_micro_f1_ci_low", "ingredient_micro_f1_ci_high")
    ci_note = "error bars: 95% percentile bootstrap CI over test images (exp3.stats)"
    written: list[Path] = []
    for split, tag in (("test_occ_fixed", "occ"), ("test_clean", "clean")):
        written += plots.save_chart(plots.session_bar_chart(
            bar_frame(summary, split, "ingredient_micro_f1", models, f1_ci), models,
            title=f"Ingredient F1 (micro) on {split}, all models", y_title=f"ingredient F1 (micro), {split}",
            subtitle=ci_note), plots_dir / f"f1_{tag}_by_model")
        for model in models:
            written += plots.save_chart(plots.session_bar_chart(
                bar_frame(summary, split, "ingredient_micro_f1", [model], f1_ci), models,
                title=f"Ingredient F1 (micro) on {split}: {model}", y_title=f"ingredient F1 (micro), {split}",
                subtitle=ci_note), plots_dir / f"f1_{tag}_{model}")
        written += plots.save_chart(plots.difference_chart(
            difference_frame(comparisons, split, models), models,
            title=f"Ingredient F1 (micro) difference vs S1 and vs S2 on {split}",
            x_title=f"F1 difference (session - reference), {split}",
            subtitle="points: difference; lines: 95% paired bootstrap CI; text: BH-adjusted permutation p"),
            plots_dir / f"f1_diff_{tag}")
    written += plots.save_chart(plots.session_bar_chart(
        bar_frame(summary, "test_occ_fixed", "rF1_micro", models, ("rF1_micro_ci_low", "rF1_micro_ci_high")), models,
        title="Robustness rF1 = F1(test_occ_fixed) / F1(test_clean), micro ingredient F1",
        y_title="rF1 (occluded / clean)", y_domain=(0.0, 1.2), reference_line=1.0,
        reference_label="1.0 = no loss under occlusion",
        subtitle="1.0 = occlusion costs nothing; error bars: 95% bootstrap CI, images paired across the splits"),
        plots_dir / "robustness_rF1")
    for model in models:
        written += plots.save_chart(plots.split_bar_chart(
            split_frame(summary, model, "map50_95"), models, title=f"mAP50-95 on each test split: {model}",
            y_title="mAP50-95", subtitle="COCO-style mAP from Ultralytics' validator"), plots_dir / f"map50_95_{model}")
        heat = heatmap_frame(per_class, model)
        if len(heat):
            written += plots.save_chart(plots.class_heatmap(
                heat, title=f"Per-class ingredient F1 by session: {model}",
                subtitle="one panel per test split; blank column = session not done"),
                plots_dir / f"per_class_f1_{model}")
    return written


# ----------------------------------------------------------------------------- report.md

def _fmt(value: Any, digits: int = 3, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _interval(row: pd.Series, low: str, high: str, signed: bool = False) -> str:
    if pd.isna(row[low]) or pd.isna(row[high]):
        return ""
    return f" [{_fmt(row[low], signed=signed)}, {_fmt(row[high], signed=signed)}]"


def _p(value: float) -> str:
    return "n/a" if pd.isna(value) else ("<0.001" if value < 0.001 else f"{value:.3f}")


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub markdown table of a small frame (strings as given)."""
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(str(value).replace("|", "/") for value in row) + " |"
            for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def split_table(summary: pd.DataFrame, split: str) -> pd.DataFrame:
    """The report.md table of one split: formatted strings, one row per model x session."""
    rows = []
    for _, row in summary[summary["split"] == split].iterrows():
        seeds = f" (n={row['n_seeds_done']})" if row["n_seeds"] > 1 else ""
        rows.append({
            "model": row["model"], "session": row["session_label"], "status": row["status"] + seeds,
            "F1 micro [95% CI]": _fmt(row["ingredient_micro_f1"]) + _interval(row, "ingredient_micro_f1_ci_low",
                                                                               "ingredient_micro_f1_ci_high"),
            "F1 samples": _fmt(row["ingredient_samples_f1"]), "F1 macro": _fmt(row["ingredient_macro_f1"]),
            "det F1": _fmt(row["detection_f1"]), "mAP50": _fmt(row["map50"]), "mAP50-95": _fmt(row["map50_95"]),
            "rF1 [95% CI]": _fmt(row["rF1_micro"]) + _interval(row, "rF1_micro_ci_low", "rF1_micro_ci_high"),
            "vs S1 [95% CI], p_BH": "" if pd.isna(row["diff_vs_S1"]) else
            f"{_fmt(row['diff_vs_S1'], signed=True)}{_interval(row, 'diff_vs_S1_ci_low', 'diff_vs_S1_ci_high', True)}, "
            f"{_p(row['p_bh_vs_S1'])}",
            "vs S2 [95% CI], p_BH": "" if pd.isna(row["diff_vs_S2"]) else
            f"{_fmt(row['diff_vs_S2'], signed=True)}{_interval(row, 'diff_vs_S2_ci_low', 'diff_vs_S2_ci_high', True)}, "
            f"{_p(row['p_bh_vs_S2'])}",
            "train s": _fmt(row["train_wall_s"], 0), "eval s": _fmt(row["eval_wall_s"], 1)})
    return pd.DataFrame(rows)


def val_table(summary: pd.DataFrame, comparisons: pd.DataFrame, split: str) -> pd.DataFrame:
    """report.md table of one split at each session's val-chosen threshold (done sessions; empty when no
    session records one): threshold, the three F1s there, and S2 vs S1 micro F1 at those thresholds."""
    part = summary[(summary["split"] == split) & (summary["n_seeds_done"] > 0)]
    if part["conf_val"].isna().all():
        return pd.DataFrame()
    session, reference = VAL_PLAN[0]
    rows = []
    for _, row in part.iterrows():
        versus = comparison_metrics(comparisons, row["model"], split, session, reference, "val") \
            .get("ingredient_micro_f1") if row["session"] == session else None
        rows.append({
            "model": row["model"], "session": row["session_label"], "conf (val)": _fmt(row["conf_val"], 2),
            "F1 micro": _fmt(row["ingredient_micro_f1_at_val"]),
            "F1 samples": _fmt(row["ingredient_samples_f1_at_val"]),
            "det F1": _fmt(row["detection_f1_at_val"]),
            "F1 micro (primary)": _fmt(row["ingredient_micro_f1"]),
            f"{_short(session)} - {_short(reference)} [95% CI], p_BH": "" if versus is None else
            f"{_ci_text(versus, 'difference', 'ci_low', 'ci_high', True)}, {_p(versus['p_bh'])}"})
    return pd.DataFrame(rows)


def _reading(metric: str, row: pd.Series) -> str:
    verdict = _verdict(row)
    if verdict is None:
        return "point estimate, no CI (no map_stats file)" if metric in MAP_METRICS else "n/a"
    return "CI includes 0" if verdict == 0 else "CI excludes 0"


def metric_table(comparisons: pd.DataFrame, models: list[str], session: str = "S2_occ_train",
                 reference: str = "S1_clean_train") -> pd.DataFrame:
    """report.md table of `session` - `reference` on every metric: one row per model x split x threshold x metric."""
    rows = []
    for model in models:
        for split in SPLITS[::-1]:
            for threshold in THRESHOLDS:
                found = comparison_metrics(comparisons, model, split, session, reference, threshold)
                for metric in (*PAIRED_METRICS, *MAP_METRICS):
                    if metric not in found:
                        continue
                    row = found[metric]
                    rows.append({"model": model, "split": split,
                                 "threshold": "val-chosen" if threshold == "val" else
                                 ("n/a (mAP)" if metric in MAP_METRICS else f"conf {_fmt(row['conf'], 2)}"),
                                 "metric": METRIC_LABELS[metric],
                                 f"{_short(session)} - {_short(reference)} [95% CI]":
                                     _ci_text(row, "difference", "ci_low", "ci_high", True),
                                 "p": _p(row["p_value"]), "p_BH": _p(row["p_bh"]), "reading": _reading(metric, row)})
    return pd.DataFrame(rows)


def status_grid(summary: pd.DataFrame, models: list[str], sessions: Iterable[str] = SESSION_SUFFIXES) -> pd.DataFrame:
    """Model x session table of statuses (from the test_clean rows; both splits share a status); all six
    sessions, those outside this run's `sessions` as NOT_IN_RUN."""
    part = summary[summary["split"] == SPLITS[0]]
    rows = []
    for model in models:
        status = dict(zip(part[part["model"] == model]["session"], part[part["model"] == model]["status"]))
        rows.append({"model": model, **{SESSION_LABELS[suffix]: status.get(suffix, "") if suffix in sessions
                                        else NOT_IN_RUN for suffix in SESSION_SUFFIXES}})
    return pd.DataFrame(rows)


def _ci_text(row: pd.Series, value: str, low: str, high: str, signed: bool = False) -> str:
    return f"{_fmt(row[value], signed=signed)}{_interval(row, low, high, signed)}"


def _excludes_zero(row: pd.Series, low: str, high: str) -> bool:
    return bool(row[low] > 0 or row[high] < 0)


def _short(suffix: str) -> str:
    return suffix.split("_")[0]


def _verdict(row: pd.Series) -> int | None:
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


def _metric_text(metric: str, row: pd.Series) -> str:
    if metric in MAP_METRICS and _verdict(row) is None:
        return f"{METRIC_LABELS[metric]} {_fmt(row['difference'], signed=True)}"
    return f"{METRIC_LABELS[metric]} {_ci_text(row, 'difference', 'ci_low', 'ci_high', True)}"


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _verb(count: int, singular: str, plural: str) -> str:
    return singular if count == 1 else plural


def agreement_finding(model: str, split: str, session: str, reference: str, rows: dict[str, pd.Series]) -> str | None:
    """One sentence: do the metrics agree on `session` vs `reference`?

    A metric with an interval (the F1s; mAP when its per-image stats exist) shows a difference
    when its 95% paired interval excludes 0; the metrics agree when all of them give the same
    answer (same side of 0, or all containing 0). An mAP difference without an interval is listed
    as a point estimate, never counted either way (noted when it points against the others).
    `rows`: `comparison_metrics`. None when no metric has an interval.
    """
    verdicts = {metric: _verdict(rows[metric]) for metric in (*PAIRED_METRICS, *MAP_METRICS) if metric in rows}
    verdicts = {metric: verdict for metric, verdict in verdicts.items() if verdict is not None}
    if not verdicts:
        return None
    text = {metric: _metric_text(metric, row) for metric, row in rows.items()}
    shown = [metric for metric, verdict in verdicts.items() if verdict != 0]
    quiet = [metric for metric, verdict in verdicts.items() if verdict == 0]
    a, b = _short(session), _short(reference)
    if len(set(verdicts.values())) == 1:
        agreement = "agree"
        listed = ", ".join(text[metric] for metric in verdicts)
        body = f"{'each metric' if shown else 'no metric'} shows a difference ({listed})"
    else:
        agreement = "disagree"
        up = [metric for metric in shown if verdicts[metric] > 0]
        down = [metric for metric in shown if verdicts[metric] < 0]
        if up and down:
            parts = [f"{_join([text[m] for m in up])} {_verb(len(up), 'shows', 'show')} {a} above {b}",
                     f"{_join([text[m] for m in down])} {_verb(len(down), 'shows', 'show')} {a} below {b}"]
        else:
            parts = [f"{_join([text[m] for m in shown])} {_verb(len(shown), 'shows', 'show')} a difference"]
        if quiet:
            parts.append(f"{_join([text[m] for m in quiet])} {_verb(len(quiet), 'does', 'do')} not")
        body = "; ".join(parts)
    maps = [metric for metric in MAP_METRICS if metric in rows and metric not in verdicts]
    tail = ""
    if maps:
        tail = (f"; {', '.join(text[m] for m in maps)} ({_verb(len(maps), 'point estimate', 'point estimates')}, "
                "no CI: not decidable")
        signs = {verdicts[metric] for metric in shown}
        if len(signs) == 1:
            direction = signs.pop()
            against = [METRIC_LABELS[m] for m in maps if np.sign(rows[m]["difference"]) == -direction]
            if against:
                tail += f"; {_join(against)} {_verb(len(against), 'points', 'point')} the other way"
        tail += ")"
    return f"**{model}**: metrics {agreement} on {a} vs {b} ({split}): {body}{tail}."


def val_threshold_finding(comparisons: pd.DataFrame, model: str, split: str = "test_occ_fixed") -> str | None:
    """S2 vs S1 micro F1 at each session's val-chosen threshold next to the primary one (None if not available)."""
    session, reference = VAL_PLAN[0]
    at_val = comparison_metrics(comparisons, model, split, session, reference, "val").get("ingredient_micro_f1")
    primary = comparison_metrics(comparisons, model, split, session, reference).get("ingredient_micro_f1")
    if at_val is None:
        return None
    a, b = _short(session), _short(reference)
    text = (f"**{model}**: at each session's val-chosen threshold ({a} {_fmt(at_val['conf'], 2)}, {b} "
            f"{_fmt(at_val['reference_conf'], 2)}), {a} vs {b} on {split}: ingredient micro F1 "
            f"{_ci_text(at_val, 'difference', 'ci_low', 'ci_high', True)} (p_BH {_p(at_val['p_bh'])})")
    if primary is not None:
        same = _verdict(at_val) == _verdict(primary)
        text += (f"; at conf {_fmt(primary['conf'], 2)}: {_ci_text(primary, 'difference', 'ci_low', 'ci_high', True)}"
                 + ("; same conclusion" if same else "; the threshold changes the conclusion"))
    return text + "."


def headline_findings(summary: pd.DataFrame, models: list[str], comparisons: pd.DataFrame | None = None) -> list[str]:
    """Bullet points written from the data: gap S1 -> S2, best masking site and its interval, robustness.

    With `comparisons`, also whether the metrics agree (`agreement_finding`) on S2 vs S1 (both
    splits) and on the best masking session vs S1 and vs S2 (test_occ_fixed), and S2 vs S1 at the
    val-chosen thresholds (`val_threshold_finding`).
    """
    occ = summary[summary["split"] == "test_occ_fixed"].set_index(["model", "session"])
    findings: list[str] = []
    done_models = []
    for model in models:
        rows = occ.loc[model] if model in occ.index.get_level_values(0) else pd.DataFrame()
        done = rows[rows["n_seeds_done"] > 0] if len(rows) else rows
        not_done = [f"{SESSION_LABELS[suffix]} ({row['status']})" for suffix, row in rows.iterrows()
                    if row["n_seeds_done"] == 0]
        prefix = f"**{model}**"
        if not len(done):
            findings.append(f"{prefix}: no session is done yet; nothing to report.")
            continue
        done_models.append(model)
        if not_done:
            findings.append(f"{prefix}: partial grid, {len(done)} of {len(rows)} sessions done; not done: "
                            f"{', '.join(not_done)}. Findings below use the done sessions only.")
        s1 = done.loc["S1_clean_train"] if "S1_clean_train" in done.index else None
        s2 = done.loc["S2_occ_train"] if "S2_occ_train" in done.index else None
        if s1 is not None and s2 is not None and not pd.isna(s2["diff_vs_S1"]):
            supported = _excludes_zero(s2, "diff_vs_S1_ci_low", "diff_vs_S1_ci_high")
            verdict = ("a difference the interval supports" if supported
                       else "the interval includes 0, so the data do not establish a difference")
            findings.append(f"{prefix}: training on occluded images (S2) vs clean training (S1) on test_occ_fixed: "
                            f"F1 {_fmt(s2['ingredient_micro_f1'])} vs {_fmt(s1['ingredient_micro_f1'])}, difference "
                            f"{_ci_text(s2, 'diff_vs_S1', 'diff_vs_S1_ci_low', 'diff_vs_S1_ci_high', True)} "
                            f"(p_BH {_p(s2['p_bh_vs_S1'])}); {verdict}.")
        if comparisons is not None and s1 is not None and s2 is not None:
            for split in SPLITS[::-1]:
                sentence = agreement_finding(model, split, "S2_occ_train", "S1_clean_train", comparison_metrics(
                    comparisons, model, split, "S2_occ_train", "S1_clean_train"))
                findings += [sentence] if sentence else []
            sentence = val_threshold_finding(comparisons, model)
            findings += [sentence] if sentence else []
        masking = done[done.index.isin(SESSION_SUFFIXES[2:])].sort_values("ingredient_micro_f1", ascending=False)
        if len(masking) and not masking["ingredient_micro_f1"].iloc[0] > 0:  # nothing named: nothing to rank
            findings.append(f"{prefix}: no masking session names any ingredient on test_occ_fixed (F1 0 for "
                            f"{', '.join(SESSION_LABELS[suffix] for suffix in masking.index)}): no best masking site.")
        elif len(masking):
            best_suffix, best = masking.index[0], masking.iloc[0]
            text = (f"{prefix}: best masking site on test_occ_fixed: {SESSION_LABELS[best_suffix]}, F1 "
                    + _ci_text(best, "ingredient_micro_f1", "ingredient_micro_f1_ci_low", "ingredient_micro_f1_ci_high"))
            if s2 is not None and not pd.isna(best["diff_vs_S2"]):
                text += f"; vs S2 {_ci_text(best, 'diff_vs_S2', 'diff_vs_S2_ci_low', 'diff_vs_S2_ci_high', True)}"
                if _excludes_zero(best, "diff_vs_S2_ci_low", "diff_vs_S2_ci_high"):
                    text += " (below S2)" if best["diff_vs_S2"] < 0 else " (above S2)"
                else:
                    text += " (the interval includes 0: not distinguishable from S2 on these images)"
            if s1 is not None and s2 is not None:
                gap = s2["ingredient_micro_f1"] - s1["ingredient_micro_f1"]
                if gap > 0 and _excludes_zero(s2, "diff_vs_S1_ci_low", "diff_vs_S1_ci_high"):
                    closed = (best["ingredient_micro_f1"] - s1["ingredient_micro_f1"]) / gap
                    text += f"; it closes {100 * closed:.0f}% of the S1 -> S2 gap (point estimate)"
            if len(masking) > 1:
                second_suffix, second = masking.index[1], masking.iloc[1]
                overlap = (best["ingredient_micro_f1_ci_low"] <= second["ingredient_micro_f1_ci_high"])
                if overlap or pd.isna(best["ingredient_micro_f1_ci_low"]):
                    text += (f". Its interval overlaps that of the runner-up {SESSION_LABELS[second_suffix]} "
                             f"(F1 {_fmt(second['ingredient_micro_f1'])}): "
                             "the ranking of masking sites is not established")
            in_run = int(rows.index.isin(SESSION_SUFFIXES[2:]).sum())  # masking sessions of this run
            if len(masking) < in_run:
                text += f" (only {len(masking)} of {in_run} masking sessions done)"
            findings.append(text + ".")
            for reference, row in (("S1_clean_train", s1), ("S2_occ_train", s2)):
                if comparisons is not None and row is not None:
                    sentence = agreement_finding(model, "test_occ_fixed", best_suffix, reference, comparison_metrics(
                        comparisons, model, "test_occ_fixed", best_suffix, reference))
                    findings += [sentence] if sentence else []
        robust = done.dropna(subset=["rF1_micro"]).sort_values("rF1_micro", ascending=False)
        if len(robust):
            top_suffix, top = robust.index[0], robust.iloc[0]
            findings.append(f"{prefix}: most robust session (highest rF1 = F1 occluded / F1 clean): "
                            f"{SESSION_LABELS[top_suffix]}, rF1 "
                            f"{_ci_text(top, 'rF1_micro', 'rF1_micro_ci_low', 'rF1_micro_ci_high')}.")
        else:
            findings.append(f"{prefix}: rF1 is undefined for every done session (clean F1 is 0).")
    if len(done_models) > 1:
        s1_rows = occ[occ.index.get_level_values(1) == "S1_clean_train"]
        scores = {model: s1_rows.loc[(model, "S1_clean_train"), "ingredient_micro_f1"] for model in done_models
                  if (model, "S1_clean_train") in s1_rows.index}
        scores = {model: score for model, score in scores.items() if not pd.isna(score)}
        if len(scores) > 1:
            ranked = sorted(scores.items(), key=lambda item: -item[1])
            findings.append("Across models, clean-trained (S1) F1 on test_occ_fixed: "
                            + ", ".join(f"{model} {_fmt(score)}" for model, score in ranked)
                            + " (separate models: see the per-session intervals before reading a ranking).")
    return findings


POSITIVE_CONTROL: tuple[str, str, str] = ("S2_occ_train", "S1_clean_train", "test_occ_fixed")
"""The known effect the instrument is calibrated on: training on occluded images (S2) must beat clean training
(S1) on the occluded test suite. docs/what-metrics-detect.md reads the pilot's numbers."""
POSITIVE_CONTROL_ROWS: tuple[tuple[str, str], ...] = (
    ("ingredient_micro_f1", "primary"), ("ingredient_micro_f1", "val"),
    ("ingredient_samples_f1", "primary"), ("ingredient_samples_f1", "val"),
    ("detection_f1", "primary"), ("detection_f1", "val"), ("map50", "primary"), ("map50_95", "primary"))
"""(metric, threshold) of every headline metric at both operating points (mAP has no threshold)."""


def _operating_point(metric: str, threshold: str, row: pd.Series) -> str:
    if metric in MAP_METRICS:
        return "none (mAP)"
    if threshold == "val":
        return f"val-chosen ({_fmt(row['conf'], 2)} / {_fmt(row['reference_conf'], 2)})"
    return f"conf {_fmt(row['conf'], 2)}"


def positive_control(comparisons: pd.DataFrame, model: str) -> tuple[pd.DataFrame, str]:
    """The positive control of one model: S2 - S1 on test_occ_fixed for every headline metric, and a verdict.

    Returns (table, one-line verdict). A metric *detects* the effect when its paired 95% interval
    lies above 0; "reversed" when below 0; "no" when it contains 0; "undecided" without an interval.
    """
    session, reference, split = POSITIVE_CONTROL
    a, b = _short(session), _short(reference)
    rows, groups = [], {"detect": [], "no": [], "reversed": [], "undecided": []}
    for metric, threshold in POSITIVE_CONTROL_ROWS:
        row = comparison_metrics(comparisons, model, split, session, reference, threshold).get(metric)
        if row is None:
            continue
        verdict = _verdict(row)
        group = {1: "detect", 0: "no", -1: "reversed", None: "undecided"}[verdict]
        label = METRIC_LABELS[metric] + ("" if metric in MAP_METRICS else
                                         (" @val" if threshold == "val" else f" @{_fmt(row['conf'], 2)}"))
        groups[group].append(label)
        rows.append({"metric": METRIC_LABELS[metric], "operating point": _operating_point(metric, threshold, row),
                     f"{a} - {b} [95% CI]": _ci_text(row, "difference", "ci_low", "ci_high", True),
                     "detects the effect": {"detect": f"yes ({a} > {b})", "no": "no (CI includes 0)",
                                            "reversed": f"no, reversed ({a} < {b})",
                                            "undecided": "undecided (no CI)"}[group]})
    if not rows:
        return pd.DataFrame(), (f"**{model}**: positive control not available ({a} and {b} must both be done "
                                f"on {split}).")
    parts = [f"detect the effect: {', '.join(groups['detect']) or 'none'}",
             f"do not: {', '.join(groups['no']) or 'none'}"]
    parts += [f"show the reverse: {', '.join(groups['reversed'])}"] if groups["reversed"] else []
    parts += [f"undecided (no CI): {', '.join(groups['undecided'])}"] if groups["undecided"] else []
    return pd.DataFrame(rows), f"**{model}** positive control ({a} vs {b} on {split}): {'; '.join(parts)}."


DASHBOARD_COLUMNS: tuple[str, ...] = ("model", "session", "status", "F1 micro [95% CI]", "det F1", "mAP50",
                                     "mAP50-95", "rF1 [95% CI]", "vs S1 [95% CI], p_BH")
"""The columns of report.md's split table that the Prefect UI's results artifact shows (the rest: report.md)."""


def dashboard_markdown(result: "ReportResult") -> str:
    """The morning view for the Prefect UI's markdown artifact: positive control verdicts, headline findings
    and the test_occ_fixed table with CIs, then where the full report, tables and charts are on disk."""
    lines = ["# exp3 results", "", f"Full report: `{result.root / 'report.md'}` (charts: `{result.root / 'plots'}`)",
             "", "## Positive control", ""]
    lines += [f"- {positive_control(result.comparisons, model)[1]}" for model in result.models]
    lines += ["", "## Headline findings", ""]
    lines += [f"- {finding}" for finding in headline_findings(result.summary, result.models, result.comparisons)]
    table = split_table(result.summary, "test_occ_fixed")
    narrow = [column for column in DASHBOARD_COLUMNS if column in table.columns]  # fits the UI's width
    lines += ["", "## test_occ_fixed at the primary threshold", "",
              markdown_table(table[narrow]) if len(table) else "no session rows", ""]
    return "\n".join(lines)


def render_markdown(result: "ReportResult") -> str:
    """report.md: status grid, headline findings, per split the table at the primary and at the val-chosen
    threshold, S2 vs S1 on every metric, failures, charts, files."""
    summary, root = result.summary, result.root
    failures = summary[(summary["split"] == SPLITS[0]) & (summary["status"] != "done")]
    lines = [f"# exp3 report: {root.name}", "",
             f"Built by `python -m exp3.report --root {root}` from the session folders; every number below is "
             "recomputed from them. Columns and methods: docs/report.md; what each metric can and cannot "
             "detect: docs/what-metrics-detect.md.", "",
             "## Grid status", "",
             *([f"This run's sessions: {', '.join(_short(suffix) for suffix in result.sessions)} (config "
                f"`sessions:`); the others are `{NOT_IN_RUN}`, left out of every table, finding and chart.", ""]
               if result.sessions != SESSION_SUFFIXES else []),
             markdown_table(status_grid(summary, result.models, result.sessions)), "",
             "## Headline findings", "",
             *[f"- {finding}" for finding in headline_findings(summary, result.models, result.comparisons)
               + severity.severity_findings(result.severity_curves, result.severity_table, result.models)], "",
             "F1 = micro ingredient F1 at the session's confidence threshold. Intervals: 95% percentile bootstrap "
             f"over test images ({result.n_resamples} resamples, seed {result.seed}); p_BH: paired permutation test "
             "of the difference, Benjamini-Hochberg within each metric and threshold over the distinct session "
             "pairs of all models and splits (S2 vs S1 and S1 vs S2 are one test). A metric shows a difference "
             "when its paired 95% interval excludes 0. mAP intervals recompute the validator's mAP on each "
             f"resample from its per-image matching stats ({MAP_RESAMPLES} resamples; no p-value). "
             "Overlapping intervals do not by themselves mean no difference; "
             "the paired difference interval is the one to read.", ""]
    lines += ["## Positive control: can this run detect a known effect?", "",
              "Training on occluded images (S2) must beat clean training (S1) on the occluded test images. Each "
              "headline metric's paired difference S2 - S1 on test_occ_fixed, at conf 0.25 and at each session's "
              "val-chosen threshold; a metric detects the effect when its 95% interval lies above 0. What each "
              "metric can and cannot detect, with the pilot's numbers: docs/what-metrics-detect.md.", ""]
    for model in result.models:
        table, verdict = positive_control(result.comparisons, model)
        lines += [f"- {verdict}", ""] + ([markdown_table(table), ""] if len(table) else [])
    for split in SPLITS[::-1]:
        confs = ", ".join(_fmt(conf, 2) for conf in sorted(summary["conf"].dropna().unique())) or "n/a"
        lines += [f"## {split}", "", f"At the primary threshold (conf {confs}):", "",
                  markdown_table(split_table(summary, split)), "", f"### {split} at the val-chosen threshold", ""]
        at_val = val_table(summary, result.comparisons, split)
        lines += ["Each session's own threshold, chosen to maximise ingredient micro F1 on the clean val split "
                  "(a secondary operating point; S2 - S1 recomputed per image at those thresholds):", "",
                  markdown_table(at_val), ""] if len(at_val) else \
            ["n/a: no done session records a val-chosen threshold (metrics.json predates it).", ""]
    by_metric = metric_table(result.comparisons, result.models)
    if len(by_metric):
        lines += ["## S2 vs S1 on every metric", "",
                  "Does the occluded-training effect depend on the metric? Paired intervals for every metric; "
                  "p-values for the F1s.", "", markdown_table(by_metric), ""]
    lines += severity.severity_section(result.severity_curves, result.severity_table, result.models)
    if result.coverage is not None:
        from exp3.coverage import coverage_markdown

        lines += coverage_markdown(result.coverage, result.models)
    if len(failures):
        lines += ["## Sessions not done", ""]
        lines += [f"- {row['model']} {row['session_label']}: {row['status']}"
                  + (f": {row['error']}" if row["error"] else "") for _, row in failures.iterrows()]
        lines.append("")
    lines += ["## Charts", ""]
    for path in result.files:
        if path.suffix == ".png" and path.parent.name == "plots":
            lines += [f"### {path.stem}", "", f"![{path.stem}](plots/{path.name}) "
                      f"([interactive](plots/{path.with_suffix('.html').name}))", ""]
    lines += ["## Files", "", "- `summary_metrics.csv` / `.json`: one row per model x session x split",
              "- `summary_by_seed.csv` / `.json`: one row per session folder x split",
              "- `comparisons.csv` / `.json`: paired differences vs S1 and S2 per metric and threshold, with CIs "
              "and p-values",
              "- `per_class_f1.csv`: per-class ingredient F1",
              "- `severity_curves.csv` / `severity_summary.csv`: metric vs severity; mPC / rPC with CIs and tests "
              "vs S1",
              "- `recall_by_coverage.csv`: recall per covered-fraction bin, session, level and threshold, with CIs; "
              "`recall_by_coverage_boxes.csv`: the per-box table behind it", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- entry points

@dataclass
class ReportResult:
    """What `build_report` produced: the tables (also written to disk) and every file written."""

    root: Path
    models: list[str]
    summary: pd.DataFrame
    by_seed: pd.DataFrame
    comparisons: pd.DataFrame
    per_class: pd.DataFrame
    files: list[Path]
    n_resamples: int
    seed: int
    sessions: tuple[str, ...] = SESSION_SUFFIXES
    """The suffixes of this run (the others are `not in run`)."""
    severity_curves: pd.DataFrame = field(default_factory=pd.DataFrame)
    severity_table: pd.DataFrame = field(default_factory=pd.DataFrame)
    """exp3.severity.severity_tables: the curves and the mPC / rPC table (empty without severity splits)."""
    coverage: Any = None
    """Recall by covered fraction (`exp3.coverage.CoverageReport`), None when not computed."""

    @property
    def status_counts(self) -> dict[str, int]:
        """Sessions per status (model x session, counted once, not per split)."""
        return self.summary[self.summary["split"] == SPLITS[0]]["status"].value_counts().to_dict()


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return json.loads(frame.to_json(orient="records", double_precision=15))


def run_sessions(sessions: Iterable[str] | None) -> tuple[str, ...]:
    """This run's suffixes in S1..S6 order (None: all six); ValueError naming the valid ones otherwise."""
    if sessions is None:
        return SESSION_SUFFIXES
    sessions = list(sessions)
    unknown = [suffix for suffix in sessions if suffix not in SESSION_SUFFIXES]
    if unknown or not sessions:
        problem = f"unknown session {unknown[0]!r}" if unknown else "no session given"
        raise ValueError(f"{problem}: pass suffixes among {', '.join(SESSION_SUFFIXES)}")
    return tuple(suffix for suffix in SESSION_SUFFIXES if suffix in sessions)


def build_report(root: Path, models: list[str] | None = None, seeds: list[int] | None = None,
                 n_resamples: int = stats.DEFAULT_RESAMPLES, n_permutations: int = stats.DEFAULT_PERMUTATIONS,
                 seed: int = stats.DEFAULT_SEED, charts: bool = True,
                 sessions: list[str] | None = None, occluded_splits: tuple[str, ...] | None = None) -> ReportResult:
    """Rebuild every report file under `root` from its session folders (see the module docstring).

    Args:
        root: the experiment's output root (holds `<model>/<model>__<suffix>/` folders).
        models: models to report, in order; None discovers them (`discover_models`). Listed models
            without folders appear with status `missing`.
        seeds: expected training seeds (several: `__seed<N>` folders); None takes what exists.
        charts: False skips the PNG/HTML charts (tables and report.md only).
        sessions: the suffixes of this run (the config's `sessions:`); None: all six. The others are
            `not in run` in the status grid and left out of every table, finding and chart.
        occluded_splits: the occluded splits of "Recall by covered fraction" (exp3.coverage); None:
            test_occ_fixed and the severity splits every done session has (`exp3.coverage.default_splits`).

    Raises:
        FileNotFoundError: `root` is not a directory, or no model is given and none is found.
        ValueError: `sessions` names an unknown suffix, or none.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"report root {str(root)!r} is not a directory: pass the experiment's output_root")
    models = discover_models(root) if models is None else list(dict.fromkeys(models))
    if not models:
        raise FileNotFoundError(f"no session folders under {str(root)!r} (expected <model>/<model>__S1_clean_train/ "
                                "...): pass --models to report an empty grid, or check --root")
    in_run = run_sessions(sessions)
    runs = scan_sessions(root, models, seeds, in_run)
    by_seed = by_seed_table(runs)
    intervals, comparisons = statistics_tables(runs, models, n_resamples, n_permutations, seed)
    comparisons = comparisons[comparisons["session"].isin(in_run)
                              & comparisons["reference"].isin(in_run)].reset_index(drop=True)
    summary = attach_statistics(summary_table(by_seed), intervals, comparisons)
    per_class = per_class_table(runs)
    curves, severity_table = severity.severity_tables(runs, models, n_resamples, n_permutations, seed)
    files = []
    for name, frame in (("summary_metrics", summary), ("summary_by_seed", by_seed), ("comparisons", comparisons)):
        files.append(atomic_write_text(root / f"{name}.csv", frame.to_csv(index=False)))
        files.append(atomic_write_json(root / f"{name}.json", _records(frame)))
    files.append(atomic_write_text(root / "per_class_f1.csv", per_class.to_csv(index=False)))
    files.append(atomic_write_text(root / "severity_curves.csv", curves.to_csv(index=False)))
    files.append(atomic_write_text(root / "severity_summary.csv", severity_table.to_csv(index=False)))
    if charts:
        files += write_charts(summary, comparisons, per_class, models, root / "plots")
        files += severity.write_severity_charts(curves, models, root / "plots")
    from exp3 import coverage

    by_coverage = coverage.coverage_report(runs, occluded_splits,
                                           n_resamples=n_resamples, seed=seed)
    files += coverage.write_coverage_outputs(by_coverage, root, models, charts)
    result = ReportResult(root, models, summary, by_seed, comparisons, per_class, files, n_resamples, seed, in_run,
                          curves, severity_table, by_coverage)
    result.files.append(atomic_write_text(root / "report.md", render_markdown(result)))
    return result


def main(argv: list[str] | None = None) -> int:
    """`python -m exp3.report --root DIR [--models M ...] [--seeds N ...] [--sessions S ...] [--no-charts]`."""
    parser = argparse.ArgumentParser(prog="python -m exp3.report",
                                     description="rebuild the exp3 report from session folders")
    parser.add_argument("--root", type=Path, required=True, help="the experiment's output root, e.g. runs/exp3")
    parser.add_argument("--models", nargs="+", default=None, help="models to report (default: discovered)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="expected training seeds (default: found)")
    parser.add_argument("--sessions", nargs="+", default=None,
                        help="this run's sessions (config `sessions:`; default all six); the others: 'not in run'")
    parser.add_argument("--resamples", type=int, default=stats.DEFAULT_RESAMPLES, help="bootstrap resamples")
    parser.add_argument("--no-charts", action="store_true", help="tables and report.md only")
    args = parser.parse_args(argv)
    try:
        if args.resamples < 1:
            raise ValueError(f"--resamples {args.resamples}: pass a positive count such as 2000")
        result = build_report(args.root, args.models, args.seeds, n_resamples=args.resamples,
                              charts=not args.no_charts, sessions=args.sessions)
    except (FileNotFoundError, ValueError, PermissionError) as error:
        print(f"error: {error}".splitlines()[0], file=sys.stderr)
        return 2
    counts = ", ".join(f"{count} {status}" for status, count in sorted(result.status_counts.items()))
    print(f"report: {len(result.models)} model(s), sessions {counts} -> {result.root / 'report.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
