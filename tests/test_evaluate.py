"""One-pass evaluation: same mAP as plain Ultralytics val, and per-image records from that pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from exp3.dataset.audit import label_path_for
from exp3.dataset.labels import parse_label_text
from exp3.evaluate.evaluation import evaluate_split, load_evaluation_model


@pytest.fixture(scope="module")
def evaluation(tiny_yolo_checkpoint: Path, tiny_data_yaml: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("eval")
    return evaluate_split(load_evaluation_model(tiny_yolo_checkpoint, "detect"), tiny_data_yaml, output_root=root,
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
        load_evaluation_model(tmp_path / "nope.pt", "detect")


def test_an_image_the_validator_skips_is_a_clear_error_not_a_smaller_split(tiny_yolo_checkpoint: Path,
                                                                         writable_data_yaml: Path,
                                                                         tmp_path: Path) -> None:
    """A GIF under a .jpg name decodes in PIL, but Ultralytics' loader drops it with one log line and evaluates the
    rest: the split's metrics would be of fewer images than it lists."""
    from PIL import Image

    image = sorted((writable_data_yaml.parent / "images" / "test").glob("*.jpg"))[0]
    Image.open(image).convert("P").save(image, format="GIF")
    with pytest.raises(ValueError, match=rf"skipped 1 of the \d+ images of test .*{image.stem!r}.*re-save"):
        evaluate_split(load_evaluation_model(tiny_yolo_checkpoint, "detect"), writable_data_yaml, tmp_path,
                       tmp_path / "e", imgsz=64, batch=4, device="cpu", plots=False)


