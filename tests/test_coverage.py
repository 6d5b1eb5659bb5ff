"""exp3.report.coverage: recall by covered fraction, recomputed by hand on a tiny suite.

The hand case (conf 0.25, match IoU 0.5, 10 bins):

    image a: class 0 [0,0,10,10] cf 0.05, detected             -> bin 0: found (detection, ingredient)
             class 0 [20,20,30,30] cf 0.45, no box on it        -> bin 4: missed (detection), found (ingredient:
                                                                   class 0 is named in image a)
             class 1 [40,40,50,50] cf 0.85, no class-1 detection -> bin 8: missed at both levels
    image b: class 1 [0,0,10,10] cf 0.42, detected at 0.9      -> bin 4: found at both levels
             class 2 [20,20,20,30] zero area, cf None           -> left out, counted
             a class-2 detection at conf 0.2 (< 0.25)           -> names nothing
    image c: no prediction at all
             class 0 [0,0,10,10] cf 0.3 (exactly an edge)       -> bin 3: missed
             class 0 [20,20,30,30] cf 0.9                       -> bin 9 ([0.9, 1.0] closed): missed

So detection recall is bin 0: 1/1, bin 3: 0/1, bin 4: 1/2, bin 8: 0/1, bin 9: 0/1, and ingredient recall
is the same except bin 4: 2/2.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
import pytest
from conftest import records_to_json
from sklearn.metrics import recall_score

from exp3.evaluate import stats
from exp3.evaluate.metrics import ImageRecord, detection_prf, matched_gt
from exp3.fileio import atomic_write_json, sha256_file
from exp3.report import coverage
from exp3.report.coverage import CoverageError, ManifestBox
from exp3.report.draws import ReportData

NUM_CLASSES = 3


def hand_records() -> list[ImageRecord]:
    return [
        ImageRecord("a", [0, 0, 1], [[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]],
                    pred_classes=[0], pred_boxes=[[0, 0, 10, 10]], pred_conf=[0.8]),
        ImageRecord("b", [1, 2], [[0, 0, 10, 10], [20, 20, 20, 30]],
                    pred_classes=[1, 2], pred_boxes=[[1, 0, 10, 10], [20, 20, 21, 30]], pred_conf=[0.9, 0.2]),
        ImageRecord("c", [0, 0], [[0, 0, 10, 10], [20, 20, 30, 30]], [], [], []),
    ]


def hand_manifest_images() -> list[dict]:
    def box(class_id: int, xyxy: list[float], covered: float | None) -> dict:
        return {"class_id": class_id, "xyxy": xyxy, "target_coverage": covered, "covered_fraction": covered}

    return [{"id": "a", "boxes": [box(0, [0, 0, 10, 10], 0.05), box(0, [20, 20, 30, 30], 0.45),
                                  box(1, [40, 40, 50, 50], 0.85)]},
            {"id": "b", "boxes": [box(1, [0, 0, 10, 10], 0.42), box(2, [20, 20, 20, 30], None)]},
            {"id": "c", "boxes": [box(0, [0, 0, 10, 10], 0.3), box(0, [20, 20, 30, 30], 0.9)]}]


def hand_manifest() -> dict[str, list[ManifestBox]]:
    return {image["id"]: [ManifestBox(entry["class_id"], tuple(entry["xyxy"]), entry["covered_fraction"])
                          for entry in image["boxes"]] for image in hand_manifest_images()}


def table(records: list[ImageRecord], manifest: dict[str, list[ManifestBox]], num_classes: int = NUM_CLASSES,
          conf: float = 0.25) -> pd.DataFrame:
    aligned = coverage.align_split(records, manifest, "test_occ_fixed")
    return coverage.box_table(records, aligned, num_classes, conf, "test_occ_fixed",
                              [matched_gt(record, conf, 0.5) for record in records])


def weights(frame: pd.DataFrame, n_resamples: int, seed: int = stats.DEFAULT_SEED) -> np.ndarray:
    """The report's draws over `frame`'s images (`ReportData.image_weights`)."""
    return stats.image_multiplicities(frame["image_id"].nunique(), n_resamples, seed)


def hand_table(conf: float = 0.25) -> pd.DataFrame:
    return table(hand_records(), hand_manifest(), conf=conf)


def by_bin(bins: Iterable[Any]) -> dict[int, tuple[int, int]]:
    """Bin -> (found, boxes) of the non-empty bins of `SessionCurve.level` or `bin_recalls(...).itertuples()`."""
    return {item.bin: (item.n_found, item.n_boxes) for item in bins if item.n_boxes}


def test_bins_have_exact_decimal_edges_and_a_closed_last_bin() -> None:
    assert coverage.BIN_EDGES[3] == 0.3
    assert coverage.assign_bins(np.array([0.0, 0.0999, 0.1, 0.3, 0.45, 0.9, 0.95, 1.0])).tolist() == \
        [0, 0, 1, 3, 4, 9, 9, 9]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        coverage.assign_bins(np.array([1.2]))


def test_hand_case_bin_recalls_at_both_levels() -> None:
    aligned = coverage.align_split(hand_records(), hand_manifest(), "test_occ_fixed")
    assert sum(excluded for _, excluded in aligned) == 1
    frame = hand_table()
    assert len(frame) == 6
    detection = coverage.bin_recalls(frame, "detection", weights(frame, 200))
    ingredient = coverage.bin_recalls(frame, "ingredient", weights(frame, 200))
    assert by_bin(detection.itertuples()) == {0: (1, 1), 3: (0, 1), 4: (1, 2), 8: (0, 1), 9: (0, 1)}
    assert by_bin(ingredient.itertuples()) == {0: (1, 1), 3: (0, 1), 4: (2, 2), 8: (0, 1), 9: (0, 1)}
    assert detection.loc[4, "recall"] == 0.5 and ingredient.loc[4, "recall"] == 1.0
    assert detection.loc[4, "n_images"] == 2 and detection.loc[4, "ci_low"] <= 0.5 <= detection.loc[4, "ci_high"]
    empty = detection.loc[5]
    assert math.isnan(empty["recall"]) and empty["n_boxes"] == 0 and math.isnan(empty["ci_low"])
    # below the threshold the class-2 detection would name class 2, but class 2's only box has no coverage
    assert len(hand_table(conf=0.1)) == 6


def test_crowded_image_detection_is_one_to_one_ingredient_is_per_class() -> None:
    """Three boxes of one class, one detection: one box is detected, all three have their class named."""
    record = ImageRecord("crowd", [0, 0, 0], [[0, 0, 10, 10], [0, 0, 10, 10], [30, 30, 40, 40]],
                         pred_classes=[0], pred_boxes=[[0, 0, 10, 10]], pred_conf=[0.9])
    manifest = {"crowd": [ManifestBox(0, (0, 0, 10, 10), 0.1), ManifestBox(0, (0, 0, 10, 10), 0.1),
                          ManifestBox(0, (30, 30, 40, 40), 0.7)]}
    frame = table([record], manifest, 1)
    assert frame["found_detection"].sum() == 1 and frame["found_ingredient"].all()


def test_a_class_named_only_below_the_threshold_leaves_its_boxes_unfound() -> None:
    """A box's class counts as named at the table's `conf` only: a class-0 detection away from the box (no match) at
    conf 0.2 names class 0 at conf 0.1, not at 0.25; the detection level finds the box at neither."""
    record = ImageRecord("x", [0, 1], [[0, 0, 10, 10], [40, 40, 50, 50]],
                         pred_classes=[0, 1], pred_boxes=[[80, 80, 90, 90], [40, 40, 50, 50]], pred_conf=[0.2, 0.9])
    manifest = {"x": [ManifestBox(0, (0, 0, 10, 10), 0.5), ManifestBox(1, (40, 40, 50, 50), 0.3)]}
    for conf, named in ((0.25, [False, True]), (0.1, [True, True]), (0.2, [False, True])):
        frame = table([record], manifest, 2, conf)
        assert frame["found_ingredient"].tolist() == named, conf
        assert frame["found_detection"].tolist() == [False, True] and (frame["conf"] == conf).all()


def test_independent_check_with_sklearn_and_detection_prf() -> None:
    """Random images: per-bin recall equals sklearn's recall_score on the flattened boxes of the bin, and the
    detection found-rate over all boxes equals exp3.evaluate.metrics.detection_prf's recall (the same matcher)."""
    rng = np.random.default_rng(3)
    records, manifest = [], {}
    for index in range(40):
        count = int(rng.integers(0, 6))
        xy = rng.uniform(0, 200, (count, 2))
        gt = np.concatenate([xy, xy + rng.uniform(10, 60, (count, 2))], axis=1).round(2)
        classes = rng.integers(0, 4, count)
        keep = rng.random(count) < 0.6
        jitter = rng.uniform(-8, 8, (int(keep.sum()), 4))
        extra = int(rng.integers(0, 3))
        extra_xy = rng.uniform(0, 200, (extra, 2))
        pred_boxes = np.concatenate([gt[keep] + jitter, np.concatenate([extra_xy, extra_xy + 20], axis=1)])
        pred_boxes[:, 2:] = np.maximum(pred_boxes[:, 2:], pred_boxes[:, :2])
        pred_classes = np.concatenate([classes[keep], rng.integers(0, 4, extra)])
        records.append(ImageRecord(f"im{index:02d}", classes, gt.reshape(-1, 4), pred_classes, pred_boxes,
                                   rng.uniform(0.05, 1.0, len(pred_boxes))))
        manifest[f"im{index:02d}"] = [ManifestBox(int(c), tuple(b), float(rng.uniform(0, 0.9)))
                                      for c, b in zip(classes, gt.tolist())]
    frame = table(records, manifest, 4, 0.3)
    assert frame["found_detection"].mean() == pytest.approx(detection_prf(records, 0.3, 0.5)["recall"])
    by_id = {record.image_id: record for record in records}
    named = [bool(((by_id[row.image_id].pred_classes == row.class_id) & (by_id[row.image_id].pred_conf > 0.3)).any())
             for row in frame.itertuples()]
    assert frame["found_ingredient"].tolist() == named and 0 < sum(named) < len(named)
    bins = coverage.assign_bins(frame["covered_fraction"].to_numpy())
    for level in coverage.LEVELS:
        for item in coverage.bin_recalls(frame, level, weights(frame, 100)).itertuples():
            inside = bins == item.bin
            if not inside.any():
                assert item.n_boxes == 0
                continue
            found = frame[f"found_{level}"].to_numpy()[inside]
            assert item.recall == pytest.approx(recall_score(np.ones(len(found), int), found.astype(int)))


