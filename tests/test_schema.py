"""metrics.json's schema: `exp3.schema.SessionMetrics` describes the files exactly, `MetricsView` reads only
what it describes, and docs/schema.md documents every field of it (and nothing else).

Real run folders are validated too when there are any: `<repo>/runs/` and the roots named in
`EXP3_SCHEMA_RUNS` (os.pathsep-separated), e.g. `EXP3_SCHEMA_RUNS=/path/to/runs pytest tests/test_schema.py`.
"""

from __future__ import annotations

import json
import os
import re
import types
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import pytest
from pydantic import BaseModel, ValidationError

from exp3.fileio import canonical_json
from exp3.schema import MetricsView, Robustness, SessionMetrics, TrainingRan

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "tests" / "fixtures" / "metrics_example.json"
"""A real metrics.json (a masked smoke session, yolov8m S3), with its second severity level removed by
`exp3.session.record.with_severity_levels`: three splits, one severity level, one superseded result."""
DOC = REPO / "docs" / "schema.md"


def _example() -> dict[str, Any]:
    return json.loads(EXAMPLE.read_text(encoding="utf-8"))


def _round_trips(payload: dict[str, Any]) -> bool:
    """validate -> dump gives back the same JSON bytes (as exp3.fileio.atomic_write_json writes them)."""
    dumped = SessionMetrics.model_validate(payload).to_json()
    return canonical_json(dumped, indent=2) == canonical_json(payload, indent=2)


def _run_files() -> list[Path]:
    roots = [REPO / "runs", *(Path(root) for root in os.environ.get("EXP3_SCHEMA_RUNS", "").split(os.pathsep) if root)]
    return sorted(path for root in roots if root.is_dir() for path in root.rglob("metrics.json")
                  if "stale" not in path.relative_to(root).parts and (path.parent / "DONE").is_file())


# ----------------------------------------------------------------------------- the model and the files


def test_example_validates_and_round_trips_byte_for_byte() -> None:
    assert _round_trips(_example())


@pytest.mark.parametrize("path", ["severity", "data.severity_suites", "splits.test_clean.eval_stages_s"])
def test_a_file_of_the_first_format_is_refused(path: str) -> None:
    """Format 1 files could lack these; format 2 requires them (its folders are stale: another key)."""
    old = _example()
    *parents, last = path.split(".")
    block = old
    for part in parents:
        block = block[part]
    block.pop(last)
    with pytest.raises(ValidationError, match=last):
        SessionMetrics.model_validate(old)


def test_the_data_block_is_the_prepared_data_a_session_is_handed() -> None:
    """metrics.json's `data` is `PreparedData`: what `--prepared` carries is what the session records."""
    from exp3.session.prepare import prepared_from_json

    block = _example()["data"]
    prepared = SessionMetrics.model_validate(_example()).data
    assert prepared_from_json(json.dumps(block)) == prepared and prepared.model_dump(mode="json") == block
    assert prepared.test_splits() == ("test_clean", "test_occ_fixed", "test_occ_sev1")
    assert prepared.split_yaml("test_occ_sev1") == Path(block["severity_suites"][0]["suite_dir"]) / "test_occ_sev1.yaml"


def test_unmasked_sessions_and_undefined_numbers() -> None:
    payload = _example()
    payload["masking"] = None
    payload["splits"]["test_clean"]["ingredient"]["macro"] = {"precision": None, "recall": None, "f1": None}
    payload["robustness"]["rmAP50"] = None
    assert _round_trips(payload)


@pytest.mark.parametrize("path", ["", "training", "splits.test_clean", "splits.test_clean.ingredient.micro",
                                  "splits.test_clean.at_val_threshold.detection", "severity.evaluations.test_occ_sev1",
                                  "masking.stats.epochs.0.sites.backbone_early", "provenance.device", "data"])
def test_a_key_the_schema_does_not_know_fails_loudly(path: str) -> None:
    payload = _example()
    block: Any = payload
    for part in filter(None, path.split(".")):
        block = block[int(part)] if isinstance(block, list) else block[part]
    block["surprise"] = 1
    with pytest.raises(ValidationError, match="surprise"):
        SessionMetrics.model_validate(payload)


@pytest.mark.parametrize("path", ["thresholds.val_chosen", "splits.test_occ_fixed.map50", "training.family",
                                  "splits.test_clean.at_val_threshold", "inputs.suite_id", "seeds.train"])
def test_a_missing_field_fails_loudly(path: str) -> None:
    payload = _example()
    *parents, last = path.split(".")
    block: Any = payload
    for part in parents:
        block = block[part]
    del block[last]
    with pytest.raises(ValidationError, match=last):
        SessionMetrics.model_validate(payload)


