"""Occluder planners: where the rectangles of one image go (`PLANNERS`, one per occlusion mode).

Every planner places its rectangles with `_place`, so no box ends up more than `MAX_BOX_COVERAGE` covered;
the rules: docs/occlusion.md, "What an occlusion is" and "Part of every box stays visible".
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from exp3.config import MAX_BOX_COVERAGE, OcclusionConfig
from exp3.occlusion.geometry import Rect, _covered_share, box_coverages

PLACEMENT_ATTEMPTS = 16
"""Uniform positions tried per occluder size before the occluder shrinks (rejection sampling)."""
PLACEMENT_SHRINK = 0.8
"""Factor applied to an occluder's width and height when no position of its size keeps the cap."""
PLACEMENT_SIZES = 5
"""Sizes tried per occluder (sides x 1, 0.8, 0.64, 0.51, 0.41); if none fits, it is dropped."""

ASPECT_RANGE: tuple[float, float] = (1 / 3, 3.0)
"""Width/height ratio range of an occluder, sampled log-uniformly (widened only if a box forces it)."""

Plan = tuple[list[Rect], list[float | None], int]
"""What a planner returns: (rects, per-box target coverage, number of rectangles dropped by the cap)."""


def _rect_of_area(area: float, inner_w: int, inner_h: int, aspect_draw: float) -> tuple[int, int]:
    """Integer (w, h) with w*h close to `area` that fits in inner_w x inner_h; aspect from a [0,1) draw."""
    low = max(ASPECT_RANGE[0], area / inner_h**2)
    high = min(ASPECT_RANGE[1], inner_w**2 / area)
    if low > high:  # the box is more elongated than ASPECT_RANGE allows: use every feasible aspect
        low, high = area / inner_h**2, inner_w**2 / area
        if low > high:  # area exceeds the inner box: cover all of it
            return inner_w, inner_h
    aspect = math.exp(math.log(low) + aspect_draw * (math.log(high) - math.log(low)))
    width = min(max(round(math.sqrt(area * aspect)), 1), inner_w)
    height = min(max(round(area / width), 1), inner_h)
    return width, height


def _within_cap(size: tuple[int, int], box_area: float) -> tuple[int, int]:
    """`size` with its longer side cut a pixel at a time until it covers at most MAX_BOX_COVERAGE of `box_area`: a
    target near the cap, rounded to whole pixels, would exceed it at every position inside the box, and `_place`
    would shrink both sides by PLACEMENT_SHRINK (0.64 of the area: level 5 landing in level 3's band)."""
    width, height = size
    while width * height > MAX_BOX_COVERAGE * box_area and max(width, height) > 1:
        width, height = (width - 1, height) if width >= height else (width, height - 1)
    return width, height


def object_rects(boxes_xyxy: np.ndarray, config: OcclusionConfig, rng: np.random.Generator, width: int,
                 height: int) -> Plan:
    """One rectangle inside every box's whole pixels covering a target fraction (drawn from `config.coverage`) of it.

    Per box, always `2 + 2 * PLACEMENT_SIZES * PLACEMENT_ATTEMPTS` draws, so a box never shifts the stream of the
    boxes after it.
    """
    low, high = config.coverage
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    targets: list[float | None] = []
    occluders = []
    for x0, y0, x1, y1 in boxes:
        target = float(rng.uniform(low, high))
        aspect_draw = float(rng.random())
        draws = rng.random((PLACEMENT_SIZES, PLACEMENT_ATTEMPTS, 2))
        targets.append(target)
        ix0, iy0, ix1, iy1 = math.ceil(x0), math.ceil(y0), math.floor(x1), math.floor(y1)
        inner_w, inner_h = ix1 - ix0, iy1 - iy0
        if inner_w < 1 or inner_h < 1:
            continue  # box thinner than one whole pixel: nothing to place; its covered fraction says so
        size = _rect_of_area(target * (x1 - x0) * (y1 - y0), inner_w, inner_h, aspect_draw)
        occluders.append((_within_cap(size, (x1 - x0) * (y1 - y0)), (ix0, iy0, ix1, iy1), draws))
    rects, dropped = _place_all(occluders, boxes, width, height)
    return rects, targets, dropped


