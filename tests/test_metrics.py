"""exp3.evaluate.metrics: hand-computed answers, scikit-learn agreement, empty-set rule, matching, round trips, errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import records_to_json
from scipy.optimize import linear_sum_assignment

from exp3.evaluate.metrics import (
    DEFAULT_CONF_GRID,
    ImageRecord,
    box_iou,
    choose_threshold,
    detection_prf,
    f1_vs_conf,
    ingredient_prf,
    ingredient_sets,
    optimal_matches,
    per_class_prf,
    per_image_prf,
    prf_from_counts,
    records_from_json,
    robustness_ratio,
    summarize_split,
)

UNIT_BOX = [0.0, 0.0, 10.0, 10.0]


def make_record(image_id: str, gt: list[int], preds: list[tuple[int, float]],
                gt_boxes: list[list[float]] | None = None,
                pred_boxes: list[list[float]] | None = None) -> ImageRecord:
    """A record whose boxes default to UNIT_BOX; `preds` is a list of (class, confidence)."""
    return ImageRecord(
        image_id=image_id,
        gt_classes=np.array(gt, dtype=np.int64),
        gt_boxes=gt_boxes if gt_boxes is not None else [UNIT_BOX] * len(gt),
        pred_classes=[cls for cls, _ in preds],
        pred_boxes=pred_boxes if pred_boxes is not None else [UNIT_BOX] * len(preds),
        pred_conf=[score for _, score in preds],
    )


def hand_case() -> list[ImageRecord]:
    """3 images, classes {0, 1, 2}; at conf 0.25:

    img0: gt {0, 1}, pred {0}    (class 2 at 0.1 is below conf)  tp 1 fp 0 fn 1 -> P 1,  R 1/2, F1 2/3
    img1: gt {2},    pred {1, 2}                                  tp 1 fp 1 fn 0 -> P 1/2, R 1,  F1 2/3
    img2: gt {},     pred {}                                      both empty      -> P 1,  R 1,  F1 1
    micro: tp 2, fp 1, fn 1 -> P = R = F1 = 2/3
    per class: 0: tp 1 -> 1/1/1; 1: tp 0, fp 1, fn 1 -> 0/0/0; 2: tp 1 -> 1/1/1; macro 2/3 each
    samples: P (1 + 1/2 + 1)/3 = 5/6, R 5/6, F1 (2/3 + 2/3 + 1)/3 = 7/9
    """
    return [
        make_record("img0", [0, 1], [(0, 0.9), (0, 0.3), (2, 0.1)]),
        make_record("img1", [2], [(1, 0.5), (2, 0.8)]),
        make_record("img2", [], []),
    ]


def test_ingredient_hand_computed() -> None:
    gt, pred = ingredient_sets(hand_case(), num_classes=3, conf=0.25)
    scores = ingredient_prf(gt, pred)
    assert scores["micro"] == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3})
    assert scores["macro"] == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3})
    assert scores["samples"] == pytest.approx({"precision": 5 / 6, "recall": 5 / 6, "f1": 7 / 9})
    precision, recall, f1 = per_image_prf(gt, pred)
    np.testing.assert_allclose(f1, [2 / 3, 2 / 3, 1.0])
    per_class = per_class_prf(gt, pred)
    np.testing.assert_array_equal(per_class["support"], [1, 1, 1])
    np.testing.assert_array_equal(per_class["predicted"], [1, 1, 1])
    np.testing.assert_allclose(per_class["f1"], [1.0, 0.0, 1.0])


def test_macro_averages_over_present_classes_only() -> None:
    # A 4th class absent from gt and pred everywhere says nothing about the model: macro stays 2/3
    # (it was (2/3 * 3 + 1) / 4 = 3/4 when the absent class counted as a perfect 1).
    gt, pred = ingredient_sets(hand_case(), num_classes=4, conf=0.25)
    assert ingredient_prf(gt, pred)["macro"]["f1"] == pytest.approx(2 / 3)


def test_macro_averages_over_classes_predicted_but_absent_from_the_ground_truth() -> None:
    """A class only predicted (a false alarm on an image without it) is in macro's label set, as in scikit-learn's
    labels = gt or pred: class 3 at 0.9 on img2 of the hand case scores F1 0, so macro F1 is (1 + 0 + 1 + 0) / 4 = 1/2,
    not the 2/3 of the ground-truth classes alone."""
    records = hand_case()
    records[2] = make_record("img2", [], [(3, 0.9)])
    gt, pred = ingredient_sets(records, num_classes=4, conf=0.25)
    assert ingredient_prf(gt, pred)["macro"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5})
    np.testing.assert_allclose(per_class_prf(gt, pred)["f1"], [1.0, 0.0, 1.0, 0.0])


def test_a_model_that_predicts_nothing_scores_zero_macro_on_any_class_count() -> None:
    for num_classes in (10, 80):
        records = [make_record(f"im{k}", [k % 3], []) for k in range(6)]
        scores = ingredient_prf(*ingredient_sets(records, num_classes, conf=0.25))
        assert scores["macro"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    nothing = ingredient_prf(*ingredient_sets([make_record("empty", [], [])], 5, conf=0.25))
    assert np.isnan(nothing["macro"]["f1"])  # no class present: undefined (null in JSON)


def test_empty_set_rule() -> None:
    # tp fp fn: both empty -> 1/1/1; missed (no pred) -> 0/0/0; false alarm (no gt) -> 0/0/0.
    precision, recall, f1 = prf_from_counts(np.array([0, 0, 0]), np.array([0, 0, 2]), np.array([0, 3, 0]))
    np.testing.assert_array_equal(precision, [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(recall, [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(f1, [1.0, 0.0, 0.0])
    records = [make_record("empty", [], []), make_record("missed", [0], []), make_record("alarm", [], [(1, 0.9)])]
    gt, pred = ingredient_sets(records, num_classes=2)
    np.testing.assert_array_equal(per_image_prf(gt, pred)[2], [1.0, 0.0, 0.0])


def test_conf_threshold_counts_what_predict_keeps_and_filters() -> None:
    """A box counts at threshold t when predict(conf=t) keeps it: its float32 confidence > float32(t) (YOLO's NMS and
    RT-DETR's postprocess compare so). A confidence of exactly float32(0.87) (found once in 80,755 recorded boxes)
    counted at 0.87 before, which predict drops."""
    import torch

    tie = float(np.float32(0.87))                      # 0.8700000047683716, as a predictions file holds it
    records = [make_record("a", [0], [(0, tie)])]
    for conf, kept in ((0.869, True), (0.87, False)):
        assert bool(torch.tensor([tie], dtype=torch.float32) > conf) is kept          # what predict's NMS compares
        assert ingredient_prf(*ingredient_sets(records, 1, conf=conf))["micro"]["f1"] == float(kept)
        assert detection_prf(records, conf=conf)["tp"] == int(kept)
    assert detection_prf(records, conf=0.9) == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "tp": 0, "fp": 0, "fn": 1}
    assert f1_vs_conf(records, 1, (0.869, 0.87))["micro_f1"] == [1.0, 0.0]


def test_agrees_with_sklearn() -> None:
    from sklearn.metrics import precision_recall_fscore_support as prfs

    rng = np.random.default_rng(0)
    num_images, num_classes = 60, 6
    y_true = rng.random((num_images, num_classes)) < 0.3
    y_pred = rng.random((num_images, num_classes)) < 0.3
    y_true[:4], y_pred[2:6] = False, False            # both-empty, missed and false-alarm rows
    y_true[:, 5] = y_pred[:, 5] = False               # one class absent everywhere
    records = []
    for row in range(num_images):
        decoy = [(int(cls), 0.1) for cls in np.flatnonzero(~y_pred[row])]   # below conf: must not count
        hits = [(int(cls), float(rng.uniform(0.3, 1.0))) for cls in np.flatnonzero(y_pred[row])]
        records.append(make_record(f"im{row}", np.flatnonzero(y_true[row]).tolist(), hits + decoy))
    gt, pred = ingredient_sets(records, num_classes, conf=0.25)
    np.testing.assert_array_equal(gt, y_true)
    np.testing.assert_array_equal(pred, y_pred)
    ours = ingredient_prf(gt, pred)

    present = np.flatnonzero(y_true.any(axis=0) | y_pred.any(axis=0))  # scikit-learn's label set

    def sk(true: np.ndarray, predicted: np.ndarray, average: str | None, zero_division: float) -> tuple:
        labels = present if average == "macro" else None
        return prfs(true, predicted, average=average, zero_division=zero_division, labels=labels)[:3]

    # F1 equals zero_division=1 for every average.
    for average in ("micro", "macro", "samples"):
        assert ours[average]["f1"] == pytest.approx(sk(y_true, y_pred, average, 1.0)[2])
    assert ours["micro"]["precision"] == pytest.approx(sk(y_true, y_pred, "micro", 0.0)[0])
    assert ours["micro"]["recall"] == pytest.approx(sk(y_true, y_pred, "micro", 0.0)[1])
    # P and R: zero_division=0 except where both sides are empty (then 1). Per class: columns; per image:
    # the transposed matrices' columns (samples average = macro average of the transpose).
    for average, true, predicted in (("macro", y_true[:, present], y_pred[:, present]),
                                     ("samples", y_true.T, y_pred.T)):
        p0, r0, _ = sk(true, predicted, None, 0.0)
        p1, r1, _ = sk(true, predicted, None, 1.0)
        both_empty = ~true.any(axis=0) & ~predicted.any(axis=0)
        assert ours[average]["precision"] == pytest.approx(np.where(both_empty, p1, p0).mean())
        assert ours[average]["recall"] == pytest.approx(np.where(both_empty, r1, r0).mean())


def test_box_iou_known_values() -> None:
    boxes_a = np.array([[0, 0, 10, 10], [0, 0, 0, 0]], dtype=float)
    boxes_b = np.array([[5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 0, 0]], dtype=float)
    # [0,0,10,10] vs [5,0,15,10]: intersection 50, union 150 -> 1/3; disjoint -> 0; degenerate pairs -> 0.
    np.testing.assert_allclose(box_iou(boxes_a, boxes_b), [[1 / 3, 0, 0], [0, 0, 0]])
    assert box_iou(np.zeros((0, 4)), boxes_b).shape == (0, 3)


def greedy_match_count(iou: np.ndarray, match_iou: float) -> int:
    """Reference greedy matcher: predictions in order (highest conf first), each takes its best free GT."""
    taken: set[int] = set()
    for row in iou:
        free = [(value, col) for col, value in enumerate(row) if col not in taken and value >= match_iou]
        if free:
            taken.add(max(free)[1])
    return len(taken)


def test_hungarian_beats_greedy() -> None:
    # Class 0 everywhere. G1 = [0,10], G2 = [4,14] in x (height 10).
    # A = [1,11] (conf 0.9): IoU(A,G1) = 9/11 = 0.82, IoU(A,G2) = 7/13 = 0.54.
    # B = [-2,8] (conf 0.8): IoU(B,G1) = 8/12 = 0.67, IoU(B,G2) = 4/16 = 0.25.
    # Greedy: A takes G1, B is left with G2 (0.25 < 0.5) -> 1 TP. Optimal: A-G2, B-G1 -> 2 TP.
    gt_boxes = [[0, 0, 10, 10], [4, 0, 14, 10]]
    pred_boxes = [[1, 0, 11, 10], [-2, 0, 8, 10]]
    record = make_record("img", [0, 0], [(0, 0.9), (0, 0.8)], gt_boxes=gt_boxes, pred_boxes=pred_boxes)
    assert greedy_match_count(box_iou(record.pred_boxes, record.gt_boxes), 0.5) == 1
    assert detection_prf([record]) == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "tp": 2, "fp": 0, "fn": 0}


def test_matching_maximises_match_count_before_iou() -> None:
    # Rows A, B, C; columns G1, G2, G3; "." = IoU 0.
    #        G1    G2    G3
    #   A  0.95    .    0.50      max-IoU-sum (with or without zeroing IoU < 0.5): A-G1 + B-G2 = 1.90,
    #   B  0.50  0.95    .        2 matches; most matches: A-G3 + B-G1 + C-G2 = 1.50, 3 matches.
    #   C    .   0.50    .
    iou = np.array([[0.95, 0.0, 0.5], [0.5, 0.95, 0.0], [0.0, 0.5, 0.0]])
    rows, cols = linear_sum_assignment(iou, maximize=True)
    assert int((iou[rows, cols] >= 0.5).sum()) == 2
    pred_index, gt_index = optimal_matches(iou, np.ones_like(iou, dtype=bool), match_iou=0.5)
    assert sorted(zip(pred_index.tolist(), gt_index.tolist())) == [(0, 2), (1, 0), (2, 1)]
    # Among assignments with the most matches, the larger total IoU wins: A-G2 + B-G1 over A-G1 + B-G2.
    pred_index, gt_index = optimal_matches(np.array([[0.6, 0.9], [0.9, 0.6]]), np.ones((2, 2), bool), 0.5)
    assert sorted(zip(pred_index.tolist(), gt_index.tolist())) == [(0, 1), (1, 0)]


def test_detection_is_class_aware() -> None:
    # Same box, wrong class: one FP and one FN; a right-class prediction elsewhere is an FP too.
    record = make_record("img", [0], [(1, 0.9), (0, 0.9)], pred_boxes=[UNIT_BOX, [50, 50, 60, 60]])
    assert detection_prf([record]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "tp": 0, "fp": 2, "fn": 1}


def test_detection_sums_counts_over_images() -> None:
    # img a: 1 TP; img b: 1 FN; img c: 1 FP -> P = 1/2, R = 1/2.
    records = [make_record("a", [0], [(0, 0.9)]), make_record("b", [0], []), make_record("c", [], [(0, 0.9)])]
    assert detection_prf(records) == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "tp": 1, "fp": 1, "fn": 1}


def test_f1_vs_conf_monotone_when_all_predictions_correct() -> None:
    # Only correct classes are predicted, at increasing confidence: raising conf can only lose TPs.
    records = [make_record(f"im{k}", [0, 1], [(0, 0.1 + 0.08 * k), (1, 0.9 - 0.08 * k)]) for k in range(10)]
    curve = f1_vs_conf(records, num_classes=2)
    assert curve["conf"] == list(DEFAULT_CONF_GRID)
    for name in ("micro_f1", "samples_f1"):
        assert np.all(np.diff(curve[name]) <= 1e-12)
        assert curve[name][0] == 1.0                     # every confidence >= 0.1 > 0.05
    assert curve["best_conf_micro"] == curve["best_conf_samples"] == 0.05


def test_f1_vs_conf_best_conf_drops_false_alarms() -> None:
    # Correct class at 0.62, false alarm at 0.12: F1 = 2/3 up to 0.10, 1 from 0.15 to 0.60, 0 above.
    records = [make_record("a", [0], [(0, 0.62), (1, 0.12)])]
    curve = f1_vs_conf(records, num_classes=2)
    f1 = dict(zip(curve["conf"], curve["micro_f1"]))
    assert f1[0.1] == pytest.approx(2 / 3) and f1[0.15] == 1.0 and f1[0.6] == 1.0 and f1[0.65] == 0.0
    assert curve["best_conf_micro"] == curve["best_conf_samples"] == 0.15


def test_choose_threshold_takes_the_best_val_f1_and_breaks_ties_towards_prefer() -> None:
    """Correct class at 0.62, false alarm at exactly 0.40: micro F1 2/3 below 0.40, 1 from 0.40 (the alarm is not
    above it) to 0.61, 0 from 0.62. The best plateau's threshold nearest `prefer` wins; the default 0.25 itself,
    where F1 is 2/3, is not chosen. A model that finds nothing ties everywhere and keeps `prefer`."""
    records = [ImageRecord("a", [0], [UNIT_BOX], [0, 1], [UNIT_BOX, UNIT_BOX], [0.62, 0.40])]
    assert choose_threshold(records, 2) == {"conf": 0.4, "val_micro_f1": 1.0}
    assert choose_threshold(records, 2, prefer=0.5) == {"conf": 0.5, "val_micro_f1": 1.0}
    assert choose_threshold(records, 2, prefer=0.9) == {"conf": 0.61, "val_micro_f1": 1.0}
    assert choose_threshold(records, 2, grid=(0.1, 0.3, 0.7)) == {"conf": 0.3, "val_micro_f1": pytest.approx(2 / 3)}
    nothing = [make_record("a", [0], [])]
    assert choose_threshold(nothing, 2) == {"conf": 0.25, "val_micro_f1": 0.0}


def test_summarize_split_is_json_ready() -> None:
    summary = summarize_split(hand_case(), num_classes=3, class_names=["tomato", "egg", "carrot"])
    json.dumps(summary, allow_nan=False)
    assert summary["n_images"] == 3 and summary["conf"] == 0.25 and summary["match_iou"] == 0.5
    assert summary["ingredient"]["samples"]["f1"] == pytest.approx(7 / 9)
    assert summary["per_class"][1] == {"class_id": 1, "name": "egg", "present": True, "precision": 0.0, "recall": 0.0, "f1": 0.0,
                                       "support": 1, "predicted": 1, "tp": 0}
    assert summary["per_image"]["image_id"] == ["img0", "img1", "img2"]
    assert summary["per_image"]["f1"] == pytest.approx([2 / 3, 2 / 3, 1.0])
    # Boxes all coincide: img0 class 0 (0.9 and 0.3) -> 1 TP + 1 FP, class 1 -> FN; img1 class 2 TP, class 1 FP.
    # tp 2, fp 2, fn 1 -> P 1/2, R 2/3, F1 4/7.
    assert summary["detection"] == pytest.approx({"precision": 0.5, "recall": 2 / 3, "f1": 4 / 7,
                                                  "tp": 2, "fp": 2, "fn": 1})
    assert set(summary["f1_vs_conf"]) == {"conf", "micro_f1", "samples_f1", "best_conf_micro", "best_conf_samples"}


def test_json_round_trip() -> None:
    records = hand_case() + [ImageRecord("sized", [1], [[1.5, 2.0, 3.0, 4.25]], [], [], [], width=640, height=480)]
    items = json.loads(json.dumps(records_to_json(records)))
    assert records_to_json(records_from_json(items)) == items
    assert items[-1]["width"] == 640 and "width" not in items[0]
    restored = records_from_json(items)[0]
    assert restored.gt_boxes.shape == (2, 4) and restored.pred_conf.dtype == np.float64
    assert records_from_json(items)[2].pred_boxes.shape == (0, 4)


def test_robustness_ratio() -> None:
    assert robustness_ratio(0.4, 0.8) == pytest.approx(0.5)
    assert math.isnan(robustness_ratio(0.3, 0.0))


@pytest.mark.parametrize("build, message", [
    (lambda: ImageRecord("x", [0, 1], [UNIT_BOX], [], [], []), "gt_boxes but"),
    (lambda: ImageRecord("x", [], [], [0], [UNIT_BOX], [0.5, 0.6]), "pred_conf"),
    (lambda: ImageRecord("x", [], [], [0], [UNIT_BOX], [1.5]), "outside"),
    (lambda: ImageRecord("x", [0.5], [UNIT_BOX], [], [], []), "integers"),
    (lambda: ImageRecord("x", [[0]], [UNIT_BOX], [], [], []), "flat list of integers"),
    (lambda: ImageRecord("x", [], [], [0], [UNIT_BOX], [[0.5]]), "flat list (P,)"),
    (lambda: ImageRecord("x", [0], [[10, 0, 0, 10]], [], [], []), "x1 >= x0"),
    (lambda: ImageRecord("x", [0], [[0, 0, 10]], [], [], []), "(K, 4)"),
    (lambda: records_from_json([{"image_id": "x"}]), "missing keys"),
    (lambda: records_from_json([{**records_to_json(hand_case())[0], "scores": []}]), "unknown keys ['scores']"),
    (lambda: ingredient_sets(hand_case(), num_classes=2), "outside [0, 2)"),
    (lambda: ingredient_sets(hand_case(), num_classes=3, conf=1.5), "conf=1.5"),
    (lambda: ingredient_sets([], num_classes=3), "no image records"),
    (lambda: ingredient_sets(hand_case()[:1] * 2, num_classes=3), "duplicate image ids"),
    (lambda: detection_prf(hand_case(), match_iou=-0.1), "match_iou"),
    (lambda: f1_vs_conf(hand_case(), 3, conf_grid=[0.5, 2.0]), "conf_grid"),
    (lambda: summarize_split(hand_case(), 3, class_names=["a"]), "class_names"),
])
def test_bad_inputs_raise_value_error(build, message: str) -> None:
    with pytest.raises(ValueError) as error:
        build()
    assert message in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("conf", [0.25, 0.1])
def test_trained_model_predictions_agree_with_sklearn(trained_evaluation, conf: float) -> None:
    """micro / macro / samples P/R/F1 of a trained model's predictions file, recomputed by scikit-learn."""
    from sklearn.metrics import precision_recall_fscore_support as prfs

    records = records_from_json(json.loads(json.dumps(trained_evaluation.records)))
    gt, pred = ingredient_sets(records, 10, conf=conf)
    ours = ingredient_prf(gt, pred)
    assert ours["micro"]["f1"] > 0 and pred.sum() >= 3  # non-zero predictions
    present = np.flatnonzero(gt.any(axis=0) | pred.any(axis=0))
    for average in ("micro", "macro"):
        labels = present if average == "macro" else None
        p, r, f, _ = prfs(gt, pred, average=average, labels=labels, zero_division=0.0)
        assert (ours[average]["precision"], ours[average]["recall"], ours[average]["f1"]) == pytest.approx((p, r, f))
    # samples: every test image has ingredients (no both-empty rows), so zero_division never matters
    assert gt.any(axis=1).all()
    p, r, f, _ = prfs(gt, pred, average="samples", zero_division=0.0)
    assert (ours["samples"]["precision"], ours["samples"]["recall"], ours["samples"]["f1"]) == pytest.approx((p, r, f))


def test_the_recorded_checkpoint_rule_is_what_ultralytics_selects_best_pt_by() -> None:
    """metrics.json's `checkpoint.why` names the fitness best.pt is chosen by: Ultralytics' own, checked here."""
    import numpy as np
    from ultralytics.utils.metrics import Metric

    from exp3.session.record import CHECKPOINT_CHOICE

    metric = Metric()
    metric.p, metric.r = np.array([0.8]), np.array([0.6])
    metric.all_ap, metric.ap_class_index = np.array([[0.5] + [0.3] * 9]), np.array([0])
    assert metric.map50 == 0.5 and metric.map == pytest.approx(0.32)
    assert metric.fitness() == pytest.approx(metric.map)  # mAP50-95 alone, not 0.1 mAP50 + 0.9 mAP50-95
    assert "fitness (mAP50-95 in Ultralytics 8.4" in CHECKPOINT_CHOICE
