"""Severity suites (issue 12): deterministic, verified, distinct suites per level; every level evaluated;
a session finished before the levels existed gains them from its checkpoint without training; mPC / rPC."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from exp3.config import ConfigError, OcclusionConfig, load_config
from exp3.fileio import sha256_file
from exp3.identity import session_inputs
from exp3.occlusion import OcclusionError
from exp3.occlusion.identity import evaluation_plan
from exp3.occlusion.planners import MAX_BOX_COVERAGE, PLACEMENT_SHRINK
from exp3.occlusion.suites import build_occlusion_suite, build_severity_suites
from exp3.occlusion.verify import verify_occlusion_suite
from exp3.schema import SessionMetrics
from exp3.session.layout import SessionPaths, severity_changes
from exp3.session.record import with_severity_levels
from exp3.session.run import run_session
from exp3.sessions import Session
from exp3.splits import severity_level, severity_split

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "tests" / "fixtures" / "metrics_example.json"  # a real metrics.json, one severity level
LEVELS = ((0.1, 0.26), (0.42, 0.58), (0.74, 0.9))


def _tree_bytes(directory: Path) -> dict[str, bytes]:
    return {path.relative_to(directory).as_posix(): path.read_bytes()
            for path in sorted(directory.rglob("*")) if path.is_file()}


def test_split_names_are_stable_and_listed_in_one_place() -> None:
    config = OcclusionConfig(severities=LEVELS)
    assert list(evaluation_plan(config)) == ["test_occ_sev1", "test_occ_sev2", "test_occ_sev3"]  # light to heavy
    assert [severity_level(name) for name in ("test_occ_sev3", "test_occ_fixed", "test_occ_sev0")] == [3, None, None]
    assert severity_split(2) == "test_occ_sev2"
    assert evaluation_plan(OcclusionConfig(severities=())) == {}


@pytest.mark.parametrize("value, needle", [
    ("[[0.5, 0.4]]", "level 1 [0.5, 0.4] is not a range"),
    ("[[0.5, 0.95]]", "<= 0.9"),
    ("[[0.3, 0.5], [0.2, 0.6]]", "level 2 [0.2, 0.6] is not heavier than level 1"),
    ("[[0.3, 0.5], [0.3, 0.5]]", "not heavier"),
])
def test_bad_severities_are_refused_in_one_line(value: str, needle: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(REPO / "configs" / "smoke.yaml", [f"occlusion.severities={value}"])
    message = str(error.value)
    assert needle in message and "occlusion.severities" in message and "\n" not in message


def test_bad_severities_exit_non_zero_from_the_cli(tmp_path: Path, capsys) -> None:
    from exp3.config import _main

    assert _main(["show", "--config", str(REPO / "configs" / "smoke.yaml"),
                  "--set", "occlusion.severities=[[0.8, 0.7]]"]) == 2
    assert "occlusion.severities" in capsys.readouterr().err


def test_severities_change_no_session_key_nor_the_fixed_suite(tiny_data_yaml: Path) -> None:
    from exp3.occlusion.suites import occlusion_suite_name

    with_levels = load_config(REPO / "configs" / "smoke.yaml")
    without = load_config(REPO / "configs" / "smoke.yaml", ["occlusion.severities=[]"])
    for suffix in ("S1_clean_train", "S2_occ_train", "S5_mask_neck"):
        session = Session("yolov8m", suffix)
        assert (session_inputs(with_levels, session, "fp", "occ-x", None).key
                == session_inputs(without, session, "fp", "occ-x", None).key)
    assert (occlusion_suite_name(tiny_data_yaml, with_levels.occlusion)
            == occlusion_suite_name(tiny_data_yaml, without.occlusion))


@pytest.fixture(scope="module")
def suites(tiny_data_yaml: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    out = tmp_path_factory.mktemp("severity-suites")
    return out, build_severity_suites(tiny_data_yaml, out, OcclusionConfig(severities=LEVELS), workers=2)


def test_suites_are_deterministic_verified_and_distinct(suites, tiny_data_yaml: Path, tmp_path: Path) -> None:
    out, built = suites
    assert [path.name[:7] for path in built] == ["occsev-"] * 3 and len({path.name for path in built}) == 3
    for path in built:
        assert verify_occlusion_suite(path) == []
    again = build_severity_suites(tiny_data_yaml, tmp_path, OcclusionConfig(severities=LEVELS), workers=1)
    assert [path.name for path in again] == [path.name for path in built]
    for first, second in zip(built, again):   # same bytes (the yamls name their own directory)
        a, b = _tree_bytes(first), _tree_bytes(second)
        assert a.keys() == b.keys()
        assert all(a[name] == b[name] for name in a if not name.endswith((".yaml", "manifest.json")))
        ma, mb = (json.loads(tree["manifest.json"]) for tree in (a, b))
        for manifest in (ma, mb):     # the yamls and the source path name the build's own place
            manifest["files"] = {k: v for k, v in manifest["files"].items() if not k.endswith(".yaml")}
        assert ma == mb
    images = [{path.name: path.read_bytes() for path in (suite / f"test_occ_sev{level}" / "images").iterdir()}
              for level, suite in enumerate(built, start=1)]
    assert images[0].keys() == images[1].keys() == images[2].keys()
    for name in images[0]:                    # every level paints every image differently
        assert len({images[0][name], images[1][name], images[2][name]}) == 3
    manifests = [json.loads((suite / "manifest.json").read_text()) for suite in built]
    assert [m["split"] for m in manifests] == ["test_occ_sev1", "test_occ_sev2", "test_occ_sev3"]
    assert [[image["seed"][1] for image in m["images"]][0] for m in manifests] == [101, 102, 103]
    fixed = build_occlusion_suite(tiny_data_yaml, out, OcclusionConfig(severities=LEVELS))
    fixed_ids = sorted(p.stem for p in (fixed / "test_occ_fixed" / "images").iterdir())
    assert sorted(Path(name).stem for name in images[0]) == fixed_ids   # the same test image ids


def test_reused_suite_is_verified_and_never_overwritten(suites, tiny_data_yaml: Path) -> None:
    out, built = suites
    victim = next((built[1] / "test_occ_sev2" / "images").iterdir())
    original = victim.read_bytes()
    try:
        victim.write_bytes(original[:-10])
        with pytest.raises(OcclusionError, match="fails verification"):
            build_severity_suites(tiny_data_yaml, out, OcclusionConfig(severities=LEVELS), workers=1)
        assert victim.read_bytes() == original[:-10]          # reported, not rebuilt in place
    finally:
        victim.write_bytes(original)
    assert verify_occlusion_suite(built[1]) == []


def _isolated(boxes: list[dict]) -> list[bool]:
    """Whether each box overlaps no other box of its image (its covered fraction is its own occluder's)."""
    result = []
    for index, box in enumerate(boxes):
        x0, y0, x1, y1 = box["xyxy"]
        result.append(not any(o["xyxy"][0] < x1 and o["xyxy"][2] > x0 and o["xyxy"][1] < y1 and o["xyxy"][3] > y0
                              for other, o in enumerate(boxes) if other != index))
    return result


def test_measured_coverage_lies_in_each_levels_range(suites) -> None:
    _, built = suites
    for (low, high), suite in zip(LEVELS, built):
        manifest = json.loads((suite / "manifest.json").read_text())
        assert manifest["coverage"] == [low, high]
        isolated = covered = 0
        for image in manifest["images"]:
            for box, alone in zip(image["boxes"], _isolated(image["boxes"])):
                fraction = box["covered_fraction"]
                assert fraction <= MAX_BOX_COVERAGE + 1e-9 and low <= box["target_coverage"] <= high
                if alone:   # own occluder only: the target up to one pixel row/column, within the box's whole pixels
                    x0, y0, x1, y1 = box["xyxy"]
                    pixel = 1.0 / min(x1 - x0, y1 - y0) + 1e-3
                    whole = (math.floor(x1) - math.ceil(x0)) * (math.floor(y1) - math.ceil(y0)) / ((x1 - x0) * (y1 - y0))
                    floor = min(low, whole) - pixel
                    if box["target_coverage"] + pixel > MAX_BOX_COVERAGE:  # the cap may shrink it (sides x 0.8)
                        floor = PLACEMENT_SHRINK ** 2 * floor
                    assert floor <= fraction <= high + pixel
                    isolated += 1
                covered += fraction
        assert isolated > 0


def test_evaluation_plan_names_changed_levels() -> None:
    plan = evaluation_plan(OcclusionConfig(severities=LEVELS))
    assert list(plan) == ["test_occ_sev1", "test_occ_sev2", "test_occ_sev3"]
    changed = evaluation_plan(OcclusionConfig(severities=((0.1, 0.26), (0.4, 0.58), (0.74, 0.9))))
    assert changed["test_occ_sev1"] == plan["test_occ_sev1"] and changed["test_occ_sev2"] != plan["test_occ_sev2"]
    example = SessionMetrics.model_validate(json.loads(EXAMPLE.read_text(encoding="utf-8")))  # sev1 recorded
    recorded = {split: evaluation.spec_key for split, evaluation in example.severity.evaluations.items()}
    assert list(recorded) == ["test_occ_sev1"] and severity_changes(example, recorded) == ([], [])
    assert severity_changes(example, {"test_occ_sev1": "another suite"}) == (["test_occ_sev1"], [])
    assert severity_changes(example, {}) == ([], ["test_occ_sev1"])
    assert severity_changes(example, {**recorded, "test_occ_sev2": "k2"}) == (["test_occ_sev2"], [])


# ----------------------------------------------------------------------------- sessions


def _config(path: Path, root: Path, severities: list | None) -> Path:
    payload = {"base": str(REPO / "configs" / "smoke.yaml"), "output_root": str(root),
               "models": {"yolov8n": {"architecture": "yolov8n.yaml", "epochs": 1}}}
    if severities is not None:
        payload["occlusion"] = {"severities": severities}
    path.write_text(yaml.safe_dump(payload))
    return path


def _untouched_training(folder: Path) -> dict:
    best = folder / "train" / "weights" / "best.pt"
    return {"best_mtime": best.stat().st_mtime_ns, "train_log": (folder / "logs" / "train.log").read_bytes(),
            "train_info": (folder / "train" / "train_info.json").read_bytes(),
            "inputs": (folder / "inputs.json").read_bytes()}


def test_a_done_session_gains_new_levels_without_training(tmp_path: Path, capsys) -> None:
    output = tmp_path / "out"
    session = Session("yolov8n", "S1_clean_train")
    before = load_config(_config(tmp_path / "before.yaml", output, []))
    old = run_session(before, session, output).to_json()  # each step checked as the file it writes
    folder = SessionPaths.of(output, session).folder
    assert set(old["splits"]) == {"test_clean", "test_occ_fixed"} and old["severity"]["levels"] == []
    training = _untouched_training(folder)

    moved = tmp_path / "elsewhere" / "out"  # the session restored from a mirror into a new root (its data rebuilt)
    shutil.copytree(folder, SessionPaths.of(moved, session).folder)  # before the levels come
    output, folder = moved, SessionPaths.of(moved, session).folder
    after = load_config(_config(tmp_path / "after.yaml", output, [[0.1, 0.26], [0.74, 0.9]]))
    paths = SessionPaths.of(output, session)
    assert paths.is_done(old["cache_key"]) and not paths.evaluations_current(evaluation_plan(after.occlusion))
    new = run_session(after, session, output).to_json()
    assert "evaluating test_occ_sev1" in capsys.readouterr().out
    assert _untouched_training(folder) == training                     # no training ran, nothing retrained
    assert new["cache_key"] == old["cache_key"] and paths.is_done(old["cache_key"])
    assert paths.evaluations_current(evaluation_plan(after.occlusion))
    assert list(new["splits"]) == ["test_clean", "test_occ_fixed", "test_occ_sev1", "test_occ_sev2"]
    for split in ("test_clean", "test_occ_fixed"):
        assert new["splits"][split] == old["splits"][split]           # the old numbers are kept as they were
    for level, split in enumerate(("test_occ_sev1", "test_occ_sev2"), start=1):
        record = new["severity"]["evaluations"][split]
        assert record["added_after_training"] is True and record["level"] == level
        assert record["suite_id"].startswith("occsev-") and record["wall_s"] > 0
        assert record["checkpoint"] == str(folder / "train" / "weights" / "best.pt")  # where it is now
        assert record["spec_key"] == evaluation_plan(after.occlusion)[split]
        payload = json.loads((folder / f"predictions_{split}.json").read_text())
        assert payload["split"] == split and len(payload["images"]) == 8
        assert (folder / f"map_stats_{split}.npz").is_file()
        assert {"map50", "map50_95", "ingredient", "detection", "at_val_threshold"} <= set(new["splits"][split])
        assert new["splits"][split]["at_val_threshold"]["conf"] == old["thresholds"]["val_chosen"]
    summary = new["severity"]["summary"]
    assert summary["levels"] == ["test_occ_sev1", "test_occ_sev2"]
    f1 = [new["splits"][s]["ingredient"]["micro"]["f1"] for s in summary["levels"]]
    assert summary["mPC"]["ingredient_micro_f1"] == pytest.approx(np.mean(f1), abs=1e-6)
    done = json.loads((folder / "DONE").read_text())
    assert done["metrics_sha256"] == sha256_file(folder / "metrics.json") and "replacing_metrics_sha256" not in done
    assert json.loads((folder / "metrics.json").read_text()) == json.loads(json.dumps(new))

    assert new["data"]["suite_dir"].startswith(str(moved)) and new["data"]["suite_dir"] != old["data"]["suite_dir"]
    # the fixed suite and S2's set rebuilt under their ids with other bytes (another numpy): the record keeps the
    # bytes the session was tested and trained on (it took the rebuilt ones, so the report's manifest check passed)
    rebuilt = SessionMetrics.model_validate(new).data.model_copy(
        update={"suite_manifest_sha256": "1" * 64, "s2_manifest_sha256": "2" * 64})
    kept = with_severity_levels(SessionMetrics.model_validate(new), rebuilt, {}, ["test_occ_sev2"],
                                folder / "train" / "weights" / "best.pt").data
    assert (kept.suite_manifest_sha256, kept.s2_manifest_sha256) == (old["data"]["suite_manifest_sha256"],
                                                                     old["data"]["s2_manifest_sha256"])

    # run again: nothing to do, nothing written
    stamp = (folder / "metrics.json").stat().st_mtime_ns
    again = run_session(after, session, output)
    assert again.to_json() == new and (folder / "metrics.json").stat().st_mtime_ns == stamp

    # a changed level is evaluated again on its new suite, the other kept; the old result is superseded
    changed = load_config(_config(tmp_path / "changed.yaml", output, [[0.1, 0.26], [0.6, 0.9]]))
    third = run_session(changed, session, output).to_json()
    assert _untouched_training(folder) == training
    assert third["severity"]["evaluations"]["test_occ_sev1"] == new["severity"]["evaluations"]["test_occ_sev1"]
    assert third["severity"]["evaluations"]["test_occ_sev2"]["suite_id"] != \
        new["severity"]["evaluations"]["test_occ_sev2"]["suite_id"]
    assert [entry["split"] for entry in third["severity"]["superseded"]] == ["test_occ_sev2"]
    assert third["severity"]["superseded"][0]["metrics"] == new["splits"]["test_occ_sev2"]

    # removing the levels evaluates nothing and keeps the removed results as superseded
    removed = run_session(before, session, output).to_json()
    assert list(removed["splits"]) == ["test_clean", "test_occ_fixed"]
    assert [entry["split"] for entry in removed["severity"]["superseded"]] == \
        ["test_occ_sev2", "test_occ_sev1", "test_occ_sev2"]
    assert _untouched_training(folder) == training
    for payload in (old, new, third, removed):  # every file on the way is exactly a SessionMetrics
        assert SessionMetrics.model_validate(payload).to_json() == payload


def test_crash_while_replacing_metrics_keeps_the_session_done(tmp_path: Path) -> None:
    folder = tmp_path / "m" / "m__S1_clean_train"
    folder.mkdir(parents=True)
    paths = SessionPaths(folder)
    (folder / "metrics.json").write_text('{"a": 1}\n')
    paths.write_done("k", {})
    old_sha = sha256_file(folder / "metrics.json")
    # the first of replace_metrics' writes done, the second not yet (a crash in between)
    marker = json.loads((folder / "DONE").read_text())
    (folder / "DONE").write_text(json.dumps({**marker, "metrics_sha256": "0" * 64,
                                             "replacing_metrics_sha256": old_sha}))
    assert paths.is_done("k")
    paths.write_done("k", {})
    paths.replace_metrics({"a": 2}, {"note": "x"})
    assert paths.is_done("k") and json.loads((folder / "metrics.json").read_text()) == {"a": 2}
    (folder / "metrics.json").write_text('{"a": 1}\n')          # the replaced file is no longer accepted
    assert not paths.is_done("k")


def test_mpc_and_rpc_point_values() -> None:
    from exp3.evaluate.severity import mpc_summary
    from exp3.schema import SplitView

    def split(f1: float, map50: float) -> SplitView:
        return SplitView.model_validate({"map50": map50, "map50_95": map50 / 2, "detection": {"f1": f1},
                                         "ingredient": {"micro": {"f1": f1}, "samples": {"f1": f1}}})

    splits = {"test_clean": split(0.8, 0.6), "test_occ_fixed": split(0.1, 0.1), "test_occ_sev1": split(0.6, 0.4),
              "test_occ_sev2": split(0.2, 0.2)}
    summary = mpc_summary(splits, ["test_occ_sev1", "test_occ_sev2"])
    assert summary.levels == ["test_occ_sev1", "test_occ_sev2"]
    assert summary.mPC["ingredient_micro_f1"] == pytest.approx(0.4)
    assert summary.rPC["ingredient_micro_f1"] == pytest.approx(0.5)
    assert summary.mPC["map50"] == pytest.approx(0.3) and summary.rPC["map50"] == pytest.approx(0.5)
    assert mpc_summary({**splits, "test_clean": split(0.0, 0.0)}, ["test_occ_sev1"]).rPC["map50"] is None
    assert mpc_summary(splits, []).mPC["map50"] is None
    assert mpc_summary(splits, ["test_occ_sev3"]).mPC["map50"] is None  # a level without results: undefined


def test_the_sessions_part_imports_neither_pandas_nor_the_statistics() -> None:
    """exp3.evaluate.severity runs in every session process (metrics.json's mPC / rPC): importing it and computing
    the point values loads numpy and exp3.schema only, never pandas, scipy.stats or exp3.evaluate.stats (the
    report's part, exp3.report.severity, has those)."""
    code = ("import sys, exp3.evaluate.severity; from exp3.schema import SplitView; "
            "split = SplitView.model_validate({'map50': 0.5, 'map50_95': 0.3, 'detection': {'f1': 0.6}, "
            "'ingredient': {'micro': {'f1': 0.6}, 'samples': {'f1': 0.6}}}); "
            "summary = exp3.evaluate.severity.mpc_summary({'test_clean': split, 'test_occ_sev1': split}, ['test_occ_sev1']); "
            "assert summary.rPC['map50'] == 1.0, summary; "
            "print(sorted(name for name in ('pandas', 'scipy.stats', 'exp3.evaluate.stats') if name in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}).stdout.strip()
    assert loaded == "[]"


def test_common_levels_are_those_every_done_run_recorded_on_the_same_suite(tmp_path: Path) -> None:
    from exp3.report.runs import SessionRun
    from exp3.report.severity import common_levels

    def run(*levels: object, status: str = "done") -> SessionRun:
        return SessionRun("m", "S1_clean_train", None, tmp_path, status, None, {"severity": {"levels": list(levels)}})

    def level(k: int, suite: str) -> dict:
        return {"level": k, "split": f"test_occ_sev{k}", "coverage": [k / 10, k / 5], "spec_key": "x", "suite_id": suite}

    runs = [run(level(2, "b"), level(1, "a"), level(3, "c")), run(level(1, "a"), level(2, "b"), level(3, "other")),
            run(level(1, "z"), status="failed")]
    assert [(got.split, got.coverage) for got in common_levels(runs)] == [("test_occ_sev1", (0.1, 0.2)),
                                                                         ("test_occ_sev2", (0.2, 0.4))]
    drifted = {**level(2, "b"), "coverage": "?"}  # a level that cannot be drawn is no level
    assert [got.split for got in common_levels([run(level(1, "a"), drifted)])] == ["test_occ_sev1"]


def test_mpc_permutation_p_matches_brute_force() -> None:
    from itertools import product

    from exp3.evaluate import stats
    from exp3.report.severity import mpc_f1

    def mpc_permutation_pvalue(a: np.ndarray, b: np.ndarray, n_permutations: int = stats.DEFAULT_PERMUTATIONS) -> float:
        return stats.permutation_pvalue(a, b, mpc_f1, n_permutations)

    rng = np.random.default_rng(3)
    a, b = rng.integers(0, 5, size=(6, 3, 3)), rng.integers(0, 5, size=(6, 3, 3))

    def mpc(counts: np.ndarray) -> float:
        return float(stats.micro_f1(counts, axis=0)[1:].mean())

    observed = mpc(a) - mpc(b)
    null = []
    for mask in product([False, True], repeat=6):
        swap = np.array(mask)[:, None, None]
        null.append(mpc(np.where(swap, b, a)) - mpc(np.where(swap, a, b)))
    null = np.array(null)
    expected = min(1.0, 2 * min(np.mean(null <= observed + 1e-12), np.mean(null >= observed - 1e-12)))
    assert mpc_permutation_pvalue(a, b) == pytest.approx(expected)
    assert mpc_permutation_pvalue(a, a) == 1.0
    assert math.isfinite(mpc_permutation_pvalue(a, b, n_permutations=20))



# ----------------------------------------------------------------------------- report


@pytest.fixture(scope="module")
def reported(tmp_path_factory: pytest.TempPathFactory):
    """yolov8n S1 and S2 (1 epoch) with two severity levels, and the report built from them."""
    from exp3.report import build_report

    root = tmp_path_factory.mktemp("severity-report")
    config = load_config(_config(root / "c.yaml", root / "out", [[0.1, 0.26], [0.58, 0.74]]))
    for suffix in ("S1_clean_train", "S2_occ_train"):
        run_session(config, Session("yolov8n", suffix), root / "out")
    return build_report(root / "out", models=["yolov8n"], n_resamples=200, n_permutations=199,
                        sessions=["S1_clean_train", "S2_occ_train"])


def test_report_has_severity_curves_table_and_charts(reported) -> None:
    from PIL import Image

    result = reported
    curves, table = result.severity_curves, result.severity_table
    f1 = curves[curves["metric"] == "ingredient_micro_f1"]
    assert sorted(f1["severity"].unique()) == [0, 1, 2]
    assert list(f1[f1["severity"] == 0]["split"].unique()) == ["test_clean"]
    s1 = f1[f1["session"] == "S1_clean_train"].set_index("split")["value"]
    metrics = json.loads((result.root / "yolov8n" / "yolov8n__S1_clean_train" / "metrics.json").read_text())
    for split in ("test_clean", "test_occ_sev1", "test_occ_sev2"):   # the curve is metrics.json's numbers
        assert s1[split] == pytest.approx(metrics["splits"][split]["ingredient"]["micro"]["f1"], abs=1e-12)
    mpc = table[(table["metric"] == "ingredient_micro_f1") & (table["session"] == "S1_clean_train")].iloc[0]
    assert mpc["mPC"] == pytest.approx(metrics["severity"]["summary"]["mPC"]["ingredient_micro_f1"], abs=1e-6)
    s2 = table[(table["metric"] == "ingredient_micro_f1") & (table["session"] == "S2_occ_train")].iloc[0]
    assert math.isfinite(s2["diff_mPC_vs_S1"]) and 0 <= s2["p_mPC_vs_S1"] <= 1
    from exp3.report.severity import mpc_table
    from exp3.report.text import fmt_p

    shown = mpc_table(table, "yolov8n", "ingredient_micro_f1")                   # p as every other table writes it
    assert list(shown["p_BH (mPC vs S1)"]) == [fmt_p(p) for p in table[(table["model"] == "yolov8n") & (
        table["metric"] == "ingredient_micro_f1")]["p_bh_mPC_vs_S1"]]
    text = (result.root / "report.md").read_text()
    assert "## Occlusion severity" in text and "mPC [95% CI]" in text
    # the band is what each box's own occluder is drawn in, not what every box ends up covered by (3-8 % of the
    # pilot's boxes lie outside it, by their neighbours' occluders), and the levels are drawn anew
    assert "each box covered within" not in text and "so some boxes lie outside it" in text and "not nested" in text
    for name in ("severity_f1_yolov8n", "severity_map50_yolov8n"):
        png = result.root / "plots" / f"{name}.png"
        with Image.open(png) as image:
            assert image.format == "PNG" and image.size[0] > 400 and image.size[1] > 300
        assert (result.root / "plots" / f"{name}.html").is_file()
    assert (result.root / "severity_curves.csv").is_file() and (result.root / "severity_summary.csv").is_file()
    # one model: its own F1 charts, no all-models copy of them (the same bars under another title)
    assert {path.stem for path in (result.root / "plots").glob("f1_*.png")} == {
        "f1_occ_yolov8n", "f1_clean_yolov8n", "f1_diff_occ", "f1_diff_clean"}
    assert "by_model" not in text


def test_severity_chart_data_has_one_line_per_session(reported) -> None:
    from exp3.report import plots
    from exp3.report.severity import curve_frame

    frame = curve_frame(reported.severity_curves, "yolov8n", "ingredient_micro_f1")
    spec = plots.severity_chart(frame, "t", "F1").to_dict()
    rows = next(iter(spec["datasets"].values()))
    lines = {}
    for row in rows:
        lines.setdefault(row["session_label"], []).append(row["severity"])
    assert set(lines) == {"S1 clean", "S2 occluded-train"}
    assert all(sorted(severities) == [0, 1, 2] for severities in lines.values())
    marks = [layer["mark"]["type"] for layer in spec["layer"]]
    assert marks == ["area", "line", "point"]
    assert all(layer["encoding"]["color"]["field"] == "session_label" for layer in spec["layer"])


def test_predictions_of_another_suite_are_never_used(reported) -> None:
    from exp3.report.draws import ReportData
    from exp3.report.runs import scan_sessions
    from exp3.report.severity import severity_tables

    path = reported.root / "yolov8n" / "yolov8n__S2_occ_train" / "predictions_test_occ_sev1.json"
    original = path.read_text()
    runs = scan_sessions(reported.root, ["yolov8n"], None, ["S1_clean_train", "S2_occ_train"])
    try:
        path.write_text(json.dumps({**json.loads(original), "suite_id": "occsev-000000000000"}))
        curves, table = severity_tables(ReportData(runs, n_resamples=50), ["yolov8n"], n_permutations=19)
    finally:
        path.write_text(original)
    f1 = curves[(curves["metric"] == "ingredient_micro_f1") & (curves["session"] == "S2_occ_train")]
    assert f1["value"].isna().all()
    s1 = curves[(curves["metric"] == "ingredient_micro_f1") & (curves["session"] == "S1_clean_train")]
    assert s1["value"].notna().all()


def test_runner_brings_a_done_session_up_to_new_levels_through_the_session_cli(reported) -> None:
    """The flow's path: the runner sees the missing level and starts `python -m exp3.session`, which
    evaluates only that level (runs after the report tests: it changes S1 of their root)."""
    from exp3.config import load_config
    from exp3.grid.jobs import SessionJob, done_result
    from exp3.grid.runner import run_session_subprocess

    output = reported.root
    base = output.parent
    session = Session("yolov8n", "S1_clean_train")
    folder = SessionPaths.of(output, session).folder
    before = json.loads((folder / "metrics.json").read_text())
    training = _untouched_training(folder)
    config_path = _config(base / "more.yaml", output, [[0.1, 0.26], [0.58, 0.74], [0.74, 0.9]])
    config = load_config(config_path)
    job = SessionJob(model=session.model, suffix=session.suffix, cache_key=before["cache_key"],
                     config_path=str(config_path), output_root=str(output), epochs=config.models["yolov8n"].epochs,
                     evaluations=evaluation_plan(config.occlusion))
    assert done_result(job) is None                                 # done, but one level short
    run = run_session_subprocess(job)
    assert run.status == "done"
    after = json.loads((folder / "metrics.json").read_text())
    assert _untouched_training(folder) == training
    for split in ("test_clean", "test_occ_fixed", "test_occ_sev1", "test_occ_sev2"):
        assert after["splits"][split] == before["splits"][split]
    assert after["severity"]["evaluations"]["test_occ_sev3"]["added_after_training"] is True
    assert after["severity"]["evaluations"]["test_occ_sev1"]["added_after_training"] is False
    log = (folder / "logs" / "session.log").read_text()
    assert "evaluating test_occ_sev3" in log and "evaluating test_occ_sev1" not in log
    again = done_result(job)                                       # complete now: the flow skips it, no subprocess
    assert again is not None and again.status == "cached"


def test_cli_builds_the_severity_suites(tiny_data_yaml: Path, tmp_path: Path, capsys) -> None:
    from exp3.occlusion import main

    assert main(["build-severity", "--data", str(tiny_data_yaml), "--out", str(tmp_path), "--workers", "1",
                 "--set", "severities=[[0.2, 0.3]]"]) == 0
    built = [Path(line) for line in capsys.readouterr().out.split()]
    assert len(built) == 1 and verify_occlusion_suite(built[0]) == [] and (built[0] / "test_occ_sev1.yaml").is_file()
    assert main(["build-severity", "--data", str(tiny_data_yaml), "--out", str(tmp_path),
                 "--set", "severities=[[0.3, 0.2]]"]) == 2
    assert "occlusion.severities" in capsys.readouterr().err


def test_crossings_name_where_a_session_changes_order_with_s1() -> None:
    """A crossing needs a paired interval below 0 at one severity and above 0 at another; order swaps of
    point estimates inside the noise (S3 here) are not crossings."""
    import pandas as pd

    from exp3.report.severity import crossings

    rows = []
    for suffix, diffs in (("S2_occ_train", [(-0.1, -0.15, -0.05), (0.0, -0.05, 0.05), (0.2, 0.1, 0.3)]),
                          ("S3_mask_backbone_early", [(0.1, -0.02, 0.2), (0.1, -0.01, 0.2), (-0.1, -0.2, 0.01)])):
        rows += [{"model": "m", "metric": "ingredient_micro_f1", "session": suffix, "severity": k, "value": 0.5,
                  "diff_vs_S1": d, "diff_ci_low": low, "diff_ci_high": high}
                 for k, (d, low, high) in enumerate(diffs)]
    rows += [{"model": "m", "metric": "ingredient_micro_f1", "session": "S1_clean_train", "severity": k,
              "value": 0.5, "diff_vs_S1": float("nan"), "diff_ci_low": float("nan"), "diff_ci_high": float("nan")}
             for k in range(3)]
    found = crossings(pd.DataFrame(rows), "m")
    assert found == ["S2 occluded-train is below S1 at severity 0 and above it at severity 2"]
