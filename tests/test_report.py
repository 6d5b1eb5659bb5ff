"""exp3.report on a fixture tree of synthetic session folders with known values.

The tree: two models x six sessions, 20 test images, 4 classes. Image i has the ground-truth set
{class i % 4}; a session "hits" the first `h` images (predicts exactly the GT class) and predicts
nothing on the rest, so its micro ingredient F1 is 2h / (N + h) exactly. yolov8m's S4 is FAILED and
its S5 has no folder; everything else is done. The files go through exp3.evaluate.metrics.summarize_split
and exp3.session.record.robustness, so they are consistent with what a real session writes.

Two twists (SHAPES) make the metrics tell different stories:
- `misplaced`: the first k hits put their box off the object (IoU 0): the ingredient is still
  named (ingredient tp) but the box is a detection fp + fn. yolov8m S1 on test_clean misplaces 8
  (detection F1 0.6, ingredient F1 1.0: S2 vs S1 shows a detection difference only); yolov8m S2 on
  test_occ_fixed misplaces 4 (detection F1 equal to S1's, ingredient F1 higher).
- `weak`: the next w images after the hits predict the GT class at conf 0.15, below the primary
  0.25 but above the val-chosen 0.10: rtdetr-l S1 on test_occ_fixed gets 8 + 7 = 15 hits at its val
  threshold, as many as S2 (whose val threshold is 0.50), so the S2 - S1 gap closes there.
Every session records `at_val_threshold` and `thresholds` (VAL_CONF).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import records_to_json
from scipy import stats as scipy_stats

from exp3 import report
from exp3.evaluate.mapstats import MapStats, mean_ap
from exp3.evaluate.metrics import ImageRecord, summarize_split
from exp3.fileio import atomic_write_json, sha256_file
from exp3.report.charts import bar_frame
from exp3.report.comparisons import COMPARISON_COLUMNS, MAP_METRICS, PAIRED_METRICS, primary_f1
from exp3.report.findings import POSITIVE_CONTROL_ROWS, headline_findings, positive_control
from exp3.report.markdown import NO_MAP_INTERVAL, dashboard_markdown, status_grid
from exp3.report.plots import CHARTS_LIST
from exp3.report.runs import THRESHOLDS, discover_models, load_session_run
from exp3.report.text import fmt, fmt_p
from exp3.schema import SplitView
from exp3.session.record import robustness
from exp3.sessions import SESSION_LABELS, SESSION_SUFFIXES, Session, folder_session

REPO = Path(__file__).resolve().parents[1]

N_IMAGES = 20
CLASS_NAMES = ["tomato", "carrot", "onion", "egg"]
MODELS = ["yolov8m", "rtdetr-l"]
HITS: dict[str, dict[str, tuple[int, int]]] = {
    # suffix -> (hits on test_clean, hits on test_occ_fixed)
    "yolov8m": {"S1_clean_train": (20, 10), "S2_occ_train": (20, 16), "S3_mask_backbone_early": (20, 12),
                "S6_mask_head": (18, 10)},
    "rtdetr-l": {"S1_clean_train": (19, 8), "S2_occ_train": (19, 15), "S3_mask_backbone_early": (19, 9),
                 "S4_mask_backbone_late": (18, 11), "S5_mask_neck": (19, 13), "S6_mask_head": (17, 8)},
}


SHAPES: dict[tuple[str, str, str], tuple[int, int]] = {
    # (model, suffix, split) -> (misplaced boxes among the hits, weak hits after them): module docstring
    ("yolov8m", "S1_clean_train", "test_clean"): (8, 0),
    ("yolov8m", "S2_occ_train", "test_occ_fixed"): (4, 0),
    ("rtdetr-l", "S1_clean_train", "test_occ_fixed"): (0, 7),
}
VAL_CONF: dict[tuple[str, str], float] = {("rtdetr-l", "S2_occ_train"): 0.5}
"""Val-chosen threshold per session; 0.1 when not listed."""
WEAK_CONF = 0.15


def hit_records(n_images: int, hits: int, misplaced: int = 0, weak: int = 0) -> list[ImageRecord]:
    """Image i: GT {i % C}; the first `hits` images predict the GT class (conf 0.9; the first `misplaced`
    of them with a box that misses the object), the next `weak` at conf WEAK_CONF, the rest nothing."""
    records = []
    for index in range(n_images):
        cls = index % len(CLASS_NAMES)
        predicted = index < hits + weak
        box = [60, 60, 100, 100] if index < misplaced else [10, 10, 50, 50]
        records.append(ImageRecord(image_id=f"img_{index:03d}", gt_classes=[cls], gt_boxes=[[10, 10, 50, 50]],
                                   pred_classes=[cls] if predicted else [],
                                   pred_boxes=[box] if predicted else [],
                                   pred_conf=[0.9 if index < hits else WEAK_CONF] if predicted else []))
    return records


def map_value(model: str, suffix: str, split: str) -> float:
    """A known, distinct mAP50-95 per cell."""
    return round(0.1 * (1 + (MODELS + [model]).index(model)) + 0.01 * SESSION_SUFFIXES.index(suffix)
                 + (0.0 if split == "test_clean" else 0.05), 4)


def map_stats_of(records: list[ImageRecord]) -> MapStats:
    """The validator's per-image stats of `records`: a box on the object is a TP at every IoU threshold."""
    return MapStats.from_images([{
        "image_id": record.image_id, "conf": np.asarray(record.pred_conf, np.float32),
        "pred_cls": np.asarray(record.pred_classes, np.float32), "target_cls": np.asarray(record.gt_classes, np.float32),
        "tp": np.array([[np.allclose(box, [10, 10, 50, 50])] * 10 for box in record.pred_boxes], bool).reshape(-1, 10)}
        for record in records])


def _robustness(splits: dict[str, dict]) -> dict:
    """metrics.json's `robustness` of these (subset) split entries, computed as a session computes it."""
    clean, occluded = (SplitView.model_validate(splits[split]) for split in ("test_clean", "test_occ_fixed"))
    return robustness(clean, occluded).model_dump()


def write_done_session(folder: Path, model: str, suffix: str, hits: tuple[int, int], seed: int = 0,
                       n_images: int = N_IMAGES, with_map_stats: bool = False) -> dict:
    """A done session folder: predictions_<split>.json, metrics.json (session schema subset), DONE.

    with_map_stats: also write map_stats_<split>.npz, with metrics.json's mAP computed from it.
    """
    splits = {}
    val_conf = VAL_CONF.get((model, suffix), 0.1)
    for split, split_hits in zip(("test_clean", "test_occ_fixed"), hits):
        records = hit_records(n_images, split_hits, *SHAPES.get((model, suffix, split), (0, 0)))
        atomic_write_json(folder / f"predictions_{split}.json", {"schema_version": 2, "session": f"{model}__{suffix}",
                                                                 "split": split, "images": records_to_json(records)})
        summary = summarize_split(records, num_classes=len(CLASS_NAMES), conf=0.25, class_names=CLASS_NAMES)
        splits[split] = {"map50": map_value(model, suffix, split) + 0.2, "map50_95": map_value(model, suffix, split),
                         "eval_wall_s": 2.5, **summary}
        if with_map_stats:
            stats = map_stats_of(records)
            stats.save(folder / f"map_stats_{split}.npz")
            splits[split]["map50"], splits[split]["map50_95"] = mean_ap(stats)
        at_val = summarize_split(records, num_classes=len(CLASS_NAMES), conf=val_conf, class_names=CLASS_NAMES)
        splits[split]["at_val_threshold"] = {"conf": val_conf, "ingredient": at_val["ingredient"],
                                             "detection": at_val["detection"]}
    metrics = {"schema_version": 2, "status": "done", "session": f"{model}__{suffix}", "model": model,
               "suffix": suffix, "training": {"wall_s": 100.0 + SESSION_SUFFIXES.index(suffix), "epochs_completed": 3},
               "eval": {"conf": 0.25, "match_iou": 0.5, "wall_s": 5.0}, "splits": splits,
               "robustness": _robustness(splits),
               "seeds": {"train": seed, "masking": 0, "occlusion": 0, "synthetic": 0}}
    metrics["thresholds"] = {"primary": 0.25, "val_chosen": val_conf,
                             "criterion": "ingredient micro F1 on the clean val split",
                             "val_f1_at_val_chosen": 0.9, "val_f1_at_primary": 0.85}
    path = atomic_write_json(folder / "metrics.json", metrics)
    atomic_write_json(folder / "DONE", {"session": f"{model}__{suffix}", "metrics_sha256": sha256_file(path)})
    return metrics