def test_clustered_bootstrap_contains_the_estimate_is_seeded_and_resamples_images() -> None:
    rows = [("one", 0.55, True), ("one", 0.55, True), ("one", 0.55, False)]     # one image, 3 boxes in bin 5
    rows += [(f"im{index}", 0.15, index % 3 == 0) for index in range(30)]       # 30 images, 1 box each, bin 1
    frame = pd.DataFrame(rows, columns=["image_id", "covered_fraction", "found_detection"])
    def intervals(seed: int) -> list[tuple[float, float]]:
        bins = coverage.bin_recalls(frame, "detection", weights(frame, 500, seed))
        return [(item.ci_low, item.ci_high) for item in bins.itertuples() if item.n_boxes]

    first = coverage.bin_recalls(frame, "detection", weights(frame, 500, 7))
    assert intervals(7) == intervals(7) != intervals(8)
    for item in (first.loc[1], first.loc[5]):
        assert item["ci_low"] <= item["recall"] <= item["ci_high"]
    # boxes of one image move together: every draw that has bin 5 has all three boxes, recall 2/3 exactly
    assert first.loc[5, "ci_low"] == first.loc[5, "ci_high"] == pytest.approx(2 / 3)
    assert first.loc[1, "ci_low"] < first.loc[1, "recall"] < first.loc[1, "ci_high"]