def random_rects(boxes_xyxy: np.ndarray, config: OcclusionConfig, rng: np.random.Generator, width: int,
                 height: int) -> Plan:
    """`config.random_rects` rectangles of `config.random_area` x image area each, anywhere in the image.

    The targets are all None: random mode aims at no box. Draws: the count, then per rectangle always
    `2 + 2 * PLACEMENT_SIZES * PLACEMENT_ATTEMPTS`.
    """
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    occluders = []
    for _ in range(int(rng.integers(config.random_rects[0], config.random_rects[1] + 1))):
        area = float(rng.uniform(*config.random_area)) * width * height
        aspect_draw = float(rng.random())
        draws = rng.random((PLACEMENT_SIZES, PLACEMENT_ATTEMPTS, 2))
        occluders.append((_rect_of_area(area, width, height, aspect_draw), (0, 0, width, height), draws))
    rects, dropped = _place_all(occluders, boxes, width, height)
    return rects, [None] * len(boxes), dropped


Planner = Callable[[np.ndarray, OcclusionConfig, np.random.Generator, int, int], Plan]
PLANNERS: dict[str, Planner] = {"object": object_rects, "random": random_rects}
"""Occlusion mode -> planner(boxes_xyxy, config, rng, width, height) -> `Plan`."""


def _place_all(
    occluders: list[tuple[tuple[int, int], Rect, np.ndarray]], boxes: np.ndarray, width: int, height: int
) -> tuple[list[Rect], int]:
    """Place each (size, region, draws) occluder in order with `_place`, counting the rectangles already
    placed; return (placed rects, number dropped by the cap). Consumes no random numbers."""
    mask = np.zeros((height, width), dtype=bool)
    coverage = box_coverages(mask, boxes)
    rects: list[Rect] = []
    for size, region, draws in occluders:
        if (rect := _place(size, region, draws, mask, boxes, coverage)) is not None:
            rects.append(rect)
            x0, y0, x1, y1 = rect
            mask[y0:y1, x0:x1] = True
            coverage = box_coverages(mask, boxes)
    return rects, len(occluders) - len(rects)


def _keeps_cap(mask: np.ndarray, rect: Rect, boxes: np.ndarray, coverage: np.ndarray) -> bool:
    """Whether painting `rect` onto `mask` leaves every box's covered fraction <= MAX_BOX_COVERAGE."""
    x0, y0, x1, y1 = rect
    touched = np.flatnonzero(
        (boxes[:, 0] < x1) & (boxes[:, 2] > x0) & (boxes[:, 1] < y1) & (boxes[:, 3] > y0) & ~np.isnan(coverage)
    )
    return all(
        coverage[index] + _covered_share(mask, boxes[index], rect, invert=True) <= MAX_BOX_COVERAGE
        for index in touched
    )


def _place(
    size: tuple[int, int], region: Rect, draws: np.ndarray, mask: np.ndarray, boxes: np.ndarray, coverage: np.ndarray
) -> Rect | None:
    """Where a (w, h) pixel occluder goes inside `region` without pushing any box above the cap; None = dropped.

    `draws`: a (PLACEMENT_SIZES, PLACEMENT_ATTEMPTS, 2) block of uniform [0, 1) positions, consumed in order, size
    step by size step; the first that keeps the cap wins (rejection sampling). `boxes`: (N, 4) float pixel xyxy;
    `coverage`: their (N,) covered fractions by `mask` so far, NaN for zero-area boxes.
    """
    rx0, ry0, rx1, ry1 = region
    width, height = size
    for step in range(PLACEMENT_SIZES):
        rect_w = min(max(round(width * PLACEMENT_SHRINK**step), 1), rx1 - rx0)
        rect_h = min(max(round(height * PLACEMENT_SHRINK**step), 1), ry1 - ry0)
        for u, v in draws[step]:
            x0 = rx0 + int(u * (rx1 - rx0 - rect_w + 1))
            y0 = ry0 + int(v * (ry1 - ry0 - rect_h + 1))
            rect = (x0, y0, x0 + rect_w, y0 + rect_h)
            if _keeps_cap(mask, rect, boxes, coverage):
                return rect
    return None
