"""How numbers read in report.md: values, intervals, p-values, session short names and markdown tables."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd


def fmt(value: Any, digits: int = 3, signed: bool = False, sides_of: tuple[float, ...] = ()) -> str:
    """`value` with `digits` decimals (a sign when `signed`); "n/a" for None or NaN. With `sides_of` (a rule's
    thresholds), more decimals (up to 6) where fewer would put the printed value on another side of one, or on it."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    value = value if value != 0 else 0.0  # -0.0 is 0; a tiny negative keeps its sign ("-0.000": below 0)
    while digits < 6 and any(_side(round(value, digits), edge) != _side(value, edge) for edge in sides_of):
        digits += 1
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _side(value: float, edge: float) -> int:
    return int(value > edge) - int(value < edge)


def fmt_ci(row: Any, value: str, low: str, high: str, signed: bool = False, digits: int = 3,
           sides_of: tuple[float, ...] | None = None) -> str:
    """The report's one interval text, `value [low, high]` of three fields of `row` (a Series or a dict): "n/a"
    without a value, no brackets without an interval; the bounds printed on the side of each of `sides_of` they
    lie on (`fmt`; None: of 0 for a `signed` difference, whose interval reads by its side of 0)."""
    sides_of = ((0.0,) if signed else ()) if sides_of is None else sides_of
    if pd.isna(row[value]):
        return "n/a"
    if pd.isna(row[low]) or pd.isna(row[high]):
        return fmt(row[value], digits, signed)
    return (f"{fmt(row[value], digits, signed)} [{fmt(row[low], digits, signed, sides_of)}, "
            f"{fmt(row[high], digits, signed, sides_of)}]")


def fmt_p(value: float) -> str:
    """A p-value: "<0.001", three decimals, or "n/a"."""
    return "n/a" if pd.isna(value) else ("<0.001" if value < 0.001 else f"{value:.3f}")


def seeds_done(suffix: str, done: int, planned: int) -> str:
    """`S2: 1 of 2 seeds done`: a session with only some of its seeds done."""
    return f"{short_session(suffix)}: {done} of {planned} seeds done"


def short_session(suffix: str) -> str:
    """`S2_occ_train` -> `S2`."""
    return suffix.split("_")[0]


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub markdown table of a small frame (strings as given)."""
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(str(value).replace("|", "/") for value in row) + " |"
            for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])
