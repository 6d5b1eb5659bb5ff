"""`python -m exp3.dataset synth|audit`: the embedded synthetic dataset, and the audit of any YOLO data.yaml."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from exp3.dataset.audit import DatasetError, audit_dataset
from exp3.dataset.synth import build_synthetic_dataset
from exp3.fileio import atomic_write_json
from exp3.splits import SOURCE_SPLITS


def _cmd_synth(args: argparse.Namespace) -> int:
    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out {str(args.out)!r} is a file: pass a new or empty directory")
    counts = None
    if args.counts:
        try:
            counts = dict(zip(SOURCE_SPLITS, map(int, args.counts.split(",")), strict=True))
        except ValueError:
            raise ValueError(f"--counts {args.counts!r} is not TRAIN,VAL,TEST: write e.g. --counts 16,8,8") from None
    print(build_synthetic_dataset(args.out, preset=args.preset, seed=args.seed, counts=counts,
                                  image_size=args.image_size, workers=args.workers))
    return 0


def _cmd_audit(args: argparse.Namespace) -> int:
    report = audit_dataset(args.data)
    if args.json is not None:
        try:
            atomic_write_json(args.json, report.to_json())
        except OSError as error:
            raise ValueError(f"--json {str(args.json)!r} cannot be written ({error.strerror}): pass a file path in a "
                             "writable folder") from None
    for line in report.summary_lines():
        print(line, file=sys.stderr if line.startswith("error") else sys.stdout)
    totals = ", ".join(f"{split} {stats['images']} images / {stats['instances']} boxes"
                       for split, stats in report.splits.items())
    verdict = "BLOCKED" if report.blocking else "OK"
    print(f"audit {verdict}: {report.data_yaml} ({totals}); fingerprint {report.fingerprint}")
    return 1 if report.blocking else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m exp3.dataset`."""
    parser = argparse.ArgumentParser(prog="python -m exp3.dataset", description="exp3 datasets: synth and audit")
    sub = parser.add_subparsers(dest="command", required=True)
    synth = sub.add_parser("synth", help="generate the embedded synthetic ingredient dataset")
    synth.add_argument("--out", type=Path, required=True, help="new or empty directory")
    synth.add_argument("--preset", default="smoke", help="smoke (128 px, 16/8/8) or full (640 px, 800/200/200)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--counts", default=None, help="override images per split: TRAIN,VAL,TEST")
    synth.add_argument("--image-size", type=int, default=None, help="override the preset's image side (px)")
    synth.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    audit = sub.add_parser("audit", help="check a YOLO data.yaml before any long training")
    audit.add_argument("--data", type=Path, required=True)
    audit.add_argument("--json", type=Path, default=None, help="write the full report here")
    args = parser.parse_args(argv)
    try:
        return _cmd_synth(args) if args.command == "synth" else _cmd_audit(args)
    except (DatasetError, ValueError, FileExistsError, PermissionError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
