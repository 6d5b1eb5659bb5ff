"""exp3.report.plots: a session, or a model, has one colour in every chart that colours by it.

The colours are read back from each chart's Vega-Lite spec (`chart.to_dict()`), the scale the
renderer uses, so a chart that builds its own scale, or a palette defined twice, shows up here.
"""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path
from typing import Any

import altair as alt
import pandas as pd
import pytest

from exp3.report import plots
from exp3.sessions import SESSION_ORDER
from exp3.splits import PRIMARY_SPLITS

MODELS = ["yolov8m", "rtdetr-l"]


def colour_scales(spec: Any, field: str) -> list[dict[str, str]]:
    """{value: colour} of every colour encoding on `field` anywhere in a Vega-Lite spec."""
    found = []
    if isinstance(spec, dict):
        colour = spec.get("color")
        if isinstance(colour, dict) and colour.get("field") == field and "scale" in colour:
            found.append(dict(zip(colour["scale"]["domain"], colour["scale"]["range"], strict=True)))
        for value in spec.values():
            found += colour_scales(value, field)
    elif isinstance(spec, list):
        for value in spec:
            found += colour_scales(value, field)
    return found


def colours_by_value(charts: list[Any], field: str) -> dict[str, set[str]]:
    """value -> the colours it gets across `charts` (one entry per value when the charts agree)."""
    seen: dict[str, set[str]] = {}
    for chart in charts:
        scales = colour_scales(chart.to_dict(), field)
        assert scales, f"{type(chart).__name__} has no colour scale on {field}"
        for scale in scales:
            for value, colour in scale.items():
                seen.setdefault(value, set()).add(colour)
    return seen


def severity_frame(sessions: list[str]) -> pd.DataFrame:
    return pd.DataFrame([{"session_label": label, "severity": level, "severity_label": f"{level} x",
                          "value": 0.5, "ci_low": 0.4, "ci_high": 0.6} for label in sessions for level in range(3)])


def coverage_frame(sessions: list[str]) -> pd.DataFrame:
    return pd.DataFrame([{"session_label": label, "threshold_label": "primary threshold", "level_label": "detection",
                          "conf": 0.25, "bin_text": "[0.1, 0.2)", "x": 0.15, "recall": 0.5, "ci_low": 0.4,
                          "ci_high": 0.6, "n_boxes": 20, "n_found": 10} for label in sessions])


def test_each_session_has_one_colour_in_every_chart_that_colours_by_session() -> None:
    s1, s2, s3, s4, s5, s6 = SESSION_ORDER
    charts = [plots.severity_chart(severity_frame([s1, s2, s6]), "t", "F1"),
              plots.severity_chart(severity_frame([s3, s6]), "t", "F1"),          # S6 second here, sixth above
              plots.coverage_recall_chart(coverage_frame(list(SESSION_ORDER)), "t"),
              plots.coverage_recall_chart(coverage_frame([s2, s4, s5, s6]), "t")]
    seen = colours_by_value(charts, "session_label")
    assert set(seen) == set(SESSION_ORDER)
    assert {label: colours for label, colours in seen.items() if len(colours) > 1} == {}
    assert {label: colours.pop() for label, colours in seen.items()} == dict(zip(SESSION_ORDER, plots.SESSION_PALETTE))
    assert len(set(plots.SESSION_PALETTE)) == len(SESSION_ORDER)


def test_a_chart_lists_only_the_sessions_it_draws_in_session_order() -> None:
    s1, _, s3, _, _, s6 = SESSION_ORDER
    spec = plots.severity_chart(severity_frame([s6, s1, s3]), "t", "F1").to_dict()
    assert [list(scale) for scale in colour_scales(spec, "session_label")] == [[s1, s3, s6]] * 3   # area, line, point


