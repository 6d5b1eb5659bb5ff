"""The fixed occlusion suite (test split) and S2's occluded train set.

    python -m exp3.occlusion build --data data.yaml --out DIR [--config FILE] [--set mode=random] [--workers 2]
    python -m exp3.occlusion build-train --data data.yaml --out DIR [...]     # S2's occluded train set
    python -m exp3.occlusion build-severity --data data.yaml --out DIR [...]  # one suite per severity level
    python -m exp3.occlusion verify DIR                                      # suite or train set

The generator is a handful of pure functions in the imagecorruptions manner:

- an occluder *planner* per mode (`PLANNERS`: "object" covers a target fraction of every
  ground-truth box, "random" places random rectangles anywhere), returning integer pixel
  rectangles `(x0, y0, x1, y1)`, half-open, in the image's pixel grid;
- a *fill* per fill type (`FILLS`: "mean", "gray", "noise", "texture"), returning the pixels of
  one rectangle as `(h, w, 3)` uint8 RGB; "texture" is cut from the *background* of another image
  of the split (never within `TEXTURE_BOX_MARGIN` px of a labelled box), so an occluder never adds
  an unlabelled piece of an object;
- `occlude_image`, which draws one fill per image, plans the rectangles, paints them and measures
  the fraction of every ground-truth box actually covered by the union of all rectangles.

Labels are never changed, so every box must stay findable: in every mode no box may end up more
than `MAX_BOX_COVERAGE` covered; planners re-draw, shrink or drop an occluder that would exceed it.

Every random draw comes from a per-image generator
`np.random.default_rng([seed, stream, stable_int(image_id)])`; the stream is `STREAM_TEST_SUITE`
for the test suite and `STREAM_S2_TRAIN` for S2's train set, so the two never share masks.
Nothing touches a global RNG, and the output does not depend on the worker count.

Suites are content-addressed: `occ-<hash12>` (test suite) and `occtrain-<hash12>` (S2 train set)
where the hash covers the generator version, the algorithm constants (`algorithm_constants`), the
parameters and the source fingerprint, so a suite of an older algorithm is never reused. A suite
is built in a temporary sibling directory, its manifest written last, then renamed into place;
an existing suite is verified and reused, never overwritten. See docs/occlusion.md.
"""

from __future__ import annotations

import argparse
import ctypes
import io
import json
import math
import os
import shutil
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import yaml
from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import ValidationError

from exp3.config import ConfigError, OcclusionConfig, load_config
from exp3.dataset import DataSpec, DatasetError, label_path_for, list_split_images, read_data_yaml
from exp3.labels import parse_label_text
from exp3.parallel import process_pool_context
from exp3.fileio import (
    atomic_write_json,
    canonical_json,
    ensure_writable_dir,
    sha256_bytes,
    sha256_file,
    stable_hash,
    stable_int,
)

GENERATOR_VERSION = "2"
"""Bump whenever a change alters any output byte or manifest field: it is part of the suite hash.

History: "1" cut texture anywhere in a donor (ingredient pieces included) and let random
rectangles hide a box completely; "2" cuts texture from donor background only and caps every
box's covered fraction at `MAX_BOX_COVERAGE`. Suites of different versions never share a name.
"""

STREAM_TEST_SUITE = 1
"""RNG stream of the fixed test suite (`test_occ_fixed`)."""
STREAM_S2_TRAIN = 2
"""RNG stream of S2's occluded train set; disjoint from the test suite's stream."""
STREAM_SEVERITY_BASE = 100
"""Severity level k (1-based) draws from stream `STREAM_SEVERITY_BASE + k`: per-image seeds are
(seed, level, image id), disjoint from the fixed suite's and S2's streams."""

MEAN_RGB: tuple[int, int, int] = (124, 116, 104)
"""The "mean" fill: ImageNet mean RGB (0.485, 0.456, 0.406) x 255, rounded; fixed, not per dataset."""
GRAY_RGB: tuple[int, int, int] = (114, 114, 114)
"""The "gray" fill: Ultralytics' letterbox gray."""

TEXTURE_DONOR_POOL = 8
"""Texture patches come from this many donor images of the same split (never the image itself)."""
TEXTURE_BOX_MARGIN = 2
"""Donor pixels (at the donor's resolution) around every donor label box that texture crops also
avoid, so JPEG ringing and 6-decimal label rounding cannot leak object pixels into a patch."""

MAX_BOX_COVERAGE = 0.9
"""Cap on the fraction of any ground-truth box covered by the union of an image's occluders.

One rule for every mode, the test suite and S2's train set alike. Labels are never dropped (the
clean and occluded test copies keep identical object lists, so results pair image by image), so
no occluder may hide a box so completely that its label asks for an object nobody can see: an
occluder placement that would push any box above the cap is re-drawn or shrunk (`PLACEMENT_*`),
or dropped. A candidate for `occlusion.max_box_coverage` in the config.
"""
PLACEMENT_ATTEMPTS = 16
"""Uniform positions tried per occluder size before the occluder shrinks (rejection sampling)."""
PLACEMENT_SHRINK = 0.8
"""Factor applied to an occluder's width and height when no position of its size keeps the cap."""
PLACEMENT_SIZES = 5
"""Sizes tried per occluder (sides x 1, 0.8, 0.64, 0.51, 0.41); if none fits, it is dropped."""

ASPECT_RANGE: tuple[float, float] = (1 / 3, 3.0)
"""Width/height ratio range of an occluder, sampled log-uniformly (widened only if a box forces it)."""

PNG_COMPRESS_LEVEL = 1
"""zlib level of PNG outputs: lossless at any level; 1 is ~2x faster than Pillow's default 6."""
JPEG_QUALITY = 95

MANIFEST_NAME = "manifest.json"
IGNORED_FILE_NAMES = frozenset({"labels.cache"})
"""Files `verify` tolerates although the manifest does not list them: Ultralytics writes
`<split>/labels.cache` next to a split's `labels/` directory the first time it evaluates on it."""

SUITE_PREFIX = "occ-"
TRAIN_SET_PREFIX = "occtrain-"
SEVERITY_PREFIX = "occsev-"
SUITE_KIND = "test_suite"
TRAIN_SET_KIND = "s2_train_set"
SEVERITY_KIND = "severity_suite"

Rect = tuple[int, int, int, int]
"""Integer pixel rectangle (x0, y0, x1, y1), half-open: columns x0..x1-1, rows y0..y1-1."""


class OcclusionError(ValueError):
    """Bad input or a suite that cannot be built or reused; the message is one line with the fix."""


# ---------------------------------------------------------------------------------------------
# Dataset reading (the data.yaml itself is read by exp3.dataset)


