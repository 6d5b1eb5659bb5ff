"""A session's epochs from Ultralytics' `train/results.csv`, and the one-line summaries the flow logs of an epoch,
a result and an error. Pure functions on files (no Prefect), shared by the flow and `exp3.status`."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from typing import Any

from exp3.fileio import read_json
from exp3.schema import MetricsView
from exp3.session.layout import SessionPaths
from exp3.splits import CLEAN_SPLIT, FIXED_SPLIT


def results_rows(paths: SessionPaths) -> list[dict[str, str]]:
    """The rows of the session's `train/results.csv` (header names stripped; [] if none yet, or if it is no text:
    its readers, the live view, the status and the report's curves, then show no epochs rather than stop). A row
    with more fields than the header is left out: a half-written line that a resume's next row was appended to,
    its values shifted."""
    if not paths.results_csv.is_file():
        return []
    try:
        with paths.results_csv.open(newline="", encoding="utf-8") as handle:
            return [{key.strip(): value for key, value in row.items()}
                    for row in csv.DictReader(handle) if None not in row]
    except (UnicodeDecodeError, csv.Error):
        return []


def _number(text: str | None) -> float | None:
    """The finite number in `text`, else None (empty, missing, unparseable, nan, inf)."""
    try:
        value = float(text or "nan")
    except ValueError:
        return None
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class EpochProgress:
    """One finished epoch as results.csv records it (`epoch` is 1-based, as Ultralytics writes it)."""

    epoch: int
    epochs_total: int | None
    losses: dict[str, float]  # each `train/*` column unprefixed: box/cls/dfl_loss (YOLO), giou/cls/l1_loss (RT-DETR);
    # nan where the row holds no finite number (a diverged epoch), so their sum is nan too, never a lower number
    map50: float | None
    map50_95: float | None
    epoch_s: float | None
    eta_s: float | None  # mean epoch time so far x epochs left (None without a total)


def epoch_progress(rows: list[dict[str, str]], epochs_total: int | None) -> list[EpochProgress]:
    """One `EpochProgress` per epoch of the complete rows (a half-written last line is skipped), in epoch order. A row
    repeated by a resume (the epoch written just before a kill, trained again) counts once: the later row, the one
    the checkpoints hold. Epoch time is the step of the cumulative `time` column; a resumed training restarts that
    clock: a row whose time went down counts its own."""
    parsed: list[EpochProgress] = []
    durations: list[float] = []
    previous = 0.0
    for index, row in enumerate(rows):
        if None in row.values():
            continue  # the writer has not finished this line
        if (elapsed := _number(row.get("time"))) is not None:
            durations.append(elapsed - previous if elapsed >= previous else elapsed)
            previous = elapsed
        epoch_s = durations[-1] if elapsed is not None else None
        epoch = int(number) if (number := _number(row.get("epoch"))) is not None else index + 1
        losses = {key.removeprefix("train/"): math.nan if (value := _number(text)) is None else value
                  for key, text in row.items() if key.startswith("train/")}
        eta = sum(durations) / len(durations) * max(epochs_total - epoch, 0) if epochs_total and durations else None
        parsed.append(EpochProgress(epoch, epochs_total, losses, _number(row.get("metrics/mAP50(B)")),
                                    _number(row.get("metrics/mAP50-95(B)")), epoch_s, eta))
    return sorted({progress.epoch: progress for progress in parsed}.values(), key=lambda progress: progress.epoch)


def format_seconds(seconds: float | None) -> str:
    """`4.2s`, `41s`, `5m03s`, `1h02m`; `-` for None (a sub-second epoch is not "0s")."""
    if seconds is None:
        return "-"
    if seconds < 9.95:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else (f"{minutes}m{secs:02d}s" if minutes else f"{secs}s")


def format_value(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_epoch_line(session: str, progress: EpochProgress) -> str:
    """`<session>: epoch 3/50 <each loss> | val mAP50 0.412 mAP50-95 0.251 | 41s/epoch, ETA 32m49s`."""
    total = progress.epochs_total if progress.epochs_total is not None else "?"
    losses = " ".join(f"{name} {value:.3f}" for name, value in progress.losses.items()) or "no train losses"
    return (f"{session}: epoch {progress.epoch}/{total} {losses} | val mAP50 {format_value(progress.map50)} "
            f"mAP50-95 {format_value(progress.map50_95)} | {format_seconds(progress.epoch_s)}/epoch, "
            f"ETA {format_seconds(progress.eta_s)}")


def epoch_table(epochs: list[EpochProgress]) -> list[dict[str, Any]]:
    """Rows of the per-session epochs table artifact: epoch, each loss, mAP50, mAP50-95, epoch s."""
    return [{"epoch": p.epoch,
             **{name: None if math.isnan(value) else round(value, 4) for name, value in p.losses.items()},
             "mAP50": None if p.map50 is None else round(p.map50, 4),
             "mAP50-95": None if p.map50_95 is None else round(p.map50_95, 4),
             "epoch_s": None if p.epoch_s is None else round(p.epoch_s, 1)} for p in epochs]


def format_result(paths: SessionPaths) -> str:
    """The headline of metrics.json: ingredient micro F1 and mAP50, clean / occluded (`-` where unreadable)."""
    view = MetricsView.of(read_json(paths.metrics))
    clean, occ = view.split(CLEAN_SPLIT), view.split(FIXED_SPLIT)
    return (f"F1 clean {format_value(clean.ingredient.micro.f1)} / occluded {format_value(occ.ingredient.micro.f1)}"
            f", mAP50 clean {format_value(clean.map50)} / occluded {format_value(occ.map50)}")


def format_failed_line(session: str, error: str, wall_s: float) -> str:
    """The session's one-line error (SessionError messages start with the session's name: said once)."""
    first = (error.strip().splitlines() or ["unknown error"])[0].removeprefix(f"{session}: ")
    return f"FAILED {session}: {first} (after {format_seconds(wall_s)})"