def write_failed_session(folder: Path, model: str, suffix: str, error: str) -> None:
    atomic_write_json(folder / "FAILED", {"session": f"{model}__{suffix}", "error": error, "traceback": "Traceback ...",
                                          "train_log_tail": "", "time": "2026-01-01T00:00:00+0000"})


def build_fixture_tree(root: Path) -> Path:
    """The tree of the module docstring under `root`."""
    for model, sessions in HITS.items():
        for suffix, hits in sessions.items():
            write_done_session(root / model / f"{model}__{suffix}", model, suffix, hits)
    write_failed_session(root / "yolov8m" / "yolov8m__S4_mask_backbone_late", "yolov8m", "S4_mask_backbone_late",
                         "RuntimeError: CUDA out of memory")
    (root / "not_a_model").mkdir()           # ignored by discovery
    return root


def expected_f1(hits: int, n_images: int = N_IMAGES) -> float:
    return 2 * hits / (n_images + hits)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> report.ReportResult:
    root = build_fixture_tree(tmp_path_factory.mktemp("exp3-report"))
    return report.build_report(root, n_resamples=500, n_permutations=2000)


def test_discovery_orders_known_models_and_ignores_other_dirs(built: report.ReportResult) -> None:
    assert discover_models(built.root) == ["yolov8m", "rtdetr-l"]
    assert folder_session("rtdetr-l__S2_occ_train__seed3") == Session("rtdetr-l", "S2_occ_train", 3)
    assert folder_session("rtdetr-l__S9_other") is None and folder_session("rtdetr-l__S2_occ_train__seed0") is None
    assert folder_session("rtdetr-l__S2_occ_train") == Session("rtdetr-l", "S2_occ_train", 0)


def test_summary_csv_has_every_cell_with_status_and_exact_values(built: report.ReportResult) -> None:
    table = pd.read_csv(built.root / "summary_metrics.csv", keep_default_na=False, na_values=[""], dtype={"seeds": str})
    assert len(table) == len(MODELS) * 6 * 2
    assert list(table["model"].unique()) == MODELS
    assert list(table["session"].iloc[:12:2]) == list(SESSION_SUFFIXES)
    cell = table.set_index(["model", "session", "split"])
    assert cell.loc[("yolov8m", "S4_mask_backbone_late", "test_clean"), "status"] == "failed"
    assert cell.loc[("yolov8m", "S4_mask_backbone_late", "test_clean"), "error"] == "RuntimeError: CUDA out of memory"
    assert cell.loc[("yolov8m", "S5_mask_neck", "test_occ_fixed"), "status"] == "missing"
    assert math.isnan(cell.loc[("yolov8m", "S5_mask_neck", "test_occ_fixed"), "ingredient_micro_f1"])
    assert (table["status"] == "done").sum() == 2 * 10
    for model, sessions in HITS.items():
        for suffix, (clean_hits, occ_hits) in sessions.items():
            clean, occ = cell.loc[(model, suffix, "test_clean")], cell.loc[(model, suffix, "test_occ_fixed")]
            assert clean["ingredient_micro_f1"] == pytest.approx(expected_f1(clean_hits))
            assert occ["ingredient_micro_f1"] == pytest.approx(expected_f1(occ_hits))
            assert occ["ingredient_micro_recall"] == pytest.approx(occ_hits / N_IMAGES)
            assert occ["map50_95"] == pytest.approx(map_value(model, suffix, "test_occ_fixed"))
            assert occ["rF1_micro"] == pytest.approx(expected_f1(occ_hits) / expected_f1(clean_hits))
            assert clean["train_wall_s"] == 100.0 + SESSION_SUFFIXES.index(suffix)
            assert clean["n_seeds_done"] == 1 and str(clean["seeds"]) == "0"
            assert clean["ingredient_micro_f1_ci_low"] <= clean["ingredient_micro_f1"] + 1e-12
            assert clean["ingredient_micro_f1_ci_high"] >= clean["ingredient_micro_f1"] - 1e-12
    json_rows = json.loads((built.root / "summary_metrics.json").read_text())
    assert len(json_rows) == len(table)


def test_comparisons_pair_sessions_on_images(built: report.ReportResult) -> None:
    comparisons = primary_f1(built.comparisons).set_index(["model", "split", "session", "reference"])
    same = comparisons.loc[("yolov8m", "test_clean", "S3_mask_backbone_early", "S1_clean_train")]
    assert same["difference"] == 0.0 and same["p_value"] == 1.0 and same["ci_low"] == same["ci_high"] == 0.0
    better = comparisons.loc[("rtdetr-l", "test_occ_fixed", "S2_occ_train", "S1_clean_train")]
    assert better["difference"] == pytest.approx(expected_f1(15) - expected_f1(8))
    # 7 images differ (8..14), all in S2's favour: the exact sign-flip p is 2 / 2**7
    assert better["ci_low"] > 0 and better["p_value"] == pytest.approx(2 / 2**7, abs=0.006)
    failed = comparisons.loc[("yolov8m", "test_occ_fixed", "S4_mask_backbone_late", "S1_clean_train")]
    assert math.isnan(failed["difference"]) and math.isnan(failed["p_bh"])
    assert (comparisons["p_bh"].dropna() >= comparisons["p_value"].dropna() - 1e-12).all()
    assert len(comparisons) == len(MODELS) * 2 * 2 * 5


def test_twelve_bar_chart_spec_has_twelve_rows(built: report.ReportResult) -> None:
    from exp3.report.plots import session_bar_chart

    frame = bar_frame(built.summary, "test_occ_fixed", "ingredient_micro_f1", MODELS)
    spec = session_bar_chart(frame, MODELS, title="t", y_title="y").to_dict()
    datasets = list(spec["datasets"].values())
    assert len(datasets) == 1 and len(datasets[0]) == 12
    assert sum(row["value"] is not None for row in datasets[0]) == 10         # failed + missing: no bar
    assert {row["status_text"] for row in datasets[0]} == {"", "failed", "missing"}
    html = (built.root / "plots" / "f1_occ_by_model.html").read_text()
    assert "xOffset" in html and "<html" in html.lower()


def test_charts_are_valid_non_trivial_pngs(built: report.ReportResult) -> None:
    plots = built.root / "plots"
    expected = {"f1_occ_by_model", "f1_clean_by_model", "robustness_rF1", "f1_diff_occ", "f1_diff_clean",
                *(f"{kind}_{model}" for kind in ("f1_occ", "f1_clean", "map50_95", "per_class_f1") for model in MODELS),
                *(f"gap_closed_{metric}" for metric in ("ingredient_micro_f1", "detection_f1", "map50", "map50_95"))}
    assert {path.stem for path in plots.glob("*.png")} == expected
    for path in plots.glob("*.png"):
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", path
        assert len(data) > 10_000, path
        assert path.with_suffix(".html").is_file()


