"""Altair charts of the exp3 report: each function takes a tidy DataFrame and returns a chart.

Nothing is computed here: `exp3.report.charts` builds the frames (one row per bar / cell / interval) and
these functions only map columns to marks. Every chart uses the same session order
(`exp3.sessions.SESSION_ORDER`, S1..S6) and one colour scale per thing coloured: `model_colors(models)` where
models are the colour, `session_colors()` where sessions are, so a model or a session keeps its colour from
chart to chart. `save_chart` writes a PNG (vl-convert, offline) and an
interactive HTML file (Vega libraries inlined, so it opens without internet).

Frame contracts (columns):
    bar frame       model, session_label, value, ci_low, ci_high, status_text
    map frame       model, session_label, split, value, status_text
    heatmap frame   session_label, split, class_name, f1, f1_text
    diff frame      model, session_label, reference, difference, ci_low, ci_high, p_bh_text
    coverage frame  session_label, threshold_label, level_label, conf, bin_text, x, recall, ci_low, ci_high,
                    n_boxes, n_found
    curve frame     session_label, severity, severity_label, value, ci_low, ci_high (one model, one metric)
    gap frame       model, session_label, value, ci_low, ci_high, verdict, status_text (S3..S6 only)
    training frame  quantity, mark, session_label, seeds, epoch, value, text (one model;
                    exp3.report.curves.CURVE_COLUMNS: mark = session | seed | best | ramp)
`status_text` is "" for a done session and "failed" / "missing" / ... otherwise; `value` is NaN
for those (no bar drawn, the status is written at the baseline instead).
"""

from __future__ import annotations

import io
import textwrap
from pathlib import Path
from typing import Any

import altair as alt
import pandas as pd
import vl_convert
from PIL import Image, ImageDraw, ImageFont

from exp3.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json
from exp3.sessions import SESSION_LABELS, SESSION_ORDER
from exp3.splits import CLEAN_SPLIT, FIXED_SPLIT

SPLIT_LABELS: dict[str, str] = {CLEAN_SPLIT: f"{CLEAN_SPLIT} (clean images)",
                                FIXED_SPLIT: f"{FIXED_SPLIT} (occluded copies)"}
MODEL_PALETTE: tuple[str, ...] = ("#4C78A8", "#F58518", "#54A24B", "#B279A2", "#E45756", "#72B7B2", "#9D755D")
"""Colours given to models in the order of the report's model list (Tableau-like, colour-blind aware)."""
SESSION_PALETTE: tuple[str, ...] = ("#4C78A8", "#F58518", "#54A24B", "#B279A2", "#E45756", "#9D755D")
"""Colour of each session (S1..S6, `SESSION_ORDER`) in every chart where sessions, not models, are the colour
(`session_colors`)."""
PNG_SCALE = 2
"""vl-convert scale factor: 2 gives crisp PNGs for reports and slides."""
CHARTS_LIST = ".exp3-charts.json"
"""In plots/: the chart files the last build wrote (names), the only ones a later build removes there."""

# Two-line session labels: "S3" on the first line, "mask backbone-early" on the second.
_SESSION_LABEL_EXPR = "[substring(datum.label, 0, 2), substring(datum.label, 3)]"
_FONT_SIZE = 12
"""Of every axis's labels (its title: one more) and legend, set once in `save_chart`; the exceptions say so."""
_SMALL_FONTS = {"labelFontSize": 11, "titleFontSize": 11}
"""The heatmap's axes (a row per class, little room) and the coverage chart's size legend."""
_VEGA_FONTS = {"labelFontSize": 10, "titleFontSize": 11}
"""Vega-Lite's own sizes, where a chart keeps them (the heatmap's legend, the forest plot's x axis)."""
_SESSION_STEP = 130
"""Pixels per session on x: the widest label line ("mask backbone-early") needs ~125 px at 12 px."""


def model_colors(models: list[str], shown: list[str] | None = None) -> alt.Scale:
    """The one colour scale of all charts: models[i] -> MODEL_PALETTE[i % len]; `shown` (default: all `models`) limits
    the legend to the models a chart draws, each keeping its colour."""
    shown = list(models) if shown is None else [model for model in models if model in shown]
    return alt.Scale(domain=shown, range=[MODEL_PALETTE[models.index(model) % len(MODEL_PALETTE)] for model in shown])