def test_each_model_has_one_colour_in_every_chart_that_colours_by_model() -> None:
    sessions = list(SESSION_ORDER)
    bars = pd.DataFrame([{"model": model, "session_label": label, "value": 0.5, "ci_low": 0.4, "ci_high": 0.6,
                          "status_text": ""} for model in MODELS for label in sessions])
    gap = bars[bars["session_label"].isin(sessions[2:])].assign(verdict="cannot tell")
    one_model = pd.DataFrame([{"model": MODELS[1], "session_label": label, "split": split, "value": 0.5,
                               "status_text": ""} for label in sessions for split in PRIMARY_SPLITS])
    differences = pd.DataFrame([{"model": model, "session_label": label, "reference": "vs S1 clean",
                                 "difference": 0.1, "ci_low": 0.0, "ci_high": 0.2, "p_bh_text": ""}
                                for model in MODELS for label in sessions])
    charts = [plots.session_bar_chart(bars, MODELS, "t", "F1"),
              plots.session_bar_chart(bars[bars["model"] == MODELS[1]], MODELS, "t", "F1"),
              plots.gap_closed_chart(gap, MODELS, "t"),
              plots.split_bar_chart(one_model, MODELS, "t", "mAP"),
              plots.difference_chart(differences, MODELS, "t", "difference")]
    seen = colours_by_value(charts, "model")
    assert {model: colours for model, colours in seen.items() if len(colours) > 1} == {}
    assert {model: colours.pop() for model, colours in seen.items()} == dict(zip(MODELS, plots.MODEL_PALETTE))


def test_a_bar_chart_shows_every_bar_whisker_and_value_label_above_its_fixed_scale() -> None:
    """rF1 above the chart's 0..1.2 was drawn cut at 1.2 with its whiskers over the title; and its value labels
    were missing (computed by a chart-level transform the reference line's own data did not get)."""
    bars = pd.DataFrame([{"model": MODELS[0], "session_label": label, "value": value, "ci_low": value / 2,
                          "ci_high": value * 1.5, "status_text": ""}
                         for label, value in zip(SESSION_ORDER, (0.8, 1.6, 0.9, 1.0, 0.7, 2.4))])
    spec = plots.session_bar_chart(bars, MODELS, "t", "rF1", y_domain=(0.0, 1.2), reference_line=1.0).to_dict()
    (domain,) = [layer["encoding"]["y"]["scale"]["domain"] for layer in spec["layer"]
                 if "scale" in layer["encoding"].get("y", {})]
    assert domain[0] == 0.0 and domain[1] >= 3.6                                  # 2.4 x 1.5, the highest whisker
    (labels,) = [layer for layer in spec["layer"] if layer["encoding"].get("text", {}).get("field") == "value"]
    assert labels["encoding"]["y"]["field"] == "label_y" and "transform" not in spec
    (rows,) = [values for name, values in spec["datasets"].items() if len(values) == len(bars)]
    assert [row["label_y"] for row in rows] == pytest.approx(list(bars["ci_high"]))
    fitting = plots.session_bar_chart(bars.assign(value=0.5, ci_high=0.6), MODELS, "t", "F1").to_dict()
    assert [layer["encoding"]["y"]["scale"]["domain"] for layer in fitting["layer"]
            if "scale" in layer["encoding"].get("y", {})] == [[0.0, 1.0]]       # F1 keeps its 0..1


def test_no_module_level_name_is_defined_twice() -> None:
    """A second definition silently replaces the first (as a second SESSION_PALETTE once did)."""
    tree = ast.parse(Path(plots.__file__).read_text(encoding="utf-8"))
    names: Counter[str] = Counter()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names[node.name] += 1
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] += 1
        elif isinstance(node, ast.Assign):
            names.update(target.id for target in node.targets if isinstance(target, ast.Name))
    assert [name for name, count in names.items() if count > 1] == []


def test_split_panels_are_labelled_from_the_split_names() -> None:
    assert list(plots.SPLIT_LABELS) == list(PRIMARY_SPLITS)
    assert all(label.startswith(split) for split, label in plots.SPLIT_LABELS.items())


def test_tests_validate_each_chart_the_report_saves(tmp_path: Path) -> None:
    """conftest's `charts_are_validated`: the report saves unvalidated (`save_chart`), the tests validate; a chart
    the Vega-Lite schema does not allow fails before anything is written."""
    bad = alt.Chart(pd.DataFrame({"a": [1.0]})).mark_bar().encode(x=alt.X("a:Q", bin="wide"))
    with pytest.raises(Exception, match="wide"):
        plots.save_chart(bad, tmp_path / "bad")
    assert not list(tmp_path.iterdir())
