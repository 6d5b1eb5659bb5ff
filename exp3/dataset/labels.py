"""The one reader of YOLO detection label files (used by the audit and by the occlusion suites).

A row is either a box `class cx cy w h` or a polygon (segment) `class x1 y1 x2 y2 x3 y3 ...`
(at least three points, so an odd number >= 7 of values), all normalised to [0, 1]. As in
Ultralytics (`ultralytics/data/utils.py::verify_image_label`, `utils/ops.py::segments2boxes`):

- a polygon row stands for its bounding box: (min x + max x) / 2, (min y + max y) / 2, width, height;
- a file is a segment file when any row has more than six values; a box row in it makes
  Ultralytics drop the whole image ("labels mix segment and detection rows"), so it is malformed;
- any other count (fewer than 5, 6, or an even count above 6) is malformed: Ultralytics drops the image;
- a row whose class and box equal an earlier row's in float32 is a duplicate: Ultralytics drops it, and so does
  `parse_label_text` (the audit counts, and the occluder covers, the boxes Ultralytics scores);
- a leading UTF-8 byte-order mark is ignored.

Range checks (class ids, coordinates) belong to the caller: `parse_label_text` only parses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BOX_VALUES = 5
MIN_POLYGON_VALUES = 7
"""class + three (x, y) points."""
BOUNDS_TOLERANCE = 1e-6


@dataclass(frozen=True)
class LabelRow:
    """One parsed row: its 1-based line number, class id and normalised coordinates as written."""

    line: int
    class_id: int
    coords: tuple[float, ...]
    """`(cx, cy, w, h)` for a box row, `(x1, y1, x2, y2, ...)` for a polygon row."""

    @property
    def is_polygon(self) -> bool:
        return len(self.coords) > BOX_VALUES - 1

    @property
    def box(self) -> tuple[float, float, float, float]:
        """Normalised `(cx, cy, w, h)`; a polygon's bounding box (Ultralytics' `segments2boxes`)."""
        if not self.is_polygon:
            cx, cy, w, h = self.coords
            return cx, cy, w, h
        xs, ys = self.coords[0::2], self.coords[1::2]
        return (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2, max(xs) - min(xs), max(ys) - min(ys)


def _count_problem(count: int, segment_file: bool) -> str | None:
    """Why a row of `count` values is malformed (None if its count is fine)."""
    if count == BOX_VALUES:
        return "a box row in a file of polygon rows (Ultralytics drops the whole image)" if segment_file else None
    if count >= MIN_POLYGON_VALUES and count % 2 == 1:
        return None
    if count > BOX_VALUES and count % 2 == 0:
        return f"{count} values: a polygon needs an even number of coordinates after the class"
    return f"{count} values"


def parse_label_text(text: str) -> tuple[list[LabelRow], list[tuple[int, str]]]:
    """YOLO label text -> (rows, malformed (1-based line number, reason)); see the module docstring."""
    lines = [(number, line.split()) for number, line in enumerate(text.removeprefix("\ufeff").splitlines(), start=1)]
    lines = [(number, fields) for number, fields in lines if fields]
    segment_file = any(len(fields) > BOX_VALUES + 1 for _, fields in lines)
    rows: list[LabelRow] = []
    malformed: list[tuple[int, str]] = []
    seen: set[tuple[float, ...]] = set()  # class and box in float32, as Ultralytics' np.unique compares them
    for number, fields in lines:
        try:
            values = [float(value) for value in fields]
        except ValueError:
            malformed.append((number, f"non-numeric {' '.join(fields)[:40]!r}"))
            continue
        if (problem := _count_problem(len(values), segment_file)) is not None:
            malformed.append((number, problem))
            continue
        if values[0] != int(values[0]):
            malformed.append((number, f"class {fields[0]!r} is not an integer"))
            continue
        row = LabelRow(number, int(values[0]), tuple(values[1:]))
        if (key := tuple(np.float32([row.class_id, *row.box]).tolist())) not in seen:
            seen.add(key)
            rows.append(row)
    return rows, malformed


def box_in_bounds(row: LabelRow) -> bool:
    """The row's box lies in the image (normalised [0, 1], `BOUNDS_TOLERANCE` slack) with width and height > 0;
    a polygon's points must all lie in the image."""
    low, high = -BOUNDS_TOLERANCE, 1.0 + BOUNDS_TOLERANCE
    if row.is_polygon and not all(low <= value <= high for value in row.coords):
        return False
    cx, cy, w, h = row.box
    return (0.0 < w <= high and 0.0 < h <= high and low <= cx - w / 2 and cx + w / 2 <= high
            and low <= cy - h / 2 and cy + h / 2 <= high)
