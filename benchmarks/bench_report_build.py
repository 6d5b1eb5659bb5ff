"""Report build wall, before vs after, interleaved: `python -m exp3.report --root <fresh copy>` of two checkouts.

    python benchmarks/bench_report_build.py --root /path/to/pilot_root --before /path/to/old/checkout [--pairs 5]
        [--no-charts]

Each pair copies `--root` afresh to one temporary path (the same path for both sides, so the report's own paths
are equal) and runs the old checkout's report, then this checkout's, each in its own process with
PYTHONPATH set to its checkout; pairs alternate which side goes first, so a slow spell of a shared machine falls on
both. Prints each wall and CPU time (user + system of the report process: steadier than the wall where the
machine is shared), the medians and their ratios (after / before). `--root` is never written to.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def report_times(checkout: Path, source: Path, copy: Path, no_charts: bool) -> tuple[float, float]:
    """(wall, CPU) seconds of one report build on a fresh copy of `source`."""
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(source, copy)
    command = [sys.executable, "-m", "exp3.report", "--root", str(copy)] + (["--no-charts"] if no_charts else [])
    start, cpu = time.perf_counter(), _children_cpu()
    subprocess.run(command, cwd=checkout, env={**os.environ, "PYTHONPATH": str(checkout)}, check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start, _children_cpu() - cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="a finished experiment root (copied, never written)")
    parser.add_argument("--before", type=Path, required=True, help="the old checkout (e.g. a git worktree)")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--no-charts", action="store_true")
    args = parser.parse_args()
    times: dict[str, list[tuple[float, float]]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp:
        copy = Path(tmp) / args.root.name
        for pair in range(args.pairs):
            sides = [("before", args.before), ("after", HERE)]
            for side, checkout in sides if pair % 2 == 0 else sides[::-1]:
                times[side].append(report_times(checkout.resolve(), args.root, copy, args.no_charts))
                wall, cpu = times[side][-1]
                print(f"pair {pair + 1} {side}: wall {wall:.2f} s, CPU {cpu:.2f} s", flush=True)
    for index, what in enumerate(("wall", "CPU")):
        before, after = (statistics.median(sample[index] for sample in times[side]) for side in ("before", "after"))
        print(f"median {what} before {before:.2f} s, after {after:.2f} s: after / before = x{after / before:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
