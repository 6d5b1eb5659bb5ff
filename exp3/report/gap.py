"""The report's headline: how much of the S1 -> S2 gap each masking session closes, its clean-image cost, and a verdict
per site. Definitions, rules, intervals and columns: docs/report.md, "Gap closed" and "Several seeds" (one model's S1,
S2 and Sx drawn on the same image resamples of exp3.report.draws, so the ratio's interval is paired)."""

from __future__ import annotations

import math
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from exp3.evaluate import stats
from exp3.evaluate.mapstats import BOOTSTRAP_RESAMPLES
from exp3.evaluate.severity import METRICS
from exp3.report import plots
from exp3.report.comparisons import ci_verdict, comparison_metrics
from exp3.report.draws import ReportData, SplitDraws
from exp3.report.runs import SessionRun
from exp3.report.severity import common_levels
from exp3.report.text import fmt, fmt_ci, markdown_table, seeds_done, short_session
from exp3.sessions import REFERENCES, SESSION_LABELS, SESSION_SUFFIXES
from exp3.splits import CLEAN_SPLIT, FIXED_SPLIT

GAP_METRICS: tuple[str, ...] = tuple(key for key, metric in METRICS.items() if metric.kind != "mean")
"""The metrics of the gap-closed headline (F1s at the primary threshold; mAP is threshold-free)."""
MASKING_SESSIONS: tuple[str, ...] = SESSION_SUFFIXES[2:]
"""S3..S6: the sessions whose gap closed is reported."""
REFERENCE, CONTROL = REFERENCES
"""S1 (clean training) and S2 (occluded training, the positive control)."""
HEADLINE_BASIS = FIXED_SPLIT
BASES: tuple[str, ...] = (HEADLINE_BASIS, "mPC")
"""What the gap is measured on: the fixed occluded suite, and mPC over the severity levels."""
FAILED_CONTROL = "positive control failed"
NO_RESULT = "n/a"
"""The verdict where S1, S2 or Sx give no result (GapRow.reason says why)."""
NOT_DONE = "S1, S2 or this session is not done, or lacks its per-image files"
UNPAIRED = ("S1, S2 and this session are not on the same images (their per-image files hold other image ids): "
            "no paired draws; evaluate them on one suite")
"""The reasons of a NO_RESULT row (GapRow.reason)."""
NOT_ALIKE = "not trained like them"
"""Said of a session whose out-of-memory retries changed its batch (docs/report.md, "Gap closed")."""
ONE_SEED = "one seed: provisional"
"""Said beside a verdict where S1, S2 or Sx has one done seed: that session's training spread is in none of its
intervals, and two runs of one recipe differ by more than they allow (docs/report.md, "Gap closed";
benchmarks/known_answer_verdicts.py)."""
REPLACES, PART, HURTS, NO_HELP, CANNOT_TELL = ("replaces occlusion training", "closes part of the gap", "hurts",
                                               "does not help", "cannot tell")
GAP_COLUMNS: tuple[str, ...] = ("model", "metric", "session", "session_label", "basis", "gap", "gap_ci_low",
                                "gap_ci_high", "gain", "gain_ci_low", "gain_ci_high", "gap_closed",
                                "gap_closed_ci_low", "gap_closed_ci_high", "clean_cost", "clean_cost_ci_low",
                                "clean_cost_ci_high", "verdict", "reason", "clean_verdict", "n_images", "n_seeds",
                                "interval_levels", "training_note", "seeds_note")


RULE_EDGES: tuple[float, ...] = (0.0, 0.5, 1.0)
"""The bounds `verdict`'s rules compare a gap-closed interval with: report.md prints it on their right side."""


def verdict(result: stats.GapClosed | None) -> str:
    """The verdict of one gap-closed result: the numbered rules of docs/report.md, in order (None: NO_RESULT)."""
    if result is None:
        return NO_RESULT
    if not result.established:
        return FAILED_CONTROL
    low, high = result.ratio.low, result.ratio.high
    if not (math.isfinite(low) and math.isfinite(high)):
        return CANNOT_TELL
    if low > 0.5 and high >= 1.0:
        return REPLACES
    if low > 0.0:
        return PART
    if high < 0.0:
        return HURTS
    if high < 0.5:
        return NO_HELP
    return CANNOT_TELL


def clean_verdict(cost: stats.Interval | None) -> str:
    """The clean-image reading of Sx - S1 on test_clean (docs/report.md)."""
    if cost is None or not (math.isfinite(cost.low) and math.isfinite(cost.high)):
        return "clean cost unknown"
    return {1: "improves clean accuracy", -1: "costs clean accuracy",
            0: "no established clean cost"}[ci_verdict({"ci_low": cost.low, "ci_high": cost.high})]


