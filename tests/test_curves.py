"""Training curves (exp3.report.curves): the chart frame is results.csv, best.pt's epoch is Ultralytics' own choice,
the masking ramp's end sits at ramp_fraction x epochs, several seeds give a mean line, a partial grid draws what
exists, and the answer says whether training had converged only where the positive control failed.

Two kinds of results.csv: one written by a real Ultralytics training (yolov8n.yaml, the tiny dataset, a few epochs:
its best.pt says which epoch Ultralytics kept), and ones written here in Ultralytics' own format (`save_metrics`: a
header of the column names, rows of "%.6g") with chosen val mAP50-95 curves, for the readings that need a known shape.
The report-level trees reuse tests/test_gap.py's sessions: yolov8m's positive control holds (S2 - S1 = 0.2 on every
metric), rtdetr-l's fails (S2 - S1 = 0.01).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_gap import write_session
from test_plots import colour_scales

from exp3 import report
from exp3.fileio import sha256_file
from exp3.report import curves, plots
from exp3.report.runs import SessionRun, scan_sessions
from exp3.schema import MetricsView
from exp3.session.layout import SessionState
from exp3.sessions import Session

YOLO_COLUMNS = ("epoch", "time", "train/box_loss", "train/cls_loss", "train/dfl_loss", "metrics/precision(B)",
                "metrics/recall(B)", "metrics/mAP50(B)", "metrics/mAP50-95(B)", "val/box_loss", "val/cls_loss",
                "val/dfl_loss", "lr/pg0", "lr/pg1", "lr/pg2")
RTDETR_COLUMNS = ("epoch", "time", "train/giou_loss", "train/cls_loss", "train/l1_loss", "metrics/precision(B)",
                  "metrics/recall(B)", "metrics/mAP50(B)", "metrics/mAP50-95(B)", "val/giou_loss", "val/cls_loss",
                  "val/l1_loss", "lr/pg0", "lr/pg1", "lr/pg2")
RISING = [0.01, 0.05, 0.09, 0.12, 0.15, 0.17, 0.19, 0.21, 0.22, 0.24]
"""Still rising: the best epoch is the last, the slope over epochs 8-10 is +0.015 per epoch."""
LEVELLED = [0.01, 0.08, 0.14, 0.18, 0.2, 0.21, 0.22, 0.22, 0.215, 0.22]
"""Not rising: three epochs tie at 0.22 (7, 8, 10); best.pt holds the last of them, but the slope over 8-10 is 0."""


def write_results_csv(folder: Path, map50_95: list[float], columns: tuple[str, ...] = YOLO_COLUMNS) -> Path:
    """`<folder>/train/results.csv` as Ultralytics' `save_metrics` writes it, with this val mAP50-95 per epoch and
    losses falling as 1/epoch."""
    path = folder / "train" / "results.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [("%.6g," * len(columns) % (epoch, 20.0 * epoch, 3 / epoch, 2 / epoch, 1.5 / epoch, 0.5, 0.5,
                                       value + 0.2, value, 2.0, 1.0, 1.0, 0.001, 0.001, 0.001)).rstrip(",")
            for epoch, value in enumerate(map50_95, start=1)]
    path.write_text(",".join(columns) + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
    if (metrics_path := folder / "metrics.json").is_file():  # a done session's record says as many epochs trained
        metrics = json.loads(metrics_path.read_text())
        metrics["training"]["epochs_completed"] = len(map50_95)
        metrics_path.write_text(json.dumps(metrics))
        done = json.loads((folder / "DONE").read_text())
        (folder / "DONE").write_text(json.dumps({**done, "metrics_sha256": sha256_file(metrics_path)}))
    return path


def masked_metrics(schedule: str = "linear_ramp", ramp_fraction: float = 0.3, epochs: int = 10) -> dict:
    """The parts of a masked session's metrics.json the curves read."""
    return {"masking": {"site": "backbone_early", "spec": {"schedule": schedule, "ramp_fraction": ramp_fraction},
                        "stats": None},
            "training": {"effective_args": {"epochs": epochs}}}


