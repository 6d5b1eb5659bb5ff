"""Findings written from the statistics: headline bullets, whether the metrics agree, the val-chosen
threshold's reading and the positive control (S2 vs S1 on test_occ_fixed)."""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

from exp3.evaluate.metrics import THRESHOLD_SEARCH_GRID
from exp3.evaluate.severity import METRICS
from exp3.report.comparisons import MAP_METRICS, PAIRED_METRICS, VAL_PLAN, ci_verdict, comparison_metrics
from exp3.report.runs import THRESHOLDS
from exp3.report.text import fmt, fmt_ci, fmt_p, seeds_done, short_session
from exp3.sessions import SESSION_LABELS, SESSION_SUFFIXES
from exp3.splits import FIXED_SPLIT, PRIMARY_SPLITS


def _metric_text(metric: str, row: pd.Series) -> str:
    if metric in MAP_METRICS and ci_verdict(row) is None:
        return f"{METRICS[metric].label} {fmt(row['difference'], signed=True)}"
    return f"{METRICS[metric].label} {fmt_ci(row, 'difference', 'ci_low', 'ci_high', True)}"


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _verb(count: int, singular: str, plural: str) -> str:
    return singular if count == 1 else plural


NO_PAIRED_RESULT = "no paired result: a side lacks per-image values, or the two hold other images"
NO_VAL_THRESHOLD = "a session records no val-chosen threshold"
"""Why a compared metric has no difference (comparisons.csv: NaN)."""


def no_result(comparisons: pd.DataFrame, model: str, split: str, session: str, reference: str) -> str:
    """`; no result: <metrics> (why)` for the metrics of `session` vs `reference` at the primary threshold whose
    difference is missing, "" when every one has one."""
    missing = [METRICS[metric].label for metric, row in comparison_metrics(
        comparisons, model, split, session, reference, with_difference=False).items() if pd.isna(row["difference"])]
    return f"; no result: {', '.join(missing)} ({NO_PAIRED_RESULT})" if missing else ""


def agreement_finding(model: str, split: str, session: str, reference: str, comparisons: pd.DataFrame) -> str | None:
    """One sentence: do the metrics agree on `session` vs `reference`? (rule: docs/report.md, "Headline findings"),
    naming the metrics without a result (`no_result`): the agreement is among the others only.

    None when no metric has an interval.
    """
    rows = comparison_metrics(comparisons, model, split, session, reference)
    verdicts = {metric: ci_verdict(rows[metric]) for metric in (*PAIRED_METRICS, *MAP_METRICS) if metric in rows}
    verdicts = {metric: verdict for metric, verdict in verdicts.items() if verdict is not None}
    if not verdicts:
        return None
    text = {metric: _metric_text(metric, row) for metric, row in rows.items()}
    shown = [metric for metric, verdict in verdicts.items() if verdict != 0]
    quiet = [metric for metric, verdict in verdicts.items() if verdict == 0]
    a, b = short_session(session), short_session(reference)
    agree = len(set(verdicts.values())) == 1
    if agree:
        body = f"{'each metric' if shown else 'no metric'} shows a difference ({', '.join(text[m] for m in verdicts)})"
    else:
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
            if against := [METRICS[m].label for m in maps if np.sign(rows[m]["difference"]) == -direction]:
                tail += f"; {_join(against)} {_verb(len(against), 'points', 'point')} the other way"
        tail += ")"
    tail += no_result(comparisons, model, split, session, reference)
    return f"**{model}**: metrics {'agree' if agree else 'disagree'} on {a} vs {b} ({split}): {body}{tail}."


SEARCH_FLOOR = min(THRESHOLD_SEARCH_GRID)
"""The lowest val-chosen threshold exp3 searches (predictions are recorded down to it): val F1 may peak below it."""


def floor_note(labelled_confs: Iterable[tuple[str, float]]) -> str:
    """A sentence naming the sessions whose val-chosen threshold (every seed's) is `SEARCH_FLOOR`, else ""."""
    named = [label for label, conf in labelled_confs if pd.notna(conf) and round(float(conf), 9) <= SEARCH_FLOOR]
    return "" if not named else (
        f"{_join(named)}: val F1 is highest at the lowest candidate threshold ({fmt(SEARCH_FLOOR, 2)}, the "
        "recording floor), so the val-chosen threshold may lie below what exp3 records; read it as a floor.")