def site_verdict(verdicts: dict[str, str]) -> str:
    """One site's verdict from its metrics' verdicts (metric -> verdict): docs/report.md's combination rule."""
    known = {metric: text for metric, text in verdicts.items() if text != NO_RESULT}
    held = {metric: text for metric, text in known.items() if text != FAILED_CONTROL}
    if not known:
        return NO_RESULT
    if not held:
        return FAILED_CONTROL
    if len(set(held.values())) == 1:
        return next(iter(held.values()))
    return "metrics disagree: " + "; ".join(f"{METRICS[metric].label} {text}" for metric, text in held.items())


@dataclass(frozen=True)
class GapRow:
    """One model x metric x masking session x basis of the headline."""

    model: str
    metric: str
    session: str
    basis: str
    result: stats.GapClosed | None
    clean_cost: stats.Interval | None
    n_images: int
    n_seeds: int
    interval_levels: str = "images"
    reason: str = ""
    """Why `result` is None (NOT_DONE, UNPAIRED); empty when there is a result."""
    training_note: str = ""
    """S1, S2 or Sx runs trained at another batch than their siblings (`batch_notes`); empty when none."""
    seeds_note: str = ""
    """S1, S2 or Sx with only some of their seeds done ("S2: 1 of 2 seeds done"); empty when none."""

    def record(self) -> dict[str, Any]:
        result = self.result
        intervals = (result and result.gap, result and result.gain, result and result.ratio, self.clean_cost)
        triples = [value for interval in intervals for value in (astuple(interval) if interval else (math.nan,) * 3)]
        values = (self.model, self.metric, self.session, SESSION_LABELS[self.session], self.basis, *triples,
                  verdict(result), self.reason, clean_verdict(self.clean_cost), self.n_images, self.n_seeds,
                  self.interval_levels, self.training_note, self.seeds_note)
        return dict(zip(GAP_COLUMNS, values))


def _basis_value(values: np.ndarray, basis: str) -> np.ndarray:
    """(..., S) per split, test_occ_fixed first then the levels -> the basis value (...)."""
    return values[..., 0] if basis == HEADLINE_BASIS else values[..., 1:].mean(axis=-1)


def _side(data: ReportData, model: str, suffix: str, metric: str, basis: str,
          suites: dict[str, str]) -> SplitDraws | None:
    """A session's `metric` on one basis (`suites`: the model's severity levels, split -> suite id): its value and
    (B,) draws on the report's resamples (exp3.report.draws)."""
    if basis != HEADLINE_BASIS and not suites:
        return None
    found = data.split_draws(model, suffix, [HEADLINE_BASIS, *suites] if basis != HEADLINE_BASIS else [HEADLINE_BASIS],
                             metric, suites)
    return found and SplitDraws(_basis_value(found.points, basis), _basis_value(found.draws, basis), found.ids)


def batch_of(run: SessionRun) -> tuple[int | None, int | None]:
    """(configured, ran) batch of `run`: the config's, and its out-of-memory retries' else the configured one (None:
    Ultralytics' default)."""
    config, retried = run.view.inputs.config, run.view.training.oom_retry_batch
    train = config.get("train") if isinstance(config, dict) else None
    batch = train.get("batch") if isinstance(train, dict) else None
    configured = batch if isinstance(batch, int) and not isinstance(batch, bool) else None
    return configured, int(retried) if retried is not None and math.isfinite(retried) else configured


def batch_note(run: SessionRun, name: str) -> str:
    """"<name> trained at batch 4 after out-of-memory retries, its siblings at 16" when `run`'s retries trained it at
    another batch than the configured one (docs/report.md, "Gap closed"); "" otherwise."""
    configured, retried = batch_of(run)
    if retried == configured:
        return ""
    siblings = "Ultralytics' default batch" if configured is None else str(configured)
    return f"{name} trained at batch {retried} after out-of-memory retries, its siblings at {siblings}"


def batch_notes(done: list[SessionRun]) -> str:
    """`batch_note` of each of one session's done runs (several seeds: named with their seed), joined by "; "."""
    names = [short_session(run.suffix) + (f" (seed {run.seed})" if len(done) > 1 and run.seed is not None else "")
             for run in done]
    return "; ".join(note for note in map(batch_note, done, names) if note)


def training_note(data: ReportData, model: str, names: tuple[str, ...]) -> str:
    """`batch_notes` of the sessions `names` when their done runs did not all train at one batch ("" when they did:
    halved alike, one GPU too small for all, they are compared as trained alike)."""
    if len({batch_of(run)[1] for name in names for run in data.done(model, name)}) <= 1:
        return ""
    return "; ".join(note for name in names if (note := batch_notes(data.done(model, name))))