@dataclass(frozen=True)
class _SourceImage:
    """One image of a split, read and validated: bytes hashed, labels parsed."""

    image_id: str
    image_path: Path
    label_path: Path | None
    image_sha256: str
    label_sha256: str | None
    label_bytes: bytes | None
    labels: tuple[tuple[int, float, float, float, float], ...]
    """(class_id, cx, cy, w, h), normalised to [0, 1] of the image width/height."""


def _read_spec(data_yaml: Path) -> DataSpec:
    """`exp3.dataset.read_data_yaml`, its one-line errors re-raised as `OcclusionError`."""
    try:
        return read_data_yaml(data_yaml)
    except DatasetError as error:
        raise OcclusionError(str(error)) from None


def _parse_yolo_labels(
    text: str, num_classes: int, label_path: Path
) -> tuple[tuple[int, float, float, float, float], ...]:
    """YOLO label text -> ((class_id, cx, cy, w, h), ...) normalised; polygon rows become their box
    (exp3.labels, the parser the audit uses)."""
    rows, malformed = parse_label_text(text)
    if malformed:
        number, why = malformed[0]
        raise OcclusionError(f"label file {str(label_path)!r} line {number}: {why}: write 'class cx cy w h' "
                             "(or a polygon 'class x1 y1 x2 y2 x3 y3 ...')")
    for row in rows:
        where = f"label file {str(label_path)!r} line {row.line}"
        if not 0 <= row.class_id < num_classes:
            raise OcclusionError(
                f"{where}: class id {row.class_id} is not in names (0..{num_classes - 1}): "
                "fix the label or add the class to names"
            )
        if min(row.coords) < 0.0 or max(row.coords) > 1.0:
            raise OcclusionError(f"{where}: coordinates must be normalised to [0, 1]: divide by the image width/height")
    return tuple((row.class_id, *row.box) for row in rows)


def _scan_split(data_yaml: Path, split: str) -> tuple[list[str], list[_SourceImage]]:
    """Read and validate a split completely (before anything is written): names and images by id."""
    data_yaml = Path(data_yaml)
    spec = _read_spec(data_yaml)
    names = spec.names
    try:
        image_paths = list_split_images(spec, split)
    except DatasetError as error:
        raise OcclusionError(str(error)) from None
    if not image_paths:
        raise OcclusionError(f"{split} split of {str(data_yaml)!r} has no images: check {split}: in the yaml")
    images: list[_SourceImage] = []
    seen: dict[str, Path] = {}
    for image_path in image_paths:
        image_id = image_path.stem
        if image_id in seen:
            raise OcclusionError(
                f"{split} split has two images with id {image_id!r} ({str(seen[image_id])!r}, {str(image_path)!r}): "
                "image file stems must be unique; rename one"
            )
        seen[image_id] = image_path
        if not image_path.is_file():
            raise OcclusionError(f"image {str(image_path)!r} listed in the {split} split does not exist: fix the list")
        label_path: Path | None = label_path_for(image_path)
        label_bytes = label_path.read_bytes() if label_path.is_file() else None
        if label_bytes is None:
            label_path = None
        labels = ()
        if label_bytes is not None:
            labels = _parse_yolo_labels(label_bytes.decode("utf-8", "replace"), len(names), label_path)
        images.append(
            _SourceImage(
                image_id=image_id,
                image_path=image_path,
                label_path=label_path,
                image_sha256=sha256_file(image_path),
                label_sha256=None if label_bytes is None else sha256_bytes(label_bytes),
                label_bytes=label_bytes,
                labels=labels,
            )
        )
    images.sort(key=lambda image: image.image_id)
    return names, images


def source_fingerprint(images: Iterable[_SourceImage]) -> str:
    """sha256 of the sorted (id, image sha256, label sha256) list: the split's content identity."""
    rows = sorted((image.image_id, image.image_sha256, image.label_sha256) for image in images)
    return sha256_bytes(canonical_json(rows).encode("utf-8"))


# ---------------------------------------------------------------------------------------------
# Geometry: boxes, occluder planners, coverage


def yolo_to_xyxy(labels: np.ndarray, width: int, height: int) -> np.ndarray:
    """(N, 4) normalised (cx, cy, w, h) -> (N, 4) float64 pixel (x0, y0, x1, y1), clipped to the image."""
    boxes = np.asarray(labels, dtype=np.float64).reshape(-1, 4)
    cx, cy, w, h = boxes[:, 0] * width, boxes[:, 1] * height, boxes[:, 2] * width, boxes[:, 3] * height
    xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    return np.clip(xyxy, 0.0, [width, height, width, height])


def _rect_of_area(
    area: float, inner_w: int, inner_h: int, aspect_draw: float
) -> tuple[int, int]:
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


def object_rects(
    boxes_xyxy: np.ndarray, config: OcclusionConfig, rng: np.random.Generator, width: int, height: int
) -> tuple[list[Rect], list[float | None], int]:
    """One rectangle inside every box covering a target fraction (drawn from `config.coverage`) of it.

    The rectangle lies within the box's whole pixels, so for an isolated box the covered fraction is
    the target up to one pixel row or column. Where boxes overlap, a box's rectangle is placed (or
    shrunk, or dropped) by `_place` so that no box exceeds `MAX_BOX_COVERAGE`. Returns (rects,
    per-box target coverage, number of rectangles dropped by the cap). Per box, always
    `2 + 2 * PLACEMENT_SIZES * PLACEMENT_ATTEMPTS` draws, so a box never shifts the stream of the
    boxes after it.
    """
    low, high = config.coverage
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    mask = np.zeros((height, width), dtype=bool)
    coverage = box_coverages(mask, boxes)
    rects: list[Rect] = []
    targets: list[float | None] = []
    dropped = 0
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
        rect = _place(size, (ix0, iy0, ix1, iy1), draws, mask, boxes, coverage)
        if rect is None:
            dropped += 1
            continue
        rects.append(rect)
        coverage = _paint_and_measure(mask, rect, boxes)
    return rects, targets, dropped


def random_rects(
    boxes_xyxy: np.ndarray, config: OcclusionConfig, rng: np.random.Generator, width: int, height: int
) -> tuple[list[Rect], list[float | None], int]:
    """`config.random_rects` rectangles of `config.random_area` x image area each, anywhere in the image.

    Each is placed by `_place` (re-drawn, shrunk or dropped) so that no box exceeds
    `MAX_BOX_COVERAGE`. Returns (rects, per-box targets, number dropped by the cap), the targets all
    None: random mode aims at no box. Draws: the count, then per rectangle always
    `2 + 2 * PLACEMENT_SIZES * PLACEMENT_ATTEMPTS`.
    """
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    count = int(rng.integers(config.random_rects[0], config.random_rects[1] + 1))
    mask = np.zeros((height, width), dtype=bool)
    coverage = box_coverages(mask, boxes)
    rects: list[Rect] = []
    dropped = 0
    for _ in range(count):
        area = float(rng.uniform(*config.random_area)) * width * height
        aspect_draw = float(rng.random())
        draws = rng.random((PLACEMENT_SIZES, PLACEMENT_ATTEMPTS, 2))
        rect = _place(_rect_of_area(area, width, height, aspect_draw), (0, 0, width, height), draws, mask, boxes,
                      coverage)
        if rect is None:
            dropped += 1
            continue
        rects.append(rect)
        coverage = _paint_and_measure(mask, rect, boxes)
    return rects, [None] * len(boxes), dropped


