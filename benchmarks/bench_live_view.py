"""What the flow's per-epoch live view costs, measured in a real Prefect flow run.

    python benchmarks/bench_live_view.py [--epochs 50]

The live view (exp3.grid.live.EpochView) runs in the flow's process: every `runner.POLL_S`
seconds it reads the session's `train/results.csv`, and for each new epoch it logs one line,
rewrites the epochs table artifact and updates the progress artifact through the Prefect API.
The training runs in its own process and never waits for it. This measures, per epoch, the
wall time of one poll that finds a new epoch (read + parse + 1 log line + 2 API calls) and the
CPU time it costs this process and its children (the ephemeral API server), against the epoch
times of real sessions (6 s on an H100, 20 s for the CPU pilot). Figures in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _cpu_seconds() -> float:
    import psutil

    process = psutil.Process()
    total = sum(process.cpu_times()[:2])
    for child in process.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.NoSuchProcess:
            pass
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=50)
    args = parser.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="exp3-bench-live-"))
    os.environ["PREFECT_HOME"] = str(scratch / ".prefect")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

    from prefect import flow, get_run_logger, task

    from exp3.grid.jobs import SessionJob
    from exp3.grid.live import EpochView

    header = ["epoch", "time", "train/box_loss", "train/cls_loss", "train/dfl_loss", "metrics/precision(B)",
              "metrics/recall(B)", "metrics/mAP50(B)", "metrics/mAP50-95(B)", "val/box_loss", "val/cls_loss",
              "val/dfl_loss", "lr/pg0", "lr/pg1", "lr/pg2"]

    @task
    def session_with_live_view() -> dict[str, list[float]]:
        job = SessionJob(model="yolov8n", suffix="S1_clean_train", seed=None, cache_key="bench",
                         config_path=str(scratch / "config.yaml"), output_root=str(scratch), epochs=args.epochs)
        job.paths.results_csv.parent.mkdir(parents=True, exist_ok=True)
        view = EpochView(job, get_run_logger())
        walls, cpus = [], []
        cpus.append(_cpu_seconds())
        for epoch in range(1, args.epochs + 1):
            with job.paths.results_csv.open("a", newline="") as handle:  # the trainer's new row
                writer = csv.writer(handle)
                if epoch == 1:
                    writer.writerow(header)
                writer.writerow([epoch, 20.0 * epoch, 1.5, 1.2, 1.1, 0.5, 0.4, 0.3 + epoch / 1000, 0.2, 1.4, 1.3,
                                 1.2, 0.01, 0.01, 0.01])
            wall = time.perf_counter()
            view(False)
            walls.append(time.perf_counter() - wall)
        assert not view.warned, "the live view warned: see the flow's log"
        return {"wall": walls, "cpu": cpus}

    @flow(name="bench-live-view")
    def bench() -> dict[str, list[float]]:
        return session_with_live_view()

    measured = bench()
    time.sleep(3.0)  # logs and events are shipped in the background: let them land before reading the CPU
    cpu_ms = 1000 * (_cpu_seconds() - measured["cpu"][0]) / args.epochs
    wall_ms = [1000 * value for value in measured["wall"][1:]]  # the first poll also creates the table artifact
    print(f"epochs {args.epochs}: per epoch, poll wall median {statistics.median(wall_ms):.1f} ms "
          f"(p90 {sorted(wall_ms)[int(0.9 * len(wall_ms))]:.1f} ms); CPU of this process and the API server, "
          f"flow end and 3 s of idle included (an upper bound): {cpu_ms:.1f} ms per epoch = "
          f"{cpu_ms / 60:.2f} % of one core during a 6 s epoch, {cpu_ms / 200:.2f} % during a 20 s one")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