def val_threshold_finding(comparisons: pd.DataFrame, model: str, split: str = FIXED_SPLIT) -> str | None:
    """S2 vs S1 micro F1 at each session's val-chosen threshold next to the primary one (None if not available)."""
    session, reference = VAL_PLAN[0]
    at_val = comparison_metrics(comparisons, model, split, session, reference, "val").get("ingredient_micro_f1")
    primary = comparison_metrics(comparisons, model, split, session, reference).get("ingredient_micro_f1")
    if at_val is None:
        return None
    a, b = short_session(session), short_session(reference)
    text = (f"**{model}**: at each session's val-chosen threshold ({a} {fmt(at_val['conf'], 2)}, {b} "
            f"{fmt(at_val['reference_conf'], 2)}), {a} vs {b} on {split}: ingredient micro F1 "
            f"{fmt_ci(at_val, 'difference', 'ci_low', 'ci_high', True)} (p_BH {fmt_p(at_val['p_bh'])})")
    if primary is not None:
        same = ci_verdict(at_val) == ci_verdict(primary)
        text += (f"; at conf {fmt(primary['conf'], 2)}: {fmt_ci(primary, 'difference', 'ci_low', 'ci_high', True)}"
                 + ("; same conclusion" if same else "; the threshold changes the conclusion"))
    floor = floor_note([(a, at_val["conf"]), (b, at_val["reference_conf"])])
    return text + "." + (f" {floor}" if floor else "")


NOT_RANKED = ("the ranking is not established (separate intervals, not a test: sessions are tested against S1 and "
              "S2 only, not against each other; nor does the overlap show them equal)")


def _overlaps(first: pd.Series, second: pd.Series, metric: str) -> bool:
    """`first`'s interval of `metric` reaches `second`'s, or one is missing: their ranking is not established."""
    low, high = first[f"{metric}_ci_low"], second[f"{metric}_ci_high"]
    return bool(pd.isna(low) or pd.isna(high) or low <= high)


