"""exp3's complete evaluation of one split vs the floor a user pays by hand: plain `val` + plain `predict`.

    python benchmarks/bench_evaluate.py --family detect --checkpoint yolo.pt --data data.yaml [--repeats 3]
    python benchmarks/bench_evaluate.py --family rtdetr --checkpoint rtdetr.pt --data data.yaml

exp3's arm is what a session does for one test split (exp3.session.run._evaluate_test_split): load the
checkpoint, `evaluate_split` (validator pass, `predict` pass, recording), `save_split_files`
(predictions JSON, mAP's bootstrap draws, map stats npz) and the split's metrics
(`summarize_split`, the val-threshold operating point). The plain arm is `YOLO(ckpt).val(split=...)`
then `YOLO(ckpt).predict(images, conf=0.01)` (RTDETR for RT-DETR) in the same process, each with its
own defaults (val batch 16, predict batch 1). Both arms draw Ultralytics' figures (plots=True, as on
test_clean), take imgsz from the checkpoint and run on the same device; they alternate after one
warm-up of each. Prints JSON with medians, the ratio exp3 / plain (target <= 1.15) and the median
of each of exp3's stages (metrics.json's `eval_stages_s` plus load and split metrics), and how
often `predict` lists one box with two classes (`boxes_listed_twice`, at conf 0.01 and 0.25).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

SCRATCH = Path(__file__).resolve().parent / ".scratch"


def boxes_listed_twice(records: list[dict], conf: float) -> dict[str, int]:
    """At threshold `conf`: detections, those repeating a box already listed with another class
    (RT-DETR's top-k over queries x classes; docs/thresholds.md), images with one, and the ingredients
    (image, class) that only such a repeat puts in the list, split by whether the image holds that class."""
    detections = repeats = images = added_true = added_false = 0
    for record in records:
        best: dict[tuple, tuple[float, int]] = {}
        classes = set()
        kept = [(tuple(box), c, s) for box, c, s in zip(record["pred_boxes"], record["pred_classes"],
                                                         record["pred_conf"]) if s >= conf]
        for box, cls, score in kept:
            best[box] = max(best.get(box, (-1.0, -1)), (score, cls))
            classes.add(cls)
        detections += len(kept)
        repeats += len(kept) - len(best)
        images += len(kept) > len(best)
        for cls in classes - {cls for _, cls in best.values()}:
            added_true += cls in record["gt_classes"]
            added_false += cls not in record["gt_classes"]
    return {"detections": detections, "box_repeats": repeats, "images_with_repeats": images,
            "ingredients_only_from_repeats_true": added_true, "ingredients_only_from_repeats_false": added_false}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=["detect", "rtdetr"], required=True)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="data.yaml whose --split is evaluated")
    parser.add_argument("--split", default="test")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if not args.checkpoint.is_file():
        raise SystemExit(f"error: checkpoint {args.checkpoint} does not exist: train one first")

    from exp3.train.offline import apply_offline_environment

    apply_offline_environment(SCRATCH)
    from ultralytics import RTDETR, YOLO

    from exp3.config import ExperimentConfig
    from exp3.dataset.audit import read_data_yaml
    from exp3.evaluate.evaluation import RECORD_CONF, evaluate_split, load_evaluation_model, save_split_files
    from exp3.evaluate.metrics import operating_point, records_from_json, summarize_split

    plain_class = RTDETR if args.family == "rtdetr" else YOLO
    out = SCRATCH / "bench_eval"
    names = read_data_yaml(args.data).names
    split_dir = args.data.parent / "images" / args.split
    images = sorted(str(path) for path in split_dir.iterdir() if path.suffix.lower() in {".jpg", ".jpeg", ".png"})
    config = ExperimentConfig()

    def plain() -> dict[str, float]:
        start = time.perf_counter()
        plain_class(str(args.checkpoint)).val(data=str(args.data), split=args.split, device=args.device, plots=True,
                                              verbose=False, project=str(out), name="plain", exist_ok=True)
        validated = time.perf_counter()
        for _ in plain_class(str(args.checkpoint)).predict(images, conf=RECORD_CONF, device=args.device,
                                                            verbose=False, stream=True):
            pass
        return {"val_s": validated - start, "predict_s": time.perf_counter() - validated,
                "total_s": time.perf_counter() - start}

    def ours() -> dict[str, float]:
        start = time.perf_counter()
        model = load_evaluation_model(args.checkpoint, args.family)
        loaded = time.perf_counter()
        evaluation = evaluate_split(model, args.data, SCRATCH, out / "ours", split=args.split, device=args.device,
                                    plots=True)
        save_split_files(evaluation, out / "predictions_test.json", {"split": args.split}, out / "map_stats.npz")
        summarized = time.perf_counter()
        records = records_from_json(evaluation.records)
        summarize_split(records, num_classes=len(names), conf=config.eval.conf, match_iou=config.eval.match_iou,
                        class_names=names)
        operating_point(records, len(names), 0.3, config.eval.match_iou)
        end = time.perf_counter()
        return {"total_s": end - start, "load_s": loaded - start, **evaluation.stages.to_json(),
                "split_metrics_s": end - summarized,
                "predictions": sum(len(record["pred_conf"]) for record in evaluation.records),
                "map_stats_predictions": len(evaluation.map_stats.conf),
                **{f"repeats_at_{conf}": boxes_listed_twice(evaluation.records, conf) for conf in (RECORD_CONF, 0.25)}}

    plain(), ours()  # warm-up: label caches, imports, first forward passes
    plain_runs, our_runs = [], []
    for _ in range(args.repeats):
        plain_runs.append(plain())
        our_runs.append(ours())

    def medians(runs: list[dict]) -> dict:
        return {key: round(statistics.median(run[key] for run in runs), 3) if isinstance(runs[0][key], float | int)
                else runs[-1][key] for key in runs[0]}

    plain_median, our_median = medians(plain_runs), medians(our_runs)
    print(json.dumps({
        "family": args.family, "checkpoint": str(args.checkpoint), "images": len(images), "split": args.split,
        "device": args.device, "repeats": args.repeats, "load_average_1min": round(os.getloadavg()[0], 2),
        "plain": plain_median, "exp3": our_median,
        "ratio_median": round(our_median["total_s"] / plain_median["total_s"], 3),
        "ratio_per_pair": [round(o["total_s"] / p["total_s"], 3) for o, p in zip(our_runs, plain_runs)],
        "plain_total_s": [round(run["total_s"], 3) for run in plain_runs],
        "exp3_total_s": [round(run["total_s"], 3) for run in our_runs], "target": 1.15}))


if __name__ == "__main__":
    main()