def test_report_md_names_failures_and_findings(built: report.ReportResult) -> None:
    text = (built.root / "report.md").read_text()
    assert "RuntimeError: CUDA out of memory" in text
    assert "partial grid, 4 of 6 sessions done" in text
    assert "best masking site on test_occ_fixed: S5 mask neck" in text          # rtdetr-l: 13 hits
    assert "plots/f1_occ_by_model.png" in text
    assert "## Headline findings" in text


def test_a_rebuild_removes_the_charts_it_no_longer_draws_and_never_the_users(tmp_path: Path) -> None:
    """Only charts an earlier build listed (plots/.exp3-charts.json) go: the user's own figures in plots/ stay, also
    in a plots/ without the list (they were deleted by suffix alone)."""
    for suffix in ("S1_clean_train", "S2_occ_train"):
        write_done_session(tmp_path / "yolov8m" / f"yolov8m__{suffix}", "yolov8m", suffix, HITS["yolov8m"][suffix])
    users = {"my_paper_figure1.png": b"the user's figure", "interactive.html": b"<html>the user's</html>",
             "notes.txt": b"the user's notes"}
    (tmp_path / "plots").mkdir()
    for name, content in users.items():
        (tmp_path / "plots" / name).write_bytes(content)
    first = report.build_report(tmp_path, models=["yolov8m", "yolov8n"], n_resamples=50, n_permutations=50)
    drawn = sorted(path.name for path in first.files if path.parent.name == "plots")
    assert "f1_occ_yolov8n.png" in drawn and "f1_occ_by_model.html" in drawn      # yolov8n: missing, still drawn
    assert {name: (tmp_path / "plots" / name).read_bytes() for name in users} == users      # no list yet
    assert json.loads((tmp_path / "plots" / CHARTS_LIST).read_text()) == drawn
    second = report.build_report(tmp_path, n_resamples=50, n_permutations=50)    # yolov8m alone: fewer charts
    again = sorted(path.name for path in second.files if path.parent.name == "plots")
    assert "f1_occ_yolov8m.png" in again and "f1_occ_yolov8n.png" not in again
    assert sorted(path.name for path in (tmp_path / "plots").iterdir()) == sorted([*again, CHARTS_LIST, *users])
    report.build_report(tmp_path, n_resamples=50, n_permutations=50, charts=False)    # no charts: plots/ untouched
    assert sorted(path.name for path in (tmp_path / "plots").iterdir()) == sorted([*again, CHARTS_LIST, *users])
    assert {name: (tmp_path / "plots" / name).read_bytes() for name in users} == users


def test_explicit_models_show_unknown_model_as_missing(tmp_path: Path) -> None:
    root = build_fixture_tree(tmp_path)
    result = report.build_report(root, models=["yolov8m", "yolov8n"], n_resamples=50, n_permutations=100,
                                 charts=False)
    assert len(result.summary) == 2 * 6 * 2
    assert set(result.summary[result.summary["model"] == "yolov8n"]["status"]) == {"missing"}
    assert "no session is done yet" in (root / "report.md").read_text()


def test_multi_seed_reports_mean_and_spread(tmp_path: Path) -> None:
    for seed, hits in ((0, (20, 10)), (1, (20, 14))):
        write_done_session(tmp_path / "yolov8m" / Session("yolov8m", "S1_clean_train", seed).name, "yolov8m",
                           "S1_clean_train", hits, seed=seed)
    write_failed_session(tmp_path / "yolov8m" / "yolov8m__S2_occ_train", "yolov8m", "S2_occ_train", "boom")
    write_done_session(tmp_path / "yolov8m" / "yolov8m__S2_occ_train__seed1", "yolov8m", "S2_occ_train", (20, 16),
                       seed=1)
    result = report.build_report(tmp_path, seeds=[0, 1, 2], n_resamples=50, n_permutations=100, charts=False)
    by_seed, summary = result.by_seed, result.summary.set_index(["session", "split"])
    assert len(by_seed) == 6 * 3 * 2
    s1 = summary.loc[("S1_clean_train", "test_occ_fixed")]
    values = [expected_f1(10), expected_f1(14)]
    assert s1["status"] == "some_seeds" and s1["n_seeds"] == 3 and s1["n_seeds_done"] == 2 and s1["seeds"] == "0;1;2"
    assert s1["ingredient_micro_f1_seed_mean"] == pytest.approx(sum(values) / 2)
    assert s1["ingredient_micro_f1"] == pytest.approx(expected_f1(10 + 14, 2 * N_IMAGES))   # pooled over the seeds
    assert s1["ingredient_micro_f1_std"] == pytest.approx(pd.Series(values).std())
    assert (s1["ingredient_micro_f1_min"], s1["ingredient_micro_f1_max"]) == pytest.approx(tuple(values))
    s2 = summary.loc[("S2_occ_train", "test_clean")]
    assert s2["status"] == "some_seeds" and "seed 0: boom" in s2["error"] and "seed 2: no session folder" in s2["error"]
    assert summary.loc[("S3_mask_backbone_early", "test_clean"), "status"] == "missing"


def test_several_seeds_show_the_pooled_f1_their_interval_and_differences_are_of(tmp_path: Path) -> None:
    """Two seeds a session whose mean F1 is not their pooled F1: the table shows the pooled F1 (the statistic its
    interval, diff_vs_S1 and the comparisons are of), and diff_vs_S1 is the difference of the rows shown."""
    hits = {"S1_clean_train": ((20, 6), (20, 14)), "S2_occ_train": ((20, 12), (20, 20))}
    for suffix, per_seed in hits.items():
        for seed, pair in enumerate(per_seed):
            write_done_session(tmp_path / "yolov8m" / Session("yolov8m", suffix, seed).name, "yolov8m", suffix, pair,
                               seed=seed)
    result = report.build_report(tmp_path, models=["yolov8m"], seeds=[0, 1], sessions=list(hits), n_resamples=300,
                                 n_permutations=200, charts=False)
    rows = result.summary.set_index(["session", "split"])
    s1, s2 = rows.loc[("S1_clean_train", "test_occ_fixed")], rows.loc[("S2_occ_train", "test_occ_fixed")]
    pooled_s1, pooled_s2 = expected_f1(6 + 14, 2 * N_IMAGES), expected_f1(12 + 20, 2 * N_IMAGES)   # 0.667, 0.889
    mean_s1 = (expected_f1(6) + expected_f1(14)) / 2                                                # 0.643
    assert abs(mean_s1 - pooled_s1) > 0.02                      # the fixture tells the two statistics apart
    assert s1["ingredient_micro_f1"] == pytest.approx(pooled_s1) and s1["ingredient_micro_f1_seed_mean"] == \
        pytest.approx(mean_s1)
    assert s2["ingredient_micro_f1"] == pytest.approx(pooled_s2)
    for row in (s1, s2):
        assert row["ingredient_micro_f1_ci_low"] <= row["ingredient_micro_f1"] <= row["ingredient_micro_f1_ci_high"]
        assert row["rF1_micro_ci_low"] <= row["rF1_micro"] <= row["rF1_micro_ci_high"]
    assert s1["rF1_micro"] == pytest.approx(pooled_s1)          # clean F1 1.0 for every seed
    assert s2["diff_vs_S1"] == pytest.approx(s2["ingredient_micro_f1"] - s1["ingredient_micro_f1"], abs=1e-12)
    assert s1["diff_vs_S2"] == pytest.approx(s1["ingredient_micro_f1"] - s2["ingredient_micro_f1"], abs=1e-12)
    at_val = result.comparisons.set_index(["split", "metric", "threshold", "session", "reference"]).loc[
        ("test_occ_fixed", "ingredient_micro_f1", "val", "S2_occ_train", "S1_clean_train")]
    assert at_val["difference"] == pytest.approx(s2["ingredient_micro_f1_at_val"] - s1["ingredient_micro_f1_at_val"],
                                                 abs=1e-12)
    text = (tmp_path / "report.md").read_text()
    assert f"| yolov8m | S1 clean | done (n=2) | {pooled_s1:.3f} [" in text
    assert f"| yolov8m | S2 occluded-train | done (n=2) | {pooled_s2:.3f} [" in text
    assert f"| {pooled_s2 - pooled_s1:+.3f} [" in text                              # the table's vs S1
    assert f"| ingredient micro F1 | conf 0.25 | {pooled_s2 - pooled_s1:+.3f} [" in text   # the positive control


