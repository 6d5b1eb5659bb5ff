"""Per-epoch live view: results.csv rows -> EpochProgress -> log lines and table rows; result lines."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from exp3.session.layout import SessionPaths
from exp3.session.progress import (
    EpochProgress,
    epoch_progress,
    epoch_table,
    format_epoch_line,
    format_failed_line,
    format_result,
    results_rows,
)

YOLO_CSV = """\
                  epoch,                  time,        train/box_loss,        train/cls_loss,        train/dfl_loss,   metrics/precision(B),      metrics/recall(B),       metrics/mAP50(B),    metrics/mAP50-95(B),          val/box_loss,          val/cls_loss,          val/dfl_loss,                 lr/pg0
1,20.0,6.27038,7.1187,3.91988,0,0,0,0,7.04,9.91,4.18,0.0002
2,41.0,5.3047,4.78279,3.34981,0.1,0.2,0.0312,0.0112,7.05,10.46,4.26,0.0004
3,60.0,4.01279,3.35238,2.22216,0.74,0.05,0.41234,0.25101,3.02,3.03,1.89,0.0006
"""
RTDETR_CSV = """\
epoch,time,train/giou_loss,train/cls_loss,train/l1_loss,metrics/precision(B),metrics/recall(B),metrics/mAP50(B),metrics/mAP50-95(B),val/giou_loss,val/cls_loss,val/l1_loss,lr/pg0
1,8.0,1.844,5.52549,1.03594,0.00066,0.01429,0.00013,4e-05,1.591,0.86213,0.93895,0.000714
"""


def _session(tmp_path: Path, csv_text: str) -> SessionPaths:
    paths = SessionPaths(tmp_path / "m" / "m__S1_clean_train")
    paths.run_dir.mkdir(parents=True)
    paths.results_csv.write_text(csv_text)
    return paths


def test_yolo_results_csv_gives_one_progress_per_epoch(tmp_path: Path) -> None:
    epochs = epoch_progress(results_rows(_session(tmp_path, YOLO_CSV)), epochs_total=10)
    assert [e.epoch for e in epochs] == [1, 2, 3]
    assert list(epochs[0].losses) == ["box_loss", "cls_loss", "dfl_loss"]  # every train/* column, no val/*
    assert epochs[2].losses["cls_loss"] == pytest.approx(3.35238)
    assert (epochs[2].map50, epochs[2].map50_95) == (pytest.approx(0.41234), pytest.approx(0.25101))
    assert [e.epoch_s for e in epochs] == [pytest.approx(20.0), pytest.approx(21.0), pytest.approx(19.0)]
    assert epochs[2].eta_s == pytest.approx(20.0 * 7)  # mean epoch time x epochs left
    line = format_epoch_line("m__S1_clean_train", epochs[2])
    assert line == ("m__S1_clean_train: epoch 3/10 box_loss 4.013 cls_loss 3.352 dfl_loss 2.222 | "
                    "val mAP50 0.412 mAP50-95 0.251 | 19s/epoch, ETA 2m20s")
    table = epoch_table(epochs)
    assert table[1] == {"epoch": 2, "box_loss": 5.3047, "cls_loss": 4.7828, "dfl_loss": 3.3498, "mAP50": 0.0312,
                        "mAP50-95": 0.0112, "epoch_s": 21.0}


def test_a_diverged_epochs_nan_loss_is_kept_as_nan_not_dropped(tmp_path: Path) -> None:
    """Dropped, the epoch's summed loss (the report's curve) came out lower than the losses it logged."""
    diverged = YOLO_CSV.replace("2,41.0,5.3047,4.78279,", "2,41.0,5.3047,nan,")
    epochs = epoch_progress(results_rows(_session(tmp_path, diverged)), epochs_total=10)
    assert list(epochs[1].losses) == ["box_loss", "cls_loss", "dfl_loss"] and math.isnan(epochs[1].losses["cls_loss"])
    assert "box_loss 5.305 cls_loss nan dfl_loss 3.350 |" in format_epoch_line("m", epochs[1])
    assert epoch_table(epochs)[1]["cls_loss"] is None  # as a missing mAP: the table artifact holds no NaN


def test_rtdetr_losses_half_written_line_and_resumed_clock(tmp_path: Path) -> None:
    text = RTDETR_CSV + "2,5.0,1.7,5.1,1.0,0,0,0.002,0.001,1.5,0.8,0.9,0.0007\n3,12.5,1.6"  # resumed; cut off
    epochs = epoch_progress(results_rows(_session(tmp_path, text)), epochs_total=3)
    assert [e.epoch for e in epochs] == [1, 2]  # the half-written third line is not an epoch yet
    assert list(epochs[0].losses) == ["giou_loss", "cls_loss", "l1_loss"]
    assert epochs[1].epoch_s == pytest.approx(5.0)  # the clock restarted on resume: its own time
    assert "epoch 2/3 giou_loss 1.700 cls_loss 5.100 l1_loss 1.000" in format_epoch_line("r", epochs[1])
    assert format_epoch_line("r", epochs[1]).endswith("| 5.0s/epoch, ETA 6.5s")  # short epochs keep a decimal
    quick = EpochProgress(1, 40, {}, None, None, 0.42, 16.4)  # the UI showed "0s/epoch" for this
    assert format_epoch_line("q", quick).endswith("| 0.4s/epoch, ETA 16s")
    assert epoch_progress([], 3) == [] and results_rows(SessionPaths(tmp_path / "none")) == []
    bare = EpochProgress(1, None, {}, None, None, None, None)
    assert format_epoch_line("s", bare) == "s: epoch 1/? no train losses | val mAP50 - mAP50-95 - | -/epoch, ETA -"


def test_an_epoch_repeated_by_a_resume_counts_once_and_a_file_of_no_text_gives_no_epochs(tmp_path: Path) -> None:
    """After kill -9 and a resume, results.csv holds epoch 2 twice: the live view logged it twice and its progress
    read 125 %; a results.csv that is no UTF-8 text stopped the report and `exp3.status` with a traceback."""
    resumed = YOLO_CSV.replace("\n3,", "\n2,", 1) + YOLO_CSV.splitlines()[-1] + "\n"  # 1, 2, 2 (resumed), 3
    epochs = epoch_progress(results_rows(_session(tmp_path / "a", resumed)), epochs_total=3)
    assert [e.epoch for e in epochs] == [1, 2, 3]
    assert epochs[1].map50_95 == pytest.approx(0.25101)  # the later row of epoch 2: the one the checkpoints hold
    garbled = _session(tmp_path / "b", "")
    garbled.results_csv.write_bytes(b"\xff\xfe\x00garbage")
    assert results_rows(garbled) == []


def test_result_lines_from_metrics_json(tmp_path: Path) -> None:
    metrics = {"splits": {"test_clean": {"map50": 0.7021, "ingredient": {"micro": {"f1": 0.8123}}},
                          "test_occ_fixed": {"map50": 0.5111, "ingredient": {"micro": {"f1": 0.64}}}}}
    paths = SessionPaths(tmp_path / "m" / "m__S1_clean_train")
    paths.folder.mkdir(parents=True)
    paths.metrics.write_text(json.dumps(metrics))
    assert format_result(paths) == "F1 clean 0.812 / occluded 0.640, mAP50 clean 0.702 / occluded 0.511"
    assert format_failed_line("m__S1", "m__S1: RuntimeError: boom\ntraceback ...", 65.0) == (
        "FAILED m__S1: RuntimeError: boom (after 1m05s)")
    assert format_result(SessionPaths(tmp_path / "no")) == "F1 clean - / occluded -, mAP50 clean - / occluded -"
