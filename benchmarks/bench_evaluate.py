"""One-pass evaluation (mAP + predictions + ingredient metrics + JSON export) vs Ultralytics' own val.

    python benchmarks/bench_evaluate.py [--repeats 5] [--imgsz 160]

Uses the checkpoint and dataset of bench_dataset_learnability.py (run it first). Both arms run
on the same split, args and process, interleaved after a warm-up; the target is
median(exp3) / median(plain) <= 1.10. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

SCRATCH = Path(__file__).resolve().parent / ".scratch"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--imgsz", type=int, default=160)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--checkpoint", type=Path, default=SCRATCH / "train" / "learnability" / "weights" / "best.pt")
    parser.add_argument("--data", type=Path, default=SCRATCH / "synth-full-800-200-200-seed0" / "data.yaml")
    args = parser.parse_args()
    if not args.checkpoint.is_file():
        raise SystemExit(f"error: {args.checkpoint} missing: run benchmarks/bench_dataset_learnability.py first")

    from exp3.offline import apply_offline_environment

    apply_offline_environment(SCRATCH)
    from ultralytics import YOLO

    from exp3.evaluate import evaluate_split
    from exp3.fileio import atomic_write_json
    from exp3.metrics import records_from_json, summarize_split

    common = {"imgsz": args.imgsz, "batch": args.batch, "device": "cpu"}

    def plain() -> float:
        start = time.perf_counter()
        YOLO(str(args.checkpoint)).val(data=str(args.data), split="test", plots=True, verbose=False,
                                       project=str(SCRATCH / "bench_eval"), name="plain", exist_ok=True, **common)
        return time.perf_counter() - start

    def ours() -> float:
        start = time.perf_counter()
        result = evaluate_split(args.checkpoint, args.data, "detect", SCRATCH, SCRATCH / "bench_eval" / "ours",
                                **common)
        summary = summarize_split(records_from_json(result.records), num_classes=10)
        atomic_write_json(SCRATCH / "bench_eval" / "predictions.json", {"images": result.records})
        atomic_write_json(SCRATCH / "bench_eval" / "summary.json", summary)
        return time.perf_counter() - start

    plain(), ours()  # warm-up: dataset caches, imports
    plain_s, ours_s = [], []
    for _ in range(args.repeats):
        plain_s.append(plain())
        ours_s.append(ours())
    print(json.dumps({"images": 200, **common, "repeats": args.repeats,
                      "plain_val_s": [round(v, 3) for v in plain_s], "exp3_eval_s": [round(v, 3) for v in ours_s],
                      "ratio_median": round(statistics.median(ours_s) / statistics.median(plain_s), 3),
                      "ratio_per_pair": [round(o / p, 3) for o, p in zip(ours_s, plain_s)], "target": 1.10}))


if __name__ == "__main__":
    main()
