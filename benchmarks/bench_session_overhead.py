"""Per-session fixed overhead: what a session spends beyond training and evaluation.

    python benchmarks/bench_session_overhead.py ROOT [ROOT ...]          # finished runs: per-session figures
    python benchmarks/bench_session_overhead.py --prepare ROOT --config CFG  # the data step alone, both ways
    python benchmarks/bench_session_overhead.py --exit-cost                  # a session process's exit, both ways

Per session (from its files): the subprocess wall (`==== exit 0 after X s` in logs/session.log)
minus the training wall and the evaluation wall of metrics.json = fixed overhead (Python start-ups,
data preparation, checkpoint checks, mAP bootstrap draws, writing the folder).

`--prepare`: the data step a session makes before training, timed in this process on a root the
flow has prepared: `prepare_data` (what a session run by hand does: audit fingerprint over every
image and label, suites and S2 set verified file by file) against `prepared_is_current` (what a
session handed the flow's PreparedData does: two manifest hashes).

`--exit-cost`: how long a process holding what a session imports (torch, exp3's session modules, Ultralytics,
a built model) takes from its last line to its end, with CPython's shutdown garbage collection and
without it (`gc.freeze()` before exit, as every session process now ends: exp3/session/__main__.py).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path


def session_rows(root: Path) -> list[dict[str, float | str]]:
    rows = []
    for metrics_path in sorted(root.glob("*/*/metrics.json")):
        folder = metrics_path.parent
        walls = re.findall(r"==== exit 0 after ([0-9.]+) s", (folder / "logs" / "session.log").read_text())
        if not walls:
            continue
        metrics = json.loads(metrics_path.read_text())
        wall, train, evaluation = float(walls[-1]), metrics["training"]["wall_s"], metrics["eval"]["wall_s"]
        rows.append({"root": str(root), "session": folder.name, "session_s": wall, "train_s": train,
                     "eval_s": evaluation, "fixed_s": round(wall - train - evaluation, 2)})
    return rows


def prepare_timings(root: Path, config_path: Path, repeats: int = 3) -> dict[str, float]:
    from exp3.config import load_config
    from exp3.session.prepare import prepare_data, prepared_is_current

    config = load_config(config_path)
    prepared = prepare_data(config, root)  # warm: built and verified once, as the flow does
    full, cheap = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        prepare_data(config, root)
        full.append(time.perf_counter() - start)
        start = time.perf_counter()
        assert prepared_is_current(prepared)
        cheap.append(time.perf_counter() - start)
    return {"prepare_data_s": round(min(full), 3), "prepared_is_current_s": round(min(cheap), 4)}


_EXIT_PROBE = """
import sys, time
from importlib import import_module
for name in ("torch", "exp3.session.run", "exp3.train.training", "exp3.evaluate.evaluation", "exp3.evaluate.metrics",
             "exp3.evaluate.severity", "exp3.session.provenance", "exp3.train.trainers", "ultralytics"):
    import_module(name)
from ultralytics import YOLO
YOLO("yolov8n.yaml")  # a built model, as after a session
if sys.argv[1] == "freeze":
    import gc
    gc.freeze()
sys.stderr.write(repr(time.time()))
sys.stderr.flush()
"""


def exit_cost(repeats: int = 3) -> dict[str, float]:
    """Seconds from a session-like process's last line to its end: best of `repeats`, both ways."""
    import os
    import subprocess
    import sys
    import tempfile

    best: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as config_dir:
        env = dict(os.environ, YOLO_CONFIG_DIR=config_dir, YOLO_OFFLINE="1")
        for mode in ("collect", "freeze") * repeats:
            process = subprocess.Popen([sys.executable, "-c", _EXIT_PROBE, mode], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE, env=env)
            last = process.stderr.read().decode().split()[-1]
            process.wait()
            took = time.time() - float(last)
            best[f"exit_{mode}_s"] = round(min(best.get(f"exit_{mode}_s", took), took), 3)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="*", type=Path)
    parser.add_argument("--prepare", type=Path, default=None, help="a prepared output root")
    parser.add_argument("--config", type=Path, default=None, help="its config (config_resolved.yaml)")
    parser.add_argument("--exit-cost", action="store_true", help="time a session-like process's exit, both ways")
    args = parser.parse_args()
    if args.exit_cost:
        print(json.dumps(exit_cost()))
    if args.prepare is not None:
        print(json.dumps(prepare_timings(args.prepare, args.config or args.prepare / "config_resolved.yaml")))
    for root in args.roots:
        for row in session_rows(root):
            print(json.dumps(row))


if __name__ == "__main__":
    main()
