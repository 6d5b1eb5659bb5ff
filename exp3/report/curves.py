"""Training curves: had each session converged, and how did masking change the course of its training? What is
drawn, the still-rising rule and its reasons: docs/report.md, "Training curves"."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from exp3.fileio import atomic_write_text
from exp3.report import plots
from exp3.report.runs import SessionRun, as_number
from exp3.report.text import fmt, markdown_table, short_session
from exp3.schema import MetricsView
from exp3.session.layout import SessionPaths, SessionState
from exp3.session.progress import EpochProgress, epoch_progress, results_rows
from exp3.sessions import SESSION_LABELS, SESSION_SUFFIXES

MIN_WINDOW = 3
"""Fewest epochs the "still rising" slope is fitted over: a slope of two points is the last step's noise."""
WINDOW_FRACTION = 0.2
"""Share of the epochs the slope is fitted over, so the window grows with the budget (10 of 50, 60 of 300)."""
STILL_RISING, NOT_RISING, TOO_FEW, NOTHING_LEARNED = "still rising", "not rising", "too few epochs", "nothing learned"
"""The readings of a session's curve (CONVERGENCE_COLUMNS' `reading`)."""
LEARNED_FLOOR = 0.001
"""A curve whose val mAP50-95 stays below this at every epoch learned nothing the report can show (it prints 0.000):
it is NOTHING_LEARNED, never "not rising"."""
MAP_QUANTITY = "val mAP50-95"
"""The panel of the fitness best.pt is chosen by."""
CURVE_COLUMNS: tuple[str, ...] = ("model", "session", "session_label", "seeds", "mark", "quantity", "epoch", "value",
                                  "text")
"""training_curves.csv (its `mark` values: docs/report.md's table of files) and the chart frame."""
CONVERGENCE_COLUMNS: tuple[str, ...] = ("model", "session", "session_label", "seeds", "n_epochs", "best_epoch",
                                        "best_value", "last_value", "best_pt_epochs", "window_first", "window_last",
                                        "slope", "rise", "reading", "ramp_epoch")
"""training_convergence.csv: one row per model x session with a curve (docs/report.md's table of files)."""


def _recorded_epochs(run: SessionRun) -> tuple[list[EpochProgress], int | None]:
    """A run's results.csv epochs and the epochs its metrics.json says were trained (None: not recorded)."""
    trained = run.view.training.epochs_completed
    return (epoch_progress(results_rows(SessionPaths(run.folder)), None),
            int(trained) if trained is not None and math.isfinite(trained) else None)


def run_epochs(run: SessionRun) -> list[EpochProgress]:
    """The epochs of a done run's results.csv: [] when not done, or when they are not the epochs 1..N its
    metrics.json says were trained (without that record: 1..N, N its rows) (a row lost or cut, a file that is no
    text: `why_not_drawn` names it)."""
    if run.status != SessionState.DONE:
        return []
    epochs, trained = _recorded_epochs(run)
    expected = len(epochs) if trained is None else trained
    return epochs if [epoch.epoch for epoch in epochs] == list(range(1, expected + 1)) else []


def why_not_drawn(run: SessionRun) -> str:
    """Why a run has no curve (`run_epochs` gave none)."""
    if run.status != SessionState.DONE:
        return str(run.status)
    if not SessionPaths(run.folder).results_csv.is_file():
        return "no train/results.csv"
    epochs, trained = _recorded_epochs(run)
    if trained is None:
        return (f"train/results.csv's {len(epochs)} complete epoch rows are not epochs 1..{len(epochs)}, and "
                "metrics.json records no epochs_completed")
    return f"train/results.csv holds {len(epochs)} complete epoch rows, {trained} were trained"


def best_epoch(epochs: Sequence[int], values: Sequence[float]) -> int | None:
    """The epoch best.pt holds: the last one with the highest value (Ultralytics rewrites best.pt on a tie of its
    fitness); None without a finite value."""
    finite = [(value, epoch) for epoch, value in zip(epochs, values) if math.isfinite(value)]
    return max(finite)[1] if finite else None


