"""Per-image counts and scores of a done session at one operating point: the input of every paired test."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from exp3.layout import SessionState
from exp3.metrics import DEFAULT_MATCH_IOU
from exp3.report.runs import SessionRun, load_records, threshold_conf
from exp3.schema import MetricsView

IMAGE_COUNT_COLUMNS: dict[str, tuple[str, str, str]] = {
    "ingredient_micro_f1": ("ingredient_tp", "ingredient_fp", "ingredient_fn"),
    "detection_f1": ("detection_tp", "detection_fp", "detection_fn")}
"""Per-image (tp, fp, fn) columns of `image_scores` behind each pooled (micro) F1."""
IMAGE_MEAN_COLUMNS: dict[str, str] = {"ingredient_samples_f1": "ingredient_f1"}
"""Per-image score columns of `image_scores` whose mean over images is the metric (samples F1)."""


def image_scores(records: list[Any], num_classes: int, conf: float, match_iou: float) -> pd.DataFrame:
    """Per-image counts and scores of one split at threshold `conf`, indexed by image_id.

    Returns:
        (N, 7) frame: ingredient_tp/fp/fn (ingredient sets, `exp3.metrics.ingredient_sets`),
        ingredient_f1 (per-image F1, whose mean is the samples F1) and detection_tp/fp/fn
        (`exp3.metrics.detection_counts` at `conf` and `match_iou`).
    """
    from exp3.metrics import detection_counts, ingredient_sets, prf_from_counts

    gt, pred = ingredient_sets(records, num_classes, conf)
    tp, fp, fn = (gt & pred).sum(axis=1), (~gt & pred).sum(axis=1), (gt & ~pred).sum(axis=1)
    detection = np.array([detection_counts(record, conf, match_iou) for record in records],
                         dtype=np.int64).reshape(-1, 3)
    return pd.DataFrame({"ingredient_tp": tp, "ingredient_fp": fp, "ingredient_fn": fn,
                         "ingredient_f1": prf_from_counts(tp, fp, fn)[2], "detection_tp": detection[:, 0],
                         "detection_fp": detection[:, 1], "detection_fn": detection[:, 2]},
                        index=[record.image_id for record in records])


def split_match_iou(view: MetricsView, split: str) -> float:
    """The IoU a detection needs to match a ground-truth box on `split`: the split's recorded `match_iou`,
    else the session's (`eval.match_iou`), else exp3.metrics' default."""
    for value in (view.split(split).match_iou, view.eval.match_iou):
        if value is not None and math.isfinite(value):
            return float(value)
    return DEFAULT_MATCH_IOU


def run_image_scores(run: SessionRun, split: str, threshold: str = "primary",
                     records: list[Any] | None = None) -> pd.DataFrame | None:
    """`image_scores` of one done run at one operating point (`threshold_conf`), None when it lacks what is needed.

    `records`: the split's records when already loaded (`load_records`), to read the file once.
    """
    view = run.view
    num_classes = view.split(split).num_classes
    conf = threshold_conf(run.metrics, split, threshold)
    if run.status != SessionState.DONE or not num_classes or conf is None:
        return None
    records = load_records(run, split) if records is None else records
    if not records:
        return None
    return image_scores(records, int(num_classes), conf, split_match_iou(view, split))


def pool_image_scores(frames: list[pd.DataFrame]) -> pd.DataFrame | None:
    """One session's seeds pooled on the images every seed has: counts summed, per-image F1 averaged.

    Summed counts give the pooled micro / detection F1; the averaged per-image F1 has the seed mean
    of the samples F1 as its mean. None when there is no frame or no common image.
    """
    if not frames:
        return None
    common = frames[0].index
    for frame in frames[1:]:
        common = common.intersection(frame.index, sort=False)
    if not len(common):
        return None
    total = sum(frame.loc[common] for frame in frames)
    total["ingredient_f1"] = total["ingredient_f1"] / len(frames)
    return total
