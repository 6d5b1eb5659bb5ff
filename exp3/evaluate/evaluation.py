"""Evaluate a checkpoint on one split: Ultralytics' mAP and the detections `predict` would give.

Which numbers and detections: docs/thresholds.md, "Primary" and "One box, two classes"; their files: docs/schema.md.
Ground truth and the per-image mAP statistics come from the validator's pass, so both halves describe the same files.
The two passes cannot be merged without giving up one definition: the validator pads rect batches by half a stride, so
its inputs differ from `predict`'s. The checkpoint is loaded with plain Ultralytics: no masking hook runs here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from exp3.dataset.audit import list_split_images, read_data_yaml
from exp3.evaluate.mapstats import MapStats
from exp3.fileio import atomic_write_json
from exp3.splits import TEST_SPLIT
from exp3.train.offline import apply_offline_environment

Family = Literal["detect", "rtdetr"]
RECORD_CONF = 0.01
"""Confidence floor of the recorded predictions: below every threshold exp3 applies (primary 0.25,
val-chosen thresholds from a 0.01 grid), so any of them can be applied to the file afterwards."""
MAP_STAT_KEYS = ("tp", "conf", "pred_cls", "target_cls")
"""The validator's per-image stats kept for mAP's bootstrap (exp3.evaluate.mapstats.MapStats.from_images)."""


def _recording_mixin(base: type) -> type:
    """A subclass of the validator `base` that records every image's file and ground truth (original pixels)."""
    from ultralytics.utils import ops  # lazy: Ultralytics after apply_offline_environment

    class Recording(base):  # type: ignore[misc, valid-type]
        def init_metrics(self, model: Any) -> None:
            super().init_metrics(model)
            self.records: list[dict[str, Any]] = []
            self.map_images: list[dict[str, Any]] = []
            self.recording_s = 0.0

        def update_metrics(self, preds: list[dict[str, Any]], batch: dict[str, Any]) -> None:
            start = time.perf_counter()
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
            stats = self.metrics.stats
            before = {key: len(stats[key]) for key in MAP_STAT_KEYS}
            self.recording_s += time.perf_counter() - start
            super().update_metrics(preds, batch)
            start = time.perf_counter()
            # the validator's own per-image matching stats of this batch (what its mAP is computed from)
            appended = {key: len(stats[key]) - before[key] for key in MAP_STAT_KEYS}
            if set(appended.values()) != {len(preds)}:
                raise RuntimeError(f"{base.__name__}.update_metrics appended {appended} stats entries for a batch of "
                                   f"{len(preds)} images; exp3's per-image mAP stats need exactly one per image: "
                                   "check exp3.evaluate.evaluation against the installed ultralytics")
            for index, record in enumerate(self.records[len(self.records) - len(preds):]):
                self.map_images.append({"image_id": record["image_id"],
                                        **{key: stats[key][before[key] + index] for key in MAP_STAT_KEYS}})
            self.recording_s += time.perf_counter() - start

    Recording.__name__ = f"Recording{base.__name__}"
    Recording.__qualname__ = Recording.__name__
    return Recording


@dataclass
class EvaluationStages:
    """Where one split's evaluation time went (seconds), metrics.json's `splits.<split>.eval_stages_s`: stages that
    do not overlap and add up to the split's `eval_wall_s` (docs/schema.md, `splits.<split>`)."""

    validator_s: float = 0.0
    predict_s: float = 0.0
    recording_s: float = 0.0
    draws_s: float = 0.0
    writing_s: float = 0.0

    @property
    def wall_s(self) -> float:
        return round(self.validator_s + self.predict_s + self.recording_s + self.draws_s + self.writing_s, 3)

    def to_json(self) -> dict[str, float]:
        return {name: round(value, 3) for name, value in vars(self).items()}