def headline_findings(summary: pd.DataFrame, models: list[str], comparisons: pd.DataFrame) -> list[str]:
    """Bullet points written from the data: from `comparisons` whether the metrics agree on S2 vs S1
    (`agreement_finding`; each metric's S2 - S1 is the positive control's table) and S2 vs S1 at the val-chosen
    thresholds, the best masking site and its interval, robustness."""
    occ = summary[summary["split"] == FIXED_SPLIT].set_index(["model", "session"])
    findings: list[str | None] = []             # None: a sentence with nothing to say, left out
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
        if partial := seeds_done_note(summary, model):
            findings.append(f"{prefix}: only some seeds done ({partial}): the findings below use the done seeds.")
        s1 = done.loc["S1_clean_train"] if "S1_clean_train" in done.index else None
        s2 = done.loc["S2_occ_train"] if "S2_occ_train" in done.index else None
        if s1 is not None and s2 is not None:
            findings += [agreement_finding(model, split, "S2_occ_train", "S1_clean_train", comparisons)
                         for split in PRIMARY_SPLITS[::-1]]
            findings.append(val_threshold_finding(comparisons, model))
        scored = done[done.index.isin(SESSION_SUFFIXES[2:])]
        with_f1 = scored.dropna(subset=["ingredient_micro_f1"]).sort_values("ingredient_micro_f1", ascending=False)
        unpaired = with_f1.index[with_f1["diff_vs_S1"].isna()] if s1 is not None else with_f1.index[:0]
        masking = with_f1.drop(unpaired)  # F1s of other images do not rank: only those paired with S1's images
        not_ranked = ", ".join(SESSION_LABELS[suffix] for suffix in unpaired)
        if len(scored) and not len(with_f1):
            findings.append(f"{prefix}: no masking session has an F1 on test_occ_fixed (missing): no best masking "
                            "site.")
        elif len(with_f1) and not len(masking):
            findings.append(f"{prefix}: no masking session's F1 on test_occ_fixed is paired with S1's ({not_ranked}: "
                            "other images, or per-image values missing): no best masking site.")
        elif len(masking) and not masking["ingredient_micro_f1"].iloc[0] > 0:  # nothing named: nothing to rank
            findings.append(f"{prefix}: no masking session names any ingredient on test_occ_fixed (F1 0 for "
                            f"{', '.join(SESSION_LABELS[suffix] for suffix in masking.index)}): no best masking site.")
        elif len(masking):
            best_suffix, best = masking.index[0], masking.iloc[0]
            text = (f"{prefix}: best masking site on test_occ_fixed: {SESSION_LABELS[best_suffix]}, F1 "
                    + fmt_ci(best, "ingredient_micro_f1", "ingredient_micro_f1_ci_low", "ingredient_micro_f1_ci_high"))
            if s2 is not None and pd.isna(best["diff_vs_S2"]):
                text += f"; vs S2 n/a ({NO_PAIRED_RESULT})"
            elif s2 is not None:
                text += f"; vs S2 {fmt_ci(best, 'diff_vs_S2', 'diff_vs_S2_ci_low', 'diff_vs_S2_ci_high', True)}"
                if ci_verdict(best, "diff_vs_S2_ci_low", "diff_vs_S2_ci_high"):
                    text += " (below S2)" if best["diff_vs_S2"] < 0 else " (above S2)"
                else:
                    text += " (the interval includes 0: not distinguishable from S2 on these images)"
            if len(masking) > 1 and _overlaps(best, masking.iloc[1], "ingredient_micro_f1"):
                text += (f". Its interval overlaps that of the runner-up {SESSION_LABELS[masking.index[1]]} "
                         f"(F1 {fmt(masking.iloc[1]['ingredient_micro_f1'])}): {NOT_RANKED}")
            in_run = int(rows.index.isin(SESSION_SUFFIXES[2:]).sum())  # masking sessions of this run
            if len(masking) + len(unpaired) < in_run:
                text += f" (only {len(masking) + len(unpaired)} of {in_run} masking sessions done)"
            if len(unpaired):
                text += (f" (not ranked: {not_ranked}, no paired comparison with S1: other images, or per-image "
                         "values missing)")
            findings.append(text + ".")
            for reference, row in (("S1_clean_train", s1), ("S2_occ_train", s2)):
                if row is not None:
                    findings.append(agreement_finding(model, FIXED_SPLIT, best_suffix, reference, comparisons))
        robust = done.dropna(subset=["rF1_micro"]).sort_values("rF1_micro", ascending=False)
        if len(robust):
            top_suffix, top = robust.index[0], robust.iloc[0]
            text = (f"{prefix}: most robust session (highest rF1 = F1 occluded / F1 clean): "
                    f"{SESSION_LABELS[top_suffix]}, rF1 "
                    f"{fmt_ci(top, 'rF1_micro', 'rF1_micro_ci_low', 'rF1_micro_ci_high')}")
            if len(robust) > 1 and _overlaps(top, robust.iloc[1], "rF1_micro"):
                text += (f". Its interval overlaps that of the runner-up {SESSION_LABELS[robust.index[1]]} "
                         f"(rF1 {fmt(robust.iloc[1]['rF1_micro'])}): {NOT_RANKED}")
            findings.append(text + ".")
        else:
            findings.append(f"{prefix}: rF1 is undefined for every done session (clean F1 is 0 or missing).")
    scores = [(model, occ.loc[(model, "S1_clean_train"), "ingredient_micro_f1"]) for model in done_models
              if (model, "S1_clean_train") in occ.index]
    ranked = sorted([(model, score) for model, score in scores if not pd.isna(score)], key=lambda item: -item[1])
    if len(ranked) > 1:
        findings.append("Across models, clean-trained (S1) F1 on test_occ_fixed: "
                        + ", ".join(f"{model} {fmt(score)}" for model, score in ranked)
                        + " (separate models: see the per-session intervals before reading a ranking).")
    return [finding for finding in findings if finding]


POSITIVE_CONTROL: tuple[str, str, str] = ("S2_occ_train", "S1_clean_train", FIXED_SPLIT)
"""The known effect the instrument is calibrated on: training on occluded images (S2) must beat clean training
(S1) on the occluded test suite. docs/what-metrics-detect.md reads the pilot's numbers."""
POSITIVE_CONTROL_ROWS: tuple[tuple[str, str], ...] = tuple(
    (metric, threshold) for metric in METRICS
    for threshold in (THRESHOLDS if metric in PAIRED_METRICS else THRESHOLDS[:1]))
"""(metric, threshold) of every headline metric at both operating points (mAP has no threshold)."""


def _operating_point(metric: str, threshold: str, row: pd.Series) -> str:
    if metric in MAP_METRICS:
        return "none (mAP)"
    if threshold == "val":
        return f"val-chosen ({fmt(row['conf'], 2)} / {fmt(row['reference_conf'], 2)})"
    return f"conf {fmt(row['conf'], 2)}"


