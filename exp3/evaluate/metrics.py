"""Metrics over stored predictions: ingredient-list P/R/F1, detection P/R/F1, robustness ratios.

Pure functions over plain arrays and records (numpy + scipy only): nothing here touches a model, a file or a
global RNG. `records_from_json` reads a `predictions_<split>.json`'s images back into `ImageRecord`s and
`summarize_split` computes every number of one split at once. Definitions (micro / macro / samples averages,
Hungarian detection matching): docs/references.md section 3. Macro averages only the classes present in the
split's ground truth or predictions: a class nobody has and nobody predicts says nothing about the model.

EMPTY-SET RULE, in place of scikit-learn's `zero_division` argument. A ratio whose denominator is zero (0/0)
scores EMPTY_BOTH_SCORE = 1.0 when there is nothing wrong to report (tp = fp = fn = 0: nothing to find and
nothing claimed, a perfect answer), and EMPTY_ONE_SIDE_SCORE = 0.0 otherwise (a miss or a false alarm). So
F1 = 2 tp / (2 tp + fp + fn) is always the harmonic mean of P and R. Against scikit-learn: every F1 equals
`zero_division=1.0`; P and R equal `zero_division=0.0` except on the both-empty cases, where they equal
`zero_division=1.0`. The rule applies to the micro totals, to every class of the macro average and to
detection-level P/R/F1.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

DEFAULT_CONF = 0.25
"""Confidence threshold of the ingredient sets and of detection P/R/F1 (Ultralytics' predict default)."""
DEFAULT_MATCH_IOU = 0.5
"""IoU a detection needs with a same-class GT box to count as a true positive."""
DEFAULT_CONF_GRID: tuple[float, ...] = tuple(round(0.05 * step, 2) for step in range(1, 20))
"""Thresholds of the F1-vs-conf curve: 0.05, 0.10, ..., 0.95."""
THRESHOLD_SEARCH_GRID: tuple[float, ...] = tuple(round(0.01 * step, 2) for step in range(1, 100))
"""Candidates of the val-chosen threshold: 0.01, 0.02, ..., 0.99 (recorded predictions start at 0.01)."""

EMPTY_BOTH_SCORE = 1.0
"""Score of a 0/0 ratio when tp = fp = fn = 0 (nothing to find, nothing claimed): a perfect answer."""
EMPTY_ONE_SIDE_SCORE = 0.0
"""Score of a 0/0 ratio when the other side is not empty (a miss or a false alarm): a wrong answer."""

JSON_REQUIRED_KEYS: tuple[str, ...] = ("image_id", "gt_classes", "gt_boxes", "pred_classes", "pred_boxes", "pred_conf")
"""Keys every image entry of predictions_<split>.json must have."""
JSON_OPTIONAL_KEYS: tuple[str, ...] = ("width", "height")
"""Keys an image entry may have (original image size in pixels); omitted when unknown."""


@dataclass(frozen=True, eq=False)
class ImageRecord:
    """Ground truth and predictions of one image.

    Attributes:
        image_id: unique id of the image within the split (pairs clean and occluded copies).
        gt_classes: (G,) int64 class ids.
        gt_boxes: (G, 4) float64 xyxy pixels.
        pred_classes: (P,) int64 class ids.
        pred_boxes: (P, 4) float64 xyxy pixels.
        pred_conf: (P,) float64 confidences in [0, 1].
        width, height: original image size in pixels, or None when unknown.

    Inputs are coerced to those dtypes; G = 0 or P = 0 are fine (empty lists are accepted).
    """

    image_id: str
    gt_classes: np.ndarray
    gt_boxes: np.ndarray
    pred_classes: np.ndarray
    pred_boxes: np.ndarray
    pred_conf: np.ndarray
    width: int | None = None
    height: int | None = None

    def __post_init__(self) -> None:
        where = f"image {self.image_id!r}"
        if not isinstance(self.image_id, str) or not self.image_id:
            raise ValueError(f"image_id must be a non-empty string, got {self.image_id!r}; pass the image's id as str")
        gt_classes = _as_class_ids(self.gt_classes, f"{where}: gt_classes")
        pred_classes = _as_class_ids(self.pred_classes, f"{where}: pred_classes")
        gt_boxes = _as_boxes(self.gt_boxes, f"{where}: gt_boxes")
        pred_boxes = _as_boxes(self.pred_boxes, f"{where}: pred_boxes")
        pred_conf = np.asarray(self.pred_conf, dtype=np.float64)
        if pred_conf.ndim != 1:
            raise ValueError(f"{where}: pred_conf must be a flat list (P,), got shape {pred_conf.shape}")
        if len(gt_boxes) != len(gt_classes):
            raise ValueError(f"{where}: {len(gt_boxes)} gt_boxes but {len(gt_classes)} gt_classes; "
                             "give one class per box")
        if not len(pred_boxes) == len(pred_classes) == len(pred_conf):
            raise ValueError(f"{where}: {len(pred_boxes)} pred_boxes, {len(pred_classes)} pred_classes, "
                             f"{len(pred_conf)} pred_conf; give one class and one confidence per box")
        if not np.all((pred_conf >= 0.0) & (pred_conf <= 1.0)):
            raise ValueError(f"{where}: pred_conf outside [0, 1] (min {pred_conf.min()}, max {pred_conf.max()}); "
                             "store probabilities, not logits")
        for name, size in (("width", self.width), ("height", self.height)):
            if size is not None and (isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size <= 0):
                raise ValueError(f"{where}: {name}={size!r}; give a positive int in pixels or None")
        coerced = (gt_classes, gt_boxes, pred_classes, pred_boxes, pred_conf)
        for name, value in zip(JSON_REQUIRED_KEYS[1:], coerced):  # the array fields, in declaration order
            object.__setattr__(self, name, value)


def _as_class_ids(values: Any, where: str) -> np.ndarray:
    """Coerce a sequence of class ids to (K,) int64; reject non-integral values."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
        raise ValueError(f"{where}: class ids must be a flat list of integers, got {values!r}")
    return array.astype(np.int64)


def _as_boxes(values: Any, where: str) -> np.ndarray:
    """Coerce boxes to (K, 4) float64 xyxy; reject other shapes, non-finite or inverted boxes."""
    if not np.size(values):
        return np.zeros((0, 4))
    boxes = np.asarray(values, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{where}: expected shape (K, 4) xyxy, got {boxes.shape}; give one [x0, y0, x1, y1] per box")
    if not np.all(np.isfinite(boxes)) or np.any(boxes[:, 2] < boxes[:, 0]) or np.any(boxes[:, 3] < boxes[:, 1]):
        raise ValueError(f"{where}: boxes must be finite with x1 >= x0 and y1 >= y0 (xyxy, not xywh)")
    return boxes


def records_from_json(items: Sequence[Mapping[str, Any]]) -> list[ImageRecord]:
    """Parse the list of per-image dicts of predictions_<split>.json into `ImageRecord`s.

    Each dict has the keys `JSON_REQUIRED_KEYS` (lists; boxes as [[x0, y0, x1, y1], ...]) and
    optionally `JSON_OPTIONAL_KEYS`; any other key is an error, so typos cannot pass silently.
    """
    records = []
    for index, item in enumerate(items):
        missing = [key for key in JSON_REQUIRED_KEYS if key not in item]
        unknown = sorted(set(item) - set(JSON_REQUIRED_KEYS) - set(JSON_OPTIONAL_KEYS))
        if missing or unknown:
            raise ValueError(f"predictions entry {index}: missing keys {missing}, unknown keys {unknown}; "
                             f"allowed keys are {list(JSON_REQUIRED_KEYS + JSON_OPTIONAL_KEYS)}")
        records.append(ImageRecord(**item))
    return records


def validate_records(records: Sequence[ImageRecord], num_classes: int) -> None:
    """Raise ValueError unless `records` is non-empty, ids are unique and every class id is in [0, num_classes)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes={num_classes!r}; pass the dataset's class count (len(names)) as a positive int")
    if not records:
        raise ValueError("no image records; evaluate at least one image before computing metrics")
    counts = Counter(record.image_id for record in records)
    if duplicates := sorted(image_id for image_id, count in counts.items() if count > 1)[:5]:
        raise ValueError(f"duplicate image ids {duplicates}; give every image of a split a unique id")
    for record in records:
        for name in ("gt_classes", "pred_classes"):
            classes = getattr(record, name)
            bad = classes[(classes < 0) | (classes >= num_classes)]
            if bad.size:
                raise ValueError(f"image {record.image_id!r}: {name} {bad.tolist()} outside [0, {num_classes}); "
                                 "check num_classes matches the dataset's names")


def _check_unit_interval(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}={value!r} is outside [0, 1]; pass a fraction such as 0.25")


def prf_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, f1) under the module's empty-set rule from broadcastable count arrays `tp, fp, fn`
    (any shape, e.g. (N,) per image or () for totals): float64 arrays of the broadcast shape, each in [0, 1]."""
    tp, fp, fn = (np.asarray(count, dtype=np.float64) for count in (tp, fp, fn))
    nothing_wrong = (fp == 0) & (fn == 0)
    empty_score = np.where(nothing_wrong, EMPTY_BOTH_SCORE, EMPTY_ONE_SIDE_SCORE)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), empty_score)
        recall = np.where(tp + fn > 0, tp / (tp + fn), empty_score)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), EMPTY_BOTH_SCORE)
    return precision, recall, f1


def class_max_confidence(records: Sequence[ImageRecord], num_classes: int) -> np.ndarray:
    """Highest detection confidence per image and class, (N, C) float64; -1.0 where the image has no detection
    of that class, so that no threshold in [0, 1] ever puts the class in the predicted set."""
    max_conf = np.full((len(records), num_classes), -1.0)
    for row, record in enumerate(records):
        np.maximum.at(max_conf[row], record.pred_classes, record.pred_conf)
    return max_conf


def gt_class_sets(records: Sequence[ImageRecord], num_classes: int) -> np.ndarray:
    """Ground-truth ingredient sets: (N, C) bool, True where the image has a GT box of the class."""
    gt = np.zeros((len(records), num_classes), dtype=bool)
    for row, record in enumerate(records):
        gt[row, record.gt_classes] = True
    return gt


def above(confidences: np.ndarray, threshold: float | np.ndarray) -> np.ndarray:
    """Which confidences count at `threshold`, as Ultralytics' `predict` counts them: `conf > threshold` in float32
    (YOLO's NMS and RT-DETR's postprocess compare float32 scores with the threshold), so a box whose confidence
    equals float32(threshold) is left out, as `predict(conf=threshold)` leaves it out."""
    return np.asarray(confidences, dtype=np.float32) > np.asarray(threshold, dtype=np.float32)


def ingredient_sets(records: Sequence[ImageRecord], num_classes: int,
                    conf: float = DEFAULT_CONF) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth and predicted ingredient sets at threshold `conf`: two (N, C) bool matrices."""
    _check_unit_interval("conf", conf)
    validate_records(records, num_classes)
    return gt_class_sets(records, num_classes), above(class_max_confidence(records, num_classes), conf)