def test_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert report.main(["--root", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.startswith("error: report root")
    assert report.main(["--root", str(tmp_path)]) == 2                     # empty root: no exp3 run
    assert "holds no exp3 run" in capsys.readouterr().err
    build_fixture_tree(tmp_path)
    assert report.main(["--root", str(tmp_path), "--no-charts", "--resamples", "50"]) == 0
    assert "10 done" in capsys.readouterr().out


def _report_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m exp3.report ARGS` in a fresh process, run from the repository (its exp3 package)."""
    return subprocess.run([sys.executable, "-m", "exp3.report", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600)


def test_a_folder_without_an_exp3_run_is_refused_and_loses_nothing(tmp_path: Path) -> None:
    """--root at a folder of the user's (no plan.json, no config_resolved.yaml, no session folder): one line naming it
    and the fix, exit 2, every file as it was (the build replaced report.md and deleted the charts in plots/)."""
    files = {"report.md": b"# my notes\n", "plots/my_paper_figure1.png": b"the user's figure",
             "plots/interactive.html": b"<html>the user's</html>"}
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(content)
    refused = _report_cli("--root", str(tmp_path), "--models", "yolov8m")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert f"report root {str(tmp_path)!r} holds no exp3 run" in refused.stderr
    assert "pass the experiment's output_root" in refused.stderr
    assert {str(path.relative_to(tmp_path)): path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()} \
        == files
    with pytest.raises(FileNotFoundError, match="holds no exp3 run"):
        report.build_report(tmp_path, models=["yolov8m"], charts=False)


def test_a_bare_cli_rebuilds_the_flows_report(tmp_path: Path) -> None:
    """`python -m exp3.report --root R` without flags reports the grid the flow's report task does (flows/exp3.py:
    the config's models whose weights resolved, its seeds and sessions, from config_resolved.yaml and plan.json): a
    configured model without folders stays `missing`, a session outside `sessions:` stays out (it was `missing`), a
    configured seed without folders is not dropped (the CLI discovered all three from the folders instead)."""
    from exp3.config import load_config, write_resolved_config
    from exp3.session.layout import SessionPaths
    from exp3.session.plan import write_plan
    from exp3.sessions import session_grid

    config = load_config(REPO / "configs" / "smoke.yaml", [
        f"output_root={tmp_path}", "seeds=[0, 1]", "sessions=[S1_clean_train, S2_occ_train, S3_mask_backbone_early]",
        "models.yolov8n={architecture: yolov8n.yaml, epochs: 1, weights: /nowhere/yolov8n.pt}"])
    write_resolved_config(config, tmp_path)
    weights = ["yolov8m", "rtdetr-l"]                     # yolov8n's cannot be had: the plan names none of its sessions
    keys = {session.name: f"{session.name}-key" for session in session_grid(weights, SESSION_SUFFIXES, config.seeds)}
    write_plan(tmp_path, keys)
    for session in (Session("yolov8m", "S1_clean_train"), Session("yolov8m", "S1_clean_train", 1),
                    Session("yolov8m", "S2_occ_train"), Session("yolov8m", "S5_mask_neck")):   # S5: not in the run
        paths = SessionPaths(tmp_path / "yolov8m" / session.name)
        write_done_session(paths.folder, "yolov8m", session.suffix, HITS["yolov8m"].get(session.suffix, (20, 12)),
                           seed=session.training_seed)
        paths.write_inputs({}, keys[session.name])
        atomic_write_json(paths.done_marker, {**json.loads(paths.done_marker.read_text()), "key": keys[session.name]})
    # the flow's report task, with the arguments flows/exp3.py gives it
    flows = report.build_report(tmp_path, [model for model in config.models if model in weights], list(config.seeds),
                                n_resamples=50, charts=False, sessions=list(config.sessions))
    summary = (tmp_path / "summary_metrics.csv").read_text()
    rows = flows.summary[flows.summary["split"] == "test_clean"].set_index(["model", "session"])["status"]
    assert rows.to_dict() == {("yolov8m", "S1_clean_train"): "done", ("yolov8m", "S2_occ_train"): "some_seeds",
                              ("yolov8m", "S3_mask_backbone_early"): "missing",
                              **{("rtdetr-l", suffix): "missing" for suffix in config.sessions}}
    (tmp_path / "summary_metrics.csv").unlink()
    bare = _report_cli("--root", str(tmp_path), "--resamples", "50", "--no-charts")
    assert bare.returncode == 0, bare.stderr
    assert (tmp_path / "summary_metrics.csv").read_text() == summary
    assert bare.stdout.startswith("report: 2 model(s), sessions 1 done, 4 missing, 1 some_seeds ->")
    assert "yolov8m | S5 mask neck" not in (tmp_path / "report.md").read_text()


def test_cli_refuses_models_and_seeds_the_root_knows_nothing_of(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """A typo in --models or --seeds (no session folder, not in config_resolved.yaml) is refused in one line naming
    it and what was found, the report on disk kept (it was replaced by an empty grid's, exit 0)."""
    from exp3.config import load_config, write_resolved_config

    build_fixture_tree(tmp_path)
    assert report.main(["--root", str(tmp_path), "--no-charts", "--resamples", "50"]) == 0
    capsys.readouterr()
    written = {path: path.read_bytes() for path in tmp_path.glob("*.*")}
    for flags, named in ((["--models", "yolov8x"], "--models yolov8x: no session folder of it under"),
                         (["--models", "yolov8m", "yolov8x"], "pass models found there (yolov8m, rtdetr-l)"),
                         (["--seeds", "7"], "--seeds 7: no session folder of that seed under"),
                         (["--seeds", "1"], "pass seeds found there (0)")):
        assert report.main(["--root", str(tmp_path), "--no-charts", *flags]) == 2
        error = capsys.readouterr().err
        assert named in error and error.count("\n") == 1, error
    assert {path: path.read_bytes() for path in tmp_path.glob("*.*")} == written
    # the names of the run's config are known, folders or not: configured, so reported (as missing)
    write_resolved_config(load_config(REPO / "configs" / "smoke.yaml", [
        "models.yolov8n={architecture: yolov8n.yaml, epochs: 1}", "seeds=[0, 1]"]), tmp_path)
    assert report.main(["--root", str(tmp_path), "--no-charts", "--resamples", "50", "--models", "yolov8n",
                        "--seeds", "1"]) == 0
    assert capsys.readouterr().out.startswith("report: 1 model(s), sessions 6 missing ->")


def test_folder_without_markers_is_incomplete(tmp_path: Path) -> None:
    folder = tmp_path / "yolov8m" / "yolov8m__S1_clean_train"
    write_done_session(folder, "yolov8m", "S1_clean_train", (20, 10))
    (folder / "DONE").unlink()                                        # e.g. killed before the marker
    run = load_session_run(folder, "yolov8m", "S1_clean_train", None)
    assert run.status == "incomplete" and "no DONE or FAILED marker" in (run.error or "")


def test_results_made_under_other_inputs_are_reported_stale_not_done(tmp_path: Path) -> None:
    from exp3.session.plan import write_plan

    for suffix in ("S1_clean_train", "S2_occ_train"):
        write_done_session(tmp_path / "yolov8m" / f"yolov8m__{suffix}", "yolov8m", suffix, (20, 10))
    # the flow now plans S1 under new inputs (say, more epochs): its old numbers must not be reported
    write_plan(tmp_path, {"yolov8m__S1_clean_train": "yolov8m__S1_clean_train-new-inputs"})
    result = report.build_report(tmp_path, models=["yolov8m"], charts=False, n_resamples=50, n_permutations=50)
    rows = result.summary.set_index(["session", "split"])
    assert rows.loc[("S1_clean_train", "test_occ_fixed"), "status"] == "stale"
    assert math.isnan(rows.loc[("S1_clean_train", "test_occ_fixed"), "ingredient_micro_f1"])
    # the plan names every session of its config: a folder it leaves out (made under another config, another
    # suite, other epochs) is stale too, never mixed in with the new results
    assert rows.loc[("S2_occ_train", "test_occ_fixed"), "status"] == "stale"
    assert math.isnan(rows.loc[("S2_occ_train", "test_occ_fixed"), "ingredient_micro_f1"])


def test_results_made_by_another_exp3_are_reported_stale_under_its_own_plan(tmp_path: Path) -> None:
    """A root reported again after a `git pull` that changed the file schema, before the flow ran: its plan.json is
    the old code's and its folders match it, but the schema in inputs.json (part of every key) says the flow will
    train them again. Before, the report showed their old numbers as done."""
    import exp3
    from exp3.session.plan import write_plan

    keys = {}
    for suffix, schema in (("S1_clean_train", exp3.SCHEMA_VERSION - 1), ("S2_occ_train", exp3.SCHEMA_VERSION)):
        folder = tmp_path / "yolov8m" / f"yolov8m__{suffix}"
        write_done_session(folder, "yolov8m", suffix, (20, 10))
        keys[folder.name] = f"{folder.name}-old-code"
        atomic_write_json(folder / "inputs.json", {"exp3_version": exp3.__version__, "schema_version": schema,
                                                   "key": keys[folder.name]})
        atomic_write_json(folder / "DONE", {**json.loads((folder / "DONE").read_text()), "key": keys[folder.name]})
    write_plan(tmp_path, keys)                                        # the old code's plan, its keys matched
    result = report.build_report(tmp_path, models=["yolov8m"], charts=False, n_resamples=50, n_permutations=50)
    rows = result.summary.set_index(["session", "split"])
    assert rows.loc[("S1_clean_train", "test_occ_fixed"), "status"] == "stale"
    assert math.isnan(rows.loc[("S1_clean_train", "test_occ_fixed"), "ingredient_micro_f1"])
    assert rows.loc[("S2_occ_train", "test_occ_fixed"), "status"] == "done"  # this exp3's schema: as before
    assert f"(schema {exp3.SCHEMA_VERSION - 1}), not this exp3" in (tmp_path / "report.md").read_text()


def test_bh_family_counts_each_unordered_pair_once(built: report.ReportResult) -> None:
    comparisons = built.comparisons
    # the input of Benjamini-Hochberg: one row per distinct test (bh_family x model x split x pair with a p-value)
    keys = ["bh_family", "model", "split", "pair"]
    tested = comparisons[comparisons["p_value"].notna() & (comparisons["bh_family"] != "")]
    tests = tested.drop_duplicates(keys)[keys + ["p_value"]].reset_index(drop=True)
    assert not tests.duplicated(keys).any()
    # recompute from the rows, de-duplicating on the unordered pair independently of the `pair` column
    tested = comparisons[comparisons["p_value"].notna()].copy()
    tested["unordered"] = [tuple(sorted(pair)) for pair in zip(tested["session"], tested["reference"])]
    for family, rows in tested.groupby(["metric", "threshold"]):
        distinct = rows.drop_duplicates(["model", "split", "unordered"])
        expected = dict(zip(zip(distinct["model"], distinct["split"], distinct["unordered"]),
                            scipy_stats.false_discovery_control(distinct["p_value"].to_numpy(), method="bh")))
        got = [expected[key] for key in zip(rows["model"], rows["split"], rows["unordered"])]
        np.testing.assert_allclose(rows["p_bh"].to_numpy(), got, err_msg=str(family))
        if family == ("ingredient_micro_f1", "primary"):
            # yolov8m: S1, S2, S3, S6 done -> 6 rows, 5 distinct pairs; rtdetr-l: 10 rows, 9 pairs; x 2 splits
            assert len(distinct) == (5 + 9) * 2 and len(rows) == (6 + 10) * 2
    assert set(tests["bh_family"]) == {f"{metric}@{threshold}" for metric in PAIRED_METRICS for threshold in THRESHOLDS}


def test_both_readings_of_a_pair_share_one_test(built: report.ReportResult) -> None:
    rows = built.comparisons.set_index(["model", "split", "metric", "threshold", "session", "reference"])
    for metric in PAIRED_METRICS:
        forward = rows.loc[("rtdetr-l", "test_occ_fixed", metric, "primary", "S2_occ_train", "S1_clean_train")]
        backward = rows.loc[("rtdetr-l", "test_occ_fixed", metric, "primary", "S1_clean_train", "S2_occ_train")]
        assert forward["pair"] == backward["pair"] == "S1_clean_train|S2_occ_train"
        assert (forward["p_value"], forward["p_bh"]) == (backward["p_value"], backward["p_bh"])
        assert forward["difference"] == pytest.approx(-backward["difference"]) and forward["difference"] > 0
        assert (forward["ci_low"], forward["ci_high"]) == pytest.approx((-backward["ci_high"], -backward["ci_low"]))


def test_comparisons_csv_layout_has_metric_and_threshold(built: report.ReportResult) -> None:
    table = pd.read_csv(built.root / "comparisons.csv", keep_default_na=False, na_values=[""])
    assert list(table.columns) == list(COMPARISON_COLUMNS)
    per_model_split = (len(PAIRED_METRICS) + len(MAP_METRICS)) * 10 + len(PAIRED_METRICS)
    assert len(table) == len(MODELS) * 2 * per_model_split
    assert set(table["metric"]) == {*PAIRED_METRICS, *MAP_METRICS}
    at_val = table[table["threshold"] == "val"]
    assert set(zip(at_val["session"], at_val["reference"])) == {("S2_occ_train", "S1_clean_train")}
    assert set(at_val["metric"]) == set(PAIRED_METRICS)
    maps = table[table["metric"].isin(MAP_METRICS)].set_index(["model", "split", "metric", "session", "reference"])
    assert maps[["ci_low", "ci_high", "p_value", "p_bh"]].isna().all().all()  # no map_stats files: point estimates
    assert set(maps["threshold"]) == {"primary"}
    assert maps.loc[("rtdetr-l", "test_occ_fixed", "map50_95", "S5_mask_neck", "S2_occ_train"), "difference"] == \
        pytest.approx(map_value("rtdetr-l", "S5_mask_neck", "test_occ_fixed")
                      - map_value("rtdetr-l", "S2_occ_train", "test_occ_fixed"))


def test_detection_and_samples_f1_are_compared_per_image(built: report.ReportResult) -> None:
    rows = built.comparisons.set_index(["model", "split", "metric", "threshold", "session", "reference"])
    key = ("yolov8m", "test_clean")
    detection = rows.loc[(*key, "detection_f1", "primary", "S2_occ_train", "S1_clean_train")]
    micro = rows.loc[(*key, "ingredient_micro_f1", "primary", "S2_occ_train", "S1_clean_train")]
    # S1 misplaces 8 of 20 boxes: detection tp 12, fp 8, fn 8 -> F1 0.6; S2 places all 20: F1 1.0
    assert detection["difference"] == pytest.approx(0.4) and detection["ci_low"] > 0
    assert (micro["difference"], micro["ci_low"], micro["ci_high"], micro["p_value"]) == (0.0, 0.0, 0.0, 1.0)
    samples = rows.loc[("rtdetr-l", "test_occ_fixed", "ingredient_samples_f1", "primary", "S2_occ_train",
                        "S1_clean_train")]
    assert samples["difference"] == pytest.approx((15 - 8) / N_IMAGES)       # mean per-image F1 (0 or 1)
    summary = built.summary.set_index(["model", "session", "split"])
    assert summary.loc[("yolov8m", "S1_clean_train", "test_clean"), "detection_f1"] == pytest.approx(0.6)


def test_findings_say_when_metrics_disagree(built: report.ReportResult) -> None:
    text = (built.root / "report.md").read_text()
    assert ("- **yolov8m**: metrics disagree on S2 vs S1 (test_clean): detection F1 +0.400 [+0.200, +0.600] shows a "
            "difference; ingredient micro F1 +0.000 [+0.000, +0.000] and ingredient samples F1 +0.000 [+0.000, +0.000] "
            "do not; mAP50 +0.010, mAP50-95 +0.010 (point estimates, no CI: not decidable).") in text
    assert "- **yolov8m**: metrics disagree on S2 vs S1 (test_occ_fixed): ingredient micro F1 +0.222 [" in text
    assert "show a difference; detection F1 +0.000 [" in text
    assert "- **rtdetr-l**: metrics agree on S2 vs S1 (test_occ_fixed): each metric shows a difference (" in text
    assert "- **rtdetr-l**: metrics agree on S2 vs S1 (test_clean): no metric shows a difference (" in text
    assert "**rtdetr-l**: metrics agree on S5 vs S1 (test_occ_fixed)" in text          # best masking vs S1, S2
    assert "**rtdetr-l**: metrics agree on S5 vs S2 (test_occ_fixed)" in text
    assert "## S2 vs S1 on test_clean, every metric" in text and f"| {NO_MAP_INTERVAL} |" in text


def test_val_chosen_threshold_columns_and_comparison(built: report.ReportResult) -> None:
    summary = built.summary.set_index(["model", "session", "split"])
    s1 = summary.loc[("rtdetr-l", "S1_clean_train", "test_occ_fixed")]
    s2 = summary.loc[("rtdetr-l", "S2_occ_train", "test_occ_fixed")]
    assert (s1["conf_val"], s2["conf_val"]) == (0.1, 0.5)
    assert s1["ingredient_micro_f1_at_val"] == pytest.approx(expected_f1(8 + 7))          # the weak hits count
    assert s1["ingredient_samples_f1_at_val"] == pytest.approx(15 / N_IMAGES)
    assert s1["detection_f1_at_val"] == pytest.approx(expected_f1(15))
    assert s1["ingredient_micro_f1"] == pytest.approx(expected_f1(8))                    # primary unchanged
    rows = built.comparisons.set_index(["model", "split", "metric", "threshold", "session", "reference"])
    at_val = rows.loc[("rtdetr-l", "test_occ_fixed", "ingredient_micro_f1", "val", "S2_occ_train", "S1_clean_train")]
    assert (at_val["conf"], at_val["reference_conf"]) == (0.5, 0.1)                    # each session's own
    assert (at_val["difference"], at_val["p_value"]) == (0.0, 1.0)
    text = (built.root / "report.md").read_text()
    assert ("**rtdetr-l**: at each session's val-chosen threshold (S2 0.50, S1 0.10), S2 vs S1 on test_occ_fixed: "
            "ingredient micro F1 +0.000 [+0.000, +0.000]") in text
    assert "the threshold changes the conclusion" in text
    assert "### test_occ_fixed at the val-chosen threshold" in text
    assert "the recording floor" not in text                                              # 0.10 and 0.50: above it


def test_val_chosen_threshold_at_the_search_floor_is_named() -> None:
    """A val-chosen threshold at the lowest candidate (0.01, below which nothing is recorded) is an upper bound on
    the best one: the sentence names the sessions there (every seed's threshold), and only those."""
    from exp3.report.findings import floor_note

    assert floor_note([("yolov8n S1", 0.1), ("yolov8n S2", 0.5), ("yolov8n S3", float("nan"))]) == ""
    note = floor_note([("yolov8n S1", 0.01), ("yolov8n S2", 0.02), ("yolov8n S3", 0.01 + 1e-12)])
    assert note.startswith("yolov8n S1 and yolov8n S3: val F1 is highest at the lowest candidate threshold (0.01")
    assert "yolov8n S2" not in note


def _strict_loads(text: str) -> object:
    def refuse(constant: str) -> None:
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def test_every_report_json_is_strict(built: report.ReportResult) -> None:
    written = [path for path in built.files if path.suffix == ".json"]
    assert {path.name for path in written} == {"summary_metrics.json", "summary_by_seed.json", "comparisons.json",
                                               "gap_closed.json"}
    for path in written:
        rows = _strict_loads(path.read_text())
        assert isinstance(rows, list) and rows, path
    summary = _strict_loads((built.root / "summary_metrics.json").read_text())
    missing = next(row for row in summary if row["status"] == "missing")
    assert missing["ingredient_micro_f1"] is None                                      # NaN -> null


def test_an_undefined_robustness_ratio_is_null_not_a_number(tmp_path: Path) -> None:
    """A session with clean F1 0 has no rF1: NaN in the tables, null in every JSON file, the report still built."""
    for suffix, hits in (("S1_clean_train", (20, 10)), ("S2_occ_train", (20, 16)), ("S3_mask_backbone_early", (0, 0))):
        write_done_session(tmp_path / "yolov8m" / f"yolov8m__{suffix}", "yolov8m", suffix, hits)
    result = report.build_report(tmp_path, n_resamples=50, n_permutations=100, charts=False)
    done = result.summary[result.summary["status"] == "done"]
    assert done[done["session"] == "S3_mask_backbone_early"]["rF1_micro"].isna().all()   # clean F1 0: undefined
    assert done[done["session"] == "S1_clean_train"]["rF1_micro"].notna().all()
    assert "**yolov8m**: metrics" in (tmp_path / "report.md").read_text()
    for path in result.files:
        if path.suffix == ".json":
            _strict_loads(path.read_text())
    rows = _strict_loads((tmp_path / "summary_metrics.json").read_text())
    assert any(row["rF1_micro"] is None for row in rows if row["session"] == "S3_mask_backbone_early")


def test_map_gets_a_paired_interval_and_the_positive_control_a_verdict(tmp_path: Path) -> None:
    """With map_stats files, mAP differences get bootstrap intervals; the report's positive control says
    which metrics detect S2 > S1 on test_occ_fixed (here every metric: S2 hits 16 of 20 images, S1 8)."""
    hits = {"S1_clean_train": (20, 8), "S2_occ_train": (20, 16), "S3_mask_backbone_early": (20, 8)}
    for suffix, pair in hits.items():
        write_done_session(tmp_path / "yolov8n" / f"yolov8n__{suffix}", "yolov8n", suffix, pair, with_map_stats=True)
    built = report.build_report(tmp_path, models=["yolov8n"], n_resamples=300, n_permutations=500, charts=False)
    rows = built.comparisons.set_index(["split", "metric", "threshold", "session", "reference"])
    s2 = rows.loc[("test_occ_fixed", "map50", "primary", "S2_occ_train", "S1_clean_train")]
    # one class per image, one box on the object per hit, no false positives: AP of class c = hit share of c
    assert s2["difference"] == pytest.approx((16 - 8) / 20) and 0 < s2["ci_low"] < s2["difference"] < s2["ci_high"]
    assert math.isnan(s2["p_value"]) and s2["bh_family"] == ""
    same = rows.loc[("test_occ_fixed", "map50_95", "primary", "S3_mask_backbone_early", "S1_clean_train")]
    assert (same["difference"], same["ci_low"], same["ci_high"]) == (0.0, 0.0, 0.0)      # identical predictions
    table, verdict = positive_control(built.comparisons, "yolov8n")
    assert len(table) == len(POSITIVE_CONTROL_ROWS)
    f1 = rows.loc[("test_occ_fixed", "ingredient_micro_f1", "primary", "S2_occ_train", "S1_clean_train")]
    assert table.loc[0, "p_BH"] == fmt_p(f1["p_bh"]) != "n/a" and table.loc[len(table) - 1, "p_BH"] == "n/a"  # mAP
    assert verdict.startswith("**yolov8n** positive control (S2 vs S1 on test_occ_fixed): detect the effect: "
                              "ingredient micro F1 @0.25, ingredient micro F1 @val")
    assert "mAP50, mAP50-95; do not: none." in verdict
    text = (tmp_path / "report.md").read_text()
    assert "## Positive control: can this run detect a known effect?" in text and f"- {verdict}" in text
    assert "docs/what-metrics-detect.md" in text
    # a map_stats file that is not the one behind metrics.json's mAP (here S2's copied into S3) gives no interval
    s3 = tmp_path / "yolov8n" / "yolov8n__S3_mask_backbone_early"
    (s3 / "map_stats_test_occ_fixed.npz").write_bytes(
        (tmp_path / "yolov8n" / "yolov8n__S2_occ_train" / "map_stats_test_occ_fixed.npz").read_bytes())
    swapped = report.build_report(tmp_path, models=["yolov8n"], n_resamples=50, n_permutations=50, charts=False)
    row = swapped.comparisons.set_index(["split", "metric", "threshold", "session", "reference"]).loc[
        ("test_occ_fixed", "map50", "primary", "S3_mask_backbone_early", "S1_clean_train")]
    assert row["difference"] == 0.0 and math.isnan(row["ci_low"]) and math.isnan(row["ci_high"])
    alone = report.build_report(tmp_path, models=["yolov8n", "yolov8m"], n_resamples=50, n_permutations=50,
                                charts=False)
    assert "yolov8m" in set(alone.comparisons["model"])                     # listed, with no session folder
    assert positive_control(alone.comparisons, "yolov8m")[1] == (
        "**yolov8m**: positive control not available (S2 and S1 must both be done on test_occ_fixed, with per-image "
        "values of the same images).")


def test_sessions_outside_the_run_are_not_in_run_not_missing(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    run = ["S1_clean_train", "S2_occ_train"]                     # a config with `sessions: [S1, S2]`
    for suffix, hits in zip(run, ((20, 10), (20, 16))):
        write_done_session(tmp_path / "yolov8m" / f"yolov8m__{suffix}", "yolov8m", suffix, hits)
    result = report.build_report(tmp_path, models=["yolov8m"], sessions=run, charts=False, n_resamples=50,
                                 n_permutations=50)
    assert set(result.summary["session"]) == set(run) and set(result.summary["status"]) == {"done"}
    assert set(result.by_seed["session"]) == set(run) and set(result.comparisons["session"]) <= set(run)
    grid = status_grid(result.summary, result.models, result.sessions).iloc[0]
    assert [grid[SESSION_LABELS[suffix]] for suffix in SESSION_SUFFIXES] == ["done", "done", *["not in run"] * 4]
    text = (tmp_path / "report.md").read_text()
    assert "missing" not in text and "partial grid" not in text and "## Sessions not done" not in text
    assert "not in run" in text
    assert report.main(["--root", str(tmp_path), "--models", "yolov8m", "--sessions", *run, "--no-charts",
                        "--resamples", "50"]) == 0
    assert capsys.readouterr().out.startswith("report: 1 model(s), sessions 2 done ->")
    assert report.main(["--root", str(tmp_path), "--sessions", "S9_other"]) == 2
    assert "unknown session 'S9_other'" in capsys.readouterr().err


def test_dashboard_markdown_carries_the_numbers(built: report.ReportResult) -> None:
    """The Prefect UI's results artifact: verdicts, findings and the occluded table, with numbers."""
    text = dashboard_markdown(built)
    assert text.startswith("# exp3 results") and str(built.root / "report.md") in text
    assert "- **rtdetr-l** positive control (S2 vs S1 on test_occ_fixed): detect the effect:" in text
    for finding in headline_findings(built.summary, built.models, built.comparisons):
        assert f"- {finding}" in text
    s2 = built.summary.set_index(["model", "session", "split"]).loc[("rtdetr-l", "S2_occ_train", "test_occ_fixed")]
    assert f"| {s2['ingredient_micro_f1']:.3f} [" in text


def test_an_all_zero_grid_names_no_best_masking_site(tmp_path: Path) -> None:
    """Seen in the Prefect UI after a short smoke: 'best masking site ... F1 0.000 [0.000, 0.000]'."""
    for suffix in ("S1_clean_train", "S3_mask_backbone_early", "S4_mask_backbone_late"):
        write_done_session(tmp_path / "yolov8m" / f"yolov8m__{suffix}", "yolov8m", suffix, (0, 0))
    result = report.build_report(tmp_path, models=["yolov8m"], n_resamples=200, n_permutations=200, charts=False)
    text = (tmp_path / "report.md").read_text()
    assert "best masking site on" not in text
    assert ("no masking session names any ingredient on test_occ_fixed (F1 0 for S3 mask backbone-early, "
            "S4 mask backbone-late): no best masking site.") in text
    assert "no best masking site" in dashboard_markdown(result)


def test_missing_f1s_are_said_missing_not_0() -> None:
    """Masking sessions with no F1 on test_occ_fixed (NaN) read 'F1 0 for S3, S4', and no rF1 'clean F1 is 0'."""
    rows = [{"model": "yolov8m", "session": suffix, "split": "test_occ_fixed", "status": "done", "n_seeds_done": 1,
             "n_seeds": 1, "ingredient_micro_f1": f1, "rF1_micro": math.nan, "diff_vs_S1": math.nan,
             "diff_vs_S2": math.nan}
            for suffix, f1 in (("S1_clean_train", 0.4), ("S3_mask_backbone_early", math.nan),
                               ("S4_mask_backbone_late", math.nan))]
    findings = headline_findings(pd.DataFrame(rows), ["yolov8m"], pd.DataFrame(
        columns=["model", "split", "session", "reference", "threshold", "difference", "metric"]))
    assert "**yolov8m**: no masking session has an F1 on test_occ_fixed (missing): no best masking site." in findings
    assert "**yolov8m**: rF1 is undefined for every done session (clean F1 is 0 or missing)." in findings
    assert not any("F1 0 for" in finding for finding in findings)


def add_suite(root: Path) -> Path:
    """A suite manifest for the fixture tree (images 0-9 covered 0.15, 10-19 covered 0.65) recorded in every done
    session's metrics.json `data` (DONE rewritten to match), as prepare_data records it."""
    suite = root / "suites" / "occ-fixture"
    images = [{"id": f"img_{index:03d}", "boxes": [{"class_id": index % len(CLASS_NAMES), "xyxy": [10, 10, 50, 50],
                                                    "covered_fraction": 0.15 if index < 10 else 0.65}]}
              for index in range(N_IMAGES)]
    manifest = atomic_write_json(suite / "manifest.json", {"kind": "test_suite", "images": images})
    for done in root.glob("*/*/DONE"):
        metrics_path = done.parent / "metrics.json"
        metrics = json.loads(metrics_path.read_text())
        metrics["data"] = {"suite_dir": str(suite), "suite_id": suite.name,
                           "suite_manifest_sha256": sha256_file(manifest)}
        for predictions in done.parent.glob("predictions_*.json"):
            atomic_write_json(predictions, {**json.loads(predictions.read_text()), "suite_id": suite.name})
        atomic_write_json(metrics_path, metrics)
        atomic_write_json(done, {**json.loads(done.read_text()), "metrics_sha256": sha256_file(metrics_path)})
    return suite


def test_recall_by_covered_fraction_section_and_chart(tmp_path: Path) -> None:
    """yolov8m on test_occ_fixed: S1 finds images 0-9 (bin [0.1, 0.2)), S2 images 0-15 but misplaces the boxes of
    0-3 (named, not detected: detection 6/10, ingredient 10/10 in that bin), S3 0-11, S6 0-9."""
    root = build_fixture_tree(tmp_path)
    add_suite(root)
    result = report.build_report(root, n_resamples=200, n_permutations=200)
    text = (root / "report.md").read_text()
    section = text.split("## Recall by covered fraction", 1)[1].split("\n## ", 1)[0]
    yolo = section.split("### yolov8m", 1)[1].split("### rtdetr-l", 1)[0]
    detection, ingredient = yolo.split("Ingredient: ", 1)
    assert "| covered fraction | boxes | S1 clean | S2 occluded-train | S3 mask backbone-early | S6 mask head |" in yolo
    assert "| [0.1, 0.2) | 10 | 1.00 [1.00, 1.00] | 0.60 [" in detection
    assert "| [0.1, 0.2) | 10 | 1.00 [1.00, 1.00] | 1.00 [1.00, 1.00] | 1.00 [1.00, 1.00] | 1.00 [1.00, 1.00] |" \
        in ingredient
    assert "| [0.6, 0.7) | 10 | 0.00 [0.00, 0.00] | 0.60 [" in ingredient
    assert "Left out" not in section
    s2 = next(curve for curve in result.coverage.curves if (curve.model, curve.session, curve.threshold)
              == ("yolov8m", "S2_occ_train", "primary"))
    assert [(item.n_found, item.n_boxes) for item in s2.level("detection") if item.n_boxes] == [(6, 10), (6, 10)]
    for model in MODELS:
        assert (root / "plots" / f"recall_by_coverage_{model}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"plots/recall_by_coverage_{model}.png" in text
    boxes = pd.read_csv(root / "recall_by_coverage_boxes.csv")
    assert len(boxes) == N_IMAGES * 2 * 10          # images x thresholds x done sessions


def test_a_class_absent_from_a_split_has_no_per_class_f1(tmp_path: Path) -> None:
    """A class with no box in the split and never predicted there: metrics.json keeps its empty-set F1 of 1 with
    `present: false` (left out of the macro average); per_class_f1.csv and the heatmap show no F1 for it, not a
    perfect 1.00 beside another session's 0.00 for one false alarm."""
    from exp3.report.tables import per_class_table

    folder = tmp_path / "yolov8m" / "yolov8m__S1_clean_train"
    metrics = write_done_session(folder, "yolov8m", "S1_clean_train", (20, 10))
    absent = metrics["splits"]["test_clean"]["per_class"][3]
    absent.update(present=False, support=0, predicted=0, tp=0, precision=1.0, recall=1.0, f1=1.0)
    path = atomic_write_json(folder / "metrics.json", metrics)
    atomic_write_json(folder / "DONE", {"session": folder.name, "metrics_sha256": sha256_file(path)})
    table = per_class_table([load_session_run(folder, "yolov8m", "S1_clean_train", None)])
    clean = table[table["split"] == "test_clean"].set_index("class_id")["f1"]
    assert math.isnan(clean[3]) and clean[0] == pytest.approx(1.0)          # class 0: found in all its images
    assert not table[table["split"] == "test_occ_fixed"]["f1"].isna().any()
    seeded = tmp_path / "seeds" / "yolov8m"            # a second seed that predicted class 3 once: F1 0 there
    runs = []
    for seed, present in ((0, False), (1, True)):
        folder = seeded / Session("yolov8m", "S1_clean_train", seed).name
        metrics = write_done_session(folder, "yolov8m", "S1_clean_train", (20, 10))
        metrics["splits"]["test_clean"]["per_class"][3].update(present=present, support=0, f1=0.0 if present else 1.0)
        path = atomic_write_json(folder / "metrics.json", metrics)
        atomic_write_json(folder / "DONE", {"session": folder.name, "metrics_sha256": sha256_file(path)})
        runs.append(load_session_run(folder, "yolov8m", "S1_clean_train", seed))
    pooled = per_class_table(runs).set_index(["split", "class_id"]).loc[("test_clean", 3)]
    assert math.isnan(pooled["f1"]) and pooled["n_seeds"] == 2       # was 0.0: seed 1's F1 as the two seeds' mean


def test_the_most_robust_session_is_named_as_a_ranking_only_when_the_intervals_separate(
        built: report.ReportResult) -> None:
    """docs/report.md: overlapping per-session intervals are 'ranking not established'. The rF1 finding says so when
    the top session's interval reaches the runner-up's, as the best-masking-site finding does."""
    occ = built.summary[built.summary["split"] == "test_occ_fixed"]
    findings = headline_findings(built.summary, built.models, built.comparisons)
    overlapping = []
    for model in built.models:
        ranked = occ[occ["model"] == model].dropna(subset=["rF1_micro"]).sort_values("rF1_micro", ascending=False)
        top, second = ranked.iloc[0], ranked.iloc[1]
        overlaps = top["rF1_micro_ci_low"] <= second["rF1_micro_ci_high"]
        overlapping.append(overlaps)
        (finding,) = [text for text in findings if text.startswith(f"**{model}**: most robust session")]
        assert ("the ranking is not established" in finding) == overlaps, finding
        assert not overlaps or SESSION_LABELS[second["session"]] in finding
    assert any(overlapping)                                      # the fixture holds the case this test is about


def test_zero_is_never_negative_and_a_tiny_value_keeps_its_side() -> None:
    """-0.0 printed "-0.000"; an interval's bound of -0.0002 keeps its sign ("-0.016, -0.000": it lies below 0)."""
    assert fmt(-0.0, signed=True) == "+0.000" and fmt(-0.0) == "0.000" and fmt(-0.0002, signed=True) == "-0.000"
    assert fmt(-0.0006, signed=True) == "-0.001" and fmt(0.12345) == "0.123" and fmt(float("nan")) == "n/a"
