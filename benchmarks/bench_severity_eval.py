"""Evaluation wall of a session with K severity suites vs without (issue 12).

    python benchmarks/bench_severity_eval.py [--images 200] [--imgsz 128] [--repeats 3]
    python benchmarks/bench_severity_eval.py --root runs/exp3-smoke      # read finished sessions instead

Live mode: the embedded full preset's test split (640 px), the fixed suite and the default K = 5
severity suites (built once, in benchmarks/.scratch/), and a yolov8n trained 1 epoch on 16 images
at `--imgsz` (the pilot's size; evaluation time does not depend on accuracy much). Each repeat
evaluates, exactly as a session does (`exp3.session.run._evaluate_test_split`: validator pass, predict
pass, predictions and map_stats files, metrics), test_clean + test_occ_fixed ("today") and then
the K severity splits, interleaved. Target: (today + severity) / today close to 1 + K/2 (each
split costs one inference pass of the same images), never more.

Root mode: the same ratio from the `eval_wall_s` every finished session records per split.
Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SCRATCH = Path(__file__).resolve().parent / ".scratch" / "bench_severity_eval"
PRIMARY = ("test_clean", "test_occ_fixed")


def from_root(root: Path) -> dict:
    """Per finished session: Σ eval_wall_s over all test splits / Σ over test_clean + test_occ_fixed."""
    rows = []
    for metrics_path in sorted(root.glob("*/*__*/metrics.json")):
        metrics = json.loads(metrics_path.read_text())
        splits = metrics["splits"]
        today = sum(splits[split]["eval_wall_s"] for split in PRIMARY)
        severity = [split for split in splits if split.startswith("test_occ_sev")]
        total = today + sum(splits[split]["eval_wall_s"] for split in severity)
        rows.append({"session": metrics["session"], "levels": len(severity), "today_s": round(today, 2),
                     "with_severity_s": round(total, 2), "ratio": round(total / today, 3),
                     "ideal": 1 + len(severity) / 2})
    ratios = [row["ratio"] for row in rows]
    return {"root": str(root), "sessions": rows, "median_ratio": statistics.median(ratios) if ratios else None,
            "max_ratio": max(ratios) if ratios else None}


def live(images: int, imgsz: int, repeats: int) -> dict:
    from exp3.train.offline import apply_offline_environment

    apply_offline_environment(SCRATCH)
    from ultralytics import YOLO

    from exp3.config import load_config
    from exp3.dataset.audit import read_data_yaml
    from exp3.dataset.synth import build_synthetic_dataset
    from exp3.session.layout import SessionPaths
    from exp3.session.prepare import prepare_data
    from exp3.session.run import _evaluate_test_split
    from exp3.sessions import Session

    data_yaml = build_synthetic_dataset(SCRATCH / f"synth-{images}", preset="full", seed=0,
                                        counts={"train": 16, "val": 8, "test": images}, workers=2)
    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "exp3.yaml",
                         [f"train.imgsz={imgsz}", "train.batch=16", "train.device=cpu",
                          "dataset.kind=yaml", f"dataset.data_yaml={data_yaml}"])
    start = time.perf_counter()
    prepared = prepare_data(config, SCRATCH)
    prepare_s = time.perf_counter() - start
    checkpoint = SCRATCH / "train" / "run" / "weights" / "last.pt"
    if not checkpoint.is_file():
        YOLO("yolov8n.yaml").train(data=str(data_yaml), epochs=1, imgsz=imgsz, batch=16, device="cpu", amp=False,
                                   workers=0, plots=False, project=str(SCRATCH / "train"), name="run",
                                   exist_ok=True, verbose=False, val=False)
    names = read_data_yaml(data_yaml).names
    session = Session("yolov8n", "S1_clean_train")
    paths = SessionPaths(SCRATCH / "session" / session.name)
    paths.folder.mkdir(parents=True, exist_ok=True)

    def evaluate(splits: tuple[str, ...]) -> float:
        begin = time.perf_counter()
        for split in splits:
            _evaluate_test_split(checkpoint, split, "detect", config, SCRATCH, paths, session, prepared, names, 0.25)
        return time.perf_counter() - begin

    severity = tuple(suite.split for suite in prepared.severity_suites)
    evaluate(PRIMARY[:1])  # warm-up: imports, label caches
    today, added = [], []
    for _ in range(repeats):
        today.append(evaluate(PRIMARY))
        added.append(evaluate(severity))
    ratios = [(a + b) / a for a, b in zip(today, added)]
    return {"images": images, "imgsz": imgsz, "levels": len(severity), "repeats": repeats,
            "prepare_s (dataset, audit, fixed + severity suites, S2 set; first run builds)": round(prepare_s, 2),
            "today_s": [round(value, 2) for value in today], "severity_s": [round(value, 2) for value in added],
            "per_split_today_s": round(statistics.median(today) / 2, 3),
            "per_split_severity_s": round(statistics.median(added) / len(severity), 3),
            "ratio_per_repeat": [round(value, 3) for value in ratios],
            "ratio_median": round(statistics.median(ratios), 3), "ideal_ratio": 1 + len(severity) / 2,
            "load_average_1min": round(os.getloadavg()[0], 2), "cpu_count": os.cpu_count()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None, help="read finished sessions under this output root")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--imgsz", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    result = from_root(args.root) if args.root else live(args.images, args.imgsz, args.repeats)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