def test_real_run_files_validate_and_round_trip() -> None:
    files = _run_files()
    if not files:
        pytest.skip("no run folder here: set EXP3_SCHEMA_RUNS to a run root to check real files")
    failing = [str(path) for path in files if not _round_trips(json.loads(path.read_text(encoding="utf-8")))]
    assert not failing


def test_blocks_mirror_their_owners() -> None:
    from exp3.session.record import robustness
    from exp3.train.training import RESUME_OVERRIDABLE

    assert set(TrainingRan.model_fields) == set(RESUME_OVERRIDABLE)
    clean = SessionMetrics.model_validate(_example()).splits["test_clean"]
    assert set(Robustness.model_fields) == set(robustness(clean, clean).model_dump())


def test_robustness_divides_each_occluded_score_by_its_clean_one() -> None:
    """Every ratio is its own metric on test_occ_fixed over the same metric on test_clean; the scores and ratios
    are all distinct, so a ratio of the wrong split or of the wrong metric shows. Both owners' inputs: a session's
    `SplitMetrics` and a report's `SplitView`."""
    from exp3.session.record import robustness

    scores = {"rF1_micro": (("ingredient", "micro", "f1"), 0.8, 0.6),
              "rF1_samples": (("ingredient", "samples", "f1"), 0.7, 0.35),
              "rF1_macro": (("ingredient", "macro", "f1"), 0.6, 0.54),
              "rmAP50": (("map50",), 0.5, 0.3), "rmAP50_95": (("map50_95",), 0.4, 0.1),
              "rF1_detection": (("detection", "f1"), 0.9, 0.72)}
    payload = _example()
    for path, clean_value, occluded_value in scores.values():
        for split, value in (("test_clean", clean_value), ("test_occ_fixed", occluded_value)):
            block = payload["splits"][split]
            for key in path[:-1]:
                block = block[key]
            block[path[-1]] = value
    expected = {name: occluded / clean for name, (_, clean, occluded) in scores.items()}
    assert len(set(expected.values())) == len(expected)
    strict, view = SessionMetrics.model_validate(payload), MetricsView.of(payload)
    for clean, occluded in ((strict.splits["test_clean"], strict.splits["test_occ_fixed"]),
                            (view.split("test_clean"), view.split("test_occ_fixed"))):
        assert robustness(clean, occluded).model_dump() == pytest.approx(expected)


# ----------------------------------------------------------------------------- the lenient view


def _model_of(annotation: Any) -> list[tuple[str, Any]]:
    """(path suffix, type) of what one field holds: `.*` for dict values, '' for list items and plain types."""
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        return [item for arg in get_args(annotation) if arg is not type(None) for item in _model_of(arg)]
    if origin is dict:
        return [(".*" + suffix, inner) for suffix, inner in _model_of(get_args(annotation)[1])]
    if origin is list:
        return _model_of(get_args(annotation)[0])
    return [("", annotation)]


def _is_model(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, BaseModel)


def field_paths(model: type[BaseModel], home_only: bool = True) -> tuple[set[str], set[str]]:
    """(all paths, leaf paths) of `model`: `a.b`, `.*` for the keys of a dict, lists as their items.

    home_only: a model met a second time (e.g. `SplitMetrics` in `severity.superseded`) is a leaf there,
    documented where it was met first.
    """
    every: set[str] = set()
    leaves: set[str] = set()
    seen: set[type] = set()

    def walk(kind: type[BaseModel], prefix: str) -> None:
        seen.add(kind)
        for name, info in kind.model_fields.items():
            for suffix, inner in _model_of(info.annotation):
                path = f"{prefix}{name}{suffix}"
                every.add(f"{prefix}{name}")
                every.add(path)
                if _is_model(inner) and not (home_only and inner in seen):
                    walk(inner, path + ".")
                else:
                    leaves.add(path)

    walk(model, "")
    return every, leaves


def test_the_view_reads_only_fields_the_session_writes() -> None:
    written, _ = field_paths(SessionMetrics, home_only=False)
    read, _ = field_paths(MetricsView, home_only=False)
    assert read - written == set()


