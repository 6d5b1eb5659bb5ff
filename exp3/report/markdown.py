"""report.md and the Prefect UI's results markdown: status grid, per-split tables, findings, charts, files."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

import pandas as pd

from exp3.evaluate.mapstats import BOOTSTRAP_RESAMPLES
from exp3.evaluate.severity import METRICS
from exp3.report import curves, gap, severity
from exp3.report.comparisons import MAP_METRICS, PAIRED_METRICS, VAL_PLAN, ci_verdict, comparison_metrics
from exp3.report.coverage import coverage_markdown
from exp3.report.findings import (
    NO_PAIRED_RESULT,
    POSITIVE_CONTROL,
    floor_note,
    headline_findings,
    positive_control,
    positive_control_failed,
)
from exp3.report.gallery import GALLERY_RULE
from exp3.report.runs import THRESHOLDS
from exp3.report.text import fmt, fmt_ci, fmt_p, markdown_table, short_session
from exp3.sessions import SESSION_LABELS, SESSION_SUFFIXES
from exp3.splits import CLEAN_SPLIT, FIXED_SPLIT, PRIMARY_SPLITS

if TYPE_CHECKING:
    from exp3.report import ReportResult  # for annotations only: exp3.report imports this module

NO_MAP_INTERVAL = "point estimate, no CI (no map_stats file, one not giving the recorded mAP, or one of other images)"
"""The reading of an mAP difference without an interval: `draws.ReportData.map_draws` pairs only stats that
reproduce the recorded mAP on the same image ids."""
SHORT: dict[str, str] = {key: metric.short for key, metric in METRICS.items()}
"""Each metric's header in report.md's split tables (exp3.evaluate.severity.METRICS)."""
NOT_IN_RUN = "not in run"
"""Status-grid cell of a session outside this run's `sessions` (the config's `sessions:` list)."""


def _versus(row: pd.Series, ref: str) -> str:
    """A split table's `vs S1` / `vs S2` cell: blank for the reference itself and a session not done, n/a for a done
    session without a paired difference (other images, or per-image values missing)."""
    if pd.notna(row[f"diff_vs_{ref}"]):
        return (f"{fmt_ci(row, f'diff_vs_{ref}', f'diff_vs_{ref}_ci_low', f'diff_vs_{ref}_ci_high', True)}, "
                f"{fmt_p(row[f'p_bh_vs_{ref}'])}")
    return "" if short_session(row["session"]) == ref or not row["n_seeds_done"] else "n/a"


def split_table(summary: pd.DataFrame, split: str) -> pd.DataFrame:
    """The report.md table of one split: formatted strings, one row per model x session."""
    return pd.DataFrame([{
        "model": row["model"], "session": row["session_label"],
        "status": row["status"] + (f" (n={row['n_seeds_done']})" if row["n_seeds"] > 1 else ""),
        f"{SHORT['ingredient_micro_f1']} [95% CI]": fmt_ci(row, "ingredient_micro_f1", "ingredient_micro_f1_ci_low",
                                                            "ingredient_micro_f1_ci_high"),
        SHORT["ingredient_samples_f1"]: fmt(row["ingredient_samples_f1"]),
        "F1 macro": fmt(row["ingredient_macro_f1"]),
        **{SHORT[key]: fmt(row[key]) for key in ("detection_f1", "map50", "map50_95")},
        "rF1 [95% CI]": fmt_ci(row, "rF1_micro", "rF1_micro_ci_low", "rF1_micro_ci_high"),
        **{f"vs {ref} [95% CI], p_BH": _versus(row, ref) for ref in ("S1", "S2")},
        "train s": fmt(row["train_wall_s"], 0), "eval s": fmt(row["eval_wall_s"], 1)}
        for _, row in summary[summary["split"] == split].iterrows()])


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
            "model": row["model"], "session": row["session_label"], "conf (val)": fmt(row["conf_val"], 2),
            **{SHORT[key]: fmt(row[f"{key}_at_val"]) for key in PAIRED_METRICS},
            f"{SHORT['ingredient_micro_f1']} (primary)": fmt(row["ingredient_micro_f1"]),
            f"{short_session(session)} - {short_session(reference)} [95% CI], p_BH": "" if versus is None else
            f"{fmt_ci(versus, 'difference', 'ci_low', 'ci_high', True)}, {fmt_p(versus['p_bh'])}"})
    return pd.DataFrame(rows)


def _reading(metric: str, row: pd.Series) -> str:
    if pd.isna(row["difference"]):
        return f"no result ({NO_PAIRED_RESULT})"
    verdict = ci_verdict(row)
    if verdict is None:
        return NO_MAP_INTERVAL if metric in MAP_METRICS else "n/a"
    return "CI includes 0" if verdict == 0 else "CI excludes 0"


def metric_table(comparisons: pd.DataFrame, models: list[str]) -> pd.DataFrame:
    """report.md table of S2 - S1 on test_clean, every metric: one row per model x threshold x metric (the
    test_occ_fixed rows are the positive control's table)."""
    session, reference, _ = POSITIVE_CONTROL
    rows = []
    for model in models:
        for threshold in THRESHOLDS:
            found = comparison_metrics(comparisons, model, CLEAN_SPLIT, session, reference, threshold, False)
            if all(pd.isna(row["difference"]) for row in found.values()):
                continue  # S2 or S1 not done: nothing compared
            for metric in (metric for metric in (*PAIRED_METRICS, *MAP_METRICS) if metric in found):
                row = found[metric]
                rows.append({"model": model, "threshold": "val-chosen" if threshold == "val" else
                             ("n/a (mAP)" if metric in MAP_METRICS else f"conf {fmt(row['conf'], 2)}"),
                             "metric": METRICS[metric].label,
                             f"{short_session(session)} - {short_session(reference)} [95% CI]":
                                 fmt_ci(row, "difference", "ci_low", "ci_high", True),
                             "p": fmt_p(row["p_value"]), "p_BH": fmt_p(row["p_bh"]),
                             "reading": _reading(metric, row)})
    return pd.DataFrame(rows)


def status_grid(summary: pd.DataFrame, models: list[str], sessions: Iterable[str] = SESSION_SUFFIXES) -> pd.DataFrame:
    """Model x session table of statuses (from the test_clean rows; both splits share a status); all six
    sessions, those outside this run's `sessions` as NOT_IN_RUN."""
    part = summary[summary["split"] == CLEAN_SPLIT]
    status = dict(zip(zip(part["model"], part["session"]), part["status"]))
    return pd.DataFrame([{"model": model, **{SESSION_LABELS[suffix]: status.get((model, suffix), "") if suffix in
                                             sessions else NOT_IN_RUN for suffix in SESSION_SUFFIXES}}
                         for model in models])


DASHBOARD_COLUMNS: tuple[str, ...] = ("model", "session", "status", f"{SHORT['ingredient_micro_f1']} [95% CI]",
                                     SHORT["detection_f1"], SHORT["map50"], SHORT["map50_95"], "rF1 [95% CI]",
                                     "vs S1 [95% CI], p_BH")
"""The columns of report.md's split table that the Prefect UI's results artifact shows (the rest: report.md)."""


def control_failed_models(result: "ReportResult") -> list[str]:
    """The models whose positive control misses the effect on some metric (`positive_control_failed`) or leaves a
    gap-closed ratio out (`gap.FAILED_CONTROL`): the answer says whether their training had converged."""
    gap_failed = set(result.gap_closed.loc[result.gap_closed["verdict"] == gap.FAILED_CONTROL, "model"]) \
        if len(result.gap_closed) else set()
    return [model for model in result.models
            if model in gap_failed or positive_control_failed(result.comparisons, model)]


def answer_section(result: "ReportResult", charts: list[str] | None = None) -> list[str]:
    """The answer (exp3.report.gap) and, where the positive control failed, whether training had converged."""
    return [*gap.gap_section(result.gap_closed, result.models, result.n_resamples, result.comparisons, charts),
            *curves.convergence_lines(result.training_curves, control_failed_models(result))]


def dashboard_markdown(result: "ReportResult") -> str:
    """The morning view for the Prefect UI's markdown artifact: positive control verdicts, headline findings
    and the test_occ_fixed table with CIs, then where the full report, tables and charts are on disk."""
    lines = ["# exp3 results", "", f"Full report: `{result.root / 'report.md'}` (charts: `{result.root / 'plots'}`)",
             "", *answer_section(result), "## Positive control", ""]
    lines += [f"- {control_verdict(result, model)[1]}" for model in result.models]
    lines += ["", "## Headline findings", ""]
    lines += [f"- {finding}" for finding in headline_findings(result.summary, result.models, result.comparisons)]
    table = split_table(result.summary, FIXED_SPLIT)
    narrow = [column for column in DASHBOARD_COLUMNS if column in table.columns]  # fits the UI's width
    lines += ["", f"## {FIXED_SPLIT} at the primary threshold", "",
              markdown_table(table[narrow]) if len(table) else "no session rows", ""]
    return "\n".join(lines)


def control_verdict(result: "ReportResult", model: str) -> tuple[pd.DataFrame, str]:
    """`positive_control` of one model in `result` (its table, its verdict)."""
    return positive_control(result.comparisons, model, result.summary, result.control_notes.get(model, ""))


def _control_lines(result: "ReportResult", model: str) -> list[str]:
    """report.md's positive control of one model: its verdict, then its table."""
    table, verdict = control_verdict(result, model)
    return [f"- {verdict}", ""] + ([markdown_table(table), ""] if len(table) else [])


def render_markdown(result: "ReportResult") -> str:
    """report.md: the answer, status grid, positive control, headline findings, training curves, per split the table
    at the primary and at the val-chosen threshold, S2 vs S1 on every metric, failures, charts, files."""
    summary, root = result.summary, result.root
    failures = summary[(summary["split"] == CLEAN_SPLIT) & (summary["status"] != "done")]
    pngs = [path for path in result.files if path.suffix == ".png"]
    one_seed = gap.one_seed_models(result.comparisons)
    lines = [f"# exp3 report: {root.name}", "",
             f"Built by `python -m exp3.report --root {root}` from the session folders; every number below is "
             "recomputed from them. Columns and methods: docs/report.md; what each metric can and cannot "
             "detect: docs/what-metrics-detect.md.", "",
             *answer_section(result, [path.name for path in pngs if path.stem.startswith("gap_closed_")]),
             "## Grid status", "",
             *([f"This run's sessions: {', '.join(short_session(suffix) for suffix in result.sessions)} (config "
                f"`sessions:`); the others are `{NOT_IN_RUN}`, left out of every table, finding and chart.", ""]
               if result.sessions != SESSION_SUFFIXES else []),
             markdown_table(status_grid(summary, result.models, result.sessions)), "",
             *(["Warnings:", "", *(f"- {warning}" for warning in result.warnings), ""] if result.warnings else []),
             "## Positive control: can this run detect a known effect?", "",
             "Training on occluded images (S2) must beat clean training (S1) on the occluded test images. Each "
             "headline metric's paired difference S2 - S1 on test_occ_fixed, at conf 0.25 and at each session's "
             "val-chosen threshold, with p and p_BH as in the comparisons; a metric detects the effect when its 95% "
             "interval lies above 0. What each metric can and cannot detect, with the pilot's numbers: "
             "docs/what-metrics-detect.md.", "",
             *[line for model in result.models for line in _control_lines(result, model)],
             "## Headline findings", "",
             *[f"- {finding}" for finding in headline_findings(summary, result.models, result.comparisons)
               + severity.severity_findings(result.severity_curves, result.severity_table, result.models)], "",
             "F1 = micro ingredient F1 at the session's confidence threshold (with several seeds: of the per-image "
             "counts pooled over the seeds, the statistic its interval and differences are of; the seed mean is "
             "summary_metrics' `_seed_mean` column). Intervals: 95% percentile bootstrap "
             f"over test images ({result.n_resamples} resamples, seed {result.seed}); p_BH: paired permutation test "
             "of the difference, Benjamini-Hochberg within each metric and threshold over the distinct session "
             "pairs of all models and splits (S2 vs S1 and S1 vs S2 are one test). A metric shows a difference "
             "when its paired 95% interval excludes 0. mAP intervals recompute the validator's mAP on each "
             f"resample from its per-image matching stats ({BOOTSTRAP_RESAMPLES} resamples; no p-value). "
             + ("With several seeds the intervals of F1 differences resample the seeds as well (two levels) and p "
                "permutes the training runs; a session's own interval resamples images only (docs/report.md, "
                "\"Several seeds\"). " + (f"{gap.one_seed_note(one_seed)} " if one_seed else "")
                if (result.comparisons.get("interval_levels", pd.Series(dtype=str)) == "seeds+images").any() else
                "One seed per session: the seed-to-seed spread is not in these intervals. ") +
             "Overlapping intervals do not by themselves mean no difference; "
             "the paired difference interval is the one to read.", ""]
    lines += curves.curves_section(result.training_curves, result.models, [path.name for path in pngs])
    done = summary[summary["n_seeds_done"] > 0].drop_duplicates(["model", "session"])
    floor = floor_note((f"{row['model']} {short_session(row['session'])}", row["conf_val"])
                       for _, row in done.iterrows())
    for split in PRIMARY_SPLITS[::-1]:
        confs = ", ".join(fmt(conf, 2) for conf in sorted(summary["conf"].dropna().unique())) or "n/a"
        lines += [f"## {split}", "", f"At the primary threshold (conf {confs}):", "",
                  markdown_table(split_table(summary, split)), "", f"### {split} at the val-chosen threshold", ""]
        at_val = val_table(summary, result.comparisons, split)
        lines += ["Each session's own threshold, chosen to maximise ingredient micro F1 on the clean val split "
                  "(a secondary operating point; S2 - S1 recomputed per image at those thresholds):", "",
                  markdown_table(at_val), "", *([floor, ""] if floor and split == FIXED_SPLIT else [])] \
            if len(at_val) else \
            ["n/a: no done session.", ""]
    by_metric = metric_table(result.comparisons, result.models)
    if len(by_metric):
        lines += [f"## S2 vs S1 on {CLEAN_SPLIT}, every metric", "",
                  "What occluded training does on clean images, by metric (its test_occ_fixed rows are the positive "
                  "control's table). Paired intervals for every metric; p-values for the F1s.", "",
                  markdown_table(by_metric), ""]
    lines += severity.severity_section(result.severity_curves, result.severity_table, result.models)
    lines += coverage_markdown(result.coverage, result.models)
    if len(failures):
        lines += ["## Sessions not done", ""]
        lines += [f"- {row['model']} {row['session_label']}: {row['status']}"
                  + (f": {row['error']}" if row["error"] else "") for _, row in failures.iterrows()] + [""]
    lines += ["## Charts", ""]
    for path in pngs:
        if path.parent.name != "plots" or path.stem.startswith(("gap_closed_", "training_curves_")):
            continue  # shown in their sections
        if path.stem.startswith("gallery_"):
            lines += [f"### {path.stem}", "", f"![{path.stem}](plots/{path.name})", "", GALLERY_RULE, ""]
        else:
            lines += [f"### {path.stem}", "", f"![{path.stem}](plots/{path.name}) "
                      f"([interactive](plots/{path.with_suffix('.html').name}))", ""]
    lines += ["## Files", "", "- `gap_closed.csv` / `.json`: gap closed per model x metric x masking session x basis, "
              "with the verdicts (docs/report.md, \"Gap closed\")",
              "- `summary_metrics.csv` / `.json`: one row per model x session x split",
              "- `summary_by_seed.csv` / `.json`: one row per session folder x split",
              "- `comparisons.csv` / `.json`: paired differences vs S1 and S2 per metric and threshold, with CIs "
              "and p-values",
              "- `per_class_f1.csv`: per-class ingredient F1",
              "- `severity_curves.csv` / `severity_summary.csv`: metric vs severity; mPC / rPC with CIs and tests "
              "vs S1",
              "- `recall_by_coverage.csv`: recall per covered-fraction bin, session, level and threshold, with CIs; "
              "`recall_by_coverage_boxes.csv`: the per-box table behind it",
              "- `training_curves.csv`: val mAP50-95 and train loss per session (and seed) and epoch, best.pt epochs "
              "and masking ramp ends; `training_convergence.csv`: each session's reading (\"Training curves\")", ""]
    return "\n".join(lines)