def done_run(folder: Path, suffix: str = "S1_clean_train", seed: int | None = 0, metrics: dict | None = None,
             model: str = "yolov8n") -> SessionRun:
    return SessionRun(model, suffix, seed, folder, SessionState.DONE, None, metrics or {})


def csv_frame(path: Path) -> pd.DataFrame:
    """results.csv read independently of exp3.session.progress."""
    return pd.read_csv(path, skipinitialspace=True).rename(columns=str.strip)


def panel(frame: pd.DataFrame, mark: str, quantity: str = curves.MAP_QUANTITY, session: str | None = None
          ) -> pd.DataFrame:
    part = frame[(frame["mark"] == mark) & (frame["quantity"] == quantity)]
    return part[part["session"] == session] if session else part


# ----------------------------------------------------------------------------- the rules


def test_best_epoch_ties_go_to_the_later_epoch() -> None:
    assert curves.best_epoch([1, 2, 3, 4], [0.1, 0.3, 0.3, 0.2]) == 3
    assert curves.best_epoch([1, 2, 3], [0.0, 0.0, 0.0]) == 3
    assert curves.best_epoch([1, 2, 3], [0.4, math.nan, 0.1]) == 1
    assert curves.best_epoch([1, 2], [math.nan, math.nan]) is None


def test_still_rising_needs_a_positive_slope_and_the_best_epoch_in_the_window() -> None:
    assert [curves.window_size(n) for n in (3, 10, 16, 50, 300)] == [3, 3, 4, 10, 60]
    epochs = list(range(1, 11))
    rising = curves.convergence(epochs, RISING)
    assert rising.reading == curves.STILL_RISING and rising.window == (8, 10) and rising.best_epoch == 10
    assert rising.slope == pytest.approx(np.polyfit([8, 9, 10], RISING[-3:], 1)[0])
    assert rising.rise == pytest.approx(rising.slope * 2)
    levelled = curves.convergence(epochs, LEVELLED)
    assert levelled.reading == curves.NOT_RISING and levelled.best_epoch == 10
    assert levelled.slope == pytest.approx(0.0, abs=1e-12)
    recovering = curves.convergence(epochs, [0.1, 0.3, 0.35, 0.36, 0.2, 0.1, 0.1, 0.12, 0.14, 0.16])
    assert recovering.slope > 0 and recovering.best_epoch == 4 and recovering.reading == curves.NOT_RISING
    peaked = curves.convergence(epochs, [0.1, 0.2, 0.3, 0.3, 0.3, 0.3, 0.3, 0.4, 0.35, 0.3])
    assert peaked.best_epoch == 8 and peaked.slope < 0 and peaked.reading == curves.NOT_RISING
    assert curves.convergence([1, 2], [0.1, 0.2]).reading == curves.TOO_FEW


def test_ramp_end_is_ramp_fraction_of_the_epochs_trained() -> None:
    assert curves.ramp_epoch(MetricsView.of(masked_metrics(ramp_fraction=0.3, epochs=16))) == pytest.approx(4.8)
    assert curves.ramp_epoch(MetricsView.of(masked_metrics(schedule="constant"))) is None
    assert curves.ramp_epoch(MetricsView.of(masked_metrics(ramp_fraction=0.0))) is None
    assert curves.ramp_epoch(MetricsView.of({"masking": None})) is None
    assert curves.ramp_epoch(MetricsView.of(None)) is None


# ----------------------------------------------------------------------------- a real Ultralytics training


