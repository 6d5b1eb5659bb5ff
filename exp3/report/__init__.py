"""Rebuild the exp3 report from session folders: tables, statistics, charts, report.md and report.html.

    python -m exp3.report --root runs/exp3 [--models yolov8m rtdetr-l] [--seeds 0 1 2] [--sessions S1_clean_train ...]

The grid (the command line's: `run_grid`), the files, their columns and the session statuses: docs/report.md; each
part's module and what it owns: docs/layout.md, "The report"; this module runs them in order.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from exp3.config import load_config
from exp3.evaluate import stats
from exp3.fileio import atomic_write_json, atomic_write_text
from exp3.report import coverage, curves, gallery, gap, plots, severity
from exp3.report.charts import write_charts
from exp3.report.comparisons import attach_statistics, statistics_tables
from exp3.report.coverage import CoverageReport
from exp3.report.draws import ReportData
from exp3.report.html import render_html
from exp3.report.markdown import render_markdown
from exp3.report.runs import (
    discover_models,
    resumed_notes,
    run_sessions,
    scan_sessions,
    session_folders,
    software_notes,
)
from exp3.report.tables import by_seed_table, per_class_table, summary_table
from exp3.session.plan import PLAN_FILENAME, read_plan
from exp3.sessions import SESSION_SEPARATOR, SESSION_SUFFIXES, UNNAMED_SEED
from exp3.splits import CLEAN_SPLIT


@dataclass
class ReportResult:
    """What `build_report` produced: the tables (also written to disk) and every file written."""

    root: Path
    models: list[str]
    summary: pd.DataFrame
    by_seed: pd.DataFrame
    comparisons: pd.DataFrame
    per_class: pd.DataFrame
    files: list[Path]
    n_resamples: int
    seed: int
    coverage: CoverageReport
    """Recall by covered fraction (exp3.report.coverage)."""
    sessions: tuple[str, ...] = SESSION_SUFFIXES
    """The suffixes of this run (the others are `not in run`)."""
    severity_curves: pd.DataFrame = field(default_factory=pd.DataFrame)
    severity_table: pd.DataFrame = field(default_factory=pd.DataFrame)
    """exp3.report.severity.severity_tables: the curves and the mPC / rPC table (empty without severity splits)."""
    gap_closed: pd.DataFrame = field(default_factory=pd.DataFrame)
    """exp3.report.gap.gap_table: the headline, gap closed per model x metric x masking session x basis."""
    training_curves: curves.TrainingCurves = field(default_factory=curves.TrainingCurves)
    """exp3.report.curves.training_curves: each done session's epochs, best.pt epoch and convergence reading."""
    warnings: list[str] = field(default_factory=list)
    """Problems met reading the session folders (`ReportData.warnings`), listed in report.md under the status grid."""
    control_notes: dict[str, str] = field(default_factory=dict)
    """Per model, S2 and S1 not trained at one batch (exp3.report.gap.training_note), on the positive control's line."""

    @property
    def status_counts(self) -> dict[str, int]:
        """Sessions per status (model x session, counted once, not per split)."""
        return self.summary[self.summary["split"] == CLEAN_SPLIT]["status"].value_counts().to_dict()


def require_run(root: Path) -> None:
    """FileNotFoundError, one line naming `root` and the fix, unless it holds an exp3 run: its plan.json,
    config_resolved.yaml or a session folder. A build replaces report.md, the tables and the charts there: a wrong
    --root (a folder of notes, a typo) must lose nothing."""
    if not root.is_dir():
        raise FileNotFoundError(f"report root {str(root)!r} is not a directory: pass the experiment's output_root")
    if not ((root / PLAN_FILENAME).is_file() or (root / "config_resolved.yaml").is_file() or discover_models(root)):
        raise FileNotFoundError(f"report root {str(root)!r} holds no exp3 run (no {PLAN_FILENAME}, no "
                                "config_resolved.yaml, no <model>/<model>__S1_clean_train/ ... folder): pass the "
                                "experiment's output_root")


