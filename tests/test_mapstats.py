"""exp3.evaluate.mapstats: mAP recomputed from per-image stats against Ultralytics' own ap_per_class."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from ultralytics.utils.metrics import ap_per_class

from exp3.evaluate import mapstats
from exp3.evaluate.mapstats import MapStats, _Sorted, bootstrap_map, mean_ap
from exp3.evaluate.stats import bootstrap_indices

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_mapdraws import former_bootstrap_map, former_mean_ap  # noqa: E402  the reference: the former per-draw loop


def _image(rng: np.random.Generator, index: int, tied: bool) -> dict:
    """One image of realistic validator stats: each target matched at most once, TP at IoU j implies TP below j."""
    targets = rng.integers(0, 6, rng.integers(0, 5))
    n_pred = int(rng.integers(0, 30))
    pred_cls = rng.integers(0, 6, n_pred)
    tp = np.zeros((n_pred, 10), bool)
    for target in targets:
        free = np.flatnonzero((pred_cls == target) & ~tp[:, 0])
        if len(free) and rng.random() < 0.7:
            tp[free[0], :rng.integers(1, 11)] = True
    conf = rng.random(n_pred)
    return {"image_id": f"im{index:03d}", "tp": tp, "conf": (np.round(conf, 1) if tied else conf).astype(np.float32),
            "pred_cls": pred_cls.astype(np.float32), "target_cls": targets.astype(np.float32)}


def _ultralytics_map(stats: MapStats) -> tuple[float, float]:
    ap = ap_per_class(stats.tp, stats.conf, stats.pred_cls, stats.target_cls)[5]
    return float(ap[:, 0].mean()), float(ap.mean())


@pytest.mark.parametrize("tied", [False, True])
def test_mean_ap_equals_ultralytics_ap_per_class(tied: bool) -> None:
    rng = np.random.default_rng(1)
    for _ in range(60):
        stats = MapStats.from_images([_image(rng, i, tied) for i in range(int(rng.integers(1, 50)))])
        assert mean_ap(stats) == former_mean_ap(_Sorted(stats), np.ones(len(stats.image_ids)))  # bit-identical
        if len(stats.target_cls):
            assert mean_ap(stats) == pytest.approx(_ultralytics_map(stats), abs=1e-12)


def test_weights_equal_literally_resampled_images() -> None:
    """Weights = how often a bootstrap draws each image: the mAP of the duplicated image set."""
    rng = np.random.default_rng(2)
    for _ in range(40):
        images = [_image(rng, i, tied=False) for i in range(int(rng.integers(2, 40)))]
        stats = MapStats.from_images(images)
        indices = bootstrap_indices(len(images), n_resamples=3, seed=int(rng.integers(1000)))
        draws = bootstrap_map(stats, list(stats.image_ids), indices)
        for row, draw in zip(indices, draws):
            copy = MapStats.from_images([{**images[i], "image_id": f"copy{k}"} for k, i in enumerate(row)])
            if len(copy.target_cls):
                assert tuple(draw) == pytest.approx(_ultralytics_map(copy), abs=1e-12)


def test_pairing_follows_image_ids_not_file_order(tmp_path) -> None:
    rng = np.random.default_rng(3)
    images = [_image(rng, i, tied=False) for i in range(12)]
    forward, backward = MapStats.from_images(images), MapStats.from_images(images[::-1])
    ids = sorted(forward.image_ids)
    indices = bootstrap_indices(len(ids), n_resamples=5, seed=0)
    np.testing.assert_allclose(bootstrap_map(forward, ids, indices), bootstrap_map(backward, ids, indices))
    assert MapStats.load(forward.save(tmp_path / "s.npz")).image_ids == forward.image_ids


def test_kept_draws_are_reused_only_for_the_same_resampling(tmp_path) -> None:
    rng = np.random.default_rng(4)
    stats = MapStats.from_images([_image(rng, i, tied=False) for i in range(15)]).with_draws(40, seed=3)
    loaded = MapStats.load(stats.save(tmp_path / "s.npz"))
    ids = sorted(stats.image_ids)
    np.testing.assert_array_equal(loaded.stored_draws(40, 3), bootstrap_map(stats, ids, bootstrap_indices(15, 40, 3)))
    assert loaded.stored_draws(40, 0) is None and loaded.stored_draws(50, 3) is None
    assert MapStats.load(MapStats.from_images([_image(rng, 0, tied=False)]).save(tmp_path / "t.npz")).draws is None


RARE, PREDICTED_ELSEWHERE, NEVER_PREDICTED, NEVER_A_TARGET = 4.0, 5.0, 6.0, 7.0


def _detector_image(rng: np.random.Generator, index: int) -> dict:
    """RT-DETR-like validator stats of one image: dozens of low-confidence all-FP predictions, each target
    matched at most once up to some IoU threshold, tied confidences. Class RARE has targets in image 3 only;
    PREDICTED_ELSEWHERE is predicted only in image 7 and a target only in images 1 and 2; NEVER_PREDICTED is
    never predicted; NEVER_A_TARGET is never a target."""
    targets = list(rng.integers(0, 4, rng.integers(0, 6))) + [RARE] * (index == 3) + \
        [PREDICTED_ELSEWHERE] * (index in (1, 2)) + [NEVER_PREDICTED] * (index % 5 == 0)
    n_pred = int(rng.integers(20, 90))
    pred_cls = rng.choice([0.0, 1.0, 2.0, 3.0, RARE, NEVER_A_TARGET], n_pred)
    pred_cls[:3] = PREDICTED_ELSEWHERE if index == 7 else pred_cls[:3]
    conf = rng.beta(0.3, 12.0, n_pred).clip(0.001, 1.0)
    tp = np.zeros((n_pred, 10), bool)
    for target in targets:
        free = np.flatnonzero((pred_cls == target) & ~tp[:, 0])
        if len(free) and rng.random() < 0.75:
            tp[free[0], :rng.integers(1, 11)] = True                 # TP at 0.50 up to some threshold only
            conf[free[0]] = rng.uniform(0.05, 0.95)
    conf = np.where(rng.random(n_pred) < 0.3, np.round(conf, 2), conf)  # ties, within and across images
    return {"image_id": f"im{index:03d}", "tp": tp, "conf": conf.astype(np.float32),
            "pred_cls": pred_cls.astype(np.float32), "target_cls": np.array(targets, np.float32)}


@pytest.mark.parametrize("block_values, chunk_values", [(None, None), (1, 1), (3000, 5000)])
def test_bootstrap_draws_equal_the_former_per_draw_mean_ap(block_values, chunk_values, monkeypatch) -> None:
    """Collapsed FP runs, kept zero-weight points and draws in blocks give the per-draw loop's numbers."""
    if block_values is not None:                                      # 1: one draw per block and per chunk
        monkeypatch.setattr(mapstats, "_BLOCK_VALUES", block_values)
        monkeypatch.setattr(mapstats, "_CHUNK_VALUES", chunk_values)
    for seed in range(3):
        rng = np.random.default_rng(100 + seed)
        stats = MapStats.from_images([_detector_image(rng, i) for i in range(40)][::-1])
        ids = sorted(stats.image_ids)
        indices = bootstrap_indices(len(ids), 150, seed=seed)
        counts = np.stack([np.bincount(row, minlength=len(ids)) for row in indices])
        weights = stats.weights_for(ids, counts)
        # the fixture covers the cases the collapsed curve must handle
        assert (counts == 0).any(axis=1).all() and (counts == 1).any() and (counts >= 2).any(axis=1).all()
        assert (~stats.tp.any(axis=1)).mean() > 0.9 and (stats.tp[:, 0] & ~stats.tp[:, -1]).any()
        assert stats.tp[:, -1].any() and len(np.unique(stats.conf)) < len(stats.conf)

        def drawn(images: np.ndarray) -> np.ndarray:
            """Per draw: whether any of `images` (indices into stats.image_ids) is drawn."""
            return (weights[:, np.unique(images)] > 0).any(axis=1)

        rare = drawn(stats.target_image[stats.target_cls == RARE])
        assert rare.any() and not rare.all()                          # RARE absent from some resamples
        labelled = drawn(stats.target_image[stats.target_cls == PREDICTED_ELSEWHERE])
        predicted = drawn(stats.pred_image[stats.pred_cls == PREDICTED_ELSEWHERE])
        assert (labelled & ~predicted).any() and (labelled & predicted).any()
        assert NEVER_PREDICTED not in stats.pred_cls and NEVER_A_TARGET not in stats.target_cls

        expected = former_bootstrap_map(stats, ids, indices)
        draws = bootstrap_map(stats, ids, indices)
        np.testing.assert_allclose(draws, expected, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(bootstrap_map(stats, ids, indices), draws)  # same seed, same numbers


def test_bootstrap_draws_edge_cases_equal_the_former_per_draw_mean_ap() -> None:
    """TPs outnumbering targets (recall > 1: a wider column shift), one image, an image without predictions."""
    rng = np.random.default_rng(7)
    images = [_detector_image(rng, i) for i in range(12)]
    tp, pred_cls = images[4]["tp"].copy(), images[4]["pred_cls"].copy()
    tp[:3], pred_cls[:3] = True, RARE                                  # three RARE TPs, RARE's one target in image 3
    images[4] = {**images[4], "tp": tp, "pred_cls": pred_cls, "target_cls": np.zeros(0, np.float32)}
    images[5] = {**images[5], "tp": np.zeros((0, 10), bool), "conf": np.zeros(0, np.float32),
                 "pred_cls": np.zeros(0, np.float32)}
    for case, stats in enumerate([MapStats.from_images(images), MapStats.from_images(images[:1]),
                                  MapStats.from_images(images[5:6])]):
        ids = sorted(stats.image_ids)
        indices = bootstrap_indices(len(ids), 60, seed=1)
        if case == 0:
            weights = stats.weights_for(ids, np.stack([np.bincount(row, minlength=len(ids)) for row in indices]))
            assert any((weights[:, stats.pred_image[(stats.pred_cls == c) & stats.tp[:, 0]]].sum(axis=1) >
                        weights[:, stats.target_image[stats.target_cls == c]].sum(axis=1)).any()
                       for c in np.unique(stats.target_cls))
        np.testing.assert_allclose(bootstrap_map(stats, ids, indices), former_bootstrap_map(stats, ids, indices),
                                   rtol=0, atol=1e-12)
