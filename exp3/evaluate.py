"""Evaluate a checkpoint on one split in ONE inference pass: Ultralytics mAP + per-image predictions.

The runner (Ultralytics' validator) owns the loop, eval mode and `no_grad`; exp3 only adds a
recording step to `update_metrics`, which sees every image's post-NMS predictions and its
ground truth. So the mAP50 / mAP50-95 reported here are exactly what `YOLO(ckpt).val(...)`
reports on the same split and args, and the predictions come from that very pass.

Recorded per image (original-image pixel coordinates, xyxy):
    {"image_id": str, "width": int, "height": int,
     "gt_classes": [G] int, "gt_boxes": [G][4] float,
     "pred_classes": [P] int, "pred_boxes": [P][4] float, "pred_conf": [P] float}
Predictions are those Ultralytics' validation keeps (conf >= 0.001, multi-label NMS, at most
`max_det` per image); the ingredient threshold (`eval.conf`) is applied afterwards by
`exp3.metrics`, so the threshold can change without re-running inference.

No exp3 code runs inside the model: the checkpoint is loaded with plain Ultralytics and masking
hooks are never attached here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from exp3.offline import apply_offline_environment

Family = Literal["detect", "rtdetr"]


def _recording_mixin(base: type) -> type:
    """A subclass of the validator `base` that records per-image predictions and ground truth."""
    from ultralytics.utils import ops

    class Recording(base):  # type: ignore[misc, valid-type]
        def init_metrics(self, model: Any) -> None:
            super().init_metrics(model)
            self.records: list[dict[str, Any]] = []

        def update_metrics(self, preds: list[dict[str, Any]], batch: dict[str, Any]) -> None:
            for index, pred in enumerate(preds):
                pbatch = self._prepare_batch(index, batch)
                height, width = (int(v) for v in pbatch["ori_shape"])
                gt_boxes = pbatch["bboxes"]
                if len(gt_boxes):
                    gt_boxes = ops.scale_boxes(pbatch["imgsz"], gt_boxes.clone(), pbatch["ori_shape"],
                                               ratio_pad=pbatch["ratio_pad"])
                scaled = self.scale_preds(self._prepare_pred(dict(pred)), pbatch)
                self.records.append({
                    "image_id": Path(pbatch["im_file"]).stem,
                    "width": width,
                    "height": height,
                    "gt_classes": [int(c) for c in pbatch["cls"].tolist()],
                    "gt_boxes": [[round(float(v), 2) for v in box] for box in gt_boxes.tolist()],
                    "pred_classes": [int(c) for c in scaled["cls"].tolist()],
                    "pred_boxes": [[round(float(v), 2) for v in box] for box in scaled["bboxes"].tolist()],
                    "pred_conf": [round(float(c), 5) for c in scaled["conf"].tolist()],
                })
            super().update_metrics(preds, batch)

    Recording.__name__ = f"Recording{base.__name__}"
    Recording.__qualname__ = Recording.__name__
    return Recording


@dataclass
class SplitEvaluation:
    """Result of one pass over one split."""

    split_yaml: str
    map50: float
    map50_95: float
    per_class_map50_95: dict[str, float]
    records: list[dict[str, Any]] = field(repr=False)
    wall_s: float
    speed_ms_per_image: dict[str, float]


def _model_and_validator(checkpoint: Path, family: Family) -> tuple[Any, type]:
    if family == "rtdetr":
        from ultralytics import RTDETR
        from ultralytics.models.rtdetr.val import RTDETRValidator

        return RTDETR(str(checkpoint)), _recording_mixin(RTDETRValidator)
    if family == "detect":
        from ultralytics import YOLO
        from ultralytics.models.yolo.detect.val import DetectionValidator

        return YOLO(str(checkpoint)), _recording_mixin(DetectionValidator)
    raise ValueError(f"unknown model family {family!r}: use 'detect' (YOLO) or 'rtdetr'")


def evaluate_split(
    checkpoint: str | Path,
    split_yaml: str | Path,
    family: Family,
    output_root: str | Path,
    save_dir: str | Path,
    imgsz: int | None = None,
    batch: int | None = None,
    device: str | None = None,
) -> SplitEvaluation:
    """Run one validation pass of `checkpoint` over the `test` split of `split_yaml`.

    `imgsz`/`batch`/`device` None = Ultralytics' defaults (imgsz from the checkpoint's training
    args). Plots and Ultralytics' own files go under `save_dir`. Returns mAPs and the records.
    """
    checkpoint, split_yaml = Path(checkpoint), Path(split_yaml)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint {str(checkpoint)!r} does not exist: train the session first")
    apply_offline_environment(output_root)
    model, validator = _model_and_validator(checkpoint, family)
    overrides: dict[str, Any] = {"data": str(split_yaml), "split": "test", "plots": True, "verbose": False,
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
    metrics = model.val(validator=validator, **overrides)
    wall_s = time.perf_counter() - start
    active = captured["validator"]
    names = metrics.names
    per_class = {names[int(c)]: round(float(metrics.box.maps[int(c)]), 6) for c in metrics.box.ap_class_index}
    return SplitEvaluation(
        split_yaml=str(split_yaml),
        map50=float(metrics.box.map50),
        map50_95=float(metrics.box.map),
        per_class_map50_95=per_class,
        records=sorted(active.records, key=lambda record: record["image_id"]),
        wall_s=round(wall_s, 3),
        speed_ms_per_image={key: round(float(value), 3) for key, value in metrics.speed.items()},
    )
