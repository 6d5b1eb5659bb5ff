"""RT-DETR evaluation: mAP equal to plain val, and records that are `predict`'s output, boxes listed twice included.

RT-DETR's `predict` keeps its head's top-k over queries x classes, so one box can come back twice
with two classes (docs/thresholds.md); exp3 records what `predict` returns, as it does for YOLO.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def tiny_rtdetr_checkpoint(tiny_data_yaml: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`last.pt` of rtdetr-l.yaml trained 1 epoch at imgsz 64 on the tiny dataset (plain Ultralytics, ~20 s CPU)."""
    from ultralytics import RTDETR

    project = tmp_path_factory.mktemp("tiny-rtdetr")
    RTDETR("rtdetr-l.yaml").train(data=str(tiny_data_yaml), epochs=1, imgsz=64, batch=4, device="cpu", amp=False,
                                  workers=0, plots=False, val=False, project=str(project), name="run", exist_ok=True,
                                  verbose=False)
    return project / "run" / "weights" / "last.pt"


@pytest.fixture(scope="module")
def rtdetr_evaluation(tiny_rtdetr_checkpoint: Path, tiny_data_yaml: Path, tmp_path_factory: pytest.TempPathFactory):
    from exp3.evaluate.evaluation import evaluate_split, load_evaluation_model

    root = tmp_path_factory.mktemp("eval-rtdetr")
    return evaluate_split(load_evaluation_model(tiny_rtdetr_checkpoint, "rtdetr"), tiny_data_yaml, output_root=root,
                          save_dir=root / "test", imgsz=64, device="cpu", plots=False)


def _boxes(classes: list[int], confs: list[float], boxes: list[list[float]]) -> Counter:
    """The detections of one image as a multiset of (class, conf, box), rounded as exp3 records them."""
    return Counter((int(c), round(float(s), 6), tuple(round(float(v), 2) for v in box))
                   for c, s, box in zip(classes, confs, boxes))


def test_rtdetr_map_equals_plain_ultralytics_val(rtdetr_evaluation, tiny_rtdetr_checkpoint: Path,
                                                 tiny_data_yaml: Path, tmp_path: Path) -> None:
    from ultralytics import RTDETR

    plain = RTDETR(str(tiny_rtdetr_checkpoint)).val(data=str(tiny_data_yaml), split="test", imgsz=64, device="cpu",
                                                    plots=False, verbose=False, project=str(tmp_path), name="plain")
    assert rtdetr_evaluation.map50 == pytest.approx(float(plain.box.map50), abs=1e-9)
    assert rtdetr_evaluation.map50_95 == pytest.approx(float(plain.box.map), abs=1e-9)
    assert len(rtdetr_evaluation.map_stats.image_ids) == 4 and len(rtdetr_evaluation.map_stats.conf) > 0


def test_rtdetr_records_are_predicts_output_with_boxes_listed_twice(rtdetr_evaluation, tiny_rtdetr_checkpoint: Path,
                                                                    tiny_data_yaml: Path) -> None:
    """Image by image, the recorded detections are exactly plain `predict(conf=0.01)`'s (one image per
    forward pass there, a batch here), including the boxes it lists with two classes: none is dropped."""
    from ultralytics import RTDETR

    files = sorted((tiny_data_yaml.parent / "images" / "test").glob("*.jpg"))
    predicted = RTDETR(str(tiny_rtdetr_checkpoint)).predict([str(f) for f in files], conf=0.01, imgsz=64,
                                                             device="cpu", verbose=False)
    listed_twice = 0
    assert [record["image_id"] for record in rtdetr_evaluation.records] == [f.stem for f in files]
    for record, result in zip(rtdetr_evaluation.records, predicted):
        expected = _boxes(result.boxes.cls.tolist(), result.boxes.conf.tolist(), result.boxes.xyxy.tolist())
        assert _boxes(record["pred_classes"], record["pred_conf"], record["pred_boxes"]) == expected, record["image_id"]
        classes_per_box = Counter(tuple(box) for box in record["pred_boxes"])
        listed_twice += sum(count > 1 for count in classes_per_box.values())
    assert listed_twice > 0  # the case this rule is about occurs here: RT-DETR lists boxes with two classes


def test_rtdetr_ingredient_sets_equal_those_of_predict_at_a_threshold(rtdetr_evaluation, tiny_rtdetr_checkpoint: Path,
                                                                      tiny_data_yaml: Path) -> None:
    """A threshold applied to the records gives `predict(conf=t)`'s ingredient lists (t: near the records'
    median confidence, so that some boxes pass and some do not, and clear of every recorded confidence)."""
    import numpy as np
    from ultralytics import RTDETR

    from exp3.evaluate.metrics import ingredient_sets, records_from_json

    records = records_from_json(rtdetr_evaluation.records)
    confs = np.concatenate([r.pred_conf for r in records])
    values = np.unique(confs)
    gaps = (values[1:] + values[:-1])[np.diff(values) > 1e-5] / 2
    threshold = float(gaps[np.argmin(np.abs(gaps - np.median(confs)))])
    _, exp3_sets = ingredient_sets(records, num_classes=10, conf=threshold)
    files = sorted((tiny_data_yaml.parent / "images" / "test").glob("*.jpg"))
    predicted = RTDETR(str(tiny_rtdetr_checkpoint)).predict([str(f) for f in files], conf=threshold, imgsz=64,
                                                             device="cpu", verbose=False)
    for row, result in enumerate(predicted):
        assert set(map(int, exp3_sets[row].nonzero()[0])) == {int(c) for c in result.boxes.cls.tolist()}
    assert 0 < sum(len(result.boxes) for result in predicted) < sum(len(r.pred_conf) for r in records)