def ramp_epoch(view: MetricsView) -> float | None:
    """Where a masked session's linear ramp reaches full strength, in epochs trained (None: not masked, a constant
    schedule, or not recorded). exp3.train.masking's strength is min(1, progress / ramp_fraction), progress =
    epochs done / epochs."""
    spec, args = view.masking.spec, view.training.effective_args
    if not isinstance(spec, dict) or spec.get("schedule") != "linear_ramp" or not isinstance(args, dict):
        return None
    fraction, epochs = as_number(spec.get("ramp_fraction")), as_number(args.get("epochs"))
    return fraction * epochs if fraction > 0 and not math.isnan(epochs) else None


def window_size(n_epochs: int) -> int:
    """Epochs the "still rising" slope is fitted over (docs/report.md, "Training curves")."""
    return max(MIN_WINDOW, math.ceil(WINDOW_FRACTION * n_epochs))


@dataclass(frozen=True)
class Convergence:
    """The reading of one curve (val mAP50-95 per epoch)."""

    reading: str
    n_epochs: int
    best_epoch: int | None
    window: tuple[int, int] | None = None
    slope: float = math.nan
    """Least-squares slope over the window, per epoch."""
    rise: float = math.nan
    """The fitted change from the window's first to its last epoch (slope x their distance)."""


def convergence(epochs: Sequence[int], values: Sequence[float]) -> Convergence:
    """STILL_RISING, NOT_RISING, NOTHING_LEARNED (below LEARNED_FLOOR throughout) or TOO_FEW (fewer than MIN_WINDOW
    epochs with a value) for one curve."""
    points = [(epoch, value) for epoch, value in zip(epochs, values) if math.isfinite(value)]
    best = best_epoch(*zip(*points)) if points else None
    if len(points) < MIN_WINDOW:
        return Convergence(TOO_FEW, len(points), best)
    if max(value for _, value in points) < LEARNED_FLOOR:
        return Convergence(NOTHING_LEARNED, len(points), best)
    x, y = (np.array(column, dtype=float) for column in zip(*points[-window_size(len(points)):]))
    slope = float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum())
    rising = slope > 0 and best is not None and best >= x[0]
    return Convergence(STILL_RISING if rising else NOT_RISING, len(points), best, (int(x[0]), int(x[-1])), slope,
                       slope * float(x[-1] - x[0]))


def _seed_frame(epochs: list[EpochProgress]) -> pd.DataFrame:
    """epoch, map50_95, train_loss (the sum of the logged train losses: nan if one is nan) of one seed."""
    return pd.DataFrame({"epoch": [progress.epoch for progress in epochs],
                         "map50_95": [math.nan if progress.map50_95 is None else progress.map50_95
                                      for progress in epochs],
                         "train_loss": [sum(progress.losses.values()) if progress.losses else math.nan
                                        for progress in epochs]})


def _mean_curve(seeds: list[pd.DataFrame]) -> pd.DataFrame:
    """The session's curve: the mean over seeds on the epochs every seed has (one seed: its own curve)."""
    shared = pd.concat(seeds).groupby("epoch").filter(lambda rows: len(rows) == len(seeds))
    return shared.groupby("epoch", as_index=False).agg(lambda values: values.mean(skipna=False))  # a nan seed: nan


def _rows(model: str, suffix: str, seeds: str, mark: str, quantity: str, epochs: Any, values: Any, text: str = "",
          label: str | None = None) -> pd.DataFrame:
    return pd.DataFrame({"model": model, "session": suffix,
                         "session_label": SESSION_LABELS[suffix] if label is None else label, "seeds": seeds,
                         "mark": mark, "quantity": quantity, "epoch": epochs, "value": values, "text": text})