def session_colors(shown: list[str] | None = None) -> alt.Scale:
    """The one session colour scale: SESSION_ORDER[i] -> SESSION_PALETTE[i]; `shown` (session labels, default: all
    six) limits the legend to the sessions a chart draws, in S1..S6 order, each keeping its colour."""
    shown = list(SESSION_ORDER) if shown is None else [label for label in SESSION_ORDER if label in shown]
    return alt.Scale(domain=shown, range=[SESSION_PALETTE[SESSION_ORDER.index(label)] for label in shown])


def _shown_models(frame: pd.DataFrame, models: list[str]) -> list[str]:
    """The report's models that appear in `frame`, in report order (a lookup, not a computation)."""
    present = set(frame["model"])
    return [model for model in models if model in present] or list(models)


def _model_colour(models: list[str], shown: list[str] | None = None) -> alt.Color:
    return alt.Color("model:N", title="model", scale=model_colors(models, shown), legend=alt.Legend(orient="top"))


def _session_colour(frame: pd.DataFrame, **legend: Any) -> alt.Color:
    """Colour by session (`session_colors` of the sessions `frame` draws), with this legend."""
    sessions = session_colors(list(frame["session_label"]))
    return alt.Color("session_label:N", title="session", sort=sessions.domain, scale=sessions,
                     legend=alt.Legend(**legend))


def _session_x(title: str = "session", sessions: list[str] = SESSION_ORDER) -> alt.X:
    return alt.X("session_label:N", title=title, sort=sessions, scale=alt.Scale(domain=sessions),
                 axis=alt.Axis(labelAngle=0, labelExpr=_SESSION_LABEL_EXPR, labelLimit=200))


def _y(title: str, field: str = "value", domain: tuple[float, float] | None = (0.0, 1.0)) -> alt.Y:
    scale = alt.Scale(domain=list(domain)) if domain else alt.Scale(zero=True)
    return alt.Y(f"{field}:Q", title=title, scale=scale, axis=alt.Axis(grid=True))


def _title(text: str, subtitle: str | list[str] | None = None) -> alt.TitleParams:
    return alt.TitleParams(text=text, subtitle=subtitle or "", fontSize=15, subtitleFontSize=12, anchor="start")


def session_bar_chart(frame: pd.DataFrame, models: list[str], title: str, y_title: str,
                      subtitle: str | None = None, y_domain: tuple[float, float] | None = (0.0, 1.0),
                      reference_line: float | None = None, reference_label: str | None = None) -> alt.LayerChart:
    """Bars per session (x, fixed S1..S6 order), one bar per model side by side (xOffset), CI error bars.

    Args:
        frame: bar frame (module docstring), one row per model x session; with several models it is
            the grouped chart (e.g. 12 bars for 2 models), with one model a plain 6-bar chart.
        models: the report's model list (fixes colours and the order of the bars within a group).
        reference_line: draw a dashed horizontal rule at this value (e.g. 1.0 for rF1), labelled
            `reference_label` at the right end.
    """
    shown = _shown_models(frame, models)
    frame = frame.assign(label_y=frame["ci_high"].where(frame["ci_high"].notna(), frame["value"]))
    highest = frame["label_y"].max()
    if y_domain is not None and highest > y_domain[1]:  # rF1 above 1.2: the bars and whiskers were cut off
        y_domain = (y_domain[0], float(highest) * 1.08)
    offset = alt.XOffset("model:N", sort=shown, scale=alt.Scale(domain=shown))
    tooltip = [alt.Tooltip("model:N"), alt.Tooltip("session_label:N", title="session"),
               alt.Tooltip("value:Q", format=".3f"), alt.Tooltip("ci_low:Q", format=".3f", title="95% CI low"),
               alt.Tooltip("ci_high:Q", format=".3f", title="95% CI high"),
               alt.Tooltip("status_text:N", title="status")]
    base = alt.Chart(frame).encode(x=_session_x(), xOffset=offset)
    bars = base.mark_bar(clip=True).encode(y=_y(y_title, domain=y_domain), color=_model_colour(models, shown),
                                           tooltip=tooltip)
    errors = base.mark_rule(color="black", strokeWidth=1.5).encode(y="ci_low:Q", y2="ci_high:Q")
    caps = [base.mark_tick(color="black", thickness=1.5, size=8).encode(y=f"{end}:Q") for end in ("ci_low", "ci_high")]
    values = base.mark_text(dy=-8, fontSize=10, baseline="bottom").encode(
        y=alt.Y("label_y:Q"), text=alt.Text("value:Q", format=".2f"))
    status = base.mark_text(dy=-4, fontSize=11, baseline="bottom", angle=0, color="#B22222").encode(
        y=alt.datum(0), text="status_text:N")
    layers: list[alt.Chart] = [bars, errors, *caps, values, status]
    width_per_session = max(_SESSION_STEP, 60 + 45 * len(shown))
    if reference_line is not None:
        one_row = alt.InlineData(values=[{"reference": reference_line}])   # drawn once, not once per bar
        layers.append(alt.Chart(one_row).mark_rule(strokeDash=[5, 4], color="gray").encode(y="reference:Q"))
        layers.append(alt.Chart(one_row).mark_text(align="right", baseline="bottom", dy=-3, fontSize=11,
                                                   color="dimgray")
                      .encode(x=alt.value(width_per_session * len(SESSION_ORDER) - 4), y="reference:Q",
                              text=alt.value(reference_label or f"{reference_line:g}")))
    return (alt.layer(*layers, data=frame)
            .properties(title=_title(title, subtitle), width=width_per_session * len(SESSION_ORDER), height=320))


