"""Compare two report roots' tables: `python benchmarks/compare_report_outputs.py BEFORE AFTER [--tol 1e-9]`.

Every CSV (and the JSON tables) found in BEFORE is read from both folders: same columns, same rows, text cells
equal, numbers equal to `--tol` (absolute; NaN equals NaN). report.md is compared line by line. Exit 1 on any
difference, listing each one.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import pandas as pd

TABLES = ("comparisons", "gap_closed", "summary_metrics", "summary_by_seed", "severity_curves", "severity_summary",
          "recall_by_coverage", "recall_by_coverage_boxes", "per_class_f1", "training_curves", "training_convergence")


def _same(a: object, b: object, tol: float) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        if math.isnan(a) and math.isnan(b):
            return True
        return abs(a - b) <= tol
    return a == b or (pd.isna(a) and pd.isna(b))


def compare_csv(before: Path, after: Path, tol: float) -> list[str]:
    a, b = pd.read_csv(before, keep_default_na=True), pd.read_csv(after, keep_default_na=True)
    if list(a.columns) != list(b.columns):
        return [f"{before.name}: columns differ: {sorted(set(a.columns) ^ set(b.columns))}"]
    if a.shape != b.shape:
        return [f"{before.name}: shape {a.shape} vs {b.shape}"]
    problems = []
    for column in a.columns:
        for row, (x, y) in enumerate(zip(a[column].tolist(), b[column].tolist())):
            if not _same(x, y, tol):
                problems.append(f"{before.name}: row {row} {column}: {x!r} vs {y!r}")
    return problems


def compare_json(before: Path, after: Path, tol: float) -> list[str]:
    a, b = (json.loads(path.read_text()) for path in (before, after))
    if len(a) != len(b):
        return [f"{before.name}: {len(a)} vs {len(b)} records"]
    problems = []
    for row, (x, y) in enumerate(zip(a, b)):
        if x.keys() != y.keys():
            problems.append(f"{before.name}: row {row}: keys differ")
            continue
        problems += [f"{before.name}: row {row} {key}: {x[key]!r} vs {y[key]!r}" for key in x
                     if not _same(math.nan if x[key] is None else x[key], math.nan if y[key] is None else y[key], tol)]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--tol", type=float, default=1e-9)
    args = parser.parse_args(argv)
    problems, compared = [], 0
    for name in TABLES:
        for suffix, compare in ((".csv", compare_csv), (".json", compare_json)):
            before = args.before / f"{name}{suffix}"
            if before.is_file():
                compared += 1
                after = args.after / before.name
                problems += compare(before, after, args.tol) if after.is_file() else [f"{after} is missing"]
    md_a, md_b = ((root / "report.md").read_text().splitlines() for root in (args.before, args.after))
    compared += 1
    problems += [f"report.md line {index + 1}: {x!r} vs {y!r}" for index, (x, y) in enumerate(zip(md_a, md_b))
                 if x != y] + ([f"report.md: {len(md_a)} vs {len(md_b)} lines"] if len(md_a) != len(md_b) else [])
    for line in problems[:200]:
        print(line)
    print(f"{compared} files compared, {len(problems)} differences (tolerance {args.tol:g})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