@dataclass(frozen=True)
class TrainingCurves:
    """Every model's curves (`frame`, CURVE_COLUMNS), their readings (`table`, CONVERGENCE_COLUMNS) and, per model,
    the sessions of the run without a curve ("S4 (failed)", "S5 (no train/results.csv)")."""

    frame: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(CURVE_COLUMNS)))
    table: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(CONVERGENCE_COLUMNS)))
    missing: dict[str, list[str]] = field(default_factory=dict)

    def of(self, model: str) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(frame, table) rows of one model."""
        return (self.frame[self.frame["model"] == model].reset_index(drop=True),
                self.table[self.table["model"] == model].reset_index(drop=True))


def _session_curves(model: str, suffix: str, curves: dict[int | None, pd.DataFrame], ramps: set[float],
                    loss_name: str) -> tuple[list[pd.DataFrame], dict[str, Any]]:
    """The frame rows (lines and best.pt marks) and the convergence row of one session: `curves` seed -> its
    `_seed_frame`, `ramps` its seeds' ramp ends."""

    def lines(seeds: str, mark: str, curve: pd.DataFrame) -> list[pd.DataFrame]:
        return [_rows(model, suffix, seeds, mark, quantity, curve["epoch"], curve[column])
                for column, quantity in (("map50_95", MAP_QUANTITY), ("train_loss", loss_name))]

    seed_text = ";".join("" if seed is None else str(seed) for seed in curves)
    mean = _mean_curve(list(curves.values()))
    rows, best_pt = lines(seed_text, "session", mean), []
    for seed, curve in curves.items():
        seed_name = "" if seed is None else str(seed)
        rows += lines(seed_name, "seed", curve) if len(curves) > 1 else []
        if (best := best_epoch(list(curve["epoch"]), list(curve["map50_95"]))) is not None:
            best_pt.append(str(best))
            rows.append(_rows(model, suffix, seed_name, "best", MAP_QUANTITY, [best],
                              curve.loc[curve["epoch"] == best, "map50_95"].to_numpy()))
    reading = convergence(list(mean["epoch"]), list(mean["map50_95"]))
    finite = mean["map50_95"].dropna()
    window = reading.window or (math.nan, math.nan)
    record = {"model": model, "session": suffix, "session_label": SESSION_LABELS[suffix], "seeds": seed_text,
              "n_epochs": reading.n_epochs, "best_epoch": reading.best_epoch,
              "best_value": float(finite.max()) if len(finite) else math.nan,
              "last_value": float(finite.iloc[-1]) if len(finite) else math.nan,
              "best_pt_epochs": ";".join(best_pt), "window_first": window[0], "window_last": window[1],
              "slope": reading.slope, "rise": reading.rise, "reading": reading.reading,
              "ramp_epoch": min(ramps) if ramps else math.nan}
    return rows, record


def _ramp_rows(model: str, records: list[dict[str, Any]], quantities: list[str]) -> list[pd.DataFrame]:
    """One dashed rule per distinct ramp end of the model's sessions, named after them (on the mAP panel only)."""
    by_epoch: dict[float, list[str]] = {}
    for record in records:
        if math.isfinite(record["ramp_epoch"]):
            by_epoch.setdefault(record["ramp_epoch"], []).append(record["session"])
    return [_rows(model, ";".join(suffixes), "", "ramp", quantity, [epoch], math.nan, label="",
                  text=f"{', '.join(map(short_session, suffixes))}: masking at full strength (epoch {epoch:g})"
                  if quantity == MAP_QUANTITY else "")
            for epoch, suffixes in by_epoch.items() for quantity in quantities]


