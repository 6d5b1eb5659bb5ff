"""What writing one split's predictions file costs at the GPU night's sizes, indented against compact.

    python benchmarks/bench_predictions_json.py [--images 5000] [--boxes 200]

A split's `predictions_<split>.json` holds every recorded box (RT-DETR keeps its 300 queries; at conf 0.01 a trained
one keeps about 200 an image) and is written through `exp3.fileio.atomic_write_json`, eight splits a session, each
copied to the mirror (Drive) too. This writes one synthetic file of that shape both ways and reads it back: the
wall seconds and megabytes of each. Figures in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exp3.fileio import atomic_write_json  # noqa: E402


def record(index: int, boxes: int, rng: random.Random) -> dict:
    """One image's record, as a predictions file's "images" hold it (`exp3.evaluate.metrics.records_from_json`)."""
    return {"image_id": f"img_{index:05d}", "im_file": f"/data/test/img_{index:05d}.jpg", "width": 640, "height": 640,
            "gt_boxes": [[round(rng.uniform(0, 600), 2) for _ in range(4)] for _ in range(5)],
            "gt_classes": [1, 2, 3, 4, 5],
            "pred_boxes": [[round(rng.uniform(0, 600), 2) for _ in range(4)] for _ in range(boxes)],
            "pred_conf": [rng.random() for _ in range(boxes)], "pred_classes": [rng.randrange(10) for _ in range(boxes)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--boxes", type=int, default=200)
    args = parser.parse_args()
    rng = random.Random(0)
    payload = {"split": "test_clean", "images": [record(index, args.boxes, rng) for index in range(args.images)]}
    with tempfile.TemporaryDirectory() as folder:
        for indent in (2, None):
            path = Path(folder) / f"indent-{indent}.json"
            start = time.perf_counter()
            atomic_write_json(path, payload, indent=indent)
            written = time.perf_counter() - start
            start = time.perf_counter()
            assert json.loads(path.read_text())["images"][-1]["pred_conf"] == payload["images"][-1]["pred_conf"]
            read = time.perf_counter() - start
            print(f"indent={indent}: write {written:.1f} s, read {read:.1f} s, {path.stat().st_size / 1e6:.0f} MB "
                  f"({args.images} images x {args.boxes} boxes)")


if __name__ == "__main__":
    main()