def test_disagreeing_inputs_are_refused_with_one_line() -> None:
    records = hand_records()
    manifest = hand_manifest()
    with pytest.raises(CoverageError, match=r"disagree on image ids \(1 only in the predictions.*'c'"):
        coverage.align_split(records, {key: manifest[key] for key in ("a", "b")}, "x")
    moved = dict(manifest, c=[ManifestBox(0, (0, 0, 10, 10), 0.3), ManifestBox(0, (100, 100, 110, 110), 0.9)])
    with pytest.raises(CoverageError, match=r"x, image 'c': ground-truth box 1 .* has no box in the suite manifest"):
        coverage.align_split(records, moved, "x")
    extra = dict(manifest, c=manifest["c"] + [ManifestBox(1, (60, 60, 70, 70), 0.2)])
    with pytest.raises(CoverageError, match=r"manifest box 2 .* is missing from the predictions' ground truth"):
        coverage.align_split(records, extra, "x")
    duplicated = dict(manifest, c=manifest["c"] + [manifest["c"][0]])      # a label row the validator dropped
    assert len(table(records, duplicated)) == 6


# ----------------------------------------------------------------------------- session folders, chart, PNG

SESSIONS = {"S1_clean_train": 0.25, "S2_occ_train": 0.25, "S5_mask_neck": 0.25}


def write_suite(root: Path, images: list[dict]) -> Path:
    suite = root / "suites" / "occ-000000000000"
    atomic_write_json(suite / "manifest.json", {"kind": "test_suite", "images": images})
    return suite


