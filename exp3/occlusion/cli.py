"""`python -m exp3.occlusion` / `exp3-occlusion`: build, build-train, build-severity, verify."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic import ValidationError

import exp3.occlusion
from exp3.config import ConfigError, load_config
from exp3.dataset.audit import DatasetError, audit_dataset, audit_failure
from exp3.occlusion import OcclusionError
from exp3.occlusion.suites import build_occluded_train_set, build_occlusion_suite, build_severity_suites
from exp3.occlusion.verify import verify_occlusion_suite

SPLITS_READ: dict[str, tuple[str, ...]] = {"build": ("test",), "build-severity": ("test",),
                                           "build-train": ("train", "val", "test")}
"""The splits each build command reads (S2's train set names the clean val and test splits beside it)."""


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; errors print one `error: ...` line to stderr and return 2."""
    description = exp3.occlusion.__doc__.splitlines()[0]  # the package's one-line summary, as before the split
    parser = argparse.ArgumentParser(prog="python -m exp3.occlusion", description=description)
    sub = parser.add_subparsers(dest="command", required=True)
    commands = {
        "build": "build (or verify) the fixed test suite",
        "build-train": "build (or verify) S2's occluded train set",
        "build-severity": "build (or verify) one suite per occlusion.severities level",
    }
    for command, help_text in commands.items():
        build = sub.add_parser(command, help=help_text)
        build.add_argument("--data", type=Path, required=True, help="YOLO data.yaml")
        build.add_argument("--out", type=Path, required=True, help="directory that holds the suites")
        build.add_argument("--config", type=Path, default=None, help="experiment config; uses its occlusion: section")
        build.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                           help="occlusion override, e.g. mode=random or 'fills=[gray]'")
        build.add_argument("--workers", type=int, default=2)
    verify = sub.add_parser("verify", help="check a suite or train set against its manifest")
    verify.add_argument("suite", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "verify":
            problems = verify_occlusion_suite(args.suite)
            for problem in problems:
                print(problem)
            print(f"{'FAILED' if problems else 'ok'}: {args.suite}", file=sys.stderr)
            return 1 if problems else 0
        # `--config FILE` (its occlusion: section), then `--set KEY=VALUE` (the occlusion. prefix optional)
        overrides = [item if item.startswith("occlusion.") else f"occlusion.{item}" for item in args.overrides]
        config = load_config(args.config, overrides).occlusion
        # the flow's audit (test images inside train: would be occluded into S2's train set), but for a split the
        # command does not read being absent (a suite is built from a yaml of its test split alone)
        audit = audit_dataset(args.data)
        audit.problems = [problem for problem in audit.problems if problem.split in SPLITS_READ[args.command]
                          or problem.kind not in ("missing_split", "missing_split_source")]
        if audit.blocking:
            raise audit_failure(audit.data_yaml, audit.summary_lines())
        if args.command == "build-severity":
            for suite in build_severity_suites(args.data, args.out, config, workers=args.workers):
                print(suite)
            return 0
        builder = build_occlusion_suite if args.command == "build" else build_occluded_train_set
        print(builder(args.data, args.out, config, workers=args.workers))
        return 0
    except (OcclusionError, ConfigError, DatasetError, PermissionError, ValidationError) as error:
        print(f"error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2