def gap_closed_chart(frame: pd.DataFrame, models: list[str], title: str,
                     subtitle: str | None = None) -> alt.LayerChart:
    """Gap closed per masking session (x, S3..S6), one bar per model (xOffset), CI whiskers, rules at 0 and 1.

    Args:
        frame: gap frame (module docstring); `status_text` ("control failed", "n/a") is written at 0
            where there is no bar. The y scale covers 0..1 and every interval (never clipped).
    """
    shown = _shown_models(frame, models)
    sessions = SESSION_ORDER[2:]
    finite = pd.concat([frame["ci_low"], frame["ci_high"], frame["value"]]).dropna()
    low = min(-0.2, float(finite.min()) - 0.1) if len(finite) else -0.2
    high = max(1.2, float(finite.max()) + 0.1) if len(finite) else 1.2
    y = alt.Y("value:Q", title="gap closed (Sx - S1) / (S2 - S1)", scale=alt.Scale(domain=[low, high], nice=False),
              axis=alt.Axis(grid=True))
    offset = alt.XOffset("model:N", sort=shown, scale=alt.Scale(domain=shown))
    tooltip = ["model:N", alt.Tooltip("session_label:N", title="session"), alt.Tooltip("value:Q", format=".2f"),
               alt.Tooltip("ci_low:Q", format=".2f"), alt.Tooltip("ci_high:Q", format=".2f"), "verdict:N"]
    base = alt.Chart(frame).encode(x=_session_x("masking session", sessions), xOffset=offset)
    bars = base.mark_bar().encode(y=y, color=_model_colour(models, shown), tooltip=tooltip)
    errors = base.mark_rule(color="black", strokeWidth=1.5).encode(y="ci_low:Q", y2="ci_high:Q")
    caps = [base.mark_tick(color="black", thickness=1.5, size=8).encode(y=f"{end}:Q") for end in ("ci_low", "ci_high")]
    status = base.mark_text(angle=270, align="left", baseline="middle", dx=4, fontSize=10, color="#B22222").encode(
        y=alt.datum(0), text="status_text:N")                 # upright from 0: side-by-side models never overlap
    lines = alt.InlineData(values=[{"y": 0.0, "text": "0 = no effect"}, {"y": 1.0, "text": "1 = as S2"}])
    rules = alt.Chart(lines).mark_rule(strokeDash=[5, 4], color="gray").encode(y="y:Q")
    width = max(_SESSION_STEP, 60 + 45 * len(shown)) * len(sessions)
    labels = alt.Chart(lines).mark_text(align="right", baseline="top", dy=3, fontSize=11, color="dimgray").encode(
        x=alt.value(width - 4), y="y:Q", text="text:N")                 # below the line: status text sits above 0
    return (alt.layer(bars, errors, *caps, status, rules, labels)
            .properties(title=_title(title, subtitle), width=width, height=320))