def write_session(root: Path, suffix: str, records: list[ImageRecord], suite: Path, split: str = "test_occ_fixed",
                  manifest_sha: str | None = None) -> object:
    from exp3.report.runs import SessionRun

    folder = root / "yolov8m" / f"yolov8m__{suffix}"
    atomic_write_json(folder / f"predictions_{split}.json",
                      {"suite_id": suite.name, "images": records_to_json(records)})
    metrics = {"eval": {"conf": 0.25, "match_iou": 0.5},
               "splits": {split: {"conf": 0.25, "match_iou": 0.5, "num_classes": NUM_CLASSES,
                                  "at_val_threshold": {"conf": 0.1}}},
               "data": {"suite_dir": str(suite), "suite_id": suite.name,
                        "suite_manifest_sha256": manifest_sha or sha256_file(suite / "manifest.json")}}
    return SessionRun("yolov8m", suffix, None, folder, "done", None, metrics)


def session_records(suffix: str) -> list[ImageRecord]:
    """The hand records; S2 also finds image c's first box, S5 finds nothing."""
    records = hand_records()
    if suffix == "S2_occ_train":
        records[2] = ImageRecord("c", [0, 0], [[0, 0, 10, 10], [20, 20, 30, 30]], [0], [[0, 0, 10, 10]], [0.7])
    if suffix == "S5_mask_neck":
        records = [ImageRecord(r.image_id, r.gt_classes, r.gt_boxes, [], [], []) for r in records]
    return records


@pytest.fixture()
def report_of_sessions(tmp_path: Path) -> coverage.CoverageReport:
    suite = write_suite(tmp_path, hand_manifest_images())
    runs = [write_session(tmp_path, suffix, session_records(suffix), suite) for suffix in SESSIONS]
    return coverage.coverage_report(ReportData(runs, n_resamples=200))


def test_sessions_get_one_curve_per_threshold_and_a_box_table(report_of_sessions: coverage.CoverageReport) -> None:
    report = report_of_sessions
    assert report.problems == []
    assert {(curve.session, curve.threshold) for curve in report.curves} == \
        {(suffix, threshold) for suffix in SESSIONS for threshold in ("primary", "val")}
    s2 = next(c for c in report.curves if c.session == "S2_occ_train" and c.threshold == "primary")
    assert by_bin(s2.level("detection")) == {0: (1, 1), 3: (1, 1), 4: (1, 2), 8: (0, 1), 9: (0, 1)}
    assert s2.n_boxes == 6 and s2.n_images == 3 and s2.excluded_zero_area == 1
    assert len(report.boxes) == 6 * 2 * len(SESSIONS)
    val = report.boxes[(report.boxes["session"] == "S1_clean_train") & (report.boxes["threshold"] == "val")]
    assert set(val["conf"]) == {0.1}


