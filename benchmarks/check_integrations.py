"""Check what `integrations:` left in a finished output root (issue 37's done-when):

    python benchmarks/check_integrations.py /tmp/int-smoke-tb --tensorboard
    python benchmarks/check_integrations.py /tmp/int-smoke-mlflow --mlflow

--tensorboard: every session folder (one with train/results.csv) holds TensorBoard events in its own train/,
read back with TensorBoard's own reader, whose scalar at step = epoch equals every results.csv column of every
epoch (results.csv keeps 6 significant digits). --mlflow: the root's local store `<root>/mlruns` holds one
experiment with one FINISHED run per session, named after it, whose metrics/mAP50-95B history equals results.csv.
Prints one line per session and a summary; exit 1 if anything is missing or differs.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
from pathlib import Path


def _sessions(root: Path) -> dict[str, Path]:
    """Session name -> its train/ folder, for every session that trained under `root` (stale/ excluded)."""
    found = {}
    for results in sorted(root.glob("*/*/train/results.csv")):
        found[results.parent.parent.name] = results.parent
    return found


def _rows(train: Path) -> list[dict[str, float]]:
    with open(train / "results.csv", newline="") as handle:
        return [{key.strip(): float(value) for key, value in row.items()} for row in csv.DictReader(handle)]


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-9)


def check_tensorboard(root: Path) -> bool:
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    sessions = _sessions(root)
    with_events = matched = compared = 0
    for name, train in sessions.items():
        events = sorted(train.glob("events.out.tfevents.*"))
        if not events:
            print(f"{name}: no events file in {train}")
            continue
        with_events += 1
        reader = EventAccumulator(str(train), size_guidance={SCALARS: 0})
        reader.Reload()
        tags = set(reader.Tags()["scalars"])
        rows = _rows(train)
        columns = [key for key in rows[0] if key not in ("epoch", "time")]
        bad = [column for column in columns if column not in tags]
        values = 0
        for column in columns:
            if column in bad:
                continue
            logged = {event.step: event.value for event in reader.Scalars(column)}
            for row in rows:
                value = logged.get(int(row["epoch"]))
                values += 1
                if value is None or not _close(value, row[column]):
                    bad.append(f"{column}@{int(row['epoch'])}: tb {value} csv {row[column]}")
        compared += values
        matched += not bad
        print(f"{name}: {len(events)} events file(s), {len(columns)} scalars x {len(rows)} epoch(s) = {values} values "
              f"{'all equal to results.csv' if not bad else 'DIFFER: ' + '; '.join(map(str, bad[:3]))}")
    print(f"TensorBoard: events for {with_events}/{len(sessions)} sessions, scalars equal to results.csv in "
          f"{matched}/{len(sessions)} ({compared} values compared)")
    return bool(sessions) and with_events == matched == len(sessions)


def check_mlflow(root: Path) -> bool:
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    import mlflow

    sessions = _sessions(root)
    client = mlflow.MlflowClient(tracking_uri=(root / "mlruns").absolute().as_uri())
    experiments = [e for e in client.search_experiments() if e.name != "Default"]
    print(f"MLflow store {root / 'mlruns'}: experiments {[e.name for e in experiments]}")
    runs = [run for e in experiments for run in client.search_runs([e.experiment_id])]
    names = sorted(run.info.run_name for run in runs)
    matched = 0
    for run in sorted(runs, key=lambda r: r.info.run_name):
        name = run.info.run_name
        history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "metrics/mAP50-95B")}
        rows = _rows(sessions[name]) if name in sessions else []
        equal = bool(rows) and all(_close(history.get(int(r["epoch"]) - 1, math.nan), r["metrics/mAP50-95(B)"])
                                   for r in rows)
        matched += equal and run.info.status == "FINISHED"
        print(f"{name}: {run.info.status}, {len(run.data.metrics)} metrics, mAP50-95 history "
              f"{'equal to results.csv' if equal else 'DIFFERS'}")
    print(f"MLflow: {len(experiments)} experiment(s), {len(runs)} runs for {len(sessions)} sessions, named after "
          f"them: {names == sorted(sessions)}, finished and equal to results.csv: {matched}/{len(sessions)}")
    return len(experiments) == 1 and names == sorted(sessions) and matched == len(sessions)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--tensorboard", action="store_true")
    parser.add_argument("--mlflow", action="store_true")
    args = parser.parse_args()
    ok = True
    if args.tensorboard:
        ok &= check_tensorboard(args.root)
    if args.mlflow:
        ok &= check_mlflow(args.root)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