Planner = Callable[
    [np.ndarray, OcclusionConfig, np.random.Generator, int, int], tuple[list[Rect], list[float | None], int]
]
PLANNERS: dict[str, Planner] = {"object": object_rects, "random": random_rects}
"""Occlusion mode -> planner(boxes_xyxy, config, rng, width, height) -> (rects, per-box targets, dropped).

Every planner places its rectangles with `_place`, so `MAX_BOX_COVERAGE` holds in every mode
(`occlude_image` checks it again)."""


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
    """(N,) float64 share of each box's area (float pixel xyxy) covered by `mask` ((H, W) bool); NaN if zero-area.

    Exact for fractional box edges: every pixel counts with the share of it inside the box.
    """
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    whole = (0, 0, mask.shape[1], mask.shape[0])
    return np.array(
        [_covered_share(mask, box, whole) if (box[2] - box[0]) * (box[3] - box[1]) > 0 else math.nan for box in boxes],
        dtype=np.float64,
    )


def covered_fractions(mask: np.ndarray, boxes_xyxy: np.ndarray) -> list[float | None]:
    """`box_coverages` rounded to 6 decimals, None for a zero-area box: the manifest's `covered_fraction`."""
    return [None if math.isnan(value) else round(float(value), 6) for value in box_coverages(mask, boxes_xyxy)]


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
    size: tuple[int, int],
    region: Rect,
    draws: np.ndarray,
    mask: np.ndarray,
    boxes: np.ndarray,
    coverage: np.ndarray,
) -> Rect | None:
    """Where a (w, h) pixel occluder goes inside `region` without pushing any box above the cap; None = dropped.

    `draws` is a (PLACEMENT_SIZES, PLACEMENT_ATTEMPTS, 2) block of uniform [0, 1) numbers, consumed
    in order: size step s scales both sides by PLACEMENT_SHRINK**s (rounded, >= 1 px); attempt (u, v)
    puts the top-left corner at region + (int(u * (free width + 1)), int(v * (free height + 1))).
    The first placement after which every box's covered fraction (`coverage` by `mask`, (N,), NaN
    for zero-area boxes, plus what the rectangle adds) is <= MAX_BOX_COVERAGE wins: a uniform draw
    conditioned on the cap (rejection sampling). `boxes`: (N, 4) float pixel xyxy.
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


def _paint_and_measure(mask: np.ndarray, rect: Rect, boxes: np.ndarray) -> np.ndarray:
    """Paint `rect` onto `mask` in place; return the boxes' covered fractions (`box_coverages`) afterwards."""
    x0, y0, x1, y1 = rect
    mask[y0:y1, x0:x1] = True
    return box_coverages(mask, boxes)


# ---------------------------------------------------------------------------------------------
# Fills: one pure function per fill type -> (patch (h, w, 3) uint8 RGB, info for the manifest)


_DONOR_CACHE: dict[tuple[Any, ...], tuple[np.ndarray, np.ndarray]] = {}
_DONOR_CACHE_LIMIT = TEXTURE_DONOR_POOL


def background_mask(boxes_xyxy: np.ndarray, width: int, height: int, margin: int = TEXTURE_BOX_MARGIN) -> np.ndarray:
    """(H, W) bool: True where a pixel lies at least `margin` pixels away from every box.

    `boxes_xyxy`: (N, 4) float pixel xyxy. A pixel [j, j+1) touching a box's closed extent counts as
    inside it (fractional edges round outwards), then every box grows by `margin` pixels a side.
    """
    free = np.ones((height, width), dtype=bool)
    for x0, y0, x1, y1 in np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4):
        cols = slice(max(math.floor(x0) - margin, 0), max(math.ceil(x1) + margin, 0))
        rows = slice(max(math.floor(y0) - margin, 0), max(math.ceil(y1) + margin, 0))
        free[rows, cols] = False
    return free


def background_windows(occupied_sums: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H - height + 1, W - width + 1) bool: top-left corners of height x width crops free of occupied pixels.

    `occupied_sums`: (H + 1, W + 1) summed-area table of the occupied (non-background) pixels, zero
    first row and column. Empty (0 rows or columns) when the crop is larger than the image.
    """
    total_h, total_w = occupied_sums.shape[0] - 1, occupied_sums.shape[1] - 1
    if height > total_h or width > total_w:
        return np.zeros((max(total_h - height + 1, 0), max(total_w - width + 1, 0)), dtype=bool)
    s = occupied_sums
    inside = s[height:, width:] - s[:-height, width:] - s[height:, :-width] + s[:-height, :-width]
    return inside == 0


@dataclass(frozen=True)
class TextureDonor:
    """An image texture patches are cut from: its background only, never a labelled object.

    Its pixels and the summed-area table of its box pixels are computed once per process and cached.
    """

    image_id: str
    path: str
    sha256: str
    boxes: tuple[tuple[float, float, float, float], ...]
    """The donor's label boxes, normalised (cx, cy, w, h) to [0, 1] of its width/height."""

    def _decoded(self) -> tuple[np.ndarray, np.ndarray]:
        key = (self.path, self.sha256, self.boxes)
        cached = _DONOR_CACHE.get(key)
        if cached is None:
            if len(_DONOR_CACHE) >= _DONOR_CACHE_LIMIT:
                _DONOR_CACHE.clear()
            pixels = decode_image(Path(self.path).read_bytes(), self.path)
            height, width = pixels.shape[:2]
            occupied = ~background_mask(yolo_to_xyxy(np.array(self.boxes), width, height), width, height)
            sums = np.zeros((height + 1, width + 1), dtype=np.int32 if height * width < 2**31 else np.int64)
            sums[1:, 1:] = occupied.cumsum(axis=0).cumsum(axis=1)
            cached = _DONOR_CACHE[key] = (pixels, sums)
        return cached

    def pixels(self) -> np.ndarray:
        """(H, W, 3) uint8 RGB, as `decode_image` returns it."""
        return self._decoded()[0]

    def background_windows(self, height: int, width: int) -> np.ndarray:
        """`background_windows` of this donor: where a height x width crop holds background only."""
        return background_windows(self._decoded()[1], height, width)


def fill_mean(
    height: int, width: int, rng: np.random.Generator, donors: Sequence[TextureDonor]
) -> tuple[np.ndarray, dict[str, Any]]:
    """Flat ImageNet-mean RGB `MEAN_RGB`."""
    return np.full((height, width, 3), MEAN_RGB, dtype=np.uint8), {}


