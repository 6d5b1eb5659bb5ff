"""Pixel geometry of occlusion: label boxes in pixels, rectangles, and how much of each box a mask covers.

Rectangles are integer pixel `Rect`s; boxes are float pixel xyxy, measured exactly (docs/occlusion.md).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

Rect = tuple[int, int, int, int]
"""Integer pixel rectangle (x0, y0, x1, y1), half-open: columns x0..x1-1, rows y0..y1-1."""


def yolo_to_xyxy(labels: np.ndarray, width: int, height: int) -> np.ndarray:
    """(N, 4) normalised (cx, cy, w, h) -> (N, 4) float64 pixel (x0, y0, x1, y1), clipped to the image."""
    boxes = np.asarray(labels, dtype=np.float64).reshape(-1, 4)
    cx, cy, w, h = boxes[:, 0] * width, boxes[:, 1] * height, boxes[:, 2] * width, boxes[:, 3] * height
    xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    return np.clip(xyxy, 0.0, [width, height, width, height])


def rect_mask(rects: Sequence[Rect], width: int, height: int) -> np.ndarray:
    """(H, W) bool mask of the union of `rects` (clipped to the image)."""
    mask = np.zeros((height, width), dtype=bool)
    for x0, y0, x1, y1 in rects:
        mask[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = True
    return mask


def _pixel_weights(low: float, high: float, start: int, stop: int) -> np.ndarray:
    """Overlap length of [low, high] with each unit pixel [j, j+1), j = start..stop-1."""
    edges = np.arange(start, stop, dtype=np.float64)
    return np.clip(np.minimum(edges + 1, high) - np.maximum(edges, low), 0.0, 1.0)


def _covered_share(mask: np.ndarray, box: np.ndarray, window: Rect, invert: bool = False) -> float:
    """Share of `box`'s area (float pixel xyxy, area > 0) inside `window` where `mask` is True (False if invert)."""
    x0, y0, x1, y1 = box
    wx0, wy0 = max(window[0], math.floor(x0), 0), max(window[1], math.floor(y0), 0)
    wx1, wy1 = min(window[2], math.ceil(x1)), min(window[3], math.ceil(y1))
    if wx0 >= wx1 or wy0 >= wy1:
        return 0.0
    cells = mask[wy0:wy1, wx0:wx1]
    cells = (~cells if invert else cells).astype(np.float64)
    covered = _pixel_weights(y0, y1, wy0, wy1) @ cells @ _pixel_weights(x0, x1, wx0, wx1)
    return float(covered / ((x1 - x0) * (y1 - y0)))


def box_coverages(mask: np.ndarray, boxes_xyxy: np.ndarray) -> np.ndarray:
    """(N,) float64 share of each box's area (float pixel xyxy) covered by `mask` ((H, W) bool); NaN if zero-area."""
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    whole = (0, 0, mask.shape[1], mask.shape[0])
    return np.array(
        [_covered_share(mask, box, whole) if (box[2] - box[0]) * (box[3] - box[1]) > 0 else math.nan for box in boxes],
        dtype=np.float64,
    )


def covered_fractions(mask: np.ndarray, boxes_xyxy: np.ndarray) -> list[float | None]:
    """`box_coverages` rounded to 6 decimals, None for a zero-area box: the manifest's `covered_fraction`."""
    return [None if math.isnan(value) else round(float(value), 6) for value in box_coverages(mask, boxes_xyxy)]