def _set_counts(gt: np.ndarray, pred: np.ndarray,
                axis: int | tuple[int, ...] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TP, FP, FN of boolean (N, C) sets (or broadcastable stacks of them) summed along `axis` (None: everything)."""
    return (gt & pred).sum(axis=axis), (~gt & pred).sum(axis=axis), (gt & ~pred).sum(axis=axis)


def per_image_prf(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-image ingredient (precision, recall, f1), each (N,) float64, from (N, C) bool sets."""
    return prf_from_counts(*_set_counts(gt, pred, axis=1))


def per_class_prf(gt: np.ndarray, pred: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class ingredient scores from (N, C) bool sets: a dict of (C,) arrays, precision, recall, f1 (float64);
    support (images whose GT has the class), predicted (images whose predicted set has it), tp (images with both)
    (int64)."""
    tp, fp, fn = _set_counts(gt, pred, axis=0)
    precision, recall, f1 = prf_from_counts(tp, fp, fn)
    return {"precision": precision, "recall": recall, "f1": f1, "support": tp + fn, "predicted": tp + fp, "tp": tp}


def ingredient_prf(gt: np.ndarray, pred: np.ndarray) -> dict[str, dict[str, float]]:
    """Ingredient-list P/R/F1 with the three averages from (N, C) bool sets: {"micro" | "macro" | "samples":
    {"precision", "recall", "f1"}} as floats in [0, 1]. macro averages over the columns present in gt or pred
    (NaN when none is); samples averages over all N rows."""
    micro = prf_from_counts(*_set_counts(gt, pred, axis=None))
    per_class, present = per_class_prf(gt, pred), present_classes(gt, pred)
    macro = tuple(per_class[name][present] for name in ("precision", "recall", "f1"))
    samples = per_image_prf(gt, pred)
    return {name: {"precision": _mean(p), "recall": _mean(r), "f1": _mean(f)}
            for name, (p, r, f) in (("micro", micro), ("macro", macro), ("samples", samples))}


def present_classes(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """(C,) bool: classes in some image's ground truth or predicted set (the macro average's label set)."""
    return gt.any(axis=0) | pred.any(axis=0)


def _mean(values: np.ndarray) -> float:
    """Mean of a non-empty array as float; NaN for an empty one (an undefined average)."""
    return float(np.mean(values)) if np.size(values) else math.nan


def f1_vs_conf(records: Sequence[ImageRecord], num_classes: int,
               conf_grid: Sequence[float] = DEFAULT_CONF_GRID) -> dict[str, Any]:
    """Ingredient F1 (micro and samples) over `conf_grid`, (T,) thresholds in [0, 1].

    Returns {"conf", "micro_f1", "samples_f1": (T,) lists, "best_conf_micro", "best_conf_samples": float}; a best
    conf is the lowest grid threshold reaching the highest F1. Choose a threshold on the validation split and apply
    it to the test split: the best conf of the test split itself is an optimistic estimate.
    """
    grid = np.asarray(conf_grid, dtype=np.float64).reshape(-1)
    if grid.size == 0:
        raise ValueError("conf_grid is empty; pass thresholds such as DEFAULT_CONF_GRID")
    for value in grid:
        _check_unit_interval("conf_grid value", float(value))
    validate_records(records, num_classes)
    gt = gt_class_sets(records, num_classes)[None]                                   # (1, N, C)
    pred = above(class_max_confidence(records, num_classes)[None], grid[:, None, None])   # (T, N, C)
    micro_f1 = prf_from_counts(*_set_counts(gt, pred, axis=(1, 2)))[2]
    samples_f1 = prf_from_counts(*_set_counts(gt, pred, axis=2))[2].mean(axis=1)
    return {"conf": grid.tolist(), "micro_f1": micro_f1.tolist(), "samples_f1": samples_f1.tolist(),
            "best_conf_micro": float(grid[np.argmax(micro_f1)]),
            "best_conf_samples": float(grid[np.argmax(samples_f1)])}


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (A, 4) and (B, 4) xyxy boxes (same units): (A, B) float64 in [0, 1]; a pair whose union
    has zero area (two degenerate boxes) has IoU 0."""
    top_left = np.maximum(boxes_a[:, None, :2], boxes_b[None, :, :2])        # (A, B, 2)
    bottom_right = np.minimum(boxes_a[:, None, 2:], boxes_b[None, :, 2:])    # (A, B, 2)
    intersection = np.clip(bottom_right - top_left, 0.0, None).prod(axis=2)
    area_a = (boxes_a[:, 2] - boxes_a[:, 0]) * (boxes_a[:, 3] - boxes_a[:, 1])
    area_b = (boxes_b[:, 2] - boxes_b[:, 0]) * (boxes_b[:, 3] - boxes_b[:, 1])
    union = area_a[:, None] + area_b[None, :] - intersection
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, intersection / union, 0.0)


