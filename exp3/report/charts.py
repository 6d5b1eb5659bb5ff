"""The report's charts: tidy frames from the tables, drawn and saved by exp3.report.plots."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from exp3.evaluate.severity import METRICS
from exp3.report import plots
from exp3.report.comparisons import primary_f1
from exp3.session.layout import SessionState
from exp3.sessions import SESSION_LABELS
from exp3.splits import CLEAN_SPLIT, FIXED_SPLIT


def _status_text(status: str) -> str:
    """Written at the baseline of a not-done session's bar."""
    return "" if status == SessionState.DONE else str(status)


def bar_frame(summary: pd.DataFrame, split: str, value: str, models: list[str]) -> pd.DataFrame:
    """One row per model x session (all six, all `models`) for `session_bar_chart`: `value` (NaN when not done) and
    its interval (`<value>_ci_low`, `<value>_ci_high`)."""
    part = summary[(summary["split"] == split) & summary["model"].isin(models)]
    return pd.DataFrame({"model": part["model"], "session_label": part["session_label"],
                         "value": part[value].where(part["n_seeds_done"] > 0), "ci_low": part[f"{value}_ci_low"],
                         "ci_high": part[f"{value}_ci_high"], "status_text": part["status"].map(_status_text)
                         }).reset_index(drop=True)


def split_frame(summary: pd.DataFrame, model: str, value: str) -> pd.DataFrame:
    """One row per session x split of one model for `split_bar_chart`."""
    part = summary[summary["model"] == model]
    return pd.DataFrame({"model": part["model"], "session_label": part["session_label"], "split": part["split"],
                         "value": part[value], "status_text": part["status"].map(_status_text)}).reset_index(drop=True)


def heatmap_frame(per_class: pd.DataFrame, model: str) -> pd.DataFrame:
    """One row per session x split x class of one model for `class_heatmap` (classes in class_id order)."""
    part = per_class[per_class["model"] == model].sort_values(["class_id"], kind="stable")
    shown = part[["session_label", "split", "class_name", "f1", "support"]]
    return shown.assign(f1_text=part["f1"].map(lambda f1: "" if pd.isna(f1) else f"{f1:.2f}")).reset_index(drop=True)


def difference_frame(comparisons: pd.DataFrame, split: str, models: list[str]) -> pd.DataFrame:
    """One row per model x session x reference on `split` for `difference_chart` (done pairs only; ingredient
    micro F1 at the primary threshold, `primary_f1`)."""
    headline = primary_f1(comparisons)
    part = headline[(headline["split"] == split) & headline["model"].isin(models) & headline["difference"].notna()]
    return pd.DataFrame({"model": part["model"], "session_label": part["session_label"],
                         "reference": "vs " + part["reference"].map(SESSION_LABELS),
                         "difference": part["difference"], "ci_low": part["ci_low"], "ci_high": part["ci_high"],
                         "p_bh_text": part["p_bh"].map(lambda p: "" if pd.isna(p) else "p_BH<0.001" if p < 0.001
                                                       else f"p_BH={p:.3f}")}).reset_index(drop=True)


def write_charts(summary: pd.DataFrame, comparisons: pd.DataFrame, per_class: pd.DataFrame, models: list[str],
                 plots_dir: Path) -> list[Path]:
    """Build every chart of the report from the tables and save PNG + HTML under `plots_dir`. The all-models bar
    charts (`f1_<split>_by_model`) are drawn when there are several models: with one they would be its own chart."""
    f1 = METRICS["ingredient_micro_f1"].label
    ci_note = "error bars: 95% percentile bootstrap CI over test images (exp3.evaluate.stats)"
    written: list[Path] = []
    for split, tag in ((FIXED_SPLIT, "occ"), (CLEAN_SPLIT, "clean")):
        per_model = (([model], model, f": {model}") for model in models)
        all_models = [(models, "by_model", ", all models")] if len(models) > 1 else []
        for chosen, name, which in (*all_models, *per_model):
            written += plots.save_chart(plots.session_bar_chart(
                bar_frame(summary, split, "ingredient_micro_f1", chosen), models,
                title=f"{f1} on {split}{which}", y_title=f"{f1}, {split}", subtitle=ci_note),
                plots_dir / f"f1_{tag}_{name}")
        written += plots.save_chart(plots.difference_chart(
            difference_frame(comparisons, split, models), models,
            title=f"{f1} difference vs S1 and vs S2 on {split}",
            x_title=f"F1 difference (session - reference), {split}",
            subtitle="points: difference; lines: 95% paired bootstrap CI; text: BH-adjusted permutation p"),
            plots_dir / f"f1_diff_{tag}")
    written += plots.save_chart(plots.session_bar_chart(
        bar_frame(summary, FIXED_SPLIT, "rF1_micro", models), models,
        title=f"Robustness rF1 = F1({FIXED_SPLIT}) / F1({CLEAN_SPLIT}), {f1}",
        y_title="rF1 (occluded / clean)", y_domain=(0.0, 1.2), reference_line=1.0,
        reference_label="1.0 = no loss under occlusion",
        subtitle="1.0 = occlusion costs nothing; error bars: 95% bootstrap CI, images paired across the splits"),
        plots_dir / "robustness_rF1")
    map_label = METRICS["map50_95"].label
    for model in models:
        written += plots.save_chart(plots.split_bar_chart(
            split_frame(summary, model, "map50_95"), models, title=f"{map_label} on each test split: {model}",
            y_title=map_label, subtitle="COCO-style mAP from Ultralytics' validator"), plots_dir / f"map50_95_{model}")
        heat = heatmap_frame(per_class, model)
        if len(heat):
            written += plots.save_chart(plots.class_heatmap(
                heat, title=f"Per-class ingredient F1 by session: {model}",
                subtitle="one panel per test split; blank column = session not done"),
                plots_dir / f"per_class_f1_{model}")
    return written