def training_curves(runs: list[SessionRun], models: list[str]) -> TrainingCurves:
    """The curves, readings and missing sessions of every model (`runs`: exp3.report.runs.scan_sessions)."""
    epochs = {run.folder: run_epochs(run) for run in runs if run.model in models}
    frames: list[pd.DataFrame] = []
    records: list[dict[str, Any]] = []
    missing: dict[str, list[str]] = {}
    for model in models:
        grouped = {suffix: [run for run in runs if run.model == model and run.suffix == suffix]
                   for suffix in SESSION_SUFFIXES}
        drawn = {suffix: [run for run in group if epochs[run.folder]] for suffix, group in grouped.items()}
        losses = dict.fromkeys(name.removesuffix("_loss") for group in drawn.values() for run in group[:1]
                               for progress in epochs[run.folder] for name in progress.losses)
        loss_name = f"train loss ({' + '.join(losses)})" if losses else "train loss"  # train loss (box + cls + dfl)
        missing[model] = [f"{short_session(run.suffix)}{f' seed {run.seed}' if len(group) > 1 else ''} "
                          f"({why_not_drawn(run)})" for group in grouped.values() for run in group
                          if not epochs[run.folder]]
        model_records = []
        for suffix, group in drawn.items():
            if group:
                rows, record = _session_curves(
                    model, suffix, {run.seed: _seed_frame(epochs[run.folder]) for run in group},
                    {ramp for run in group if (ramp := ramp_epoch(run.view)) is not None}, loss_name)
                frames += rows
                model_records.append(record)
        frames += _ramp_rows(model, model_records, [MAP_QUANTITY, loss_name])
        records += model_records
    frame = pd.concat(frames, ignore_index=True)[list(CURVE_COLUMNS)] if frames else TrainingCurves().frame
    return TrainingCurves(frame, pd.DataFrame(records, columns=list(CONVERGENCE_COLUMNS)), missing)


def write_curve_outputs(curves: TrainingCurves, root: Path, models: list[str], charts: bool = True) -> list[Path]:
    """`training_curves.csv`, `training_convergence.csv` and plots/training_curves_<model>.png|html per model with a
    curve."""
    files = [atomic_write_text(root / "training_curves.csv", curves.frame.to_csv(index=False)),
             atomic_write_text(root / "training_convergence.csv", curves.table.to_csv(index=False))]
    if not charts:
        return files
    for model in models:
        frame, table = curves.of(model)
        if len(table):
            chart = plots.training_curve_chart(frame, title=f"Training curves: {model}",
                                               subtitle=chart_subtitle(table, curves.missing.get(model, [])))
            files += plots.save_chart(chart, root / "plots" / f"training_curves_{model}")
    return files


def chart_subtitle(table: pd.DataFrame, missing: list[str]) -> list[str]:
    """The chart's key: what the marks are, the seeds, and the sessions not drawn."""
    lines = ["val mAP50-95 on the clean val split and the train loss per epoch, one colour per session",
             "diamond: the epoch best.pt holds (highest val mAP50-95, ties to the later epoch); dashed: masking ramp "
             "at full strength"]
    seeds = table["seeds"].str.count(";") + 1
    if (seeds > 1).any():
        lines.append(f"thick: the mean over each session's seeds (up to {int(seeds.max())}); faint: each seed")
    if missing:
        lines.append(f"not drawn: {', '.join(missing)}")
    return lines


def convergence_markdown_table(table: pd.DataFrame) -> pd.DataFrame:
    """report.md's table of one model: one row per session with a curve, formatted."""
    readings = {STILL_RISING: f"**{STILL_RISING}**", NOT_RISING: NOT_RISING,
                NOTHING_LEARNED: f"**{NOTHING_LEARNED}** (< {LEARNED_FLOOR:g} throughout)"}
    rows = []
    for _, row in table.iterrows():
        window = "" if pd.isna(row["window_first"]) else f"{int(row['window_first'])}-{int(row['window_last'])}"
        rows.append({"session": row["session_label"], "seeds": row["seeds"] or "-", "epochs": row["n_epochs"],
                     "best.pt epoch": row["best_pt_epochs"].replace(";", ", ") or "n/a",
                     "val mAP50-95 best / last": f"{fmt(row['best_value'])} / {fmt(row['last_value'])}",
                     "fitted change over the last epochs": f"{fmt(row['rise'], signed=True)} ({window})" if window
                     else "n/a",
                     "reading": readings.get(row["reading"], f"{TOO_FEW} ({row['n_epochs']}) to judge"),
                     "masking full strength at epoch": "" if pd.isna(row["ramp_epoch"]) else f"{row['ramp_epoch']:g}"})
    shown = pd.DataFrame(rows)
    return shown.drop(columns="masking full strength at epoch") if table["ramp_epoch"].isna().all() else shown


