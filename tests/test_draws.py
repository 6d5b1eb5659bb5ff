"""exp3.report.draws: the report's one resampling layer. Each predictions file is parsed once, the comparisons, the
severity curves, gap closed and recall by covered fraction resample the very same image draws, and sides that hold
other image ids are refused with the reason."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from test_coverage import hand_manifest_images, hand_records, write_suite
from test_coverage import write_session as write_coverage_session
from test_gap import HITS, N, write_session

from exp3 import report
from exp3.evaluate import stats
from exp3.fileio import atomic_write_json, sha256_file
from exp3.report import coverage, draws, gap, severity
from exp3.report.comparisons import statistics_tables
from exp3.report.draws import MISSING, UNPAIRED, ReportData, align
from exp3.report.runs import scan_sessions
from exp3.sessions import Session


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    for suffix, hits in HITS["yolov8m"].items():
        write_session(tmp_path / "yolov8m" / f"yolov8m__{suffix}", "yolov8m", suffix, hits)
    return tmp_path


def _spy(data: ReportData, monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """(N, id of the matrix handed out) of every `image_weights` call."""
    asked: list[tuple[int, int]] = []
    original = data.image_weights

    def image_weights(n_images: int) -> np.ndarray:
        weights = original(n_images)
        asked.append((n_images, id(weights)))
        return weights

    monkeypatch.setattr(data, "image_weights", image_weights)
    return asked


def test_every_statistic_resamples_the_same_draws_and_each_file_is_parsed_once(
        root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    read = Counter()
    original = draws.read_json
    monkeypatch.setattr(draws, "read_json", lambda path: read.update([Path(path).name]) or original(path))
    runs = scan_sessions(root, ["yolov8m"])
    data = ReportData(runs, n_resamples=300, seed=4)
    asked = _spy(data, monkeypatch)
    _, comparisons = statistics_tables(data, ["yolov8m"], n_permutations=99)
    from_comparisons = set(asked)
    asked.clear()
    curves, _ = severity.severity_tables(data, ["yolov8m"], n_permutations=99)
    from_severity = set(asked)
    asked.clear()
    rows = gap.gap_rows(data, ["yolov8m"], comparisons)
    from_gap = set(asked)
    # one image count, one matrix, whoever asks: the draws of stats.image_multiplicities over the sorted ids
    assert from_comparisons == from_severity == from_gap and {n for n, _ in from_gap} == {N}
    np.testing.assert_array_equal(data.image_weights(N), stats.image_multiplicities(N, 300, 4))
    assert comparisons["n_images"].max() == N and set(curves["n_images"]) == {N}
    assert {row.n_images for row in rows if row.result is not None} == {N}
    # every predictions file of the four sessions x four splits parsed exactly once, by whoever asked first
    predictions = {name: count for name, count in read.items() if name.startswith("predictions_")}
    assert len(predictions) == 4 and set(predictions.values()) == {4}   # 4 split files per name (one per session)
    assert all(data.records(run, "test_clean") is data.records(run, "test_clean") for run in runs)


def test_coverage_resamples_the_reports_draws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    suite = write_suite(tmp_path, hand_manifest_images())
    runs = [write_coverage_session(tmp_path, suffix, hand_records(), suite) for suffix in ("S1_clean_train",
                                                                                          "S2_occ_train")]
    data = ReportData(runs, n_resamples=100, seed=2)
    asked = _spy(data, monkeypatch)
    report = coverage.coverage_report(data)
    images = len(hand_records())
    assert report.problems == [] and {n for n, _ in asked} == {images}
    assert len({matrix for _, matrix in asked}) == 1                # one matrix for every session and threshold
    assert report.n_resamples == 100 and report.seed == 2


def test_align_refuses_missing_and_unpaired_sides() -> None:
    import pandas as pd

    a = pd.DataFrame({"x": [1, 2, 3]}, index=["c", "a", "b"])
    b = pd.DataFrame({"x": [4, 5, 6]}, index=["a", "b", "c"])
    assert list(align([a, b]).ids) == ["a", "b", "c"] and align([a, b]).reason == ""
    assert align([a, None]).reason == MISSING and not len(align([a, None]).ids)
    assert align([a, b.iloc[:2]]).reason == UNPAIRED and not len(align([a, b.iloc[:2]]).ids)


def test_comparisons_and_gap_closed_refuse_sessions_on_other_images(root: Path) -> None:
    """S3's test_occ_fixed predictions hold 90 of the 100 images, not the counts its metrics.json records: the file
    is refused (named in the warnings), so no paired difference to S1 and no gap closed on F1, not one on the 90
    they share; the gap-closed rows say why."""
    path = root / "yolov8m" / "yolov8m__S3_mask_backbone_early" / "predictions_test_occ_fixed.json"
    payload = json.loads(path.read_text())
    path.write_text(json.dumps({**payload, "images": payload["images"][:90]}))
    data = ReportData(scan_sessions(root, ["yolov8m"]), n_resamples=200)
    _, comparisons = statistics_tables(data, ["yolov8m"], n_permutations=99)
    f1 = comparisons[(comparisons["metric"] == "ingredient_micro_f1") & (comparisons["threshold"] == "primary")
                     & (comparisons["session"] == "S3_mask_backbone_early")
                     & (comparisons["reference"] == "S1_clean_train")].set_index("split")
    assert np.isnan(f1.loc["test_occ_fixed", "difference"]) and np.isnan(f1.loc["test_occ_fixed", "p_value"])
    assert f1.loc["test_clean", "n_images"] == N                   # its other split still pairs
    rows = {(row.metric, row.session, row.basis): row for row in gap.gap_rows(data, ["yolov8m"], comparisons)}
    for metric in ("ingredient_micro_f1", "detection_f1"):
        for basis in ("test_occ_fixed", "mPC"):
            refused = rows[(metric, "S3_mask_backbone_early", basis)]
            assert refused.result is None and refused.reason == gap.NOT_DONE
        assert rows[(metric, "S4_mask_backbone_late", "test_occ_fixed")].result is not None
    assert rows[("map50", "S3_mask_backbone_early", "test_occ_fixed")].result is not None   # its map_stats: all 100
    assert data.warnings == ["`yolov8m/yolov8m__S3_mask_backbone_early/predictions_test_occ_fixed.json`: its counts at "
                             "the primary threshold are not the ones its metrics.json records (evaluate the session "
                             "again); its per-image statistics read as missing in this report"]


def test_severity_never_moves_other_sessions_to_the_images_one_session_lacks(root: Path) -> None:
    """S3's test_occ_sev1 predictions hold 90 of the 100 images. S1's severity curve stays metrics.json's numbers on
    all 100 images (it was once recomputed on the 90 every session shared, silently); S3's F1 curve is refused and
    report.md says why (the file is not the one its metrics.json was computed from); its mAP (map_stats of all 100)
    still pairs."""
    path = root / "yolov8m" / "yolov8m__S3_mask_backbone_early" / "predictions_test_occ_sev1.json"
    payload = json.loads(path.read_text())
    path.write_text(json.dumps({**payload, "images": payload["images"][:90]}))
    result = report.build_report(root, ["yolov8m"], n_resamples=200, n_permutations=99, charts=False)
    curves, table = result.severity_curves, result.severity_table
    f1 = curves[curves["metric"] == "ingredient_micro_f1"].set_index(["session", "split"])
    hits = dict(zip(("test_clean", "test_occ_sev1", "test_occ_sev2"), np.array(HITS["yolov8m"]["S1_clean_train"])[
        [0, 2, 3]]))
    for split, count in hits.items():
        assert f1.loc[("S1_clean_train", split), "value"] == pytest.approx(count / N, abs=1e-12)
        assert f1.loc[("S1_clean_train", split), "n_images"] == N
        assert np.isnan(f1.loc[("S3_mask_backbone_early", split), "value"])
    assert f1.loc[("S2_occ_train", "test_occ_sev1"), "diff_vs_S1"] == pytest.approx(0.2, abs=1e-12)
    mpc = table.set_index(["metric", "session"])
    assert np.isnan(mpc.loc[("ingredient_micro_f1", "S3_mask_backbone_early"), "p_mPC_vs_S1"])
    assert mpc.loc[("map50", "S3_mask_backbone_early"), "diff_mPC_vs_S1"] == pytest.approx(0.1, abs=1e-9)
    named = "`yolov8m/yolov8m__S3_mask_backbone_early/predictions_test_occ_sev1.json`: its counts at the primary"
    assert any(warning.startswith(named) for warning in result.warnings)
    assert named in (root / "report.md").read_text()


def test_severity_and_gap_closed_draw_mpc_alike_with_several_seeds(tmp_path: Path) -> None:
    """Two seeds a session: the severity table's mPC difference vs S1 and gap closed's gain on mPC are one quantity,
    drawn once (seeds and images): the same interval in both tables, and the mPC p permutes training runs."""
    seeds = {"S1_clean_train": ((80, 36, 36, 16), (80, 48, 48, 28)), "S2_occ_train": ((80, 64, 64, 40),
                                                                                    (80, 52, 52, 36)),
             "S3_mask_backbone_early": ((70, 44, 44, 24), (70, 56, 56, 36))}
    for suffix, per_seed in seeds.items():
        for seed, hits in enumerate(per_seed):
            write_session(tmp_path / "yolov8m" / Session("yolov8m", suffix, seed).name, "yolov8m", suffix, hits, seed)
    result = report.build_report(tmp_path, ["yolov8m"], n_resamples=300, n_permutations=999, charts=False,
                                 sessions=list(seeds))
    table = result.severity_table.set_index(["metric", "session"])
    gap_rows = result.gap_closed.set_index(["metric", "session", "basis"])
    for metric in ("ingredient_micro_f1", "map50"):
        severity_row = table.loc[(metric, "S3_mask_backbone_early")]
        gain = gap_rows.loc[(metric, "S3_mask_backbone_early", "mPC")]
        assert severity_row["diff_mPC_vs_S1"] == pytest.approx(gain["gain"], abs=1e-12)
        assert (severity_row["diff_mPC_ci_low"], severity_row["diff_mPC_ci_high"]) == pytest.approx(
            (gain["gain_ci_low"], gain["gain_ci_high"]), abs=1e-12)
        assert gain["interval_levels"] == "seeds+images"
    p = table.loc[("ingredient_micro_f1", "S2_occ_train"), "p_mPC_vs_S1"]
    assert p >= 1 / 3 - 1e-12                                # 2 + 2 runs: 6 label splits, the coarsest honest test


@pytest.mark.parametrize("damage", ["fewer images", "no file"])
def test_seeds_are_pooled_all_on_the_same_images_or_not_at_all(tmp_path: Path, damage: str) -> None:
    """S2's seed 1 has test_occ_fixed predictions of 90 of the 100 images, or none: S2's pooled F1 there is not
    one over the 90 images or over seed 0 alone. summary_metrics shows the seed mean with no interval, the
    comparisons give no difference on that split (the other split still pairs), and report.md says why."""
    sessions = {"S1_clean_train": ((80, 40), (80, 44)), "S2_occ_train": ((80, 60), (80, 64))}
    for suffix, per_seed in sessions.items():
        for seed, hits in enumerate(per_seed):
            write_session(tmp_path / "yolov8m" / Session("yolov8m", suffix, seed).name, "yolov8m", suffix, hits, seed)
    path = tmp_path / "yolov8m" / "yolov8m__S2_occ_train__seed1" / "predictions_test_occ_fixed.json"
    if damage == "no file":
        path.unlink()
    else:
        payload = json.loads(path.read_text())
        path.write_text(json.dumps({**payload, "images": payload["images"][:90]}))
    result = report.build_report(tmp_path, ["yolov8m"], n_resamples=200, n_permutations=99, charts=False,
                                 sessions=list(sessions))
    s2 = result.summary.set_index(["session", "split"]).loc[("S2_occ_train", "test_occ_fixed")]
    assert s2["ingredient_micro_f1"] == pytest.approx((0.60 + 0.64) / 2, abs=1e-12)     # the seed mean, as labelled
    assert np.isnan(s2["ingredient_micro_f1_ci_low"]) and np.isnan(s2["diff_vs_S1"])
    versus = result.comparisons[(result.comparisons["metric"] == "ingredient_micro_f1")
                                & (result.comparisons["threshold"] == "primary")
                                & (result.comparisons["session"] == "S2_occ_train")
                                & (result.comparisons["reference"] == "S1_clean_train")].set_index("split")
    assert np.isnan(versus.loc["test_occ_fixed", "difference"]) and versus.loc["test_clean", "n_images"] == N
    problem = "1 of its 2 done seeds have per-image values"  # a file of fewer images: refused, its counts are others
    assert any(warning.startswith("yolov8m S2_occ_train, test_occ_fixed: " + problem)
               for warning in result.warnings)
    assert problem in (tmp_path / "report.md").read_text()


def test_a_split_no_threshold_can_pool_is_named_once(tmp_path: Path) -> None:
    """S2's seed 1 has no test_occ_fixed predictions, so neither the primary nor the val-chosen threshold pools
    there: report.md names that split once, not once per threshold or per call."""
    for seed, hits in enumerate(((80, 60), (80, 64))):
        write_session(tmp_path / "yolov8m" / Session("yolov8m", "S2_occ_train", seed).name, "yolov8m", "S2_occ_train", hits,
                      seed)
    (tmp_path / "yolov8m" / "yolov8m__S2_occ_train__seed1" / "predictions_test_occ_fixed.json").unlink()
    runs = [replace(run, metrics={**run.metrics, "splits": {split: {**part, "at_val_threshold": {"conf": 0.3}}
                                                            for split, part in run.metrics["splits"].items()}})
            for run in scan_sessions(tmp_path, ["yolov8m"], [0, 1], ["S2_occ_train"])]
    data = ReportData(runs, n_resamples=50)
    for threshold in ("primary", "val", "primary", "val"):
        assert data.pooled("yolov8m", "S2_occ_train", "test_occ_fixed", threshold) is None
    assert data.pooled("yolov8m", "S2_occ_train", "test_clean", "val") is not None
    assert data.warnings == ["yolov8m S2_occ_train, test_occ_fixed: 1 of its 2 done seeds have per-image values: no "
                             "pooled statistic, interval or comparison (summary_metrics shows the seed mean); evaluate "
                             "every seed on the same suite"]


def test_a_done_sessions_malformed_predictions_file_is_named_in_the_report(root: Path) -> None:
    """A done session's predictions file that does not parse reads as missing, as before, and report.md says which
    file it was instead of silently showing n/a."""
    folder = root / "yolov8m" / "yolov8m__S3_mask_backbone_early"
    (folder / "predictions_test_clean.json").write_text("{not json")
    payload = json.loads((folder / "predictions_test_occ_fixed.json").read_text())
    payload["images"][0]["typo_key"] = 1
    (folder / "predictions_test_occ_fixed.json").write_text(json.dumps(payload))
    result = report.build_report(root, n_resamples=50, n_permutations=50, charts=False)
    assert len(result.warnings) == 2
    clean, occluded = sorted(result.warnings, key=lambda warning: "test_clean" not in warning)
    assert "`yolov8m/yolov8m__S3_mask_backbone_early/predictions_test_clean.json`" in clean
    assert "not valid JSON" in clean
    assert "predictions_test_occ_fixed.json" in occluded and "unknown keys ['typo_key']" in occluded
    text = (root / "report.md").read_text()
    assert "Warnings:" in text and all(f"- {warning}" in text for warning in result.warnings)
    f1 = result.comparisons.set_index(["split", "metric", "threshold", "session", "reference"])
    assert np.isnan(f1.loc[("test_clean", "ingredient_micro_f1", "primary", "S3_mask_backbone_early",
                            "S1_clean_train"), "difference"])                       # still read as missing
    assert report.build_report(root, sessions=["S1_clean_train", "S2_occ_train"], n_resamples=50,
                               n_permutations=50, charts=False).warnings == []     # S3 not in run: never read


def test_a_predictions_file_its_metrics_json_was_not_computed_from_is_refused(root: Path) -> None:
    """S3's test_occ_fixed file replaced by S2's (the same images, other detections: 60 hits, not its 50) and its
    test_clean file made on another suite than metrics.json records: neither is used, so no paired F1 difference and
    no gap closed on F1 (it once showed S2's 60 as S3's, gap closed 1.0); the summary keeps metrics.json's numbers
    with no interval, and the warnings name both files."""
    folder = root / "yolov8m" / "yolov8m__S3_mask_backbone_early"
    stray = json.loads((root / "yolov8m" / "yolov8m__S2_occ_train" / "predictions_test_occ_fixed.json").read_text())
    atomic_write_json(folder / "predictions_test_occ_fixed.json", {**stray, "session": folder.name})
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics["data"] = {"suite_id": "suite-test_occ_fixed"}      # test_clean's file names suite-test_clean
    atomic_write_json(folder / "metrics.json", metrics)
    atomic_write_json(folder / "DONE", {**json.loads((folder / "DONE").read_text()),
                                        "metrics_sha256": sha256_file(folder / "metrics.json")})
    result = report.build_report(root, ["yolov8m"], n_resamples=200, n_permutations=99, charts=False)
    s3 = result.summary.set_index(["session", "split"])
    assert s3.loc[("S3_mask_backbone_early", "test_occ_fixed"), "ingredient_micro_f1"] == pytest.approx(0.5)
    assert np.isnan(s3.loc[("S3_mask_backbone_early", "test_occ_fixed"), "ingredient_micro_f1_ci_low"])
    f1 = result.comparisons[(result.comparisons["metric"] == "ingredient_micro_f1")
                            & (result.comparisons["session"] == "S3_mask_backbone_early")]
    assert len(f1) and f1[f1["split"].isin(["test_clean", "test_occ_fixed"])]["difference"].isna().all()
    gap_row = result.gap_closed.set_index(["metric", "session", "basis"]).loc[
        ("ingredient_micro_f1", "S3_mask_backbone_early", "test_occ_fixed")]
    assert np.isnan(gap_row["gap_closed"]) and gap_row["reason"] == gap.NOT_DONE
    files = "`yolov8m/yolov8m__S3_mask_backbone_early/predictions_"
    assert f"{files}test_clean.json`: made on suite 'suite-test_clean', its metrics.json on 'suite-test_occ_fixed'" \
        in "\n".join(result.warnings)
    assert f"{files}test_occ_fixed.json`: its counts at the primary threshold are not the ones" in "\n".join(
        result.warnings)


def test_a_done_seed_without_a_value_makes_the_seed_mean_missing_not_the_others_mean(tmp_path: Path) -> None:
    """S2's seed 1 records no mAP50 on test_occ_fixed: summary_metrics' seed mean and comparisons' mAP50 difference
    are NaN there (they were seed 0's alone, labelled as both seeds'); test_clean, recorded by both, keeps them."""
    write_session(tmp_path / "yolov8m" / "yolov8m__S1_clean_train", "yolov8m", "S1_clean_train", (80, 40))
    for seed, hits in enumerate(((80, 60), (80, 90))):
        write_session(tmp_path / "yolov8m" / Session("yolov8m", "S2_occ_train", seed).name, "yolov8m",
                      "S2_occ_train", hits, seed)
    folder = tmp_path / "yolov8m" / "yolov8m__S2_occ_train__seed1"
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics["splits"]["test_occ_fixed"]["map50"] = None
    atomic_write_json(folder / "metrics.json", metrics)
    atomic_write_json(folder / "DONE", {**json.loads((folder / "DONE").read_text()),
                                        "metrics_sha256": sha256_file(folder / "metrics.json")})
    result = report.build_report(tmp_path, ["yolov8m"], seeds=[0, 1], n_resamples=100, n_permutations=99,
                                 charts=False, sessions=["S1_clean_train", "S2_occ_train"])
    s2 = result.summary.set_index(["session", "split"]).loc["S2_occ_train"]
    assert s2.loc["test_occ_fixed", ["map50", "map50_min", "map50_max"]].isna().all()
    assert s2.loc["test_clean", ["map50", "map50_min", "map50_max"]].notna().all()
    map50 = result.comparisons[(result.comparisons["metric"] == "map50") & (result.comparisons["session"] ==
                                                                           "S2_occ_train")].set_index("split")
    assert np.isnan(map50.loc["test_occ_fixed", "difference"]) and np.isfinite(map50.loc["test_clean", "difference"])


def test_a_level_one_session_lacks_is_left_out_with_a_warning_and_the_others_keep_their_numbers(root: Path) -> None:
    """S3 records no test_occ_sev1 (an update that did not finish): the curves hold test_occ_sev2 alone, numbered 2
    (it was numbered 1 by its position, and report.md's crossings said 'severity 1'), and report.md says why."""
    folder = root / "yolov8m" / "yolov8m__S3_mask_backbone_early"
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics["severity"]["levels"] = [level for level in metrics["severity"]["levels"]
                                     if level["split"] != "test_occ_sev1"]
    atomic_write_json(folder / "metrics.json", metrics)
    atomic_write_json(folder / "DONE", {**json.loads((folder / "DONE").read_text()),
                                        "metrics_sha256": sha256_file(folder / "metrics.json")})
    result = report.build_report(root, ["yolov8m"], n_resamples=100, n_permutations=99, charts=False)
    curves = result.severity_curves
    assert sorted(set(zip(curves["severity"], curves["split"]))) == [(0, "test_clean"), (2, "test_occ_sev2")]
    assert "severity, yolov8m: test_occ_sev1 left out (not recorded on one suite by every done session: mPC is " \
           "over the others); run the sessions again to add it" in result.warnings
    assert set(result.severity_table["levels"]) == {1}
