"""The report's tables of numbers: summary_by_seed (one row per session folder x split), summary_metrics
(seed means and spread per model x session x split) and per_class_f1."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from exp3.report.runs import SessionRun, as_number, class_name, threshold_conf
from exp3.session.layout import SessionState
from exp3.sessions import SESSION_LABELS
from exp3.splits import PRIMARY_SPLITS

AVERAGES, SCORES = ("micro", "macro", "samples"), ("precision", "recall", "f1")
INGREDIENT_COLUMNS: tuple[str, ...] = tuple(f"ingredient_{average}_{score}" for average in AVERAGES for score in SCORES)
DETECTION_COLUMNS: tuple[str, ...] = tuple(f"detection_{score}" for score in SCORES)
VAL_COLUMNS: tuple[str, ...] = ("conf_val", "ingredient_micro_f1_at_val", "ingredient_samples_f1_at_val",
                                "detection_f1_at_val")
"""The secondary operating point: each session's threshold chosen on the clean val split and the test metrics
at it (`splits[split]["at_val_threshold"]`)."""
ROBUSTNESS_COLUMNS: tuple[str, ...] = ("rF1_micro", "rF1_samples", "rF1_macro", "rF1_detection", "rmAP50", "rmAP50_95")
METRIC_COLUMNS: tuple[str, ...] = ("n_images", "conf", "map50", "map50_95", *INGREDIENT_COLUMNS, *DETECTION_COLUMNS,
                                   *VAL_COLUMNS, *ROBUSTNESS_COLUMNS, "train_wall_s", "eval_wall_s",
                                   "epochs_completed")
"""Numeric columns read from metrics.json (per split; the r* columns are per session, repeated on both splits)."""
SPREAD_COLUMNS: tuple[str, ...] = ("ingredient_micro_f1", "ingredient_samples_f1", "map50", "map50_95", "rF1_micro",
                                   "rmAP50_95")
"""Headline metrics that get `_std`, `_min`, `_max` columns across seeds in summary_metrics."""


def split_row(run: SessionRun, split: str) -> dict[str, Any]:
    """One summary_by_seed row: identifiers, status and every METRIC_COLUMNS value (NaN where metrics.json records
    none, as for a session not done)."""
    view = run.view
    part = view.split(split)
    at_val = part.at_val_threshold
    values = {"n_images": part.n_images, "conf": part.conf, "map50": part.map50, "map50_95": part.map50_95,
              **{f"ingredient_{average}_{score}": getattr(getattr(part.ingredient, average), score)
                 for average in AVERAGES for score in SCORES},
              **{f"detection_{score}": getattr(part.detection, score) for score in SCORES},
              "conf_val": threshold_conf(run, split, "val"), "ingredient_micro_f1_at_val": at_val.ingredient.micro.f1,
              "ingredient_samples_f1_at_val": at_val.ingredient.samples.f1, "detection_f1_at_val": at_val.detection.f1,
              **{column: getattr(view.robustness, column) for column in ROBUSTNESS_COLUMNS},
              "train_wall_s": view.training.wall_s, "eval_wall_s": part.eval_wall_s,
              "epochs_completed": view.training.epochs_completed}
    return {"model": run.model, "session": run.suffix, "session_label": SESSION_LABELS[run.suffix], "split": split,
            "status": run.status, "error": run.error or "", "seed": math.nan if run.seed is None else run.seed,
            "folder": str(run.folder), **{column: as_number(values[column]) for column in METRIC_COLUMNS}}


def by_seed_table(runs: list[SessionRun]) -> pd.DataFrame:
    """summary_by_seed: one row per run x split, in grid order."""
    return pd.DataFrame([split_row(run, split) for run in runs for split in PRIMARY_SPLITS])


def _combined_status(statuses: list[str]) -> SessionState:
    if all(status == SessionState.DONE for status in statuses):
        return SessionState.DONE
    if SessionState.DONE in statuses:
        return SessionState.SOME_SEEDS
    return next((status for status in (SessionState.FAILED, SessionState.STALE, SessionState.INCOMPLETE)
                 if status in statuses), SessionState.MISSING)


def summary_table(by_seed: pd.DataFrame) -> pd.DataFrame:
    """summary_metrics: one row per model x session x split; metrics are the mean over done seeds, NaN when a done
    seed lacks the value (never the mean of some of them; the columns: docs/report.md, "Columns of
    summary_metrics")."""
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
                               "seeds": ";".join(str(seed) for seed in seeds),
                               **{column: float(done[column].mean(skipna=False)) for column in METRIC_COLUMNS}}
        for column in SPREAD_COLUMNS:  # std: ddof 1, NaN below 2 seeds; all three NaN without a done seed
            values = done[column].astype(float)
            row.update({f"{column}_std": float(values.std(ddof=1, skipna=False)),
                        f"{column}_min": float(values.min(skipna=False)),
                        f"{column}_max": float(values.max(skipna=False))})
        row["folder"] = ";".join(group["folder"])
        rows.append(row)
    return pd.DataFrame(rows)


def per_class_table(runs: list[SessionRun]) -> pd.DataFrame:
    """Per-class ingredient F1: one row per model x session x split x class (mean over done seeds: NaN when a seed
    has none, never the mean of the others); NaN for a class neither in the split's labels nor predicted
    (`present: false`), whose empty-set F1 of 1 measures nothing."""
    rows = [{"model": run.model, "session": run.suffix, "session_label": SESSION_LABELS[run.suffix], "split": split,
             "seed": run.seed, "class_id": int(entry.class_id), "class_name": class_name(entry),
             "f1": as_number(entry.f1) if entry.present is not False else math.nan,
             "support": as_number(entry.support)}
            for run in runs for split in PRIMARY_SPLITS for entry in run.view.split(split).per_class
            if entry.class_id is not None]
    columns = ["model", "session", "session_label", "split", "class_id", "class_name", "f1", "support", "n_seeds"]
    if not rows:
        return pd.DataFrame(columns=columns)
    grouped = pd.DataFrame(rows).groupby(columns[:6], sort=False)  # the class's keys; the values: its seeds' mean
    mean = lambda values: values.mean(skipna=False)  # noqa: E731 - pandas' own mean skips NaN: the other seeds'
    return grouped.agg(f1=("f1", mean), support=("support", mean), n_seeds=("f1", "size")).reset_index()[columns]
