"""Evaluate a checkpoint on one split: Ultralytics' mAP and the detections `predict` would give.

Two consumers, two definitions, each taken from Ultralytics itself:

- **mAP50 / mAP50-95** come from Ultralytics' validator (`model.val(...)`): its rect batches,
  multi-label NMS at conf 0.001. They equal `YOLO(ckpt).val(split=...)` exactly.
- **Per-image predictions** (ingredient sets, detection-level P/R/F1) come from `model.predict`
  over the same image files: the application (a meal planner) calls `predict`, whose NMS keeps
  one class per box (`multi_label=False`) with its default IoU 0.7 and `max_det` 300, on its own
  letterbox. Recording the validator's multi-label output instead would let a box's second class
  add a false ingredient (YOLO), and RT-DETR (no NMS) would not be compared like for like.

`predict` runs once with `conf=RECORD_CONF` (below every threshold exp3 applies); a threshold
`t >= RECORD_CONF` applied afterwards keeps exactly the boxes `predict(conf=t)` returns, since
NMS only ever suppresses a box in favour of a higher-scoring one. Ground truth comes from the
validator's pass (its labels, scaled back to original pixels), so both halves describe the same
files. The two passes cost one extra forward pass per image; they cannot be merged without
giving up one of the two definitions (the validator pads rect batches by half a stride, so its
inputs differ from `predict`'s).

Recorded per image (original-image pixel coordinates, xyxy):
    {"image_id": str, "width": int, "height": int,
     "gt_classes": [G] int, "gt_boxes": [G][4] float,
     "pred_classes": [P] int, "pred_boxes": [P][4] float, "pred_conf": [P] float}

The validator's per-image matching statistics (what its mAP is computed from) are kept too
(`SplitEvaluation.map_stats`, exp3.mapstats): they give mAP its bootstrap intervals.

No exp3 code runs inside the model: the checkpoint is loaded with plain Ultralytics and masking
hooks are never attached here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from exp3.mapstats import MapStats
from exp3.offline import apply_offline_environment

Family = Literal["detect", "rtdetr"]
RECORD_CONF = 0.01
"""Confidence floor of the recorded predictions: below every threshold exp3 applies (primary 0.25,
val-chosen thresholds from a 0.01 grid), so any of them can be applied to the file afterwards."""


def _recording_mixin(base: type) -> type:
    """A subclass of the validator `base` that records every image's file and ground truth (original pixels)."""
    from ultralytics.utils import ops

    class Recording(base):  # type: ignore[misc, valid-type]
        def init_metrics(self, model: Any) -> None:
            super().init_metrics(model)
            self.records: list[dict[str, Any]] = []
            self.map_images: list[dict[str, Any]] = []

        def update_metrics(self, preds: list[dict[str, Any]], batch: dict[str, Any]) -> None:
            for index in range(len(preds)):
                pbatch = self._prepare_batch(index, batch)
                height, width = (int(v) for v in pbatch["ori_shape"])
                gt_boxes = pbatch["bboxes"]
                if len(gt_boxes):
                    gt_boxes = ops.scale_boxes(pbatch["imgsz"], gt_boxes.clone(), pbatch["ori_shape"],
                                               ratio_pad=pbatch["ratio_pad"])
                self.records.append({
                    "image_id": Path(pbatch["im_file"]).stem,
                    "im_file": str(pbatch["im_file"]),
                    "width": width,
                    "height": height,
                    "gt_classes": [int(c) for c in pbatch["cls"].tolist()],
                    "gt_boxes": [[round(float(v), 2) for v in box] for box in gt_boxes.tolist()],
                })
            super().update_metrics(preds, batch)
            # the validator's own per-image matching stats of this batch (what its mAP is computed from)
            stats = self.metrics.stats
            for index, record in enumerate(self.records[-len(preds):] if len(preds) else []):
                offset = len(preds) - index
                self.map_images.append({"image_id": record["image_id"],
                                        **{key: stats[key][-offset] for key in ("tp", "conf", "pred_cls",
                                                                                "target_cls")}})

    Recording.__name__ = f"Recording{base.__name__}"
    Recording.__qualname__ = Recording.__name__
    return Recording


@dataclass
class SplitEvaluation:
    """mAP of the validator pass and the merged per-image records of one split."""

    split_yaml: str
    map50: float
    map50_95: float
    per_class_map50_95: dict[str, float]
    records: list[dict[str, Any]] = field(repr=False)
    map_stats: MapStats = field(repr=False)
    wall_s: float
    speed_ms_per_image: dict[str, float]


@dataclass(frozen=True)
class EvaluationModel:
    """A checkpoint loaded once for every split a session evaluates (`load_evaluation_model`).

    Each split still gets its own validator and the same `predict` call; the loaded model is what
    Ultralytics' `val` and `predict` would load from the file again (both fuse it in place once).
    """

    checkpoint: Path
    family: Family
    model: Any = field(repr=False)
    validator: type = field(repr=False)