def split_bar_chart(frame: pd.DataFrame, models: list[str], title: str, y_title: str,
                    subtitle: str | None = None) -> alt.FacetChart:
    """Bars per session for one model, one panel per split (e.g. mAP50-95 on each split).

    Args:
        frame: map frame (module docstring), one row per session x split for one model.
    """
    colour = alt.Color("model:N", scale=model_colors(models, _shown_models(frame, models)), legend=None)
    base = alt.Chart().encode(x=_session_x())
    bars = base.mark_bar().encode(y=_y(y_title), color=colour,
                                  tooltip=["session_label:N", "split:N", alt.Tooltip("value:Q", format=".3f")])
    values = base.mark_text(dy=-4, fontSize=10, baseline="bottom").encode(
        y="value:Q", text=alt.Text("value:Q", format=".3f"))
    status = base.mark_text(dy=-4, fontSize=11, baseline="bottom", color="#B22222").encode(
        y=alt.datum(0), text="status_text:N")
    return (alt.layer(bars, values, status, data=frame)
            .properties(width=_SESSION_STEP * len(SESSION_ORDER), height=240)
            .facet(row=_split_rows())
            .properties(title=_title(title, subtitle)))


def _split_rows() -> alt.Row:
    """One facet row per split, in SPLIT_LABELS order, headed by its label there."""
    cases = " : ".join(f"datum.label == '{split}' ? '{label}'" for split, label in SPLIT_LABELS.items())
    return alt.Row("split:N", title=None, sort=list(SPLIT_LABELS),
                   header=alt.Header(labelOrient="top", labelAnchor="start", labelExpr=f"{cases} : datum.label"))


def class_heatmap(frame: pd.DataFrame, title: str, subtitle: str | None = None) -> alt.FacetChart:
    """Per-class ingredient F1 (colour and text) by session (x) and class (y), one panel per split.

    Args:
        frame: heatmap frame (module docstring), one row per session x split x class of one model.
    """
    base = alt.Chart().encode(
        x=alt.X("session_label:N", title="session", sort=SESSION_ORDER, scale=alt.Scale(domain=SESSION_ORDER),
                axis=alt.Axis(labelAngle=0, labelExpr=_SESSION_LABEL_EXPR, orient="bottom", **_SMALL_FONTS)),
        y=alt.Y("class_name:N", title="class", sort=None, axis=alt.Axis(**_SMALL_FONTS)))
    cells = base.mark_rect(stroke="white", strokeWidth=1).encode(
        color=alt.Color("f1:Q", title="ingredient F1", scale=alt.Scale(domain=[0, 1], scheme="viridis"),
                        legend=alt.Legend(orient="right", gradientLength=200, **_VEGA_FONTS)),
        tooltip=["class_name:N", "session_label:N", "split:N", alt.Tooltip("f1:Q", format=".3f"), "support:Q"])
    text = base.mark_text(fontSize=10).encode(
        text="f1_text:N", color=alt.condition("datum.f1 > 0.6", alt.value("black"), alt.value("white")))
    return (alt.layer(cells, text, data=frame)
            .properties(width=_SESSION_STEP * len(SESSION_ORDER), height=alt.Step(22))
            .facet(row=_split_rows())
            .properties(title=_title(title, subtitle)))


def difference_chart(frame: pd.DataFrame, models: list[str], title: str, x_title: str,
                     subtitle: str | None = None) -> alt.FacetChart:
    """Forest plot: difference vs a reference session (x) per session (y, S1..S6), CI bars, one panel per reference.

    Args:
        frame: diff frame (module docstring), one row per model x session x reference.
    """
    y = alt.Y("session_label:N", title=None, sort=SESSION_ORDER, scale=alt.Scale(domain=SESSION_ORDER),
              axis=alt.Axis(labelLimit=220))
    offset = alt.YOffset("model:N", sort=list(models), scale=alt.Scale(domain=list(models)))
    base = alt.Chart().encode(y=y, yOffset=offset, color=_model_colour(models))
    tooltip = ["model:N", "session_label:N", "reference:N", alt.Tooltip("difference:Q", format="+.3f"),
               alt.Tooltip("ci_low:Q", format="+.3f"), alt.Tooltip("ci_high:Q", format="+.3f"), "p_bh_text:N"]
    x = alt.X("ci_low:Q", title=x_title, axis=alt.Axis(**_VEGA_FONTS))
    intervals = base.mark_rule(strokeWidth=2).encode(x=x, x2="ci_high:Q")
    points = base.mark_point(filled=True, size=60).encode(x="difference:Q", tooltip=tooltip)
    # p text on the far side of the interval from zero, so it never crosses the zero line
    labels_right = base.mark_text(align="left", dx=6, fontSize=10).encode(
        x="ci_high:Q", text="p_bh_text:N").transform_filter("datum.difference >= 0")
    labels_left = base.mark_text(align="right", dx=-6, fontSize=10).encode(
        x="ci_low:Q", text="p_bh_text:N").transform_filter("datum.difference < 0")
    zero = alt.Chart(alt.InlineData(values=[{"zero": 0}])).mark_rule(color="gray", strokeDash=[4, 3]).encode(
        x="zero:Q")
    return (alt.layer(zero, intervals, points, labels_right, labels_left, data=frame)
            .properties(width=330, height=alt.Step(16))
            .facet(column=alt.Column("reference:N", title=None))
            .properties(title=_title(title, subtitle)))


