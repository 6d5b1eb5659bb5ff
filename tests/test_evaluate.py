"""One-pass evaluation: same mAP as plain Ultralytics val, and per-image records from that pass."""

from __future__ import annotations

from pathlib import Path

import pytest

from exp3.dataset import label_path_for, parse_label_text
from exp3.evaluate import evaluate_split


@pytest.fixture(scope="module")
def evaluation(tiny_yolo_checkpoint: Path, tiny_data_yaml: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("eval")
    return evaluate_split(tiny_yolo_checkpoint, tiny_data_yaml, "detect", output_root=root,
                          save_dir=root / "test_clean", imgsz=64, batch=4, device="cpu")


def test_map_equals_plain_ultralytics_val(evaluation, tiny_yolo_checkpoint: Path, tiny_data_yaml: Path,
                                          tmp_path: Path) -> None:
    from ultralytics import YOLO

    plain = YOLO(str(tiny_yolo_checkpoint)).val(data=str(tiny_data_yaml), split="test", imgsz=64, batch=4,
                                                device="cpu", plots=False, verbose=False, project=str(tmp_path),
                                                name="plain")
    assert evaluation.map50 == pytest.approx(float(plain.box.map50), abs=1e-9)
    assert evaluation.map50_95 == pytest.approx(float(plain.box.map), abs=1e-9)


def test_records_cover_every_test_image_with_ground_truth_in_pixels(evaluation, tiny_data_yaml: Path) -> None:
    test_images = sorted((tiny_data_yaml.parent / "images" / "test").glob("*.jpg"))
    assert [record["image_id"] for record in evaluation.records] == [p.stem for p in test_images]
    for image, record in zip(test_images, evaluation.records):
        rows, _ = parse_label_text(label_path_for(image).read_text())
        assert record["gt_classes"] == [row[0] for row in rows]
        size = record["width"]
        for (_, cx, cy, w, h), box in zip(rows, record["gt_boxes"]):
            expected = [(cx - w / 2) * size, (cy - h / 2) * size, (cx + w / 2) * size, (cy + h / 2) * size]
            assert box == pytest.approx(expected, abs=1.0)
        assert len(record["pred_boxes"]) == len(record["pred_classes"]) == len(record["pred_conf"])
        for x0, y0, x1, y1 in record["pred_boxes"]:
            assert -1 <= x0 <= x1 <= record["width"] + 1 and -1 <= y0 <= y1 <= record["height"] + 1
        assert all(0.0 <= conf <= 1.0 for conf in record["pred_conf"])


def test_missing_checkpoint_is_a_clear_error(tiny_data_yaml: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist: train the session first"):
        evaluate_split(tmp_path / "nope.pt", tiny_data_yaml, "detect", tmp_path, tmp_path / "e")