def build_report(root: Path, models: list[str] | None = None, seeds: list[int] | None = None,
                 n_resamples: int = stats.DEFAULT_RESAMPLES, n_permutations: int = stats.DEFAULT_PERMUTATIONS,
                 charts: bool = True, sessions: list[str] | None = None,
                 occluded_splits: tuple[str, ...] | None = None) -> ReportResult:
    """Rebuild every report file under `root` from its session folders (the files and options: docs/report.md).

    Args:
        root: the experiment's output root (holds `<model>/<model>__<suffix>/` folders).
        models: models to report, in order; None discovers them (`discover_models`); one without folders is `missing`.
        seeds: expected training seeds (several: `__seed<N>` folders); None takes what exists.
        charts: False skips the PNG/HTML charts and leaves `plots/` as it is (docs/report.md, "Charts").
        sessions: the suffixes of this run; None: all six (docs/report.md, "Status of a session").
        occluded_splits: the occluded splits of "Recall by covered fraction" (exp3.report.coverage); None:
            test_occ_fixed and the severity splits every done session has (`coverage.default_splits`).

    Raises:
        FileNotFoundError: `root` is not a directory or holds no exp3 run (`require_run`), or no model is given
            and none is found.
        ValueError: `sessions` names an unknown suffix, or none.
    """
    root = Path(root)
    require_run(root)
    models = discover_models(root) if models is None else list(dict.fromkeys(models))
    if not models:
        raise FileNotFoundError(f"no session folders under {str(root)!r} (expected <model>/<model>__S1_clean_train/ "
                                "...): pass --models to report an empty grid, or check --root")
    in_run = run_sessions(sessions)
    runs = scan_sessions(root, models, seeds, in_run)
    data = ReportData(runs, n_resamples)  # every predictions and map_stats file read once, one set of draws
    by_seed = by_seed_table(runs)
    intervals, comparisons = statistics_tables(data, models, n_permutations)
    comparisons = comparisons[comparisons["session"].isin(in_run)
                              & comparisons["reference"].isin(in_run)].reset_index(drop=True)
    summary = attach_statistics(summary_table(by_seed), intervals, comparisons)
    per_class = per_class_table(runs)
    severity_curves, severity_table = severity.severity_tables(data, models, n_permutations)
    gap_closed = gap.gap_table(gap.gap_rows(data, models, comparisons, in_run))
    files = []
    for name, frame in (("summary_metrics", summary), ("summary_by_seed", by_seed), ("comparisons", comparisons),
                        ("gap_closed", gap_closed)):
        files.append(atomic_write_text(root / f"{name}.csv", frame.to_csv(index=False)))
        files.append(atomic_write_json(root / f"{name}.json",
                                       json.loads(frame.to_json(orient="records", double_precision=15))))
    for name, frame in (("per_class_f1", per_class), ("severity_curves", severity_curves),
                        ("severity_summary", severity_table)):
        files.append(atomic_write_text(root / f"{name}.csv", frame.to_csv(index=False)))
    if charts:
        files += gap.write_gap_charts(gap_closed, models, root / "plots")
        files += write_charts(summary, comparisons, per_class, models, root / "plots")
        files += gallery.write_galleries(data, models, summary, root / "plots")
        files += severity.write_severity_charts(severity_curves, models, root / "plots")
    by_coverage = coverage.coverage_report(data, occluded_splits)
    files += coverage.write_coverage_outputs(by_coverage, root, models, charts)
    training = curves.training_curves(runs, models)
    files += curves.write_curve_outputs(training, root, models, charts)
    if charts:
        plots.remove_stale_charts(root / "plots", files)
    result = ReportResult(root, models, summary, by_seed, comparisons, per_class, files, n_resamples, data.seed,
                          by_coverage, in_run, severity_curves, severity_table, gap_closed, training,
                          sorted(set(data.warnings)) + resumed_notes(runs) + software_notes(runs),
                          {model: gap.training_note(data, model, (gap.CONTROL, gap.REFERENCE)) for model in models})
    text = render_markdown(result)
    result.files.append(atomic_write_text(root / "report.md", text))
    result.files.append(atomic_write_text(root / "report.html", render_html(text, root, f"exp3 report: {root.name}")))
    return result


