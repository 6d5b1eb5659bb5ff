"""Reading a split for the occlusion generator: every image hashed, every label parsed, before anything is written.

The data.yaml itself is read by exp3.dataset.audit, label rows by exp3.dataset.labels; this module turns a split
into `_SourceImage`s sorted by id and their content identity (`source_fingerprint`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from exp3.dataset.audit import DatasetError, DataSpec, label_path_for, list_split_images, read_data_yaml
from exp3.dataset.labels import box_in_bounds, parse_label_text
from exp3.fileio import canonical_json, sha256_bytes, sha256_file
from exp3.occlusion import OcclusionError


@dataclass(frozen=True)
class _SourceImage:
    """One image of a split, read and validated: bytes hashed, labels parsed."""

    image_id: str
    image_path: Path
    image_sha256: str
    label_sha256: str | None
    label_bytes: bytes | None
    labels: tuple[tuple[int, float, float, float, float], ...]
    """(class_id, cx, cy, w, h), normalised to [0, 1] of the image width/height."""


def _parse_yolo_labels(
    text: str, num_classes: int, label_path: Path
) -> tuple[tuple[int, float, float, float, float], ...]:
    """YOLO label text -> ((class_id, cx, cy, w, h), ...) normalised; polygon rows become their box
    (exp3.dataset.labels, the parser the audit uses)."""
    rows, malformed = parse_label_text(text)
    if malformed:
        number, why = malformed[0]
        raise OcclusionError(f"label file {str(label_path)!r} line {number}: {why}: write 'class cx cy w h' "
                             "(or a polygon 'class x1 y1 x2 y2 x3 y3 ...')")
    for row in rows:
        where = f"label file {str(label_path)!r} line {row.line}"
        if not 0 <= row.class_id < num_classes:
            raise OcclusionError(f"{where}: class id {row.class_id} is not in names (0..{num_classes - 1}): "
                                 "fix the label or add the class to names")
        if not box_in_bounds(row):  # the audit's rule, with its slack for rounding
            raise OcclusionError(f"{where}: coordinates must be normalised to [0, 1] with width and height > 0: "
                                 "divide by the image width/height")
    return tuple((row.class_id, *row.box) for row in rows)


def _scan_split(data_yaml: Path, split: str) -> tuple[DataSpec, list[_SourceImage]]:
    """Read and validate a split completely (before anything is written): the parsed yaml and images by id."""
    try:
        spec = read_data_yaml(data_yaml)
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
            raise OcclusionError(f"{split} split has two images with id {image_id!r} ({str(seen[image_id])!r}, "
                                 f"{str(image_path)!r}): image file stems must be unique; rename one")
        seen[image_id] = image_path
        label_path = label_path_for(image_path)
        label_bytes = label_path.read_bytes() if label_path.is_file() else None  # no label file: no objects
        labels = () if label_bytes is None else _parse_yolo_labels(label_bytes.decode("utf-8", "replace"),
                                                                   len(spec.names), label_path)
        label_sha256 = None if label_bytes is None else sha256_bytes(label_bytes)
        images.append(_SourceImage(image_id, image_path, sha256_file(image_path), label_sha256, label_bytes, labels))
    return spec, sorted(images, key=lambda image: image.image_id)


def source_fingerprint(images: Iterable[_SourceImage]) -> str:
    """sha256 of the sorted (id, image sha256, label sha256) list: the split's content identity."""
    rows = sorted((image.image_id, image.image_sha256, image.label_sha256) for image in images)
    return sha256_bytes(canonical_json(rows).encode("utf-8"))


def _absolute_split(spec: DataSpec, data_yaml: Path, split: str) -> list[str] | None:
    """The resolved absolute location(s) of a split of the original data yaml (`spec`, read from `data_yaml`
    by `_scan_split`), None if it has none."""
    if split not in spec.splits:
        return None
    resolved = []
    for location in spec.splits[split]:
        if not location.exists():
            raise OcclusionError(f"{split} split {str(location)!r} (from {str(data_yaml)!r}) does not exist: "
                                 f"fix {split}: in the yaml")
        resolved.append(str(location.resolve()))
    return resolved