def optimal_matches(iou: np.ndarray, same_class: np.ndarray,
                    match_iou: float = DEFAULT_MATCH_IOU) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching of predictions to GT boxes by `linear_sum_assignment`: (pred_index, gt_index), two (M,)
    int arrays of matched pairs, M = number of true positives. `iou`: (P, G) IoU of predictions vs GT boxes;
    `same_class`: (P, G) bool, True where the prediction's class equals the GT box's class.

    A pair is eligible when `same_class` and IoU >= `match_iou`. Eligible pairs weigh
    1 + IoU / (K + 1), K = min(P, G), others 0: the IoU part of any assignment sums to less than 1,
    so the optimum has the most matches possible and, among those, the largest total IoU.
    """
    _check_unit_interval("match_iou", match_iou)
    if iou.shape != same_class.shape or iou.ndim != 2:
        raise ValueError(f"iou {iou.shape} and same_class {same_class.shape} must be one (P, G) shape")
    eligible = same_class & (iou >= match_iou)
    if not eligible.any():
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    weight = np.where(eligible, 1.0 + iou / (min(iou.shape) + 1), 0.0)
    rows, cols = linear_sum_assignment(weight, maximize=True)
    keep = eligible[rows, cols]
    return rows[keep].astype(np.int64), cols[keep].astype(np.int64)


def matched_gt(record: ImageRecord, conf: float = DEFAULT_CONF, match_iou: float = DEFAULT_MATCH_IOU) -> np.ndarray:
    """(G,) bool: the image's ground-truth boxes matched one-to-one (`optimal_matches`) by a detection `above`
    `conf`."""
    kept = above(record.pred_conf, conf)
    iou = box_iou(record.pred_boxes[kept], record.gt_boxes)
    same_class = record.pred_classes[kept][:, None] == record.gt_classes[None, :]
    found = np.zeros(len(record.gt_classes), dtype=bool)
    found[optimal_matches(iou, same_class, match_iou)[1]] = True
    return found


def detection_counts(record: ImageRecord, conf: float = DEFAULT_CONF,
                     match_iou: float = DEFAULT_MATCH_IOU) -> tuple[int, int, int]:
    """(tp, fp, fn) of one image: detections `above` `conf`, matched by `optimal_matches`."""
    tp = int(matched_gt(record, conf, match_iou).sum())
    return tp, int(above(record.pred_conf, conf).sum()) - tp, len(record.gt_boxes) - tp


def detection_prf(records: Sequence[ImageRecord], conf: float = DEFAULT_CONF,
                  match_iou: float = DEFAULT_MATCH_IOU) -> dict[str, float | int]:
    """Detection-level P/R/F1 with TP/FP/FN summed over images (box counts, not images):
    {"precision", "recall", "f1": float in [0, 1], "tp", "fp", "fn": int}."""
    _check_unit_interval("conf", conf)
    _check_unit_interval("match_iou", match_iou)
    if not records:
        raise ValueError("no image records; evaluate at least one image before computing metrics")
    counts = np.array([detection_counts(record, conf, match_iou) for record in records], dtype=np.int64)
    tp, fp, fn = (int(total) for total in counts.sum(axis=0))
    precision, recall, f1 = prf_from_counts(tp, fp, fn)
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1), "tp": tp, "fp": fp, "fn": fn}


def robustness_ratio(occluded: float, clean: float) -> float:
    """occluded / clean for one score (rF1 from F1, rmAP from mAP): 1.0 means occlusion costs nothing. NaN when
    `clean` is 0, since there is nothing to retain (a NaN score propagates)."""
    return math.nan if clean == 0 else occluded / clean


def summarize_split(records: Sequence[ImageRecord], num_classes: int, conf: float = DEFAULT_CONF,
                    match_iou: float = DEFAULT_MATCH_IOU, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Every metric of one split's predictions as a JSON-ready dict.

    Returns:
        {
          "n_images": int, "num_classes": int, "conf": float, "match_iou": float,
          "ingredient": {"micro" | "macro" | "samples": {"precision", "recall", "f1"}},
          "per_class": [{"class_id", "name", "precision", "recall", "f1", "support", "predicted", "tp"}] (C),
          "per_image": {"image_id", "precision", "recall", "f1": lists of length N, in records' order},
          "detection": {"precision", "recall", "f1", "tp", "fp", "fn"},
          "f1_vs_conf": see `f1_vs_conf`,
        }
        `name` is class_names[class_id] or str(class_id). `per_image` is column-oriented
        (`pandas.DataFrame(summary["per_image"])`); pair sessions on `image_id`.
    """
    _check_unit_interval("conf", conf)
    _check_unit_interval("match_iou", match_iou)
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class_names for num_classes={num_classes}; pass the dataset's names")
    gt, pred = ingredient_sets(records, num_classes, conf)
    names = list(class_names) if class_names is not None else [str(class_id) for class_id in range(num_classes)]
    per_class, present = per_class_prf(gt, pred), present_classes(gt, pred)
    image_precision, image_recall, image_f1 = per_image_prf(gt, pred)
    return {
        "n_images": len(records), "num_classes": num_classes, "conf": conf, "match_iou": match_iou,
        "ingredient": ingredient_prf(gt, pred),
        "per_class": [{"class_id": class_id, "name": names[class_id], "present": bool(present[class_id]),
                       **{key: values[class_id].item() for key, values in per_class.items()}}
                      for class_id in range(num_classes)],
        "per_image": {"image_id": [record.image_id for record in records], "precision": image_precision.tolist(),
                      "recall": image_recall.tolist(), "f1": image_f1.tolist()},
        "detection": detection_prf(records, conf, match_iou),
        "f1_vs_conf": f1_vs_conf(records, num_classes),
    }


