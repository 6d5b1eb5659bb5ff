"""Is the embedded synthetic dataset learnable? Train a small detector briefly on CPU, report mAP50.

    python benchmarks/bench_dataset_learnability.py [--epochs 30] [--imgsz 160] [--model yolov8n.yaml]

Builds the `full` preset (or a subset via --counts) under benchmarks/.scratch/, trains from
scratch (no pretrained weights exist offline), evaluates on the test split, prints JSON.
A dataset of noise would stay near mAP50 = 0; see BENCHMARKS.md for the recorded figures.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

SCRATCH = Path(__file__).resolve().parent / ".scratch"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="yolov8n.yaml")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--imgsz", type=int, default=160)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--counts", default="800,200,200", help="TRAIN,VAL,TEST images of the full preset")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from exp3.train.offline import apply_offline_environment

    apply_offline_environment(SCRATCH)
    from exp3.dataset.synth import build_synthetic_dataset

    train, val, test = (int(v) for v in args.counts.split(","))
    data_yaml = build_synthetic_dataset(SCRATCH / f"synth-full-{args.counts.replace(',', '-')}-seed{args.seed}",
                                        preset="full", seed=args.seed,
                                        counts={"train": train, "val": val, "test": test}, workers=2)
    from ultralytics import YOLO

    model = YOLO(args.model)
    start = time.perf_counter()
    model.train(data=str(data_yaml), epochs=args.epochs, imgsz=args.imgsz, batch=args.batch, device="cpu",
                amp=False, workers=2, plots=False, project=str(SCRATCH / "train"), name="learnability",
                exist_ok=True, verbose=False)
    train_s = time.perf_counter() - start
    metrics = YOLO(str(SCRATCH / "train" / "learnability" / "weights" / "best.pt")).val(
        data=str(data_yaml), split="test", imgsz=args.imgsz, batch=args.batch, device="cpu", plots=False,
        project=str(SCRATCH / "val"), name="learnability", exist_ok=True, verbose=False)
    print(json.dumps({
        "model": args.model, "epochs": args.epochs, "imgsz": args.imgsz, "batch": args.batch,
        "counts": args.counts, "train_wall_s": round(train_s, 1),
        "test_map50": round(float(metrics.box.map50), 4), "test_map50_95": round(float(metrics.box.map), 4),
    }))


if __name__ == "__main__":
    main()