@dataclass
class SplitEvaluation:
    """mAP of the validator pass and the merged per-image records of one split."""

    split_yaml: str
    map50: float
    map50_95: float
    per_class_map50_95: dict[str, float]
    records: list[dict[str, Any]] = field(repr=False)
    map_stats: MapStats = field(repr=False)
    speed_ms_per_image: dict[str, float]
    stages: EvaluationStages

    @property
    def wall_s(self) -> float:
        """The whole evaluation of the split so far (the sum of its stages)."""
        return self.stages.wall_s


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
    if family not in ("detect", "rtdetr"):
        raise ValueError(f"unknown model family {family!r}: use 'detect' (YOLO) or 'rtdetr'")
    from ultralytics import RTDETR, YOLO  # lazy: Ultralytics after apply_offline_environment
    from ultralytics.models.rtdetr.val import RTDETRValidator
    from ultralytics.models.yolo.detect.val import DetectionValidator

    model_class, validator = (RTDETR, RTDETRValidator) if family == "rtdetr" else (YOLO, DetectionValidator)
    return EvaluationModel(checkpoint, family, model_class(str(checkpoint)), _recording_mixin(validator))


def predict_records(model: Any, image_files: list[str], stages: EvaluationStages, imgsz: int | None = None,
                    batch: int | None = None, device: str | None = None) -> dict[str, dict[str, list]]:
    """`model.predict` over `image_files` at conf RECORD_CONF, everything else predict's defaults.

    `predict` takes a list of files as one batch, whatever its `batch` (ultralytics 8.4.190 loads a
    list with PIL and runs it in one forward pass), and letterboxes a batch of one image shape to
    the minimal rectangle, as it does a single image, but a mixed batch to the square `imgsz`. So
    the files go to `predict` in lists of one shape of at most `batch` (None: the validator's 16):
    each image gets what `predict([file])` alone gives it (a forward pass of another batch size can
    move a confidence by float32 rounding, ~1e-7, no more), in bounded memory.
    Returns {image id (file stem): {"pred_classes": [P], "pred_boxes": [P][4] (xyxy original pixels),
    "pred_conf": [P]}}; confidences are kept unrounded so a later threshold reproduces `predict`.
    `stages` gets the time of the predict pass and of turning its results into records.
    """
    from ultralytics.data.utils import exif_size  # lazy: Ultralytics after apply_offline_environment

    overrides = {"conf": RECORD_CONF, "verbose": False, "stream": True, "save": False,
                 **_given(imgsz=imgsz, device=device)}
    batch = batch or _validator_batch()
    start = time.perf_counter()
    by_shape: dict[tuple[int, int], list[str]] = {}
    for file in image_files:
        with Image.open(file) as image:  # the header only: the size predict's loader will see (EXIF-rotated)
            by_shape.setdefault(exif_size(image), []).append(str(file))
    found: dict[str, dict[str, list]] = {}
    recording_s = 0.0
    for files in by_shape.values():
        for first in range(0, len(files), batch):
            for result in model.predict(source=files[first:first + batch], **overrides):
                converting = time.perf_counter()
                rows = result.boxes.data.cpu().tolist()  # one device sync per image: x1 y1 x2 y2 conf cls
                found[Path(result.path).stem] = {
                    "pred_classes": [int(row[-1]) for row in rows],
                    "pred_boxes": [[round(float(v), 2) for v in row[:4]] for row in rows],
                    "pred_conf": [float(row[-2]) for row in rows],
                }
                recording_s += time.perf_counter() - converting
    stages.predict_s += time.perf_counter() - start - recording_s
    stages.recording_s += recording_s
    return found


def _given(**options: Any) -> dict[str, Any]:
    """The options that are not None: the others are left to Ultralytics' defaults."""
    return {key: value for key, value in options.items() if value is not None}


def _validator_batch() -> int:
    """The batch Ultralytics' `val` uses when none is given (cfg/default.yaml; `predict`'s own default is 1)."""
    from ultralytics.cfg import DEFAULT_CFG  # lazy: Ultralytics after apply_offline_environment

    return int(DEFAULT_CFG.batch)