def load_evaluation_model(checkpoint: str | Path, family: Family) -> EvaluationModel:
    """The checkpoint as Ultralytics' YOLO / RTDETR model, with the recording validator of its family."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint {str(checkpoint)!r} does not exist: train the session first")
    if family == "rtdetr":
        from ultralytics import RTDETR
        from ultralytics.models.rtdetr.val import RTDETRValidator

        return EvaluationModel(checkpoint, family, RTDETR(str(checkpoint)), _recording_mixin(RTDETRValidator))
    if family == "detect":
        from ultralytics import YOLO
        from ultralytics.models.yolo.detect.val import DetectionValidator

        return EvaluationModel(checkpoint, family, YOLO(str(checkpoint)), _recording_mixin(DetectionValidator))
    raise ValueError(f"unknown model family {family!r}: use 'detect' (YOLO) or 'rtdetr'")


def predict_records(model: Any, image_files: list[str], imgsz: int | None = None, batch: int | None = None,
                    device: str | None = None) -> dict[str, dict[str, list]]:
    """`model.predict` over `image_files` at conf RECORD_CONF, everything else predict's defaults.

    Returns {image id (file stem): {"pred_classes": [P], "pred_boxes": [P][4] (xyxy original pixels),
    "pred_conf": [P]}}; confidences are kept unrounded so a later threshold reproduces `predict`.
    """
    overrides: dict[str, Any] = {"conf": RECORD_CONF, "verbose": False, "stream": True, "save": False}
    for key, value in (("imgsz", imgsz), ("batch", batch), ("device", device)):
        if value is not None:
            overrides[key] = value
    found: dict[str, dict[str, list]] = {}
    for result in model.predict(source=list(image_files), **overrides):
        boxes = result.boxes
        found[Path(result.path).stem] = {
            "pred_classes": [int(c) for c in boxes.cls.tolist()],
            "pred_boxes": [[round(float(v), 2) for v in box] for box in boxes.xyxy.tolist()],
            "pred_conf": [float(c) for c in boxes.conf.tolist()],
        }
    return found


def evaluate_split(
    checkpoint: str | Path | EvaluationModel,
    split_yaml: str | Path,
    family: Family,
    output_root: str | Path,
    save_dir: str | Path,
    split: str = "test",
    imgsz: int | None = None,
    batch: int | None = None,
    device: str | None = None,
    plots: bool = True,
) -> SplitEvaluation:
    """mAP (validator pass) and predict-equivalent per-image records of `checkpoint` on `split` of `split_yaml`.

    `imgsz`/`batch`/`device` None = Ultralytics' defaults (imgsz from the checkpoint's training
    args, for both passes). Plots and Ultralytics' own files go under `save_dir`;
    `plots=False` skips Ultralytics' validation figures (metrics, records and map stats are the same).
    `checkpoint` may be an `EvaluationModel` a session loaded once for all its splits (of `family`).
    """
    split_yaml = Path(split_yaml)
    apply_offline_environment(output_root)
    loaded = checkpoint if isinstance(checkpoint, EvaluationModel) else load_evaluation_model(checkpoint, family)
    if loaded.family != family:
        raise ValueError(f"{loaded.checkpoint} was loaded as {loaded.family!r}, not {family!r}: load it as {family!r}")
    model, validator = loaded.model, loaded.validator
    overrides: dict[str, Any] = {"data": str(split_yaml), "split": split, "plots": plots, "verbose": False,
                                 "project": str(Path(save_dir).parent), "name": Path(save_dir).name,
                                 "exist_ok": True}
    for key, value in (("imgsz", imgsz), ("batch", batch), ("device", device)):
        if value is not None:
            overrides[key] = value
    captured: dict[str, Any] = {}

    def _keep_validator(active: Any) -> None:
        captured["validator"] = active

    model.add_callback("on_val_end", _keep_validator)
    start = time.perf_counter()
    try:
        metrics = model.val(validator=validator, **overrides)
    finally:
        model.callbacks["on_val_end"].remove(_keep_validator)  # the next split's val keeps its own
    map_stats = MapStats.from_images(captured["validator"].map_images)
    ground_truth = sorted(captured["validator"].records, key=lambda record: record["image_id"])
    predicted = predict_records(model, [record["im_file"] for record in ground_truth], imgsz, batch, device)
    wall_s = time.perf_counter() - start
    records = []
    for record in ground_truth:
        record.pop("im_file")
        records.append({**record, **predicted[record["image_id"]]})
    names = metrics.names
    per_class = {names[int(c)]: round(float(metrics.box.maps[int(c)]), 6) for c in metrics.box.ap_class_index}
    return SplitEvaluation(
        split_yaml=str(split_yaml),
        map50=float(metrics.box.map50),
        map50_95=float(metrics.box.map),
        per_class_map50_95=per_class,
        records=records,
        map_stats=map_stats,
        wall_s=round(wall_s, 3),
        speed_ms_per_image={key: round(float(value), 3) for key, value in metrics.speed.items()},
    )
