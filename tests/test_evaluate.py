"""One-pass evaluation: same mAP as plain Ultralytics val, and per-image records from that pass."""

from __future__ import annotations

from pathlib import Path

import pytest

from exp3.dataset import label_path_for
from exp3.labels import parse_label_text
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
        assert record["gt_classes"] == [row.class_id for row in rows]
        size = record["width"]
        for (cx, cy, w, h), box in zip((row.box for row in rows), record["gt_boxes"]):
            expected = [(cx - w / 2) * size, (cy - h / 2) * size, (cx + w / 2) * size, (cy + h / 2) * size]
            assert box == pytest.approx(expected, abs=1.0)
        assert len(record["pred_boxes"]) == len(record["pred_classes"]) == len(record["pred_conf"])
        for x0, y0, x1, y1 in record["pred_boxes"]:
            assert -1 <= x0 <= x1 <= record["width"] + 1 and -1 <= y0 <= y1 <= record["height"] + 1
        assert all(0.0 <= conf <= 1.0 for conf in record["pred_conf"])


def test_missing_checkpoint_is_a_clear_error(tiny_data_yaml: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist: train the session first"):
        evaluate_split(tmp_path / "nope.pt", tiny_data_yaml, "detect", tmp_path, tmp_path / "e")


# ------------------------------------------------------------------ a model that really detects

def test_ingredient_sets_equal_those_of_predict_image_by_image(trained_evaluation, trained_yolo_checkpoint: Path,
                                                              trained_data_yaml: Path) -> None:
    """What the application (model.predict at its default conf 0.25) would list, image by image."""
    from ultralytics import YOLO

    from exp3.metrics import ingredient_sets, records_from_json

    records = records_from_json(trained_evaluation.records)
    _, exp3_sets = ingredient_sets(records, num_classes=10, conf=0.25)
    files = sorted((trained_data_yaml.parent / "images" / "test").glob("*.jpg"))
    predicted = YOLO(str(trained_yolo_checkpoint)).predict([str(f) for f in files], conf=0.25, device="cpu",
                                                             verbose=False)
    assert [r.image_id for r in records] == [f.stem for f in files]
    for row, (record, result) in enumerate(zip(records, predicted)):
        expected = set(int(c) for c in result.boxes.cls.tolist())
        assert set(map(int, exp3_sets[row].nonzero()[0])) == expected, record.image_id
        kept = record.pred_conf >= 0.25  # the boxes themselves, not only their classes
        assert sorted(zip(record.pred_classes[kept].tolist(), [round(c, 4) for c in record.pred_conf[kept]])) == \
            sorted(zip(map(int, result.boxes.cls.tolist()), [round(c, 4) for c in result.boxes.conf.tolist()]))
    assert exp3_sets.sum() >= 3  # non-zero predictions: the comparison is not empty against empty


def test_predictions_keep_one_class_per_box(trained_evaluation) -> None:
    """predict's NMS (multi_label=False): no box is listed twice with two classes."""
    for record in trained_evaluation.records:
        boxes = [tuple(box) for box in record["pred_boxes"]]
        assert len(boxes) == len(set(boxes)), record["image_id"]


def test_trained_map_equals_plain_ultralytics_val(trained_evaluation, trained_yolo_checkpoint: Path,
                                                  trained_data_yaml: Path, tmp_path: Path) -> None:
    from ultralytics import YOLO

    plain = YOLO(str(trained_yolo_checkpoint)).val(data=str(trained_data_yaml), split="test", device="cpu",
                                                   plots=False, verbose=False, project=str(tmp_path), name="plain")
    assert trained_evaluation.map50 == pytest.approx(float(plain.box.map50), abs=1e-9) and trained_evaluation.map50 > 0
    assert trained_evaluation.map50_95 == pytest.approx(float(plain.box.map), abs=1e-9)


def test_map_recomputed_from_the_kept_per_image_stats_equals_the_validator(trained_evaluation, tmp_path: Path) -> None:
    """The per-image statistics behind mAP's bootstrap reproduce the validator's mAP of a trained model."""
    from exp3.mapstats import MapStats, mean_ap

    stats = trained_evaluation.map_stats
    assert sorted(stats.image_ids) == sorted(record["image_id"] for record in trained_evaluation.records)
    assert len(stats.conf) > 0 and stats.tp.any()
    map50, map50_95 = mean_ap(MapStats.load(stats.save(tmp_path / "stats.npz")))
    assert map50 == pytest.approx(trained_evaluation.map50, abs=1e-12) and map50 > 0
    assert map50_95 == pytest.approx(trained_evaluation.map50_95, abs=1e-12)


def test_one_loaded_model_for_every_split_equals_loading_it_per_split(trained_evaluation, trained_yolo_checkpoint: Path,
                                                                      trained_data_yaml: Path, tmp_path: Path) -> None:
    """A session loads its checkpoint once and evaluates val, then each test split: the test split's mAP,
    records and map stats equal those of a model loaded for that split alone (a trained model: non-zero)."""
    import numpy as np

    from exp3.evaluate import load_evaluation_model

    model = load_evaluation_model(trained_yolo_checkpoint, "detect")
    evaluate_split(model, trained_data_yaml, "detect", tmp_path, tmp_path / "val", split="val", device="cpu")
    shared = evaluate_split(model, trained_data_yaml, "detect", tmp_path, tmp_path / "test", device="cpu")
    assert trained_evaluation.map50 > 0.1 and shared.map50 == trained_evaluation.map50
    assert shared.map50_95 == trained_evaluation.map50_95 and shared.records == trained_evaluation.records
    assert np.array_equal(shared.map_stats.tp, trained_evaluation.map_stats.tp)
    assert len(model.model.callbacks["on_val_end"]) == len(load_evaluation_model(
        trained_yolo_checkpoint, "detect").model.callbacks["on_val_end"])  # each split's own callback removed
    with pytest.raises(ValueError, match="loaded as 'detect', not 'rtdetr'"):
        evaluate_split(model, trained_data_yaml, "rtdetr", tmp_path, tmp_path / "x")
