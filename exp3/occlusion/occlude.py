"""One image: its own RNG (`image_rng`) and `occlude_image` (fill, plan, paint, measure).

Why every draw comes from the image's own generator: docs/occlusion.md, "Seeds and determinism".
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from exp3.config import OcclusionConfig
from exp3.fileio import stable_int
from exp3.occlusion import OcclusionError, planners
from exp3.occlusion.fills import FILLS, TextureDonor
from exp3.occlusion.geometry import box_coverages, covered_fractions, rect_mask
from exp3.occlusion.planners import PLANNERS


def image_seed(seed: int, stream: int, image_id: str) -> list[int]:
    """The per-image seed `[global seed, stream, stable_int(image id)]` (recorded in the manifest)."""
    return [seed, stream, stable_int(image_id)]


def image_rng(seed: int, stream: int, image_id: str) -> np.random.Generator:
    """The per-image generator, seeded by `image_seed`; nothing global is touched."""
    return np.random.default_rng(image_seed(seed, stream, image_id))


def occlude_image(image: np.ndarray, boxes_xyxy: np.ndarray, config: OcclusionConfig, rng: np.random.Generator,
                  donors: Sequence[TextureDonor] = ()) -> tuple[np.ndarray, dict[str, Any]]:
    """Paint occluders on a copy of `image` ((H, W, 3) uint8) given its boxes ((N, 4) float pixel xyxy): (occluded
    image, record: the manifest's fill, occluders, dropped_occluders and per-box target_coverage, covered_fraction).
    Draw order (part of the format) and fields: docs/occlusion.md, "What an occlusion is" and "manifest.json"."""
    height, width = image.shape[:2]
    fill_name = config.fills[int(rng.integers(len(config.fills)))]
    fill = FILLS[fill_name]  # config.fills and config.mode are Literals of these tables' keys
    rects, targets, dropped = PLANNERS[config.mode](boxes_xyxy, config, rng, width, height)
    mask = rect_mask(rects, width, height)
    cap = planners.MAX_BOX_COVERAGE
    if over := [value for value in box_coverages(mask, boxes_xyxy) if value > cap + 1e-9]:  # float noise
        raise OcclusionError(f"planner {config.mode!r} covered a box to {max(over):.4f} > MAX_BOX_COVERAGE {cap}: "
                             "place its rectangles with _place")
    occluded = image.copy()
    occluders: list[dict[str, Any]] = []
    for x0, y0, x1, y1 in rects:
        patch, info = fill(y1 - y0, x1 - x0, rng, donors)
        occluded[y0:y1, x0:x1] = patch
        occluders.append({"xyxy": [x0, y0, x1, y1], **info})
    return occluded, {
        "fill": fill_name,
        "occluders": occluders,
        "dropped_occluders": dropped,
        "target_coverage": [None if t is None else round(t, 6) for t in targets],
        "covered_fraction": covered_fractions(mask, boxes_xyxy),
    }