def fill_gray(
    height: int, width: int, rng: np.random.Generator, donors: Sequence[TextureDonor]
) -> tuple[np.ndarray, dict[str, Any]]:
    """Flat Ultralytics letterbox gray `GRAY_RGB`."""
    return np.full((height, width, 3), GRAY_RGB, dtype=np.uint8), {}


def fill_noise(
    height: int, width: int, rng: np.random.Generator, donors: Sequence[TextureDonor]
) -> tuple[np.ndarray, dict[str, Any]]:
    """Uniform RGB noise, every channel of every pixel independent in 0..255."""
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8), {}


def fill_texture(
    height: int, width: int, rng: np.random.Generator, donors: Sequence[TextureDonor]
) -> tuple[np.ndarray, dict[str, Any]]:
    """A background-only crop of a donor image: no pixel lies within `TEXTURE_BOX_MARGIN` of a donor box.

    Draws a starting donor, then tries the donors in cyclic order from it; the first with any
    height x width window free of boxes gives the crop, its top-left corner drawn uniformly among
    all free windows. If no donor has one, the tile halves (both sides, rounded up) and the search
    repeats; the patch is then that smaller background crop tiled to height x width. Only if no
    donor has a single background pixel is the patch flat `MEAN_RGB`. Manifest info:
    `{donor: id, crop_xyxy: [x0, y0, x1, y1]}` (half-open donor pixels), both None for the mean fallback.
    """
    if not donors:
        raise OcclusionError(
            "texture fill has no donor image (a split needs >= 2 images): drop texture from occlusion.fills"
        )
    start = int(rng.integers(len(donors)))
    order = [*donors[start:], *donors[:start]]
    tile_h, tile_w = height, width
    while True:
        for donor in order:
            free = np.flatnonzero(donor.background_windows(tile_h, tile_w))
            if free.size:
                windows_w = donor.pixels().shape[1] - tile_w + 1
                y0, x0 = divmod(int(free[int(rng.integers(free.size))]), windows_w)
                crop = donor.pixels()[y0 : y0 + tile_h, x0 : x0 + tile_w]
                patch = np.tile(crop, (-(-height // tile_h), -(-width // tile_w), 1))[:height, :width]
                return patch, {"donor": donor.image_id, "crop_xyxy": [x0, y0, x0 + tile_w, y0 + tile_h]}
        if tile_h == tile_w == 1:
            return np.full((height, width, 3), MEAN_RGB, dtype=np.uint8), {"donor": None, "crop_xyxy": None}
        tile_h, tile_w = -(-tile_h // 2), -(-tile_w // 2)


Fill = Callable[[int, int, np.random.Generator, Sequence[TextureDonor]], tuple[np.ndarray, dict[str, Any]]]
FILLS: dict[str, Fill] = {"mean": fill_mean, "gray": fill_gray, "noise": fill_noise, "texture": fill_texture}
"""Fill type -> fill(height, width, rng, donors) -> (patch (h, w, 3) uint8, manifest info)."""


def _lookup(table: dict[str, Any], name: str, what: str) -> Any:
    if name not in table:
        raise ValueError(f"unknown {what} {name!r}: use one of {', '.join(table)}")
    return table[name]


# ---------------------------------------------------------------------------------------------
# One image


def decode_image(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Encoded image bytes -> (H, W, 3) uint8 RGB, EXIF orientation applied (as cv2.imread does)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.getexif().get(0x0112, 1) != 1:
                image = ImageOps.exif_transpose(image)
            return np.array(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise OcclusionError(f"image {name!r} cannot be decoded ({error}): replace or remove the file") from None


def _encode_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def _encode_jpg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


ENCODERS: dict[str, Callable[[np.ndarray], bytes]] = {"png": _encode_png, "jpg": _encode_jpg}
"""Output format -> encoder of an (H, W, 3) uint8 RGB image."""
OUTPUT_SUFFIXES: dict[str, str] = {"png": ".png", "jpg": ".jpg"}


def encode_image(image: np.ndarray, output_format: str) -> bytes:
    """(H, W, 3) uint8 RGB -> PNG (zlib level `PNG_COMPRESS_LEVEL`) or JPEG (quality `JPEG_QUALITY`) bytes."""
    return _lookup(ENCODERS, output_format, "output format")(image)


def image_seed(seed: int, stream: int, image_id: str) -> list[int]:
    """The per-image seed `[global seed, stream, stable_int(image id)]` (recorded in the manifest)."""
    return [seed, stream, stable_int(image_id)]


def image_rng(seed: int, stream: int, image_id: str) -> np.random.Generator:
    """The per-image generator, seeded by `image_seed`; nothing global is touched."""
    return np.random.default_rng(image_seed(seed, stream, image_id))


def occlude_image(
    image: np.ndarray,
    boxes_xyxy: np.ndarray,
    config: OcclusionConfig,
    rng: np.random.Generator,
    donors: Sequence[TextureDonor] = (),
) -> tuple[np.ndarray, dict[str, Any]]:
    """Paint occluders on a copy of `image` ((H, W, 3) uint8) given its boxes ((N, 4) float pixel xyxy).

    Draw order (part of the format): fill type, then the planner's draws, then each rectangle's fill.
    Returns (occluded image, record) with record = {fill, occluders: [{xyxy, ...fill info}],
    dropped_occluders: how many the `MAX_BOX_COVERAGE` cap removed, target_coverage: [per box],
    covered_fraction: [per box, by the union of all occluders, never above `MAX_BOX_COVERAGE`]}.
    """
    height, width = image.shape[:2]
    fill_name = config.fills[int(rng.integers(len(config.fills)))]
    fill = _lookup(FILLS, fill_name, "fill")
    planner = _lookup(PLANNERS, config.mode, "occlusion mode")
    rects, targets, dropped = planner(boxes_xyxy, config, rng, width, height)
    mask = rect_mask(rects, width, height)
    over = [value for value in box_coverages(mask, boxes_xyxy) if value > MAX_BOX_COVERAGE + 1e-9]  # float noise
    if over:
        raise OcclusionError(
            f"planner {config.mode!r} covered a box to {max(over):.4f} > MAX_BOX_COVERAGE {MAX_BOX_COVERAGE}: "
            "place its rectangles with _place"
        )
    occluded = image.copy()
    occluders: list[dict[str, Any]] = []
    for x0, y0, x1, y1 in rects:
        patch, info = fill(y1 - y0, x1 - x0, rng, donors)
        occluded[y0:y1, x0:x1] = patch
        occluders.append({"xyxy": [x0, y0, x1, y1], **info})
    record = {
        "fill": fill_name,
        "occluders": occluders,
        "dropped_occluders": dropped,
        "target_coverage": [None if t is None else round(t, 6) for t in targets],
        "covered_fraction": covered_fractions(mask, boxes_xyxy),
    }
    return occluded, record


# ---------------------------------------------------------------------------------------------
# Worker: one image task -> files in the build directory + a manifest entry


@dataclass(frozen=True)
class _ImageTask:
    source: _SourceImage
    kind: str  # SUITE_KIND, SEVERITY_KIND or TRAIN_SET_KIND
    config: OcclusionConfig
    stream: int
    build_dir: str
    donors: tuple[TextureDonor, ...]
    split: str = ""  # SEVERITY_KIND: the one (occluded) split the suite holds


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)


def _box_entries(source: _SourceImage, boxes_xyxy: np.ndarray, record: dict[str, Any] | None) -> list[dict[str, Any]]:
    entries = []
    for index, (label, xyxy) in enumerate(zip(source.labels, boxes_xyxy)):
        entry: dict[str, Any] = {"class_id": label[0], "xyxy": [round(float(v), 3) for v in xyxy]}
        if record is not None:
            entry["target_coverage"] = record["target_coverage"][index]
            entry["covered_fraction"] = record["covered_fraction"][index]
        entries.append(entry)
    return entries


def _process_image(task: _ImageTask) -> tuple[dict[str, Any], dict[str, str]]:
    """Occlude (or copy) one image into the build directory.

    Returns (manifest entry, {relative path: sha256} of the files written), hashes taken from the
    bytes in memory: nothing is read back.
    """
    source, config = task.source, task.config
    data = source.image_path.read_bytes()
    if sha256_bytes(data) != source.image_sha256:
        raise OcclusionError(f"image {str(source.image_path)!r} changed during the build: build again")
    seed = image_seed(config.seed, task.stream, source.image_id)
    rng = image_rng(config.seed, task.stream, source.image_id)
    build = Path(task.build_dir)
    files: dict[str, str] = {}

    def put(rel: str, payload: bytes, digest: str) -> str:
        _write(build / rel, payload)
        files[rel] = digest
        return rel

    entry: dict[str, Any] = {
        "id": source.image_id,
        "source_image": str(source.image_path),
        "source_sha256": source.image_sha256,
        "source_label_sha256": source.label_sha256,
        "seed": seed,
    }
    clean_split: str | None
    if task.kind == SUITE_KIND:
        clean_split, occluded_split, occlude = "test_clean", "test_occ_fixed", True
    elif task.kind == SEVERITY_KIND:  # the occluded copies only: test_clean lives in the fixed suite
        clean_split, occluded_split, occlude = None, task.split, True
    else:  # S2 train set: one directory; the stream's first draw decides occluded or clean
        clean_split, occluded_split = "train", "train"
        occlude = bool(rng.random() < config.train_fraction)
        entry["occluded"] = occlude
    label_splits = {split for split in (clean_split, occluded_split) if split is not None}
    if source.label_bytes is not None:
        for split in sorted(label_splits):
            put(f"{split}/labels/{source.image_id}.txt", source.label_bytes, source.label_sha256 or "")
    if clean_split is not None and (task.kind == SUITE_KIND or not occlude):
        entry["clean_image"] = put(f"{clean_split}/images/{source.image_path.name}", data, source.image_sha256)
    if not occlude:
        entry["output_sha256"] = source.image_sha256
        entry["boxes"] = [{"class_id": label[0]} for label in source.labels]
        return entry, files
    image = decode_image(data, str(source.image_path))
    height, width = image.shape[:2]
    boxes_xyxy = yolo_to_xyxy(np.array([label[1:] for label in source.labels]), width, height)
    donors = tuple(donor for donor in task.donors if donor.image_id != source.image_id)
    occluded, record = occlude_image(image, boxes_xyxy, config, rng, donors)
    encoded = encode_image(occluded, config.output_format)
    digest = sha256_bytes(encoded)
    out_rel = put(f"{occluded_split}/images/{source.image_id}{OUTPUT_SUFFIXES[config.output_format]}", encoded, digest)
    entry.update(
        occluded_image=out_rel,
        output_sha256=digest,
        width=width,
        height=height,
        fill=record["fill"],
        occluders=record["occluders"],
        dropped_occluders=record["dropped_occluders"],
        boxes=_box_entries(source, boxes_xyxy, record),
    )
    return entry, files


def _run_tasks(tasks: list[_ImageTask], workers: int) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Run `_process_image` over tasks (inline for 1 worker): entries sorted by id, all files written."""
    if workers == 1 or len(tasks) <= 1:
        results = [_process_image(task) for task in tasks]
    else:
        chunksize = max(1, len(tasks) // (workers * 8))
        try:
            with ProcessPoolExecutor(max_workers=workers, mp_context=process_pool_context()) as pool:
                results = list(pool.map(_process_image, tasks, chunksize=chunksize))
        except BrokenProcessPool:
            raise OcclusionError(
                "a worker process died (out of memory, or a calling script without an "
                "`if __name__ == '__main__':` guard): add the guard, or use workers=1"
            ) from None
    files: dict[str, str] = {}
    for _, written in results:
        files.update(written)
    return sorted((entry for entry, _ in results), key=lambda entry: entry["id"]), files


# ---------------------------------------------------------------------------------------------
# Suites: content-addressed, built atomically, verified, never overwritten


def suite_parameters(config: OcclusionConfig) -> dict[str, Any]:
    """The parameters a test suite depends on: all but train_fraction (only S2 uses it) and
    severities (each level is a suite of its own, `severity_config`)."""
    return config.model_dump(mode="json", exclude={"train_fraction", "severities"})


def train_set_parameters(config: OcclusionConfig) -> dict[str, Any]:
    """The parameters S2's occluded train set depends on (all but the severity levels)."""
    return config.model_dump(mode="json", exclude={"severities"})


def algorithm_constants() -> dict[str, Any]:
    """The module constants that shape a suite's bytes, hashed into its identity next to GENERATOR_VERSION.

    A tuned constant therefore makes a new suite name even if nobody bumps the version.
    """
    return {
        "aspect_range": list(ASPECT_RANGE),
        "gray_rgb": list(GRAY_RGB),
        "jpeg_quality": JPEG_QUALITY,
        "max_box_coverage": MAX_BOX_COVERAGE,
        "mean_rgb": list(MEAN_RGB),
        "placement_attempts": PLACEMENT_ATTEMPTS,
        "placement_shrink": PLACEMENT_SHRINK,
        "placement_sizes": PLACEMENT_SIZES,
        "png_compress_level": PNG_COMPRESS_LEVEL,
        "texture_box_margin": TEXTURE_BOX_MARGIN,
        "texture_donor_pool": TEXTURE_DONOR_POOL,
    }


_IDENTITY_KEYS = ("generator_version", "algorithm", "kind", "stream", "parameters", "source_fingerprint", "references")


def _identity(manifest: dict[str, Any]) -> dict[str, Any]:
    """The hashed identity of a suite, as stored in its manifest.

    Generator version 1 manifests have no `algorithm`; it is left out (not hashed as null) so
    that such an old suite still verifies under its own name, which no new build produces.
    """
    return {key: manifest.get(key) for key in _IDENTITY_KEYS if key != "algorithm" or key in manifest}


def _suite_name(identity: dict[str, Any]) -> str:
    prefix = {SUITE_KIND: SUITE_PREFIX, SEVERITY_KIND: SEVERITY_PREFIX}.get(identity["kind"], TRAIN_SET_PREFIX)
    return prefix + stable_hash(identity)


def _suite_identity(config: OcclusionConfig, images: Sequence[_SourceImage]) -> dict[str, Any]:
    return {
        "generator_version": GENERATOR_VERSION,
        "algorithm": algorithm_constants(),
        "kind": SUITE_KIND,
        "stream": STREAM_TEST_SUITE,
        "parameters": suite_parameters(config),
        "source_fingerprint": source_fingerprint(images),
        "references": None,
    }


def occlusion_suite_name(data_yaml: Path, config: OcclusionConfig) -> str:
    """The `occ-<hash12>` directory name `build_occlusion_suite` would use (reads, writes nothing).

    Hashes GENERATOR_VERSION and `algorithm_constants()` with the parameters and the source
    fingerprint: a suite built by another generator version never has this name.
    """
    _, images = _scan_split(Path(data_yaml), "test")
    return _suite_name(_suite_identity(config, images))


def _donor_pool(images: Sequence[_SourceImage]) -> tuple[TextureDonor, ...]:
    """The `TEXTURE_DONOR_POOL` images with the smallest stable_int(id): a fixed, content-free choice."""
    chosen = sorted(images, key=lambda image: (stable_int(image.image_id), image.image_id))[:TEXTURE_DONOR_POOL]
    return tuple(
        TextureDonor(image.image_id, str(image.image_path), image.image_sha256, tuple(row[1:] for row in image.labels))
        for image in chosen
    )


def _check_inputs(config: OcclusionConfig, workers: int, images: Sequence[_SourceImage], split: str) -> None:
    if not isinstance(workers, int) or workers < 1:
        raise OcclusionError(f"workers={workers!r} must be an integer >= 1: pass --workers 2")
    if "texture" in config.fills and len(images) < 2:
        raise OcclusionError(f"texture fill needs >= 2 images in the {split} split: drop texture from occlusion.fills")
    if config.mode == "object" and config.coverage[1] > MAX_BOX_COVERAGE:
        raise OcclusionError(
            f"occlusion.coverage {list(config.coverage)} exceeds MAX_BOX_COVERAGE {MAX_BOX_COVERAGE}: "
            f"keep its upper end <= {MAX_BOX_COVERAGE}"
        )


def _split_yaml(split_dir: Path, names: list[str]) -> str:
    """An Ultralytics data yaml whose train/val/test all point at one split's images (absolute path)."""
    payload = {"path": str(split_dir), "train": "images", "val": "images", "test": "images"}
    payload["names"] = dict(enumerate(names))
    return yaml.safe_dump(payload, sort_keys=False)


def _apply_umask(build_dir: Path) -> None:
    """mkdtemp/mkstemp create 0700/0600; give the suite dir and manifest the usual umask permissions."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(build_dir, 0o777 & ~umask)
    os.chmod(build_dir / MANIFEST_NAME, 0o666 & ~umask)


def _fsync_paths(paths: Iterable[Path]) -> None:
    """fsync each file or directory in `paths`."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _syncfs(path: Path) -> bool:
    """Linux syncfs(2) of the filesystem holding `path`; False where unavailable or failing."""
    try:
        syncfs = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        return syncfs(fd) == 0
    finally:
        os.close(fd)


def _make_durable(root: Path) -> None:
    """Everything under `root` on disk before the rename publishes it.

    One syncfs(2) (a single journal commit) instead of an fsync per file, which costs a commit
    each: measured 0.12 s vs 3.0 s for 800 files here. Falls back to fsyncing every path.
    """
    if not _syncfs(root):
        _fsync_paths([*sorted(root.rglob("*"), reverse=True), root])


def _publish(build_dir: Path, final_dir: Path) -> Path:
    """Rename the finished build directory into place; if a concurrent build won, reuse its suite."""
    try:
        os.rename(build_dir, final_dir)
    except OSError:
        shutil.rmtree(build_dir, ignore_errors=True)
        if not final_dir.is_dir():
            raise
        return _reuse_existing(final_dir)
    _fsync_paths([final_dir.parent])  # make the rename itself durable
    return final_dir


def _reuse_existing(final_dir: Path) -> Path:
    """Verify an existing suite; raise if it is damaged (it is never rebuilt in place)."""
    problems = verify_occlusion_suite(final_dir)
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise OcclusionError(
            f"existing suite {str(final_dir)!r} fails verification: {problems[0]}{more}: "
            f"delete it (rm -r {final_dir}) and build again"
        )
    return final_dir


def _build(
    identity: dict[str, Any],
    out_root: Path,
    tasks_for: Callable[[Path], list[_ImageTask]],
    subdirs: Sequence[str],
    extra_files: Callable[[Path], dict[str, str]],
    manifest_extra: dict[str, Any],
    workers: int,
) -> Path:
    """Shared build: reuse an existing suite, else build in a temp sibling, manifest last, rename."""
    out_root = Path(os.path.abspath(out_root))
    final_dir = out_root / _suite_name(identity)
    if final_dir.exists():
        return _reuse_existing(final_dir)
    missing = [path for path in (out_root, *out_root.parents) if not path.exists()]  # what we create
    ensure_writable_dir(out_root)
    build_dir = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.tmp-", dir=out_root))
    try:
        for subdir in subdirs:
            (build_dir / subdir).mkdir(parents=True)
        files: dict[str, str] = {}
        extra = extra_files(final_dir)
        for name, text in extra.items():
            _write(build_dir / name, text.encode("utf-8"))
            files[name] = sha256_bytes(text.encode("utf-8"))
        entries, written = _run_tasks(tasks_for(build_dir), workers)
        files.update(written)
        manifest = {
            **identity,
            "name": final_dir.name,
            **manifest_extra,
            "environment": {"numpy": np.__version__, "pillow": Image.__version__},
            "images": entries,
            "files": dict(sorted(files.items())),
        }
        atomic_write_json(build_dir / MANIFEST_NAME, manifest)
        _apply_umask(build_dir)
        _make_durable(build_dir)
    except BaseException:
        shutil.rmtree(build_dir, ignore_errors=True)
        for created in missing:  # a failed build leaves the disk as it found it
            try:
                created.rmdir()
            except OSError:
                break
        raise
    return _publish(build_dir, final_dir)


def build_occlusion_suite(data_yaml: Path, out_root: Path, config: OcclusionConfig, workers: int = 2) -> Path:
    """Build (or verify and reuse) the fixed occlusion suite of `data_yaml`'s test split; return its dir.

    Layout: `<out_root>/occ-<hash12>/{manifest.json, test_clean.yaml, test_occ_fixed.yaml,
    test_clean/{images,labels}, test_occ_fixed/{images,labels}}`.
    """
    names, images = _scan_split(Path(data_yaml), "test")
    _check_inputs(config, workers, images, "test")
    identity = _suite_identity(config, images)
    donors = _donor_pool(images)

    def tasks_for(build_dir: Path) -> list[_ImageTask]:
        return [_ImageTask(image, SUITE_KIND, config, STREAM_TEST_SUITE, str(build_dir), donors) for image in images]

    def extra_files(final_dir: Path) -> dict[str, str]:
        return {f"{split}.yaml": _split_yaml(final_dir / split, names) for split in ("test_clean", "test_occ_fixed")}

    manifest_extra = _manifest_extra(config, Path(data_yaml), "test", names, images, donors)
    subdirs = [f"{split}/{part}" for split in ("test_clean", "test_occ_fixed") for part in ("images", "labels")]
    return _build(identity, Path(out_root), tasks_for, subdirs, extra_files, manifest_extra, workers)


def severity_config(config: OcclusionConfig, level: int) -> OcclusionConfig:
    """The occlusion parameters of severity level `level` (1-based): object mode, that level's coverage
    range, every other parameter (fills, format, seed) as configured."""
    if not 1 <= level <= len(config.severities):
        raise OcclusionError(f"severity level {level} is not configured (occlusion.severities has "
                             f"{len(config.severities)} levels): pick 1..{len(config.severities)}")
    return OcclusionConfig.model_validate({**config.model_dump(mode="json"), "mode": "object",
                                           "coverage": list(config.severities[level - 1])})


def severity_spec(config: OcclusionConfig, level: int) -> dict[str, Any]:
    """What severity level `level`'s suite is, apart from the images it is made from: generator version,
    algorithm constants, kind, stream, parameters and split name. Its hash (`severity_spec_key`) tells,
    from the config alone, whether an evaluation recorded for that split is of this suite."""
    from exp3.splits import severity_split

    return {
        "generator_version": GENERATOR_VERSION,
        "algorithm": algorithm_constants(),
        "kind": SEVERITY_KIND,
        "stream": STREAM_SEVERITY_BASE + level,
        "parameters": {**suite_parameters(severity_config(config, level)), "severity_level": level,
                       "split": severity_split(level)},
    }


def severity_spec_key(config: OcclusionConfig, level: int) -> str:
    """12-hex hash of `severity_spec` (recorded with every evaluation of the level's split)."""
    return stable_hash(severity_spec(config, level))


def build_severity_suites(data_yaml: Path, out_root: Path, config: OcclusionConfig, workers: int = 2) -> list[Path]:
    """Build (or verify and reuse) one suite per `config.severities` level; return their dirs, level order.

    Each is a fixed suite like `build_occlusion_suite`'s occluded half: the same test image ids,
    object mode at the level's coverage range, per-image RNG `(seed, STREAM_SEVERITY_BASE + level,
    image id)`, content-addressed `occsev-<hash12>`, built atomically, verified on reuse, never
    overwritten. Layout: `<out_root>/occsev-<hash12>/{manifest.json, <split>.yaml, <split>/{images,labels}}`
    with `<split>` = `exp3.splits.severity_split(level)`; the manifest has per-box `covered_fraction`.
    """
    if not config.severities:
        return []
    names, images = _scan_split(Path(data_yaml), "test")
    donors = _donor_pool(images)
    return [_build_severity_suite(Path(data_yaml), Path(out_root), config, level, names, images, donors, workers)
            for level in range(1, len(config.severities) + 1)]


def _build_severity_suite(data_yaml: Path, out_root: Path, config: OcclusionConfig, level: int, names: list[str],
                          images: Sequence[_SourceImage], donors: tuple[TextureDonor, ...], workers: int) -> Path:
    level_config = severity_config(config, level)
    _check_inputs(level_config, workers, images, "test")
    spec = severity_spec(config, level)
    split = spec["parameters"]["split"]
    identity = {**spec, "source_fingerprint": source_fingerprint(images), "references": None}

    def tasks_for(build_dir: Path) -> list[_ImageTask]:
        return [_ImageTask(image, SEVERITY_KIND, level_config, spec["stream"], str(build_dir), donors, split)
                for image in images]

    def extra_files(final_dir: Path) -> dict[str, str]:
        return {f"{split}.yaml": _split_yaml(final_dir / split, names)}

    manifest_extra = {**_manifest_extra(level_config, data_yaml, "test", names, images, donors), "split": split,
                      "severity_level": level, "coverage": list(level_config.coverage),
                      "spec_key": stable_hash(spec)}
    subdirs = [f"{split}/images", f"{split}/labels"]
    return _build(identity, out_root, tasks_for, subdirs, extra_files, manifest_extra, workers)


def _manifest_extra(config: OcclusionConfig, data_yaml: Path, split: str, names: list[str],
                    images: Sequence[_SourceImage], donors: Sequence[TextureDonor]) -> dict[str, Any]:
    """Manifest fields beyond the identity: seed, source, class names, texture donors."""
    return {
        "global_seed": config.seed,
        "source": {"data_yaml": str(data_yaml.resolve()), "split": split, "num_images": len(images)},
        "names": names,
        "texture_donors": [donor.image_id for donor in donors] if "texture" in config.fills else [],
    }


def _absolute_split(data_yaml: Path, split: str) -> list[str] | None:
    """The resolved absolute location(s) of a split of the original data yaml, None if it has none."""
    spec = _read_spec(data_yaml)
    if split not in spec.splits:
        return None
    resolved = []
    for location in spec.splits[split]:
        if not location.exists():
            raise OcclusionError(
                f"{split} split {str(location)!r} (from {str(data_yaml)!r}) does not exist: fix {split}: in the yaml"
            )
        resolved.append(str(location.resolve()))
    return resolved


def build_occluded_train_set(data_yaml: Path, out_root: Path, config: OcclusionConfig, workers: int = 2) -> Path:
    """Build (or verify and reuse) S2's occluded train set; return the data.yaml S2 trains with.

    A `config.train_fraction` share of train images (decided per image by its own RNG, stream
    `STREAM_S2_TRAIN`) is occluded, the rest copied byte for byte. The data.yaml's train is this set;
    val and test are the ORIGINAL clean splits (checkpoint selection on clean val, as all sessions).
    Layout: `<out_root>/occtrain-<hash12>/{manifest.json, data.yaml, train/{images,labels}}`.
    """
    data_yaml = Path(data_yaml)
    names, images = _scan_split(data_yaml, "train")
    _check_inputs(config, workers, images, "train")
    val = _absolute_split(data_yaml, "val")
    if val is None:
        raise OcclusionError(
            f"data yaml {str(data_yaml)!r} has no 'val' split: S2 selects checkpoints on clean val; add val:"
        )
    references = {"val": val, "test": _absolute_split(data_yaml, "test")}
    identity = {
        "generator_version": GENERATOR_VERSION,
        "algorithm": algorithm_constants(),
        "kind": TRAIN_SET_KIND,
        "stream": STREAM_S2_TRAIN,
        "parameters": train_set_parameters(config),
        "source_fingerprint": source_fingerprint(images),
        "references": references,
    }
    donors = _donor_pool(images)

    def tasks_for(build_dir: Path) -> list[_ImageTask]:
        return [_ImageTask(image, TRAIN_SET_KIND, config, STREAM_S2_TRAIN, str(build_dir), donors) for image in images]

    def extra_files(final_dir: Path) -> dict[str, str]:
        payload: dict[str, Any] = {"path": str(final_dir), "train": "train/images", "val": references["val"]}
        if references["test"] is not None:
            payload["test"] = references["test"]
        payload["names"] = dict(enumerate(names))
        return {"data.yaml": yaml.safe_dump(payload, sort_keys=False)}

    manifest_extra = _manifest_extra(config, data_yaml, "train", names, images, donors)
    subdirs = ["train/images", "train/labels"]
    suite = _build(identity, Path(out_root), tasks_for, subdirs, extra_files, manifest_extra, workers)
    return suite / "data.yaml"


def _check_yaml_paths(suite_dir: Path, manifest: dict[str, Any]) -> list[str]:
    """The data yamls must point into this very directory (they hold absolute paths)."""
    expected = (
        {"data.yaml": suite_dir}
        if manifest.get("kind") == TRAIN_SET_KIND
        else {f"{manifest.get('split')}.yaml": suite_dir / str(manifest.get("split"))}
        if manifest.get("kind") == SEVERITY_KIND
        else {f"{split}.yaml": suite_dir / split for split in ("test_clean", "test_occ_fixed")}
    )
    problems = []
    for name, path in expected.items():
        try:
            data = yaml.safe_load((suite_dir / name).read_text(encoding="utf-8"))
            pointed = Path(str(data.get("path")))
        except (OSError, yaml.YAMLError, AttributeError):
            continue  # missing/modified files are reported by the hash check
        if pointed.resolve() != path.resolve():
            problems.append(
                f"{name}: path: is {str(pointed)!r}, not this suite ({str(path)!r}): "
                "the suite was moved; build it again at its new place"
            )
    for split, locations in (manifest.get("references") or {}).items():
        for location in locations or []:
            if not Path(location).exists():
                problems.append(
                    f"data.yaml: the original {split} split {location!r} no longer exists: restore it or build again"
                )
    return problems


def verify_occlusion_suite(suite_dir: Path) -> list[str]:
    """Check a suite or S2 train set against its manifest; return the problems (empty = intact).

    Detects missing, extra (except `IGNORED_FILE_NAMES`) and modified files, a manifest that does
    not match the directory's name, and data yamls that no longer point at the directory.
    """
    suite_dir = Path(suite_dir)
    manifest_path = suite_dir / MANIFEST_NAME
    if not suite_dir.is_dir():
        return [f"{str(suite_dir)!r} is not a directory"]
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        expected: dict[str, str] = manifest["files"]
        name = _suite_name(_identity(manifest))
    except FileNotFoundError:
        return [f"{MANIFEST_NAME} is missing"]
    except (ValueError, KeyError, TypeError, AttributeError):
        return [f"{MANIFEST_NAME} is unreadable or incomplete"]
    problems = []
    if name != suite_dir.name:
        problems.append(f"{MANIFEST_NAME} describes suite {name!r}, but the directory is named {suite_dir.name!r}")
    present = {
        path.relative_to(suite_dir).as_posix(): path
        for path in suite_dir.rglob("*")
        if path.is_file() and path.name not in IGNORED_FILE_NAMES
    }
    present.pop(MANIFEST_NAME, None)
    for rel in sorted(expected):
        if rel not in present:
            problems.append(f"missing file {rel}")
        elif sha256_file(present[rel]) != expected[rel]:
            problems.append(f"modified file {rel}")
    problems += [f"extra file {rel}" for rel in sorted(set(present) - set(expected))]
    return problems + _check_yaml_paths(suite_dir, manifest)


# ---------------------------------------------------------------------------------------------
# CLI


def _config_from_args(args: argparse.Namespace) -> OcclusionConfig:
    """`--config FILE` (its occlusion: section) then `--set KEY=VALUE` (occlusion. prefix optional)."""
    overrides = [item if item.startswith("occlusion.") else f"occlusion.{item}" for item in args.overrides]
    return load_config(args.config, overrides).occlusion


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; errors print one `error: ...` line to stderr and return 2."""
    parser = argparse.ArgumentParser(prog="python -m exp3.occlusion", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    commands = {
        "build": "build (or verify) the fixed test suite",
        "build-train": "build (or verify) S2's occluded train set",
        "build-severity": "build (or verify) one suite per occlusion.severities level",
    }
    for command, help_text in commands.items():
        build = sub.add_parser(command, help=help_text)
        build.add_argument("--data", type=Path, required=True, help="YOLO data.yaml")
        build.add_argument("--out", type=Path, required=True, help="directory that holds the suites")
        build.add_argument("--config", type=Path, default=None, help="experiment config; uses its occlusion: section")
        build.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                           help="occlusion override, e.g. mode=random or 'fills=[gray]'")
        build.add_argument("--workers", type=int, default=2)
    verify = sub.add_parser("verify", help="check a suite or train set against its manifest")
    verify.add_argument("suite", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "verify":
            problems = verify_occlusion_suite(args.suite)
            for problem in problems:
                print(problem)
            print(f"{'FAILED' if problems else 'ok'}: {args.suite}", file=sys.stderr)
            return 1 if problems else 0
        config = _config_from_args(args)
        if args.command == "build-severity":
            for suite in build_severity_suites(args.data, args.out, config, workers=args.workers):
                print(suite)
            return 0
        builder = build_occlusion_suite if args.command == "build" else build_occluded_train_set
        print(builder(args.data, args.out, config, workers=args.workers))
        return 0
    except (OcclusionError, ConfigError, PermissionError, ValidationError) as error:
        print(f"error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    # `python -m exp3.occlusion`: run the importable module's `main`, so the pool pickles
    # `exp3.occlusion.*` functions, and tell workers there is no `__main__` to re-import
    # (re-running this module in each worker is useless and makes runpy warn).
    sys.modules["__main__"].__spec__ = None
    del sys.modules["__main__"].__file__
    from exp3.occlusion import main as _importable_main

    raise SystemExit(_importable_main())