RULE_TEXT = (f"A session is **{STILL_RISING}** when, over the last max({MIN_WINDOW}, {WINDOW_FRACTION:.0%} of its) "
             "epochs, the least-squares slope of its val mAP50-95 is positive and its best epoch lies among them "
             f"(with several seeds: of the seed mean), and **{NOTHING_LEARNED}** when that stays below "
             f"{LEARNED_FLOOR:g} at every epoch; rules fixed before any result was read (docs/report.md, "
             "\"Training curves\").")


def curves_section(curves: TrainingCurves, models: list[str], charts: list[str]) -> list[str]:
    """report.md's training-curves section (lines); `charts`: the training_curves PNG names written under plots/."""
    lines = ["## Training curves: had the sessions converged?", "",
             "Val mAP50-95 on the clean val split (the fitness that picks best.pt) and the train loss (the sum of the "
             "losses Ultralytics logs) per epoch, from each session's `train/results.csv`. best.pt epoch: the epoch "
             "with the highest val mAP50-95, ties to the later one (Ultralytics 8.4's rule). " + RULE_TEXT
             + " Every point: `training_curves.csv`; this table: `training_convergence.csv`.", ""]
    for model in models:
        frame, table = curves.of(model)
        missing = curves.missing.get(model, [])
        lines += [f"### {model}", ""]
        if not len(table):
            lines += [f"n/a: no done session with a train/results.csv ({', '.join(missing) or 'no session'}).", ""]
            continue
        name = f"training_curves_{model}.png"
        lines += [f"![training_curves_{model}](plots/{name})", ""] if name in charts else []
        lines += ([f"Not drawn: {', '.join(missing)}.", ""] if missing else []) + \
            [markdown_table(convergence_markdown_table(table)), ""]
    return lines


def convergence_sentence(curves: TrainingCurves, model: str) -> str:
    """Whether `model`'s sessions had converged, with the figures (for a failed positive control: train longer, or
    doubt the effect?)."""
    _, table = curves.of(model)
    missing = curves.missing.get(model, [])
    rising, flat, few, nothing = (table[table["reading"] == reading]
                                  for reading in (STILL_RISING, NOT_RISING, TOO_FEW, NOTHING_LEARNED))
    unjudged = [f"{short_session(row['session'])} ({row['n_epochs']} epochs)" for _, row in few.iterrows()]
    notes = "".join([f" Nothing learned (val mAP50-95 < {LEARNED_FLOOR:g} at every epoch): "
                     f"{', '.join(map(short_session, nothing['session']))}: train longer, or check the data, before "
                     "doubting the effect." if len(nothing) else "",
                     f" Too few epochs to judge: {', '.join(unjudged)}." if unjudged else "",
                     f" No curve: {', '.join(missing)}." if missing else ""])
    if len(rising):
        figures = ", ".join(f"{short_session(row['session'])} {fmt(row['rise'], signed=True)} over epochs "
                            f"{int(row['window_first'])}-{int(row['window_last'])}" for _, row in rising.iterrows())
        return (f"**{model}**: val mAP50-95 still rising at the end of training: {figures} (least-squares change "
                f"over the last epochs, best epoch among them): train longer before doubting the effect.{notes}")
    if len(flat):
        epochs = ", ".join(f"{short_session(row['session'])} {row['best_pt_epochs'].replace(';', '/')} of "
                           f"{row['n_epochs']}" for _, row in flat.iterrows())
        verdict = "the failed control is not for want of epochs by this rule" if not len(nothing) else \
            "those sessions' part of the failed control is not for want of epochs by this rule"
        return (f"**{model}**: no session's val mAP50-95 was still rising at the end of training (best.pt epochs: "
                f"{epochs}): {verdict}.{notes}")
    if len(nothing):
        return f"**{model}**: training learned nothing the report can show.{notes}"
    return f"**{model}**: whether training converged is unknown.{notes}"


def convergence_lines(curves: TrainingCurves, models: list[str]) -> list[str]:
    """The answer section's paragraph for the models whose positive control failed (none: no lines)."""
    if not models:
        return []
    return ["**Had training converged?** Where the positive control misses the effect, could more epochs change "
            "that? " + RULE_TEXT, "", *(f"- {convergence_sentence(curves, model)}" for model in models), ""]