def test_an_image_scored_that_exp3_does_not_list_is_a_clear_error(tiny_yolo_checkpoint: Path, writable_data_yaml: Path,
                                                                   tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The other direction: a split whose listing differs from Ultralytics' (a symlinked folder exp3 once missed)
    scored images the audit never saw; now the evaluation stops instead."""
    from exp3.evaluate import evaluation

    listed = evaluation.list_split_images
    monkeypatch.setattr(evaluation, "list_split_images", lambda spec, split: listed(spec, split)[1:])
    with pytest.raises(ValueError, match=r"scored 1 images of test that exp3 does not list"):
        evaluate_split(load_evaluation_model(tiny_yolo_checkpoint, "detect"), writable_data_yaml, tmp_path,
                       tmp_path / "e", imgsz=64, batch=4, device="cpu", plots=False)


# ------------------------------------------------------------------ a model that really detects

def test_ingredient_sets_equal_those_of_predict_image_by_image(trained_evaluation, trained_yolo_checkpoint: Path,
                                                              trained_data_yaml: Path) -> None:
    """What the application (model.predict at its default conf 0.25) would list, image by image: its classes, and
    the boxes themselves (class, confidence and pixel xyxy, which the predictions file holds to 2 decimals)."""
    from ultralytics import YOLO

    from exp3.evaluate.metrics import above, ingredient_sets, records_from_json

    records = records_from_json(trained_evaluation.records)
    _, exp3_sets = ingredient_sets(records, num_classes=10, conf=0.25)
    files = sorted((trained_data_yaml.parent / "images" / "test").glob("*.jpg"))
    predicted = YOLO(str(trained_yolo_checkpoint)).predict([str(f) for f in files], conf=0.25, device="cpu",
                                                             verbose=False)
    assert [r.image_id for r in records] == [f.stem for f in files]
    for row, (record, result) in enumerate(zip(records, predicted)):
        expected = set(int(c) for c in result.boxes.cls.tolist())
        assert set(map(int, exp3_sets[row].nonzero()[0])) == expected, record.image_id
        kept = above(record.pred_conf, 0.25)
        ours = sorted(zip(record.pred_classes[kept].tolist(), [round(c, 4) for c in record.pred_conf[kept]],
                          record.pred_boxes[kept].tolist()))
        theirs = sorted(zip(map(int, result.boxes.cls.tolist()), [round(c, 4) for c in result.boxes.conf.tolist()],
                            result.boxes.xyxy.tolist()))
        assert [(cls, conf) for cls, conf, _ in ours] == [(cls, conf) for cls, conf, _ in theirs], record.image_id
        np.testing.assert_allclose([box for *_, box in ours], [box for *_, box in theirs], rtol=0, atol=0.01,
                                   err_msg=record.image_id)
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
    from exp3.evaluate.mapstats import MapStats, mean_ap

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

    model = load_evaluation_model(trained_yolo_checkpoint, "detect")
    evaluate_split(model, trained_data_yaml, tmp_path, tmp_path / "val", split="val", device="cpu")
    shared = evaluate_split(model, trained_data_yaml, tmp_path, tmp_path / "test", device="cpu")
    assert trained_evaluation.map50 > 0.1 and shared.map50 == trained_evaluation.map50
    assert shared.map50_95 == trained_evaluation.map50_95 and shared.records == trained_evaluation.records
    assert np.array_equal(shared.map_stats.tp, trained_evaluation.map_stats.tp)
    assert len(model.model.callbacks["on_val_end"]) == len(load_evaluation_model(
        trained_yolo_checkpoint, "detect").model.callbacks["on_val_end"])  # each split's own callback removed


# ------------------------------------------------------------------ issue 25: checks, batching, stage timings

def test_a_validator_that_appends_other_than_one_stats_entry_per_image_is_a_clear_error(
        tiny_yolo_checkpoint: Path, tiny_data_yaml: Path, tmp_path: Path) -> None:
    """The per-image mAP stats pair the validator's i-th stats entry with the i-th image: an Ultralytics
    whose update_metrics appends another count stops the evaluation instead of mispairing them."""
    from ultralytics import YOLO
    from ultralytics.models.yolo.detect.val import DetectionValidator

    from exp3.evaluate.evaluation import EvaluationModel, _recording_mixin

    class TwoEntriesPerImage(DetectionValidator):
        def update_metrics(self, preds, batch):
            super().update_metrics(preds, batch)
            self.metrics.stats["tp"].append(self.metrics.stats["tp"][-1])

    model = EvaluationModel(tiny_yolo_checkpoint, "detect", YOLO(str(tiny_yolo_checkpoint)),
                            _recording_mixin(TwoEntriesPerImage))
    with pytest.raises(RuntimeError, match=r"TwoEntriesPerImage.update_metrics appended .*'tp': 5.* batch of 4 "
                                           r"images; .* exactly one per image"):
        evaluate_split(model, tiny_data_yaml, tmp_path, tmp_path / "e", imgsz=64, batch=4, device="cpu", plots=False)


def test_batched_predict_gives_each_image_what_predict_gives_it_alone(trained_yolo_checkpoint: Path,
                                                                     trained_data_yaml: Path, tmp_path: Path) -> None:
    """Images of two shapes, interleaved: `predict_records` runs forward passes of at most `batch` images of
    one shape and gives each image, box by box, what `predict([file])` gives it alone. The whole list in
    one `predict` call would not: it is one batch, padded to the square imgsz when shapes mix."""
    import cv2
    from ultralytics import YOLO

    from exp3.evaluate.evaluation import EvaluationStages, predict_records

    files = []
    for index, source in enumerate(sorted((trained_data_yaml.parent / "images" / "test").glob("*.jpg"))[:8]):
        image = cv2.imread(str(source))
        path = tmp_path / source.name
        cv2.imwrite(str(path), image[:64] if index % 2 else image)  # 96 x 96 and 96 x 64 (w x h)
        files.append(str(path))
    model = load_evaluation_model(trained_yolo_checkpoint, "detect").model
    batch_sizes: list[int] = []
    model.add_callback("on_predict_batch_start", lambda predictor: batch_sizes.append(len(predictor.batch[0])))
    ours = predict_records(model, files, EvaluationStages(), batch=3, device="cpu")
    assert batch_sizes == [3, 1, 3, 1]  # four images of each shape, at most 3 per forward pass
    plain = YOLO(str(trained_yolo_checkpoint))
    alone = [plain.predict([file], conf=0.01, device="cpu", verbose=False)[0] for file in files]
    whole = plain.predict(files, conf=0.01, device="cpu", verbose=False, batch=3)

    def detections(classes, confs, boxes):
        """(class, conf, box) sorted; a batch of another size moves a conf by float32 rounding (~1e-7) only."""
        return sorted((int(c), float(s), [float(v) for v in box]) for c, s, box in zip(classes, confs, boxes))

    def same(ours_image, plain_image, conf_tolerance=1e-5, box_tolerance=0.02):
        return len(ours_image) == len(plain_image) and all(
            a[0] == b[0] and abs(a[1] - b[1]) <= conf_tolerance and a[2] == pytest.approx(b[2], abs=box_tolerance)
            for a, b in zip(ours_image, plain_image))

    def of(result):
        return detections(result.boxes.cls.tolist(), result.boxes.conf.tolist(), result.boxes.xyxy.tolist())

    assert sum(len(result.boxes) for result in alone) > 8
    for result in alone:
        record = ours[Path(result.path).stem]
        assert same(detections(record["pred_classes"], record["pred_conf"], record["pred_boxes"]), of(result)), \
            result.path
    assert not all(same(of(a), of(w), 1e-3, 0.5) for a, w in zip(alone, whole))  # why the lists are of one shape


def test_stage_timings_add_up_to_the_wall_and_go_into_the_split_entry(tiny_yolo_checkpoint: Path,
                                                                      tiny_data_yaml: Path, tmp_path: Path) -> None:
    import json

    from exp3.config import ExperimentConfig
    from exp3.evaluate.evaluation import save_split_files
    from exp3.evaluate.mapstats import MapStats
    from exp3.evaluate.metrics import records_from_json
    from exp3.schema import EvalStages, SplitMetrics
    from exp3.session.record import split_metrics

    evaluation = evaluate_split(load_evaluation_model(tiny_yolo_checkpoint, "detect"), tiny_data_yaml, tmp_path,
                                tmp_path / "e", imgsz=64, batch=4, device="cpu", plots=False)
    stages = evaluation.stages
    assert stages.validator_s > 0 and stages.predict_s > 0 and stages.recording_s > 0
    assert stages.draws_s == stages.writing_s == 0
    save_split_files(evaluation, tmp_path / "predictions_test.json", {"split": "test"}, tmp_path / "map_stats.npz")
    assert stages.draws_s > 0 and stages.writing_s > 0
    assert json.loads((tmp_path / "predictions_test.json").read_text())["images"] == evaluation.records
    assert MapStats.load(tmp_path / "map_stats.npz").draws.shape[1] == 2
    assert evaluation.wall_s == pytest.approx(sum(stages.to_json().values()), abs=0.003)
    entry = split_metrics(evaluation, records_from_json(evaluation.records), ExperimentConfig(),
                          [str(c) for c in range(10)], 0.25)
    assert entry.eval_wall_s == evaluation.wall_s and isinstance(entry.eval_stages_s, EvalStages)
    dumped = entry.model_dump(mode="json")
    assert dumped["eval_stages_s"] == stages.to_json()
    assert SplitMetrics.model_validate(dumped) == entry
    with pytest.raises(ValueError, match="nms_s"):
        SplitMetrics.model_validate({**dumped, "eval_stages_s": {**dumped["eval_stages_s"], "nms_s": 1.0}})


def test_the_reports_per_image_counts_reproduce_what_a_session_records(trained_evaluation) -> None:
    """The report trusts a predictions file only if its counts give what metrics.json records (exp3.report.draws):
    on a trained model's non-zero predictions, a session's own `splits.<split>` entry (split_metrics) passes at both
    operating points, and the same entry with one detection moved to another class does not."""
    from dataclasses import replace

    from exp3.config import ExperimentConfig
    from exp3.evaluate.metrics import matched_gt, records_from_json
    from exp3.report.draws import _reproduces_counts, image_scores
    from exp3.schema import MetricsView
    from exp3.session.record import split_metrics

    records = records_from_json(trained_evaluation.records)
    config, names = ExperimentConfig(), [str(index) for index in range(10)]
    entry = split_metrics(trained_evaluation, records, config, names, val_conf=0.1).model_dump()
    view = MetricsView.of({"splits": {"test": entry}})

    def scores(of: list, conf: float):
        return image_scores(of, len(names), conf, [matched_gt(record, conf, config.eval.match_iou) for record in of])

    assert entry["detection"]["tp"] >= 3 and entry["at_val_threshold"]["detection"]["tp"] >= 3   # non-zero
    assert _reproduces_counts(scores(records, config.eval.conf), view, "test", "primary")
    assert _reproduces_counts(scores(records, 0.1), view, "test", "val")
    row = next(index for index, record in enumerate(records) if (record.pred_conf >= 0.25).any())
    moved = replace(records[row], pred_classes=(records[row].pred_classes + 1) % len(names))
    other = records[:row] + [moved] + records[row + 1:]
    assert not _reproduces_counts(scores(other, config.eval.conf), view, "test", "primary")