def severity_chart(frame: pd.DataFrame, title: str, y_title: str, subtitle: str | None = None) -> alt.LayerChart:
    """One model's metric vs occlusion severity: one line per session, 95% CI band, severity 0 = clean.

    Args:
        frame: curve frame (module docstring), one row per session x severity; severity_label e.g. "0 clean",
            "1 0.1-0.26".
    """
    colour = _session_colour(frame, orient="right", symbolOpacity=1.0, symbolType="stroke", symbolStrokeWidth=3)
    order = list(dict.fromkeys(frame.sort_values("severity")["severity_label"]))
    x = alt.X("severity_label:O", title="occlusion severity (covered fraction of each box; 0 = clean)", sort=order,
              axis=alt.Axis(labelAngle=0))
    base = alt.Chart().encode(x=x, color=colour)
    tooltip = ["session_label:N", "severity_label:N", alt.Tooltip("value:Q", format=".3f"),
               alt.Tooltip("ci_low:Q", format=".3f"), alt.Tooltip("ci_high:Q", format=".3f")]
    band = base.mark_area(opacity=0.12).encode(y=alt.Y("ci_low:Q", title=y_title), y2="ci_high:Q")
    line = base.mark_line(strokeWidth=2).encode(y=_y(y_title))
    points = base.mark_point(filled=True, size=45).encode(y="value:Q", tooltip=tooltip)
    return (alt.layer(band, line, points, data=frame).properties(width=460, height=300)
            .properties(title=_title(title, subtitle)))


def training_curve_chart(frame: pd.DataFrame, title: str, subtitle: str | list[str] | None = None) -> alt.FacetChart:
    """One model's training: one panel per quantity (val mAP50-95, the train loss; independent y) against epoch, one
    colour per session.

    Args:
        frame: training frame (module docstring), panels in the order of their first row: `session` rows a thick
            line, `seed` rows a faint one, `best` a diamond, `ramp` a dashed rule labelled by `text`.
    """
    colour = _session_colour(frame, orient="right", symbolType="stroke", symbolStrokeWidth=3, symbolOpacity=1.0,
                             labelLimit=220)
    last = int(frame["epoch"].max()) if len(frame) else 1
    ticks = {"values": list(range(1, last + 1))} if last <= 12 else {}  # few epochs: Vega-Lite put ticks at 1.5, ...
    x = alt.X("epoch:Q", title="epoch", scale=alt.Scale(domainMin=1, nice=False),
              axis=alt.Axis(tickMinStep=1, format="d", **ticks))
    y = alt.Y("value:Q", title=None, scale=alt.Scale(zero=False), axis=alt.Axis(grid=True))
    tooltip = [alt.Tooltip("session_label:N", title="session"), alt.Tooltip("seeds:N", title="seed(s)"),
               "epoch:Q", alt.Tooltip("value:Q", format=".4f")]
    base = alt.Chart().encode(x=x)
    ramps = base.transform_filter(alt.datum.mark == "ramp")
    rules = ramps.mark_rule(strokeDash=[6, 4], color="dimgray", strokeWidth=1.5)
    labels = ramps.mark_text(align="left", baseline="top", dx=4, dy=4, fontSize=11, color="dimgray").encode(
        y=alt.value(0), text="text:N")
    seeds = base.transform_filter(alt.datum.mark == "seed").mark_line(strokeWidth=1, opacity=0.3).encode(
        y=y, color=colour, detail="seeds:N")
    lines = base.transform_filter(alt.datum.mark == "session").mark_line(strokeWidth=2.5).encode(
        y=y, color=colour, tooltip=tooltip)
    best = base.transform_filter(alt.datum.mark == "best").mark_point(
        shape="diamond", filled=True, size=120, stroke="black", strokeWidth=1, opacity=1).encode(
        y=y, color=colour, tooltip=tooltip)
    panels = list(dict.fromkeys(frame["quantity"]))
    return (alt.layer(rules, labels, seeds, lines, best, data=frame).properties(width=440, height=300)
            .facet(column=alt.Column("quantity:N", title=None, sort=panels))
            .resolve_scale(y="independent")
            .properties(title=_title(title, subtitle)))


