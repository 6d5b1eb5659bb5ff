"""Fills: one pure function per fill type (`FILLS`) -> (patch (h, w, 3) uint8 RGB, info for the manifest).

"texture" is cut from the *background* of a donor image of the same split (`TextureDonor`), never
within `TEXTURE_BOX_MARGIN` px of a labelled box, so an occluder never adds an unlabelled object.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from exp3.fileio import sha256_bytes
from exp3.occlusion import OcclusionError
from exp3.occlusion.codec import decode_image
from exp3.occlusion.geometry import yolo_to_xyxy

MEAN_RGB: tuple[int, int, int] = (124, 116, 104)
"""The "mean" fill: ImageNet mean RGB (0.485, 0.456, 0.406) x 255, rounded; fixed, not per dataset."""
GRAY_RGB: tuple[int, int, int] = (114, 114, 114)
"""The "gray" fill: Ultralytics' letterbox gray."""

TEXTURE_DONOR_POOL = 8
"""Texture patches come from this many donor images of the same split (never the image itself)."""
TEXTURE_BOX_MARGIN = 2
"""Donor pixels (at the donor's resolution) around every donor label box that texture crops also
avoid, so JPEG ringing and 6-decimal label rounding cannot leak object pixels into a patch."""

Patch = tuple[np.ndarray, dict[str, Any]]
"""What a fill returns: the pixels ((h, w, 3) uint8 RGB) and the occluder's info for the manifest."""


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


@dataclass(frozen=True)
class TextureDonor:
    """An image texture patches are cut from: its background only, never a labelled object.
    Its pixels and the summed-area table of its box pixels are computed once per process and cached."""

    image_id: str
    path: str
    sha256: str
    boxes: tuple[tuple[float, float, float, float], ...]
    """The donor's label boxes, normalised (cx, cy, w, h) to [0, 1] of its width/height."""

    @functools.lru_cache(maxsize=TEXTURE_DONOR_POOL)  # keyed on the frozen (hashable) donor itself
    def _decoded(self) -> tuple[np.ndarray, np.ndarray]:
        data = Path(self.path).read_bytes()
        if sha256_bytes(data) != self.sha256:  # the suite's name says the pixels of the scan: never others
            raise OcclusionError(f"texture donor {self.path!r} changed during the build: build again")
        pixels = decode_image(data, self.path)
        height, width = pixels.shape[:2]
        occupied = ~background_mask(yolo_to_xyxy(np.array(self.boxes), width, height), width, height)
        sums = np.zeros((height + 1, width + 1), dtype=np.int32 if height * width < 2**31 else np.int64)
        sums[1:, 1:] = occupied.cumsum(axis=0).cumsum(axis=1)
        return pixels, sums

    def pixels(self) -> np.ndarray:
        """(H, W, 3) uint8 RGB, as `decode_image` returns it."""
        return self._decoded()[0]

    def background_windows(self, height: int, width: int) -> np.ndarray:
        """(H - height + 1, W - width + 1) bool: top-left corners of height x width crops of background only;
        empty (0 rows or columns) when the crop is larger than the image."""
        sums = self._decoded()[1]  # (H + 1, W + 1) summed-area table of the occupied pixels, zero first row and column
        total_h, total_w = sums.shape[0] - 1, sums.shape[1] - 1
        if height > total_h or width > total_w:
            return np.zeros((max(total_h - height + 1, 0), max(total_w - width + 1, 0)), dtype=bool)
        inside = sums[height:, width:] - sums[:-height, width:] - sums[height:, :-width] + sums[:-height, :-width]
        return inside == 0


def _flat(rgb: tuple[int, int, int], height: int, width: int, *_: Any) -> Patch:
    """One flat colour: "mean" (`MEAN_RGB`) and "gray" (`GRAY_RGB`)."""
    return np.full((height, width, 3), rgb, dtype=np.uint8), {}


def fill_noise(height: int, width: int, rng: np.random.Generator, donors: Sequence[TextureDonor]) -> Patch:
    """Uniform RGB noise, every channel of every pixel independent in 0..255."""
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8), {}


def fill_texture(height: int, width: int, rng: np.random.Generator, donors: Sequence[TextureDonor]) -> Patch:
    """A background-only crop of a donor image: no pixel lies within `TEXTURE_BOX_MARGIN` of a donor box.

    Donor order, tiling and the flat `MEAN_RGB` fallback: docs/occlusion.md, "Occluders add no objects".
    Manifest info: `{donor: id, crop_xyxy: [x0, y0, x1, y1]}` (half-open donor pixels), both None for the fallback.
    """
    if not donors:
        raise OcclusionError("texture fill has no donor image (a split needs >= 2 images): drop texture from "
                             "occlusion.fills")
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


Fill = Callable[[int, int, np.random.Generator, Sequence[TextureDonor]], Patch]
FILLS: dict[str, Fill] = {"mean": functools.partial(_flat, MEAN_RGB), "gray": functools.partial(_flat, GRAY_RGB),
                          "noise": fill_noise, "texture": fill_texture}
"""Fill type -> fill(height, width, rng, donors) -> (patch (h, w, 3) uint8, manifest info)."""