def test_the_view_agrees_with_the_model_and_tolerates_partial_files() -> None:
    payload = _example()
    strict, view = SessionMetrics.model_validate(payload), MetricsView.of(payload)
    for split, part in strict.splits.items():
        assert view.split(split).ingredient.micro.f1 == part.ingredient.micro.f1
        assert view.split(split).at_val_threshold.detection.f1 == part.at_val_threshold.detection.f1
    assert view.thresholds.val_chosen == strict.thresholds.val_chosen and view.seeds.train == strict.seeds.train
    assert view.data.suite_dir == strict.data.suite_dir and strict.severity is not None
    assert [(level.split, level.coverage, level.suite_id) for level in view.severity.levels] == [
        (level.split, level.coverage, level.suite_id) for level in strict.severity.levels]
    assert {split: record.manifest_sha256 for split, record in view.severity.evaluations.items()} == {
        split: record.manifest_sha256 for split, record in strict.severity.evaluations.items()}
    partial = MetricsView.of({"splits": {"test_clean": {"map50": 0.5, "ingredient": None}, "x": [1]},
                              "training": "?", "seeds": {"train": True}})
    assert partial.split("test_clean").map50 == 0.5 and partial.split("test_clean").ingredient.micro.f1 is None
    assert partial.split("missing").map50 is None and partial.split("x").conf is None
    assert partial.training.wall_s is None and partial.seeds.train is None
    assert MetricsView.of(None) == MetricsView.of([]) == MetricsView()
    drifted = MetricsView.of({"severity": {"levels": [{"split": 1, "coverage": [0.1]}, "?", {"coverage": [0, 0.5]}],
                                           "evaluations": []}, "data": {"suite_dir": 3}})
    assert [(level.split, level.coverage) for level in drifted.severity.levels] == [(None, None), (None, None),
                                                                                     (None, (0.0, 0.5))]
    assert drifted.severity.evaluations == {} and drifted.data.suite_dir is None
    assert MetricsView.of({"severity": "?"}).severity.levels == []


# ----------------------------------------------------------------------------- docs/schema.md


def _expand(token: str) -> list[str]:
    """`a.{b,c}.d` -> [`a.b.d`, `a.c.d`]; `<split>` -> `*`."""
    token = re.sub(r"<[^>]+>", "*", token)
    match = re.search(r"\{([^}]*)\}", token)
    if not match:
        return [token]
    return [expanded for choice in match.group(1).split(",")
            for expanded in _expand(token[:match.start()] + choice.strip() + token[match.end():])]


def doc_rows(text: str, known: set[str]) -> list[tuple[list[str], set[str]]]:
    """(documented paths, names in backticks of the meaning) of each table row of docs/schema.md.

    A table under a heading naming a path (`## splits.<split>`) documents paths below it; in a key
    cell, `.x` after `a.b` means `a.x`.
    """
    rows: list[tuple[list[str], set[str]]] = []
    prefix = ""
    for line in text.splitlines():
        if line.startswith("#"):
            heading = [_expand(token)[0] for token in re.findall(r"`([^`]+)`", line)]
            prefix = next((token + "." for token in heading if token in known), "")
            continue
        if not line.startswith("|"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells[0] in ("key", "") or set(cells[0]) <= set("-: "):
            continue
        paths: list[str] = []
        previous = ""
        for token in re.findall(r"`([^`]+)`", cells[0]):
            full = (previous.rsplit(".", 1)[0] + token) if token.startswith(".") else token
            previous = full
            paths += [prefix + path for path in _expand(full)]
        names = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", " ".join(re.findall(r"`([^`]+)`", cells[-1]))))
        rows.append((paths, names))
    return rows


def test_every_documented_field_exists_and_every_field_is_documented() -> None:
    every, _ = field_paths(SessionMetrics, home_only=False)
    _, leaves = field_paths(SessionMetrics)
    rows = doc_rows(DOC.read_text(encoding="utf-8"), every)
    documented = {path: names for paths, names in rows for path in paths}
    assert set(documented) - every == set(), "docs/schema.md documents fields SessionMetrics does not have"
    undocumented = []
    for leaf in sorted(leaves):
        if leaf in documented or any(path.startswith(leaf + ".") for path in documented):
            continue
        parts = leaf.split(".")
        owners = [".".join(parts[:end]) for end in range(len(parts) - 1, 0, -1) if ".".join(parts[:end]) in documented]
        rest = {part for part in parts[len(owners[0].split(".")):] if part != "*"} if owners else set()
        if not owners or not rest <= documented[owners[0]]:
            undocumented.append(leaf)
    assert undocumented == [], "fields docs/schema.md does not name (in its table, or in backticks in the row " \
                               "of the block that holds them)"


def test_the_doc_check_notices_drift() -> None:
    every, _ = field_paths(SessionMetrics, home_only=False)
    rows = doc_rows("| key | type | meaning |\n|---|---|---|\n| `eval.conf` / `.nonsense` | float | x |\n"
                    "## `splits.<split>`\n| key | meaning |\n|---|---|\n| `ingredient.{micro,macro}.f1` | `a`, `b` |",
                    every)
    assert rows == [(["eval.conf", "eval.nonsense"], set()),
                    (["splits.*.ingredient.micro.f1", "splits.*.ingredient.macro.f1"], {"a", "b"})]
    assert "eval.nonsense" not in every and "splits.*.ingredient.macro.f1" in every