def evaluate_split(
    loaded: EvaluationModel,
    split_yaml: str | Path,
    output_root: str | Path,
    save_dir: str | Path,
    split: str = TEST_SPLIT,
    imgsz: int | None = None,
    batch: int | None = None,
    device: str | None = None,
    plots: bool = True,
    workers: int | None = None,
) -> SplitEvaluation:
    """mAP (validator pass) and predict-equivalent per-image records of a checkpoint on `split` of `split_yaml`.

    `imgsz`/`device`/`workers` None = Ultralytics' defaults (imgsz from the checkpoint's training args, for both
    passes; `workers` is the validator's DataLoader, which Ultralytics runs without workers on CPU). At most
    `batch` images per forward pass in both passes (`predict_records`), None = the validator's default (16).
    Plots and Ultralytics' own files go under `save_dir`; `plots=False` skips Ultralytics' validation figures
    (metrics, records and map stats are the same).
    `loaded`: the checkpoint as `load_evaluation_model` loads it, once for all the splits a session evaluates.
    """
    split_yaml = Path(split_yaml)
    apply_offline_environment(output_root)
    model, validator = loaded.model, loaded.validator
    batch = batch or _validator_batch()
    overrides = {"data": str(split_yaml), "split": split, "plots": plots, "verbose": False,
                 "project": str(Path(save_dir).parent), "name": Path(save_dir).name, "exist_ok": True, "batch": batch,
                 **_given(imgsz=imgsz, device=device, workers=workers)}
    captured: dict[str, Any] = {}

    def _keep_validator(active: Any) -> None:
        captured["validator"] = active

    model.add_callback("on_val_end", _keep_validator)
    stages = EvaluationStages()
    start = time.perf_counter()
    try:
        metrics = model.val(validator=validator, **overrides)
    finally:
        model.callbacks["on_val_end"].remove(_keep_validator)  # the next split's val keeps its own
    finished = captured["validator"]
    stages.validator_s = time.perf_counter() - start - finished.recording_s
    listed = {image.stem for image in list_split_images(read_data_yaml(split_yaml), split)}
    scored = {record["image_id"] for record in finished.records}
    skipped, unlisted = sorted(listed - scored), sorted(scored - listed)
    if unlisted:
        raise ValueError(f"Ultralytics' validator scored {len(unlisted)} images of {split} that exp3 does not list in "
                         f"{split_yaml} (e.g. {unlisted[0]!r}): the numbers would not be of the audited images; "
                         "report this as a bug with the split's layout")
    if skipped:                 # Ultralytics' loader drops an image it cannot read with one log line, and goes on
        raise ValueError(f"Ultralytics' validator skipped {len(skipped)} of the {len(listed)} images of {split} in "
                         f"{split_yaml} (e.g. {skipped[0]!r}; its log says why): re-save them as JPEG or PNG of at "
                         "least 10 x 10 px, or remove them (python -m exp3.dataset audit --data <data.yaml> lists "
                         "them)")
    start = time.perf_counter()
    map_stats = MapStats.from_images(finished.map_images)
    records = sorted(finished.records, key=lambda record: record["image_id"])
    stages.recording_s = finished.recording_s + time.perf_counter() - start
    predicted = predict_records(model, [record["im_file"] for record in records], stages, imgsz, batch, device)
    start = time.perf_counter()
    for record in records:  # the file path was only for `predict`: records hold the image id
        del record["im_file"]
        record.update(predicted[record["image_id"]])
    stages.recording_s += time.perf_counter() - start
    per_class = {metrics.names[int(c)]: round(float(metrics.box.maps[int(c)]), 6) for c in metrics.box.ap_class_index}
    return SplitEvaluation(split_yaml=str(split_yaml), map50=float(metrics.box.map50), map50_95=float(metrics.box.map),
                           per_class_map50_95=per_class, records=records, map_stats=map_stats,
                           speed_ms_per_image={key: round(float(value), 3) for key, value in metrics.speed.items()},
                           stages=stages)


def save_split_files(evaluation: SplitEvaluation, predictions_path: Path, header: dict[str, Any],
                     map_stats_path: Path | None = None) -> None:
    """The split's `predictions_<split>.json` (`header` plus its records as "images") and, if
    `map_stats_path`, its map stats with mAP's bootstrap draws; the draws and the writing are timed
    into `evaluation.stages` (the draws are evaluation too: the report only differences them)."""
    start = time.perf_counter()
    atomic_write_json(predictions_path, {**header, "images": evaluation.records}, indent=None)
    evaluation.stages.writing_s += time.perf_counter() - start
    if map_stats_path is None:
        return
    start = time.perf_counter()
    drawn = evaluation.map_stats.with_draws()
    evaluation.stages.draws_s += time.perf_counter() - start
    start = time.perf_counter()
    drawn.save(map_stats_path)
    evaluation.stages.writing_s += time.perf_counter() - start
