"""The per-image work of a build: one `_ImageTask` -> files in the build directory + a manifest entry.

`_process_image` runs in pool workers (`_run_tasks`), so this module and what it imports are
preloaded in the fork server (exp3.parallel.PRELOADED_MODULES).
"""

from __future__ import annotations

from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from exp3.config import OcclusionConfig
from exp3.fileio import sha256_bytes
from exp3.occlusion import OcclusionError
from exp3.occlusion.codec import decode_image, encode_image
from exp3.occlusion.fills import TextureDonor
from exp3.occlusion.geometry import yolo_to_xyxy
from exp3.occlusion.identity import SEVERITY_KIND, SUITE_KIND
from exp3.occlusion.occlude import image_rng, image_seed, occlude_image
from exp3.occlusion.source import _SourceImage
from exp3.parallel import map_tasks
from exp3.splits import CLEAN_SPLIT, FIXED_SPLIT, TRAIN_SPLIT


@dataclass(frozen=True)
class _ImageTask:
    source: _SourceImage
    kind: str  # SUITE_KIND, SEVERITY_KIND or TRAIN_SET_KIND
    config: OcclusionConfig
    stream: int
    donors: tuple[TextureDonor, ...]
    split: str = ""  # SEVERITY_KIND: the one (occluded) split the suite holds


def _process_image(task: _ImageTask, build_dir: str) -> tuple[dict[str, Any], dict[str, str]]:
    """Occlude (or copy) one image into `build_dir`: (manifest entry, {relative path: sha256} of the files
    written), hashes taken from the bytes in memory: nothing is read back."""
    source, config = task.source, task.config
    data = source.image_path.read_bytes()
    if sha256_bytes(data) != source.image_sha256:
        raise OcclusionError(f"image {str(source.image_path)!r} changed during the build: build again")
    rng = image_rng(config.seed, task.stream, source.image_id)
    files: dict[str, str] = {}

    def put(rel: str, payload: bytes, digest: str) -> str:
        (Path(build_dir) / rel).write_bytes(payload)
        files[rel] = digest
        return rel

    entry: dict[str, Any] = {
        "id": source.image_id,
        "source_image": str(source.image_path),
        "source_sha256": source.image_sha256,
        "source_label_sha256": source.label_sha256,
        "seed": image_seed(config.seed, task.stream, source.image_id),
    }
    clean_split: str | None
    if task.kind == SUITE_KIND:
        clean_split, occluded_split, occlude = CLEAN_SPLIT, FIXED_SPLIT, True
    elif task.kind == SEVERITY_KIND:  # the occluded copies only: test_clean lives in the fixed suite
        clean_split, occluded_split, occlude = None, task.split, True
    else:  # S2 train set: one directory; the stream's first draw decides occluded or clean
        clean_split, occluded_split = TRAIN_SPLIT, TRAIN_SPLIT
        occlude = bool(rng.random() < config.train_fraction)
        entry["occluded"] = occlude
    if source.label_bytes is not None:
        for split in sorted({split for split in (clean_split, occluded_split) if split is not None}):
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
    per_box = zip(source.labels, boxes_xyxy, record["target_coverage"], record["covered_fraction"])
    out_rel = put(f"{occluded_split}/images/{source.image_id}.{config.output_format}", encoded, digest)
    entry.update(occluded_image=out_rel, output_sha256=digest, width=width, height=height, fill=record["fill"],
                 occluders=record["occluders"], dropped_occluders=record["dropped_occluders"],
                 boxes=[{"class_id": label[0], "xyxy": [round(float(v), 3) for v in xyxy], "target_coverage": target,
                         "covered_fraction": covered} for label, xyxy, target, covered in per_box])
    return entry, files


def _run_tasks(tasks: list[_ImageTask], build_dir: Path, workers: int) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Run `_process_image` over tasks into `build_dir` (inline for 1 worker): entries sorted by id, files written."""
    try:
        results = map_tasks(partial(_process_image, build_dir=str(build_dir)), tasks, workers)
    except BrokenProcessPool:
        raise OcclusionError(
            "a worker process died (out of memory, or a calling script without an "
            "`if __name__ == '__main__':` guard): add the guard, or use workers=1"
        ) from None
    files = {rel: digest for _, written in results for rel, digest in written.items()}
    return sorted((entry for entry, _ in results), key=lambda entry: entry["id"]), files