def operating_point(records: Sequence[ImageRecord], num_classes: int, conf: float,
                    match_iou: float = DEFAULT_MATCH_IOU) -> dict[str, Any]:
    """Ingredient and detection metrics of one split at threshold `conf`: {"conf": float, "ingredient": {"micro" |
    "macro" | "samples": {"precision", "recall", "f1"}}, "detection": {"precision", "recall", "f1", "tp", "fp", "fn"}}.
    """
    return {"conf": conf, "ingredient": ingredient_prf(*ingredient_sets(records, num_classes, conf)),
            "detection": detection_prf(records, conf, match_iou)}


def choose_threshold(val_records: Sequence[ImageRecord], num_classes: int,
                     grid: Sequence[float] = THRESHOLD_SEARCH_GRID, prefer: float = DEFAULT_CONF) -> dict[str, float]:
    """The confidence threshold that maximises ingredient micro F1 on the clean *val* split: {"conf": chosen
    threshold, "val_micro_f1": micro F1 on val at it}.

    A session's secondary operating point (docs/thresholds.md, "Secondary"): never call this on a test split.
    Ties go to the threshold nearest `prefer` (the primary threshold), so a model that finds nothing keeps it.
    """
    curve = f1_vs_conf(val_records, num_classes, grid)
    f1 = np.asarray(curve["micro_f1"])
    tied = np.flatnonzero(f1 == f1.max())
    best = int(tied[np.argmin(np.abs(np.asarray(curve["conf"])[tied] - prefer))])
    return {"conf": float(curve["conf"][best]), "val_micro_f1": float(curve["micro_f1"][best])}