def save_chart(chart: alt.TopLevelMixin, path_without_suffix: Path) -> list[Path]:
    """Write `<path>.png` (vl-convert, scale PNG_SCALE) and `<path>.html` (interactive, inlined), atomically, in the
    report's fonts (`_FONT_SIZE`)."""
    spec = (chart.configure_axis(labelFontSize=_FONT_SIZE, titleFontSize=_FONT_SIZE + 1)
            .configure_legend(labelFontSize=_FONT_SIZE, titleFontSize=_FONT_SIZE)
            .configure_header(labelFontSize=13, labelFontWeight="bold")
            .to_dict(validate=False))  # tests validate every chart the report draws (test_report)
    return [atomic_write_bytes(path_without_suffix.with_suffix(".png"),
                               vl_convert.vegalite_to_png(spec, scale=PNG_SCALE)),
            atomic_write_text(path_without_suffix.with_suffix(".html"), vl_convert.vegalite_to_html(spec, bundle=True))]


def remove_stale_charts(plots_dir: Path, written: list[Path]) -> list[Path]:
    """Delete the chart files in `plots_dir` that an earlier build wrote and this one did not, and return them: an
    earlier build's chart of a model, session or metric no longer reported would sit beside the new ones with its
    old numbers. Only names in `CHARTS_LIST` (the charts of the last build, rewritten here) are ever deleted: the
    folder may hold the user's own figures. A plots folder without the list (none written there yet, or by an exp3
    that kept none) loses nothing."""
    names = sorted(path.name for path in written if path.parent == plots_dir)
    earlier = read_json(plots_dir / CHARTS_LIST)
    stale = [plots_dir / name for name in (earlier if isinstance(earlier, list) else [])
             if isinstance(name, str) and name not in names and Path(name).name == name]  # a name, never a path
    for path in stale:
        path.unlink(missing_ok=True)
    atomic_write_json(plots_dir / CHARTS_LIST, names)
    return stale


def coverage_recall_chart(frame: pd.DataFrame, title: str, subtitle: str | None = None) -> alt.FacetChart:
    """Recall (y) by covered-fraction bin (x), one line per session, CI bars; one panel per level ("found" at
    detection and at ingredient level, columns) and operating point (rows), for one model
    (exp3.report.coverage.chart_frame).

    Args:
        frame: coverage frame (module docstring), one row per session x threshold x level x non-empty bin; `x`: the
            bin centre, nudged per session.
    """
    colour = _session_colour(frame, orient="top", columns=3, labelLimit=220)
    x = alt.X("x:Q", title="covered fraction of the box (bin centre)", scale=alt.Scale(domain=[0, 1]),
              axis=alt.Axis(values=[index / 10 for index in range(11)], format=".1f"))
    tooltip = ["session_label:N", "threshold_label:N", "conf:N", "level_label:N",
               alt.Tooltip("bin_text:N", title="covered fraction"),
               alt.Tooltip("recall:Q", format=".3f"), alt.Tooltip("ci_low:Q", format=".3f", title="95% CI low"),
               alt.Tooltip("ci_high:Q", format=".3f", title="95% CI high"), alt.Tooltip("n_found:Q", title="found"),
               alt.Tooltip("n_boxes:Q", title="boxes")]
    base = alt.Chart().encode(x=x, color=colour)
    lines = base.mark_line(strokeWidth=2).encode(y=_y("recall", field="recall"), detail="session_label:N")
    errors = base.mark_rule(strokeWidth=1.5, opacity=0.7).encode(y="ci_low:Q", y2="ci_high:Q")
    points = base.mark_point(filled=True, opacity=1).encode(
        y="recall:Q", tooltip=tooltip,
        size=alt.Size("n_boxes:Q", title="boxes in bin", scale=alt.Scale(range=[15, 200]),
                      legend=alt.Legend(orient="right", **_SMALL_FONTS)))
    return (alt.layer(lines, errors, points, data=frame)
            .properties(width=380, height=300)
            .facet(column=alt.Column("level_label:N", title=None, sort=list(frame["level_label"].unique())),
                   row=alt.Row("threshold_label:N", title=None, sort=list(frame["threshold_label"].unique()),
                               header=alt.Header(labelOrient="top", labelAnchor="start")))
            .properties(title=_title(title, subtitle)))