def run_grid(root: Path, models: list[str] | None, seeds: list[int] | None,
             sessions: list[str] | None) -> tuple[list[str] | None, list[int] | None, list[str] | None]:
    """The models, seeds and sessions `main` reports: each one given wins; the others come from
    `<root>/config_resolved.yaml` as the flow's report task passes them (flows/exp3.py: the config's models but one
    whose weights it could not resolve, which plan.json then names no session of; its seeds; its sessions), so a bare
    `python -m exp3.report --root R` rebuilds the flow's report. Without that file: None (`build_report` discovers).

    Raises ValueError (one line) for a `models` or `seeds` value with no session folder under `root` that the
    config does not name either: a typo would replace a good report with an empty grid's."""
    require_run(root)
    config = load_config(root / "config_resolved.yaml") if (root / "config_resolved.yaml").is_file() else None
    found = discover_models(root)
    known_models = list(dict.fromkeys([*(config.models if config else []), *found]))
    if unknown := [model for model in models or [] if model not in known_models]:
        raise ValueError(f"--models {unknown[0]}: no session folder of it under {str(root)!r} and not a model of its "
                         f"config_resolved.yaml: pass models found there ({', '.join(known_models) or 'none'})")
    known_seeds = sorted({*(config.seeds if config else ()),
                          *(UNNAMED_SEED if seed is None else seed
                            for model in found for _, seed, _ in session_folders(root / model))})
    if unknown_seeds := [seed for seed in seeds or [] if seed not in known_seeds]:
        raise ValueError(f"--seeds {unknown_seeds[0]}: no session folder of that seed under {str(root)!r} and not a "
                         f"seed of its config_resolved.yaml: pass seeds found there "
                         f"({', '.join(map(str, known_seeds)) or 'none'})")
    if config is None:
        return models, seeds, sessions
    planned = {name.split(SESSION_SEPARATOR, 1)[0] for name in read_plan(root)}
    return (models or [model for model in config.models if not planned or model in planned],
            seeds or list(config.seeds), sessions or list(config.sessions))


def main(argv: list[str] | None = None) -> int:
    """`python -m exp3.report --root DIR [--models M ...] [--seeds N ...] [--sessions S ...] [--no-charts]`."""
    parser = argparse.ArgumentParser(prog="python -m exp3.report",
                                     description="rebuild the exp3 report from session folders")
    parser.add_argument("--root", type=Path, required=True, help="the experiment's output root, e.g. runs/exp3")
    parser.add_argument("--models", nargs="+", default=None,
                        help="models to report (default: the run's config_resolved.yaml, else discovered)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help="expected training seeds (default: the run's config_resolved.yaml, else found)")
    parser.add_argument("--sessions", nargs="+", default=None,
                        help="this run's sessions (default: config_resolved.yaml's `sessions:`, else all six); the "
                        "others: 'not in run'")
    parser.add_argument("--resamples", type=int, default=stats.DEFAULT_RESAMPLES, help="bootstrap resamples")
    parser.add_argument("--no-charts", action="store_true", help="tables and report.md only")
    args = parser.parse_args(argv)
    try:
        if args.resamples < 1:
            raise ValueError(f"--resamples {args.resamples}: pass a positive count such as 2000")
        models, seeds, sessions = run_grid(args.root, args.models, args.seeds, args.sessions)
        result = build_report(args.root, models, seeds, n_resamples=args.resamples, charts=not args.no_charts,
                              sessions=sessions)
    except (FileNotFoundError, ValueError, PermissionError) as error:
        print(f"error: {error}".splitlines()[0], file=sys.stderr)
        return 2
    counts = ", ".join(f"{count} {status}" for status, count in sorted(result.status_counts.items()))
    print(f"report: {len(result.models)} model(s), sessions {counts} -> {result.root / 'report.md'}")
    return 0