def _control_readings(comparisons: pd.DataFrame, model: str) -> list[tuple[str, str, pd.Series, str]]:
    """(metric, threshold, comparison row, reading) of every POSITIVE_CONTROL_ROWS entry `comparisons` holds; reading:
    detect, no, reversed, undecided, or none (no difference: `NO_PAIRED_RESULT`) (`positive_control`). Empty when
    no entry has a difference (the control is not available)."""
    session, reference, split = POSITIVE_CONTROL
    readings = []
    for metric, threshold in POSITIVE_CONTROL_ROWS:
        row = comparison_metrics(comparisons, model, split, session, reference, threshold, False).get(metric)
        if row is not None:
            readings.append((metric, threshold, row, "none" if pd.isna(row["difference"]) else
                             {1: "detect", 0: "no", -1: "reversed", None: "undecided"}[ci_verdict(row)]))
    return readings if any(reading != "none" for *_, reading in readings) else []


def positive_control_failed(comparisons: pd.DataFrame, model: str) -> bool:
    """Whether some headline metric's interval does not show the known effect (reading `no` or `reversed`): then the
    report says whether training had converged (exp3.report.curves)."""
    return any(reading in ("no", "reversed") for *_, reading in _control_readings(comparisons, model))


def seeds_done_note(summary: pd.DataFrame, model: str, suffixes: tuple[str, ...] = SESSION_SUFFIXES) -> str:
    """"S2: 1 of 2 seeds done, ..." for the sessions of `suffixes` with only some of their seeds done ("" if none)."""
    rows = summary[(summary["model"] == model) & (summary["split"] == FIXED_SPLIT) & summary["session"].isin(suffixes)]
    return ", ".join(seeds_done(row["session"], int(row["n_seeds_done"]), int(row["n_seeds"]))
                     for _, row in rows.iterrows() if 0 < row["n_seeds_done"] < row["n_seeds"])


def positive_control(comparisons: pd.DataFrame, model: str, summary: pd.DataFrame | None = None,
                     note: str = "") -> tuple[pd.DataFrame, str]:
    """The positive control of one model: (table of S2 - S1 on test_occ_fixed for every headline metric, one-line
    verdict, which names S1 or S2 with only some seeds done when `summary` is given, and `note`: S1 and S2 not
    trained at one batch, `exp3.report.gap.training_note`); the readings: docs/report.md, "Positive control"."""
    session, reference, split = POSITIVE_CONTROL
    a, b = short_session(session), short_session(reference)
    rows, groups = [], {"detect": [], "no": [], "reversed": [], "undecided": []}
    reasons: dict[str, list[str]] = {}  # the "none" readings: why there is no result
    for metric, threshold, row, group in _control_readings(comparisons, model):
        label = METRICS[metric].label + ("" if metric in MAP_METRICS else
                                         (" @val" if threshold == "val" else f" @{fmt(row['conf'], 2)}"))
        if group != "none":
            groups[group].append(label)
        elif threshold == "val" and (pd.isna(row["conf"]) or pd.isna(row["reference_conf"])):
            reasons.setdefault(NO_VAL_THRESHOLD, []).append(label)
        else:
            reasons.setdefault(NO_PAIRED_RESULT, []).append(label)
        rows.append({"metric": METRICS[metric].label, "operating point": _operating_point(metric, threshold, row),
                     f"{a} - {b} [95% CI]": fmt_ci(row, "difference", "ci_low", "ci_high", True),
                     "p": fmt_p(row["p_value"]), "p_BH": fmt_p(row["p_bh"]),
                     "detects the effect": {"detect": f"yes ({a} > {b})", "no": "no (CI includes 0)",
                                            "reversed": f"no, reversed ({a} < {b})",
                                            "undecided": "undecided (no CI)", "none": "no result"}[group]})
    if not rows:
        return pd.DataFrame(), (f"**{model}**: positive control not available ({a} and {b} must both be done "
                                f"on {split}, with per-image values of the same images).")
    parts = [f"detect the effect: {', '.join(groups['detect']) or 'none'}",
             f"do not: {', '.join(groups['no']) or 'none'}"]
    parts += [f"show the reverse: {', '.join(groups['reversed'])}"] if groups["reversed"] else []
    parts += [f"undecided (no CI): {', '.join(groups['undecided'])}"] if groups["undecided"] else []
    parts += [f"no result ({reason}): {', '.join(labels)}" for reason, labels in reasons.items()]
    partial = "" if summary is None else seeds_done_note(summary, model, (session, reference))
    return pd.DataFrame(rows), (f"**{model}** positive control ({a} vs {b} on {split}): {'; '.join(parts)}"
                                + (f" ({partial})" if partial else "") + (f" ({note}: not trained alike)" if note
                                                                          else "") + ".")