def _no_result_reason(sides: list[SplitDraws | None]) -> str:
    """Why S1, S2 and Sx (`sides`) give no gap closed: NOT_DONE, UNPAIRED; empty when they give one."""
    if any(side is None for side in sides):
        return NOT_DONE
    return UNPAIRED if len({side.ids for side in sides if side is not None}) > 1 else ""


def gap_rows(data: ReportData, models: list[str], comparisons: pd.DataFrame,
             sessions: tuple[str, ...] = SESSION_SUFFIXES) -> list[GapRow]:
    """Every model x metric x masking session (of this run) x basis with a result (None where a side is missing)."""
    rows: list[GapRow] = []
    for model in models:
        suites = {level.split: level.suite_id for level in common_levels(data.model_runs(model))}
        notes = {suffix: training_note(data, model, (REFERENCE, CONTROL, suffix)) for suffix in MASKING_SESSIONS}
        for metric in GAP_METRICS:
            for suffix in (suffix for suffix in MASKING_SESSIONS if suffix in sessions):
                cost_row = comparison_metrics(comparisons, model, CLEAN_SPLIT, suffix, REFERENCE).get(metric)
                cost = None if cost_row is None else stats.Interval(
                    *map(float, cost_row[["difference", "ci_low", "ci_high"]]))
                for basis in BASES:
                    sides = [_side(data, model, name, metric, basis, suites) for name in (REFERENCE, CONTROL, suffix)]
                    if basis != HEADLINE_BASIS and all(side is None for side in sides):
                        continue                                   # no severity levels: no mPC row
                    reason = _no_result_reason(sides)
                    result = None if reason else stats.gap_closed(*(float(side.points) for side in sides),
                                                                  *(side.draws for side in sides))
                    trio = (REFERENCE, CONTROL, suffix)
                    seeds = [len(data.done(model, name)) for name in trio]
                    planned = [len(data.grouped.get((model, name), [])) for name in trio]
                    note = notes[suffix]
                    partial = "; ".join(seeds_done(name, done, expected)
                                        for name, done, expected in zip(trio, seeds, planned) if 0 < done < expected)
                    n_images = 0 if result is None else len(sides[0].ids)       # no result: no interval either
                    levels = "" if result is None else "seeds+images" if max(seeds) > 1 else "images"
                    rows.append(GapRow(model, metric, suffix, basis, result, cost, n_images, min(seeds), levels,
                                       reason, note, partial))
    return rows


def gap_table(rows: list[GapRow]) -> pd.DataFrame:
    """gap_closed.csv: GAP_COLUMNS, one row per GapRow."""
    return pd.DataFrame([row.record() for row in rows], columns=list(GAP_COLUMNS))


def _labels_by(rows: pd.DataFrame, column: str) -> dict[str, str]:
    """Value of `column` -> the metric labels of the rows holding it, in order ("ingredient micro F1, mAP50")."""
    labels = rows["metric"].map(lambda metric: METRICS[metric].label)
    return labels.groupby(rows[column], sort=False).agg(", ".join).to_dict()


def _rests_on(rows: pd.DataFrame, text: str) -> str:
    """` (on <metrics>; positive control failed on <metrics>)` when some of a site's metrics give no verdict because
    S2 - S1 is not established (or reversed) on them: the site's verdict rests on the others only."""
    failed = rows[rows["verdict"] == FAILED_CONTROL]
    if not len(failed) or text == FAILED_CONTROL:
        return ""
    held = [METRICS[metric].label for metric, verdict_text in zip(rows["metric"], rows["verdict"])
            if verdict_text not in (FAILED_CONTROL, NO_RESULT)]
    why = [f"{METRICS[row['metric']].label} ({'S2 - S1 reversed' if row['gap_ci_high'] < 0 else 'not established'})"
           for _, row in failed.iterrows()]
    return f" (on {', '.join(held)}; positive control failed on {', '.join(why)})"