def test_chart_has_one_line_per_session_and_renders_a_png(report_of_sessions: coverage.CoverageReport,
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from exp3.report.plots import coverage_recall_chart
    from exp3.sessions import SESSION_LABELS

    report = report_of_sessions
    monkeypatch.setattr(coverage, "MIN_BOXES_SHOWN", 1)      # the hand bins hold 1 or 2 boxes
    frame = coverage.chart_frame(report, "yolov8m")
    assert len(frame) == 2 * 2 * len(SESSIONS) * 5          # thresholds x levels x sessions x non-empty bins
    spec = coverage_recall_chart(frame, title="t").to_dict()
    rows = list(spec["datasets"].values())[0]
    for threshold in ("primary threshold", "each session's val-chosen threshold"):
        for level in coverage.LEVEL_LABELS.values():
            panel = [row for row in rows if row["threshold_label"] == threshold and row["level_label"] == level]
            assert sorted(row["session_label"] for row in panel if row["bin_text"] == panel[0]["bin_text"]) == \
                sorted(SESSION_LABELS[suffix] for suffix in SESSIONS)
    line = spec["spec"]["layer"][0]
    assert line["mark"]["type"] == "line" and line["encoding"]["color"]["field"] == "session_label"
    files = coverage.write_coverage_outputs(report, tmp_path / "out", ["yolov8m"])
    png = tmp_path / "out" / "plots" / "recall_by_coverage_yolov8m.png"
    assert png in files and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    boxes = pd.read_csv(tmp_path / "out" / "recall_by_coverage_boxes.csv")
    assert list(boxes.columns) == ["model", "session", "seed", "threshold", *coverage.BOX_COLUMNS]


def test_empty_bins_and_small_bins_are_not_drawn(report_of_sessions: coverage.CoverageReport) -> None:
    frame = coverage.chart_frame(report_of_sessions, "yolov8m")
    assert len(frame) == 0            # 10 bins of at most 2 boxes: below MIN_BOXES_SHOWN, nothing drawn as 0


def test_a_session_that_does_not_match_its_manifest_is_left_out_with_the_reason(tmp_path: Path) -> None:
    suite = write_suite(tmp_path, hand_manifest_images())
    good = write_session(tmp_path, "S1_clean_train", hand_records(), suite)
    stale = write_session(tmp_path, "S2_occ_train", hand_records(), suite, manifest_sha="0" * 64)
    old = write_session(tmp_path, "S3_mask_backbone_early", hand_records(), suite)
    old.metrics.pop("data")
    other = write_session(tmp_path, "S4_mask_backbone_late", hand_records(), suite)
    other.metrics["splits"]["test_occ_fixed"]["detection"] = {"tp": 999, "fp": 0, "fn": 0}  # not its file's counts
    report = coverage.coverage_report(ReportData([good, stale, old, other], n_resamples=50))
    assert {curve.session for curve in report.curves} == {"S1_clean_train"}
    reasons = {session: reason for _, session, reason in report.problems}
    assert "sha256 differs" in reasons["S2_occ_train"] and "data.suite_dir" in reasons["S3_mask_backbone_early"]
    assert "is not the file its metrics.json was computed from" in reasons["S4_mask_backbone_late"]
    text = "\n".join(coverage.coverage_markdown(report, ["yolov8m"]))
    assert "## Recall by covered fraction" in text and "yolov8m S2: " in text
    assert "| [0.4, 0.5) | 2 | 0.50 [" in text                 # detection, bin 4: 1 of 2


def test_several_occluded_splits_pool_with_images_as_clusters(tmp_path: Path) -> None:
    """A severity split read from the suite its evaluation record names: both splits' boxes in one curve. The same
    manifest moved elsewhere (manifest_paths) gives the same boxes; a manifest of other content, or predictions made
    on another suite than the evaluation record names, are refused."""
    suite = write_suite(tmp_path, hand_manifest_images())
    severe_images = json.loads(json.dumps(hand_manifest_images()))
    for image in severe_images:
        for box in image["boxes"]:
            box["covered_fraction"] = None if box["covered_fraction"] is None else 0.75
    severe = suite.parent / "occ-severe" / "manifest.json"
    atomic_write_json(severe, {"images": severe_images})
    run = write_session(tmp_path, "S1_clean_train", hand_records(), suite)
    atomic_write_json(run.folder / "predictions_test_occ_sev5.json", {"suite_id": "occ-severe",
                                                                      "images": records_to_json(hand_records())})
    run.metrics["splits"]["test_occ_sev5"] = run.metrics["splits"]["test_occ_fixed"]
    run.metrics["severity"] = {"evaluations": {"test_occ_sev5": {"suite_id": "occ-severe",
                                                                 "manifest_sha256": sha256_file(severe)}}}
    splits = ("test_occ_fixed", "test_occ_sev5")
    report = coverage.coverage_report(ReportData([run], n_resamples=50), splits=splits)
    curve = next(c for c in report.curves if c.threshold == "primary")
    assert by_bin(curve.level("detection"))[7] == (2, 6) and curve.n_boxes == 12 and curve.n_images == 3
    assert set(report.boxes["split"]) == {"test_occ_fixed", "test_occ_sev5"}
    moved, other = tmp_path / "moved" / "manifest.json", tmp_path / "other" / "manifest.json"
    atomic_write_json(moved, {"images": severe_images})
    atomic_write_json(other, {"images": hand_manifest_images()})
    again = coverage.coverage_report(ReportData([run], n_resamples=50), splits, {"test_occ_sev5": moved})
    pd.testing.assert_frame_equal(again.boxes, report.boxes)
    refused = coverage.coverage_report(ReportData([run], n_resamples=50), splits, {"test_occ_sev5": other})
    assert not refused.curves and "(sha256 differs)" in refused.problems[0][2] and str(other) in refused.problems[0][2]
    # the level re-evaluated on a new suite, metrics.json not yet rewritten (a kill mid-update): not joined
    atomic_write_json(run.folder / "predictions_test_occ_sev5.json", {"suite_id": "occ-newer",
                                                                      "images": records_to_json(hand_records())})
    newer = coverage.coverage_report(ReportData([run], n_resamples=50), splits)
    assert not newer.curves and "no predictions_test_occ_sev5.json of suite occ-severe" in newer.problems[0][2]
