"""Why does one metric see a training effect that another does not? Per-image evidence from a run.

    python benchmarks/analyze_metric_sensitivity.py --root runs/exp3-pilot --model yolov8n
        [--session S2_occ_train --reference S1_clean_train --split test_occ_fixed]

Reads the two sessions' predictions_<split>.json and metrics.json (nothing is recomputed from
the model) and prints JSON with, at each operating point (conf 0.25 and each session's val-chosen
threshold):

- the split's structure: boxes and distinct classes per image, and how many (image, class) pairs
  hold two or more instances (a set-level metric counts such a pair once);
- per session: instance recall/precision (detection level, Hungarian matching at IoU 0.5) and
  class recall/precision (ingredient sets), class recall split by the pair's instance count, the
  share of correctly named classes with no matched box of that class (named from a box off the
  object: the set metric credits it, detection F1 and mAP do not), and the median of the highest
  confidence each present class gets (how confident the model is, whatever the threshold);
- the instance-level gain of `session` over `reference`: ground-truth boxes only `session` finds,
  and how many of them add a class to the image's ingredient list (their class was not named by
  `reference` in that image) versus add nothing at set level (already named: another instance
  was found, or a box of that class was predicted off the object);
- per image: images where `session` matches more boxes, and whether it also names more classes.

docs/what-metrics-detect.md reports the pilot's figures. No threshold or metric is chosen here.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from exp3.evaluate.metrics import ImageRecord, matched_gt, records_from_json


def _load(folder: Path, split: str) -> tuple[list[ImageRecord], dict[str, Any]]:
    payload = json.loads((folder / f"predictions_{split}.json").read_text())
    return records_from_json(payload["images"]), json.loads((folder / "metrics.json").read_text())


def _named(record: ImageRecord, conf: float) -> set[int]:
    return {int(c) for c in record.pred_classes[record.pred_conf >= conf]}


def _session_figures(records: list[ImageRecord], conf: float, match_iou: float) -> dict[str, Any]:
    boxes_found = boxes = predicted = 0
    pairs = Counter()
    for record in records:
        matched = matched_gt(record, conf, match_iou)
        boxes += len(matched)
        boxes_found += int(matched.sum())
        predicted += int((record.pred_conf >= conf).sum())
        named, counts = _named(record, conf), Counter(int(c) for c in record.gt_classes)
        localized = {int(c) for c in record.gt_classes[matched]}
        for cls, count in counts.items():
            key = "single" if count == 1 else "multi"
            pairs[f"{key}_pairs"] += 1
            pairs[f"{key}_named"] += int(cls in named)
            pairs["named_without_matched_box"] += int(cls in named and cls not in localized)
        pairs["named_total"] += len(named)
        pairs["named_correct"] += len(named & set(counts))
    return {
        "conf": conf,
        "instance_recall": boxes_found / max(boxes, 1),
        "instance_precision": boxes_found / max(predicted, 1),
        "class_recall": (pairs["single_named"] + pairs["multi_named"]) / max(pairs["single_pairs"] + pairs["multi_pairs"], 1),
        "class_precision": pairs["named_correct"] / max(pairs["named_total"], 1),
        "class_recall_single_instance": pairs["single_named"] / max(pairs["single_pairs"], 1),
        "class_recall_multi_instance": pairs["multi_named"] / max(pairs["multi_pairs"], 1),
        "false_classes_per_image": (pairs["named_total"] - pairs["named_correct"]) / len(records),
        "correct_classes_named_without_a_matched_box": pairs["named_without_matched_box"] / max(pairs["named_correct"], 1),
        "median_top_conf_of_present_classes": float(np.median([
            max(record.pred_conf[record.pred_classes == c], default=0.0) for record in records
            for c in set(record.gt_classes.tolist())])),
    }


def _gain(session: list[ImageRecord], reference: list[ImageRecord], conf_s: float, conf_r: float,
          match_iou: float) -> dict[str, Any]:
    by_id = {record.image_id: record for record in reference}
    gained = adds_class = already_named = lost = 0
    images = Counter()
    for record in session:
        other = by_id[record.image_id]
        mine, theirs = matched_gt(record, conf_s, match_iou), matched_gt(other, conf_r, match_iou)
        named_s, named_r = _named(record, conf_s), _named(other, conf_r)
        gt = set(int(c) for c in record.gt_classes)
        for index in np.flatnonzero(mine & ~theirs):
            gained += 1
            cls = int(record.gt_classes[index])
            if cls in named_r:
                already_named += 1
            else:
                adds_class += 1
        lost += int((theirs & ~mine).sum())
        more_boxes = int(mine.sum()) - int(theirs.sum())
        more_classes = len(named_s & gt) - len(named_r & gt)
        if more_boxes > 0:
            images["more_boxes"] += 1
            images["more_boxes_and_more_classes" if more_classes > 0 else
                   "more_boxes_same_classes" if more_classes == 0 else "more_boxes_fewer_classes"] += 1
        elif more_boxes < 0:
            images["fewer_boxes"] += 1
        images["more_classes"] += int(more_classes > 0)
        images["fewer_classes"] += int(more_classes < 0)
    return {"boxes_found_only_by_session": gained, "of_which_add_a_class": adds_class,
            "of_which_class_already_named_by_reference": already_named,
            "boxes_found_only_by_reference": lost, "images": dict(images)}


def analyse(root: Path, model: str, session: str, reference: str, split: str) -> dict[str, Any]:
    folders = {name: root / model / f"{model}__{name}" for name in (session, reference)}
    loaded = {name: _load(folder, split) for name, folder in folders.items()}
    records = loaded[reference][0]
    boxes = np.array([len(r.gt_classes) for r in records])
    classes = np.array([len(set(r.gt_classes.tolist())) for r in records])
    counts = [count for r in records for count in Counter(r.gt_classes.tolist()).values()]
    structure = {"images": len(records), "boxes_per_image": float(boxes.mean()),
                 "classes_per_image": float(classes.mean()),
                 "pairs_with_2plus_instances": float(np.mean([c >= 2 for c in counts])),
                 "boxes_in_multi_instance_pairs": float(sum(c for c in counts if c >= 2) / max(boxes.sum(), 1))}
    match_iou = float(loaded[session][1]["eval"]["match_iou"])
    out: dict[str, Any] = {"root": str(root), "model": model, "split": split, "session": session,
                           "reference": reference, "structure": structure, "operating_points": {}}
    for point in ("primary", "val"):
        confs = {name: float(metrics["thresholds"]["primary" if point == "primary" else "val_chosen"])
                 for name, (_, metrics) in loaded.items()}
        out["operating_points"][point] = {
            **{name: _session_figures(loaded[name][0], confs[name], match_iou) for name in (session, reference)},
            "gain": _gain(loaded[session][0], loaded[reference][0], confs[session], confs[reference], match_iou)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--session", default="S2_occ_train")
    parser.add_argument("--reference", default="S1_clean_train")
    parser.add_argument("--split", default="test_occ_fixed")
    args = parser.parse_args()
    print(json.dumps(analyse(args.root, args.model, args.session, args.reference, args.split), indent=2))


if __name__ == "__main__":
    main()