def answer_lines(table: pd.DataFrame, models: list[str]) -> list[str]:
    """The plain-words answer: one bullet per model x site (headline basis), with the sessions not trained like
    their siblings and those with only some seeds done next to its verdict, its clean cost on F1 and why a metric
    gives no result."""
    lines = []
    for model in models:
        part = table[(table["model"] == model) & (table["basis"] == HEADLINE_BASIS)]
        if not len(part):
            lines.append(f"- **{model}**: no masking session in this run.")
            continue
        for suffix, rows in part.groupby("session", sort=False):
            text = site_verdict(dict(zip(rows["metric"], rows["verdict"])))
            unresolved = rows[rows["verdict"] == NO_RESULT]
            reasons = _labels_by(unresolved.assign(reason=unresolved["reason"].replace("", NOT_DONE)), "reason")
            note, partial = rows["training_note"].iloc[0], rows["seeds_note"].iloc[0]
            site = f"- **{model} {SESSION_LABELS[suffix]}**"
            alike = (f" ({note}: {NOT_ALIKE})" if note else "") + (f" ({partial})" if partial else "")
            if (rows.loc[rows["interval_levels"] != "", "n_seeds"] == 1).any() and \
                    text not in (FAILED_CONTROL, CANNOT_TELL):  # S1, S2 or Sx: one run, its spread not drawn
                alike += f" ({ONE_SEED})"
            if text == NO_RESULT:
                lines.append(f"{site}: no result ({'; '.join(reasons)}){alike}.")
                continue
            costs = _labels_by(rows[rows["clean_verdict"] != "clean cost unknown"], "clean_verdict")
            clean = "; ".join(f"{reading} ({labels})" for reading, labels in costs.items()) or "unknown"
            missing = "".join(f" {labels}: no result ({reason})." for reason, labels in reasons.items())
            lines.append(f"{site}: {text} on {HEADLINE_BASIS}{_rests_on(rows, text)}{alike}. Clean images: "
                         f"{clean}.{missing}")
    return lines


def gap_markdown_table(table: pd.DataFrame, model: str) -> pd.DataFrame:
    """report.md's table of one model: one row per metric x masking session x basis, formatted."""
    part = table[table["model"] == model]
    rows = []
    for _, row in part.iterrows():
        control = "n/a" if row["verdict"] == NO_RESULT else ("yes" if pd.notna(row["gap_closed"]) else "**no**")
        rows.append({"metric": METRICS[row["metric"]].label, "session": short_session(row["session"]),
                     "basis": row["basis"], "S2 - S1 [95% CI]": fmt_ci(row, "gap", "gap_ci_low", "gap_ci_high", True),
                     "control holds": control,
                     "Sx - S1 [95% CI]": fmt_ci(row, "gain", "gain_ci_low", "gain_ci_high", True),
                     "gap closed [95% CI]": fmt_ci(row, "gap_closed", "gap_closed_ci_low", "gap_closed_ci_high",
                                                   sides_of=RULE_EDGES)
                     if control == "yes" else ("no ratio" if control == "**no**" else "n/a"),
                     "verdict": f"{NO_RESULT}: {row['reason']}" if row["verdict"] == NO_RESULT and row["reason"] else
                     row["verdict"],
                     "clean cost Sx - S1 [95% CI]": fmt_ci(row, "clean_cost", "clean_cost_ci_low", "clean_cost_ci_high",
                                                           True)})
    return pd.DataFrame(rows)


def dominance_lines(comparisons: pd.DataFrame, models: list[str]) -> list[str]:
    """Per model, which level dominates the S2 - S1 interval on test_occ_fixed (two-level rows of comparisons)."""
    lines = []
    for model in models:
        for metric, row in comparison_metrics(comparisons, model, HEADLINE_BASIS, CONTROL, REFERENCE).items():
            if row.get("interval_levels") == "seeds+images" and pd.notna(row["seed_sd"]):
                level = "seeds" if row["seed_sd"] > row["image_sd"] else "images"
                lines.append(f"- {model}, S2 - S1, {METRICS[metric].label}: sd {fmt(row['seed_sd'])} from seeds vs "
                             f"{fmt(row['image_sd'])} from images: **{level}** dominate.")
    return lines


def one_seed_models(*frames: pd.DataFrame) -> list[str]:
    """The models whose intervals in `frames` (rows with `interval_levels`) all resample the images alone: one seed
    per session, while another model's resample its seeds too."""
    rows = [frame[["model", "interval_levels"]] for frame in frames if "interval_levels" in frame]
    drawn = pd.concat(rows).query("interval_levels != ''") if rows else pd.DataFrame(columns=["model"])
    return list(dict.fromkeys(model for model in drawn["model"]
                              if not (drawn.loc[drawn["model"] == model, "interval_levels"] == "seeds+images").any()))


def one_seed_note(models: list[str]) -> str:
    """The sentence naming `one_seed_models` beside others with several seeds."""
    return (f"One seed per session for {', '.join(models)}: **the seed-to-seed spread of training is not in "
            f"{'its' if len(models) == 1 else 'their'} intervals**, so {'its' if len(models) == 1 else 'their'} "
            "verdicts are provisional.")