GALLERY_CELL = 300
"""Pixels of the longer side of each gallery image."""
MATCHED_COLOUR, UNMATCHED_COLOUR, TRUTH_COLOUR = (0, 200, 60), (235, 40, 40), (255, 255, 255)


def _font(size: int):  # type: ignore[no-untyped-def]
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default(size=size)


def _boxed_image(path: Path, boxes, truth, scale_to: int, label_truth: bool = False):  # type: ignore[no-untyped-def]
    """One gallery cell: the image scaled to `scale_to` px (longer side), ground truth thin white, `boxes` coloured."""
    image = Image.open(path).convert("RGB")
    scale = scale_to / max(image.size)
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    draw, font = ImageDraw.Draw(image), _font(11)
    for box in truth:
        draw.rectangle([value * scale for value in box.xyxy], outline=TRUTH_COLOUR, width=1 if boxes else 2)
        if not boxes and label_truth:                         # the ground-truth column names its classes
            x0, y0 = box.xyxy[0] * scale, box.xyxy[1] * scale
            draw.text((x0 + 3, y0 + 2), box.label, fill=TRUTH_COLOUR, font=font, stroke_width=2, stroke_fill=(0, 0, 0))
    for box in boxes:
        colour = MATCHED_COLOUR if box.matched else UNMATCHED_COLOUR
        x0, y0, x1, y1 = (value * scale for value in box.xyxy)
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=3)
        left, top, right, bottom = draw.textbbox((x0, y0), box.label, font=font)
        label_top = max(0.0, y0 - (bottom - top) - 2)
        draw.rectangle([x0, label_top, x0 + right - left + 4, label_top + bottom - top + 2], fill=colour)
        draw.text((x0 + 2, label_top), box.label, fill=(0, 0, 0) if box.matched else (255, 255, 255), font=font)
    return image


def save_gallery(gallery, path: Path) -> Path:  # type: ignore[no-untyped-def]
    """Draw `exp3.report.gallery.Gallery` (rows x [ground truth, one column per session]) and write a PNG atomically.

    Nothing is decided here: rows, boxes, colours (matched or not) and the caption come in the gallery.
    """
    columns = 1 + len(gallery.sessions)
    label_width, header, pad = 170, 46, 8
    cell = GALLERY_CELL
    caption = textwrap.wrap(gallery.caption, width=int((label_width + columns * (cell + pad)) / 7.2))
    height = header + len(gallery.rows) * (cell + pad) + 18 * len(caption) + 16
    sheet = Image.new("RGB", (label_width + columns * (cell + pad) + pad, height), "white")
    draw, title_font, font = ImageDraw.Draw(sheet), _font(15), _font(12)
    titles = ["occluded image + ground truth", *(SESSION_LABELS[suffix] for suffix in gallery.sessions)]
    draw.text((pad, 6), f"{gallery.model}: {FIXED_SPLIT}", fill="black", font=title_font)
    for index, title in enumerate(titles):
        draw.text((label_width + index * (cell + pad), 26), title, fill="black", font=font)
    for number, row in enumerate(gallery.rows):
        top = header + number * (cell + pad)
        lines = [row.reason, row.image_id, *(f"{SESSION_LABELS[c.session].split()[0]} F1 {c.ingredient_f1:.2f}"
                                             for c in row.cells)]
        draw.multiline_text((pad, top + 4), "\n".join(lines), fill="black", font=font, spacing=4)
        sheet.paste(_boxed_image(row.image_path, (), row.ground_truth, cell, label_truth=True), (label_width, top))
        for index, found in enumerate(row.cells, start=1):
            sheet.paste(_boxed_image(row.image_path, found.boxes, row.ground_truth, cell),
                        (label_width + index * (cell + pad), top))
    draw.multiline_text((pad, header + len(gallery.rows) * (cell + pad) + 4), "\n".join(caption), fill="dimgray",
                        font=font, spacing=4)
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    return atomic_write_bytes(path, buffer.getvalue())
