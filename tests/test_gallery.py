"""plots/gallery_<model>.png (exp3.report.gallery) on the gap-closed fixture tree plus a suite of real image files.

test_gap's tree: image i has one GT box [10, 10, 50, 50] of class i % 4; a session names that class on the box for
images below its hit count and the next class elsewhere. yolov8m on test_occ_fixed: S1 40, S2 60, S3 50, S4 40
hits: per-image F1 S2 - S1 is 1 on images 40-59 (the smallest id wins the tie: img_040); S3 is the best masking
session and S3 - S1 is 1 on images 40-49, img_040 taken: img_041.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_gap import HITS, N, write_session

from exp3 import report
from exp3.fileio import atomic_write_json, sha256_file
from exp3.report import gallery
from exp3.report.draws import ReportData


def add_image_suite(root: Path) -> Path:
    """A suite folder with one 64 x 64 grey JPEG per image and a manifest naming them, recorded in every session."""
    suite = root / "suites" / "occ-gallery"
    (suite / "test_occ_fixed" / "images").mkdir(parents=True)
    entries = []
    for index in range(N):
        relative = f"test_occ_fixed/images/img_{index:03d}.jpg"
        Image.new("RGB", (64, 64), (90 + index, 90, 90)).save(suite / relative)
        entries.append({"id": f"img_{index:03d}", "occluded_image": relative})
    manifest = atomic_write_json(suite / "manifest.json", {"kind": "test_suite", "images": entries})
    for done in root.glob("*/*/DONE"):
        metrics_path = done.parent / "metrics.json"
        metrics = json.loads(metrics_path.read_text())
        metrics["data"] = {"suite_dir": str(suite), "suite_id": suite.name,
                           "suite_manifest_sha256": sha256_file(manifest)}
        for split in ("test_clean", "test_occ_fixed"):  # the files of a run name its fixed suite
            predictions = done.parent / f"predictions_{split}.json"
            atomic_write_json(predictions, {**json.loads(predictions.read_text()), "suite_id": suite.name})
        atomic_write_json(metrics_path, metrics)
        atomic_write_json(done, {**json.loads(done.read_text()), "metrics_sha256": sha256_file(metrics_path)})
    return suite


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> report.ReportResult:
    root = tmp_path_factory.mktemp("exp3-gallery")
    for model, sessions in HITS.items():
        for suffix, hits in sessions.items():
            write_session(root / model / f"{model}__{suffix}", model, suffix, hits)
    add_image_suite(root)
    return report.build_report(root, list(HITS), n_resamples=200, n_permutations=99, charts=True)


def test_rows_follow_the_rule(built: report.ReportResult) -> None:
    runs = report.scan_sessions(built.root, built.models, None, built.sessions)
    found = gallery.build_gallery(ReportData(runs), "yolov8m", built.summary)
    assert found is not None
    assert found.sessions == ("S1_clean_train", "S2_occ_train", "S3_mask_backbone_early")
    assert [row.image_id for row in found.rows[:2]] == ["img_040", "img_041"]
    randoms = [row.image_id for row in found.rows[2:]]
    assert len(randoms) == 2 and len(set(randoms)) == 2 and not {"img_040", "img_041"} & set(randoms)
    again = gallery.build_gallery(ReportData(runs), "yolov8m", built.summary)
    assert [row.image_id for row in again.rows] == [row.image_id for row in found.rows]     # seeded: reproducible
    first = found.rows[0]
    s1, s2, s3 = first.cells
    assert [box.matched for box in s1.boxes] == [False] and [box.matched for box in s2.boxes] == [True]
    assert s2.boxes[0].label == "tomato 0.90" and (s1.ingredient_f1, s2.ingredient_f1) == (0.0, 1.0)
    assert s3.boxes[0].matched                                    # img_040 < 50: S3 hits it too
    assert "largest per-image ingredient F1 difference S2 - S1" in found.caption


def test_no_best_masking_session_when_none_names_anything(built: report.ReportResult) -> None:
    """The smoke's F1 is 0 everywhere: the findings said "no best masking site" while the gallery showed S3 (first
    of a tie at 0) as the best and a row "2: largest S3 - S1"."""
    runs = report.scan_sessions(built.root, built.models, None, built.sessions)
    summary = built.summary.copy()
    masking = summary["session"].isin(["S3_mask_backbone_early", "S4_mask_backbone_late"])
    summary.loc[masking, "ingredient_micro_f1"] = 0.0
    found = gallery.build_gallery(ReportData(runs), "yolov8m", summary)
    assert found is not None and found.sessions[2] == "S3_mask_backbone_early"
    assert [row.reason.split(":")[0] for row in found.rows] == ["1", "3", "4"]
    assert found.caption.endswith("there is no best masking session; the third column is S3 mask backbone-early, "
                                  "the first in session order, and row 2 is left out.")


def test_gallery_png_shows_matched_green_and_unmatched_red(built: report.ReportResult) -> None:
    path = built.root / "plots" / "gallery_yolov8m.png"
    image = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert image.shape[0] > 4 * 300 and image.shape[1] > 4 * 300
    top = 46                                                       # first row: S1 column red, S2 column green
    columns = [170 + index * 308 for index in range(4)]
    s1 = image[top:top + 300, columns[1]:columns[1] + 300]
    s2 = image[top:top + 300, columns[2]:columns[2] + 300]
    red = (s1[..., 0] > 200) & (s1[..., 1] < 80) & (s1[..., 2] < 80)
    green = (s2[..., 1] > 180) & (s2[..., 0] < 60) & (s2[..., 2] < 100)
    assert red.sum() > 200 and green.sum() > 200
    assert ((s2[..., 0] > 200) & (s2[..., 1] < 80) & (s2[..., 2] < 80)).sum() == 0   # nothing unmatched in S2
    text = (built.root / "report.md").read_text()
    assert "![gallery_yolov8m](plots/gallery_yolov8m.png)" in text and gallery.GALLERY_RULE in text


def test_no_gallery_without_the_suite_files(tmp_path: Path) -> None:
    for suffix, hits in HITS["rtdetr-l"].items():
        write_session(tmp_path / "rtdetr-l" / f"rtdetr-l__{suffix}", "rtdetr-l", suffix, hits)
    result = report.build_report(tmp_path, ["rtdetr-l"], n_resamples=50, n_permutations=9, charts=False)
    runs = report.scan_sessions(tmp_path, ["rtdetr-l"], None, result.sessions)
    assert gallery.build_gallery(ReportData(runs), "rtdetr-l", result.summary) is None      # no data.suite_dir recorded


@pytest.mark.parametrize("damage", ["manifest", "predictions"])
def test_no_gallery_from_files_the_sessions_were_not_evaluated_on(tmp_path: Path, damage: str) -> None:
    """The suite's manifest changed since the sessions recorded its sha256 (other images under each id), or S2's
    test_occ_fixed file holds 55 of the 100 images: no gallery (never images or rows from other inputs), and
    report.md's warnings say why."""
    for suffix, hits in HITS["yolov8m"].items():
        write_session(tmp_path / "yolov8m" / f"yolov8m__{suffix}", "yolov8m", suffix, hits)
    suite = add_image_suite(tmp_path)
    if damage == "manifest":
        manifest = json.loads((suite / "manifest.json").read_text())
        images = [entry["occluded_image"] for entry in manifest["images"]]
        atomic_write_json(suite / "manifest.json", {**manifest, "images": [
            {**entry, "occluded_image": image} for entry, image in zip(manifest["images"], images[::-1])]})
    else:
        path = tmp_path / "yolov8m" / "yolov8m__S2_occ_train" / "predictions_test_occ_fixed.json"
        payload = json.loads(path.read_text())
        atomic_write_json(path, {**payload, "images": payload["images"][:55]})
    result = report.build_report(tmp_path, ["yolov8m"], n_resamples=50, n_permutations=9, charts=False)
    runs = report.scan_sessions(tmp_path, ["yolov8m"], None, result.sessions)
    data = ReportData(runs)
    assert gallery.build_gallery(data, "yolov8m", result.summary) is None
    reason = "(sha256 differs)" if damage == "manifest" else "S1, S2, S3 need per-image predictions on test_occ_fixed"
    assert any(warning.startswith("yolov8m: no picture gallery: ") and reason in warning for warning in data.warnings)