def _interval_note(two_level: bool, n_resamples: int) -> str:
    if not two_level:
        return (f"Intervals: 95 % bootstrap over test images ({n_resamples} resamples; mAP {BOOTSTRAP_RESAMPLES}), "
                "S1, S2 and Sx on the same resamples. One seed per session: **the seed-to-seed spread of training is "
                "not in these intervals**: two training runs of one recipe can differ by more than they allow, so a "
                "masking session that does nothing can read as helpful (docs/report.md, \"Gap closed\", says how "
                f"often). A verdict that claims something is marked \"({ONE_SEED})\"; set `seeds: [0, 1, 2]` for "
                "verdicts that count that spread.")
    return (f"Intervals: 95 % two-level bootstrap ({n_resamples} resamples; mAP {BOOTSTRAP_RESAMPLES}): the test "
            "images (the same draw for every session) and the training seeds of each session with several (drawn "
            "independently per session); docs/report.md \"Several seeds\". Which level dominates:")


def gap_section(table: pd.DataFrame, models: list[str], n_resamples: int, comparisons: pd.DataFrame,
                charts: list[str] | None = None) -> list[str]:
    """report.md's first section (lines): the answer per site, the rules' reference, the charts (`charts`: the
    gap_closed PNG names written under plots/; None or empty: no image) and the tables."""
    one_seed = one_seed_models(table, comparisons)
    two_level = any((frame["interval_levels"] == "seeds+images").any() for frame in (table, comparisons)
                    if "interval_levels" in frame)  # some session with several done seeds
    lines = ["## The answer: does masking replace occlusion training?", "",
             "gap closed = (Sx - S1) / (S2 - S1): 1 = the masking session does what occluded training does, 0 = "
             "nothing. Given only where S2 - S1 is established (its 95 % interval lies above 0); otherwise the "
             "positive control failed and no ratio is given. Verdicts from the fixed rules of docs/report.md "
             "(\"Gap closed\"); a site's verdict combines the metrics whose control holds. Charts: "
             "`plots/gap_closed_<metric>.png`.", "", _interval_note(two_level, n_resamples), ""]
    if two_level:
        lines += (dominance_lines(comparisons, models) or ["- n/a (no two-level S2 - S1 interval)"]) + [""]
        lines += [one_seed_note(one_seed), ""] if one_seed else []
        if (table.loc[table["interval_levels"] == "seeds+images", "n_seeds"] == 1).any():
            lines += [f"A verdict marked \"({ONE_SEED})\" rests on a session with one done seed: its training spread "
                      "is in none of the intervals (docs/report.md, \"Gap closed\").", ""]
    if not len(table):
        return lines + ["n/a: no masking session (S3-S6) in this run.", ""]
    lines += answer_lines(table, models) + [""]
    for name in charts or []:
        lines += [f"![{Path(name).stem}](plots/{name})", ""]
    for model in models:
        shown = gap_markdown_table(table, model)
        if len(shown):
            lines += [f"### {model}", "", markdown_table(shown), ""]
    return lines


def gap_chart_frame(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per model x masking session of `metric` on the headline basis for `plots.gap_closed_chart`: model,
    session_label, value, ci_low, ci_high, status_text ("" or "control failed" / "n/a": no bar)."""
    part = table[(table["metric"] == metric) & (table["basis"] == HEADLINE_BASIS)]
    status = np.where(part["verdict"] == FAILED_CONTROL, "control failed",
                      np.where(part["gap_closed"].isna(), "n/a", ""))
    return pd.DataFrame({"model": part["model"], "session_label": part["session_label"], "value": part["gap_closed"],
                         "ci_low": part["gap_closed_ci_low"], "ci_high": part["gap_closed_ci_high"],
                         "verdict": part["verdict"], "status_text": status}).reset_index(drop=True)


def write_gap_charts(table: pd.DataFrame, models: list[str], plots_dir: Path) -> list[Path]:
    """plots/gap_closed_<metric>.png (+ .html) for every metric with a row."""
    written: list[Path] = []
    for metric in GAP_METRICS:
        frame = gap_chart_frame(table, metric)
        if len(frame):
            written += plots.save_chart(plots.gap_closed_chart(
                frame, models, title=f"Gap closed by masking, {METRICS[metric].label} on {HEADLINE_BASIS}",
                subtitle="(Sx - S1) / (S2 - S1); whiskers: 95% paired bootstrap CI; 0 = no effect, 1 = as good as "
                         "occluded training; no bar where the positive control failed"),
                plots_dir / f"gap_closed_{metric}")
    return written