@pytest.fixture(scope="module")
def real_training(tiny_data_yaml: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session folder whose train/ is a real 4-epoch Ultralytics run (validated every epoch, best.pt kept). On 8
    training images its val mAP50-95 ties (0 at every epoch with Ultralytics 8.4.190): best.pt then shows which of
    tied epochs Ultralytics keeps."""
    from ultralytics import YOLO

    folder = tmp_path_factory.mktemp("real") / "yolov8n" / "yolov8n__S3_mask_backbone_early"
    YOLO("yolov8n.yaml").train(data=str(tiny_data_yaml), epochs=4, imgsz=64, batch=4, device="cpu", amp=False,
                               workers=0, plots=False, project=str(folder), name="train", exist_ok=True,
                               verbose=False)
    return folder


def test_curve_frame_is_results_csv_and_best_epoch_is_ultralytics_best_pt(real_training: Path) -> None:
    import torch

    run = done_run(real_training, "S3_mask_backbone_early", metrics=masked_metrics(ramp_fraction=0.5, epochs=4))
    found = curves.training_curves([run], ["yolov8n"])
    expected = csv_frame(real_training / "train" / "results.csv")
    line = panel(found.frame, "session")
    assert list(line["epoch"]) == list(expected["epoch"]) == [1, 2, 3, 4]
    assert list(line["value"]) == list(expected["metrics/mAP50-95(B)"])
    loss = panel(found.frame, "session", "train loss (box + cls + dfl)")
    assert list(loss["value"]) == pytest.approx(list(expected[["train/box_loss", "train/cls_loss",
                                                               "train/dfl_loss"]].sum(axis=1)))
    kept = torch.load(real_training / "train" / "weights" / "best.pt", map_location="cpu", weights_only=False)
    best_pt_epoch = kept["train_results"]["epoch"][-1]              # the rows results.csv held when best.pt was saved
    best = panel(found.frame, "best")
    assert list(best["epoch"]) == [best_pt_epoch]
    assert list(best["value"]) == [expected.loc[expected["epoch"] == best_pt_epoch, "metrics/mAP50-95(B)"].item()]
    assert found.table.loc[0, "best_pt_epochs"] == str(best_pt_epoch)
    assert list(panel(found.frame, "ramp")["epoch"]) == [2.0]


# ----------------------------------------------------------------------------- seeds, ramps, a partial grid


def test_several_seeds_give_a_mean_line_faint_seeds_and_each_seeds_best_epoch(tmp_path: Path) -> None:
    shapes = {0: RISING, 1: LEVELLED, 2: [value / 2 for value in RISING]}
    runs = []
    for seed, shape in shapes.items():
        folder = tmp_path / "yolov8n" / Session("yolov8n", "S3_mask_backbone_early", seed).name
        write_results_csv(folder, shape)
        runs.append(done_run(folder, "S3_mask_backbone_early", seed, masked_metrics(ramp_fraction=0.3, epochs=10)))
    found = curves.training_curves(runs, ["yolov8n"])
    mean = panel(found.frame, "session")
    assert list(mean["value"]) == pytest.approx(list(np.mean(list(shapes.values()), axis=0)))
    assert set(mean["seeds"]) == {"0;1;2"}
    seeds = panel(found.frame, "seed")
    assert sorted(set(seeds["seeds"])) == ["0", "1", "2"] and len(seeds) == 30
    assert list(panel(found.frame, "best")["epoch"]) == [10, 10, 10]    # LEVELLED: its tie at 0.22 goes to epoch 10
    assert list(panel(found.frame, "ramp")["epoch"]) == [pytest.approx(3.0)]
    row = found.table.iloc[0]
    assert row["best_pt_epochs"] == "10;10;10" and row["reading"] == curves.STILL_RISING
    assert curves.chart_subtitle(found.table, [])[2].startswith("thick: the mean over each session's seeds (up to 3)")


def test_a_partial_grid_draws_what_exists_and_names_the_rest(tmp_path: Path) -> None:
    root = tmp_path / "root"
    for suffix, shape in (("S1_clean_train", RISING), ("S3_mask_backbone_early", LEVELLED)):
        write_session(root / "yolov8n" / f"yolov8n__{suffix}", "yolov8n", suffix, (80, 40))
        write_results_csv(root / "yolov8n" / f"yolov8n__{suffix}", shape)
    write_session(root / "yolov8n" / "yolov8n__S2_occ_train", "yolov8n", "S2_occ_train", (80, 60))   # no results.csv
    (root / "yolov8n" / "yolov8n__S4_mask_backbone_late").mkdir()                                   # incomplete
    found = curves.training_curves(scan_sessions(root, ["yolov8n"]), ["yolov8n"])
    assert set(found.frame["session"]) == {"S1_clean_train", "S3_mask_backbone_early"}
    assert found.missing["yolov8n"] == ["S2 (no train/results.csv)", "S4 (incomplete)", "S5 (missing)",
                                        "S6 (missing)"]
    assert curves.chart_subtitle(found.table, found.missing["yolov8n"])[-1] == (
        "not drawn: S2 (no train/results.csv), S4 (incomplete), S5 (missing), S6 (missing)")
    assert panel(found.frame, "ramp").empty                         # write_session records no masking spec
    assert list(found.table["reading"]) == [curves.STILL_RISING, curves.NOT_RISING]
    spec = plots.training_curve_chart(found.of("yolov8n")[0], "t").to_dict()     # S1 and S3 keep their colours
    assert colour_scales(spec, "session_label") == [{"S1 clean": plots.SESSION_PALETTE[0],
                                                     "S3 mask backbone-early": plots.SESSION_PALETTE[2]}] * 3


def test_a_results_csv_short_of_the_epochs_trained_is_named_not_drawn(tmp_path: Path) -> None:
    """A row lost (a mirror copy of results.csv older than its last.pt) or cut: the curve was drawn and judged as
    if whole ("too few epochs (1)", best epoch 2 of 1); now it is not drawn, and the section says why."""
    root = tmp_path / "root"
    for suffix in ("S1_clean_train", "S2_occ_train"):
        write_session(root / "yolov8n" / f"yolov8n__{suffix}", "yolov8n", suffix, (80, 40))
        write_results_csv(root / "yolov8n" / f"yolov8n__{suffix}", RISING)
    cut = root / "yolov8n" / "yolov8n__S2_occ_train" / "train" / "results.csv"
    lines = cut.read_text().splitlines(keepends=True)
    cut.write_text("".join(lines[:4] + lines[5:]))                                      # epoch 4's row lost
    found = curves.training_curves(scan_sessions(root, ["yolov8n"]), ["yolov8n"])
    assert set(found.frame["session"]) == {"S1_clean_train"}
    assert found.missing["yolov8n"][0] == "S2 (train/results.csv holds 9 complete epoch rows, 10 were trained)"


def test_a_diverged_epochs_loss_sums_to_nan_not_to_a_lower_number(tmp_path: Path) -> None:
    """Epoch 2 logged cls_loss nan: its train loss was drawn as box + dfl alone, a drop that never happened."""
    folder = tmp_path / "yolov8n" / "yolov8n__S1_clean_train"
    path = write_results_csv(folder, RISING[:3])
    lines = path.read_text().splitlines()
    cells = lines[2].split(",")
    cells[YOLO_COLUMNS.index("train/cls_loss")] = "nan"  # epoch 2
    path.write_text("\n".join([*lines[:2], ",".join(cells), *lines[3:]]) + "\n")
    found = curves.training_curves([done_run(folder)], ["yolov8n"])
    loss = panel(found.frame, "session", "train loss (box + cls + dfl)").set_index("epoch")["value"]
    assert math.isnan(loss[2]) and loss[1] == pytest.approx(3 + 2 + 1.5) and loss[3] == pytest.approx(6.5 / 3)


def test_a_seed_that_logged_nan_makes_the_session_mean_nan_there(tmp_path: Path) -> None:
    """Seed 1 logged cls_loss and mAP50-95 nan at epoch 3: the session line showed seed 0's values there, as if
    they were the mean of both seeds."""
    runs = []
    for seed in (0, 1):
        folder = tmp_path / "yolov8n" / Session("yolov8n", "S1_clean_train", seed).name
        path = write_results_csv(folder, RISING[:4])
        if seed == 1:
            lines = path.read_text().splitlines()
            cells = lines[3].split(",")
            for column in ("train/cls_loss", "metrics/mAP50-95(B)"):
                cells[YOLO_COLUMNS.index(column)] = "nan"
            path.write_text("\n".join([*lines[:3], ",".join(cells), *lines[4:]]) + "\n")
        runs.append(done_run(folder, seed=seed))
    found = curves.training_curves(runs, ["yolov8n"])
    for quantity in (curves.MAP_QUANTITY, "train loss (box + cls + dfl)"):
        mean = panel(found.frame, "session", quantity).set_index("epoch")["value"]
        seeds = panel(found.frame, "seed", quantity)
        assert math.isnan(mean[3]) and not seeds[seeds["epoch"] == 3]["value"].isna().all()
        assert mean[2] == pytest.approx(seeds[seeds["epoch"] == 2]["value"].mean())


def test_a_cut_line_that_a_resume_appended_to_is_not_read_as_an_epoch(tmp_path: Path) -> None:
    """Epoch 3's line was cut (a kill mid-append); the resume appended epoch 3 again to it. The joined line has more
    fields than the header: it was read as epoch 3 with shifted values (mAP50-95 0.5 where 0.3 was logged)."""
    folder = tmp_path / "yolov8n" / "yolov8n__S1_clean_train"
    lines = write_results_csv(folder, [0.1, 0.2, 0.3, 0.4, 0.5]).read_text().splitlines()
    (folder / "train" / "results.csv").write_text("\n".join(lines[:3]) + "\n" + lines[3][:len(lines[3]) // 3]
                                                  + "\n".join(lines[3:]) + "\n")
    found = curves.training_curves([done_run(folder, metrics={"training": {"epochs_completed": 5}})], ["yolov8n"])
    assert not len(found.frame)
    assert found.missing["yolov8n"] == ["S1 (train/results.csv holds 4 complete epoch rows, 5 were trained)"]


def test_without_a_recorded_epoch_count_a_curve_with_a_hole_is_not_drawn(tmp_path: Path) -> None:
    """metrics.json without epochs_completed, results.csv without epoch 4: drawn with a hole, said nowhere."""
    folder = tmp_path / "yolov8n" / "yolov8n__S1_clean_train"
    lines = write_results_csv(folder, RISING).read_text().splitlines(keepends=True)
    (folder / "train" / "results.csv").write_text("".join(lines[:4] + lines[5:]))
    found = curves.training_curves([done_run(folder, metrics={"training": {"epochs_completed": None}})], ["yolov8n"])
    assert not len(found.frame)
    assert found.missing["yolov8n"] == ["S1 (train/results.csv's 9 complete epoch rows are not epochs 1..9, and "
                                        "metrics.json records no epochs_completed)"]
    whole = tmp_path / "whole" / "yolov8n" / "yolov8n__S1_clean_train"
    write_results_csv(whole, RISING)
    drawn = curves.training_curves([done_run(whole, metrics={"training": {"epochs_completed": None}})], ["yolov8n"])
    assert sorted(set(drawn.frame["epoch"])) == list(range(1, 11))


def test_a_curve_flat_at_zero_learned_nothing_and_is_never_called_converged(tmp_path: Path) -> None:
    """A 3-epoch smoke run read "not for want of epochs" of models that detected nothing at any epoch."""
    assert curves.convergence([1, 2, 3], [0.0, 0.0, 0.0]).reading == curves.NOTHING_LEARNED
    assert curves.convergence([1, 2, 3], [0.0, 0.0004, 0.0002]).reading == curves.NOTHING_LEARNED
    assert curves.convergence([1, 2, 3, 4], [0.0, 0.002, 0.001, 0.001]).reading == curves.NOT_RISING
    root = tmp_path / "root"
    for suffix in ("S1_clean_train", "S2_occ_train"):
        write_session(root / "yolov8n" / f"yolov8n__{suffix}", "yolov8n", suffix, (80, 40))
        write_results_csv(root / "yolov8n" / f"yolov8n__{suffix}", [0.0, 0.0, 0.0])
    found = curves.training_curves(scan_sessions(root, ["yolov8n"]), ["yolov8n"])
    sentence = curves.convergence_sentence(found, "yolov8n")
    assert "not for want of epochs" not in sentence and "learned nothing" in sentence
    assert "Nothing learned (val mAP50-95 < 0.001 at every epoch): S1, S2: train longer" in sentence
    assert list(curves.convergence_markdown_table(found.table)["reading"]) == ["**nothing learned** (< 0.001 "
                                                                              "throughout)"] * 2
    axis = plots.training_curve_chart(found.of("yolov8n")[0], "t").to_dict()["spec"]["layer"][0]["encoding"]["x"]
    assert axis["axis"]["values"] == [1, 2, 3]                     # not ticks at 1.5 and 2.5 labelled "2" and "3"


# ----------------------------------------------------------------------------- the report


CURVES = {  # model -> suffix -> val mAP50-95 per epoch; yolov8m: control holds, rtdetr-l and yolov8n: it fails
    "yolov8m": {"S1_clean_train": RISING, "S2_occ_train": RISING, "S3_mask_backbone_early": RISING},
    "rtdetr-l": {"S1_clean_train": RISING, "S2_occ_train": [value + 0.01 for value in RISING],
                 "S3_mask_backbone_early": LEVELLED},
    "yolov8n": {"S1_clean_train": LEVELLED, "S2_occ_train": LEVELLED, "S3_mask_backbone_early": LEVELLED},
}
HITS = {"yolov8m": {"S1_clean_train": (80, 40), "S2_occ_train": (80, 60), "S3_mask_backbone_early": (70, 50)},
        "rtdetr-l": {"S1_clean_train": (80, 40), "S2_occ_train": (80, 41), "S3_mask_backbone_early": (80, 41)},
        "yolov8n": {"S1_clean_train": (80, 40), "S2_occ_train": (80, 41), "S3_mask_backbone_early": (80, 41)}}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> report.ReportResult:
    root = tmp_path_factory.mktemp("exp3-curves")
    for model, sessions in HITS.items():
        for suffix, hits in sessions.items():
            folder = root / model / f"{model}__{suffix}"
            write_session(folder, model, suffix, hits)
            write_results_csv(folder, CURVES[model][suffix], RTDETR_COLUMNS if model == "rtdetr-l" else YOLO_COLUMNS)
    return report.build_report(root, list(HITS), n_resamples=200, n_permutations=199, charts=True)


def _answer(built: report.ReportResult) -> str:
    text = (built.root / "report.md").read_text(encoding="utf-8")
    return text[:text.index("## Grid status")]


def test_the_answer_says_training_was_still_rising_where_the_control_failed(built: report.ReportResult) -> None:
    controls = built.gap_closed.query("session == 'S3_mask_backbone_early'").groupby("model")["verdict"].unique()
    assert [list(controls[model]) for model in HITS] == [["closes part of the gap"], ["positive control failed"],
                                                         ["positive control failed"]]
    answer = _answer(built)
    rise = curves.convergence(range(8, 11), RISING[-3:]).rise
    assert (f"- **rtdetr-l**: val mAP50-95 still rising at the end of training: S1 {rise:+.3f} over epochs 8-10, "
            f"S2 {rise:+.3f} over epochs 8-10 (least-squares change over the last epochs, best epoch among them): "
            "train longer before doubting the effect. No curve: S4 (missing), S5 (missing), S6 (missing).") in answer
    assert "**yolov8m**: val mAP50-95 still rising" not in answer               # its control holds
    assert "**yolov8n**: val mAP50-95 still rising" not in answer               # converged
    assert ("- **yolov8n**: no session's val mAP50-95 was still rising at the end of training (best.pt epochs: "
            "S1 10 of 10, S2 10 of 10, S3 10 of 10): the failed control is not for want of epochs by this rule.") \
        in answer


def test_report_has_the_curves_section_chart_and_files(built: report.ReportResult) -> None:
    text = (built.root / "report.md").read_text(encoding="utf-8")
    section = text[text.index("## Training curves"):text.index("## test_occ_fixed")]
    for model in HITS:
        assert f"![training_curves_{model}](plots/training_curves_{model}.png)" in section
        assert (built.root / "plots" / f"training_curves_{model}.png").stat().st_size > 10_000
    assert "| S1 clean | 0 | 10 | 10 | 0.240 / 0.240 |" in section
    assert "### training_curves_" not in text                                   # not listed again under Charts
    table = pd.read_csv(built.root / "training_convergence.csv")
    assert len(table) == 9 and set(table["reading"]) == {curves.STILL_RISING, curves.NOT_RISING}
    frame = pd.read_csv(built.root / "training_curves.csv")
    assert set(frame.query("model == 'rtdetr-l'")["quantity"]) == {curves.MAP_QUANTITY, "train loss (giou + cls + l1)"}
    html = (built.root / "report.html").read_text(encoding="utf-8")
    assert "Training curves: had the sessions converged?" in html and "data:image/png;base64" in html
