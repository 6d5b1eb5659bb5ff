"""exp3.mapstats: mAP recomputed from per-image stats against Ultralytics' own ap_per_class."""

from __future__ import annotations

import numpy as np
import pytest
from ultralytics.utils.metrics import ap_per_class

from exp3.mapstats import MapStats, bootstrap_map, mean_ap
from exp3.stats import bootstrap_indices


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
    with pytest.raises(ValueError, match="not in the resampled image list"):
        bootstrap_map(forward, ids[1:], indices[:, :11] % 11)
    assert MapStats.load(forward.save(tmp_path / "s.npz")).image_ids == forward.image_ids


def test_kept_draws_are_reused_only_for_the_same_resampling(tmp_path) -> None:
    rng = np.random.default_rng(4)
    stats = MapStats.from_images([_image(rng, i, tied=False) for i in range(15)]).with_draws(40, seed=3)
    loaded = MapStats.load(stats.save(tmp_path / "s.npz"))
    ids = sorted(stats.image_ids)
    np.testing.assert_array_equal(loaded.stored_draws(40, 3), bootstrap_map(stats, ids, bootstrap_indices(15, 40, 3)))
    assert loaded.stored_draws(40, 0) is None and loaded.stored_draws(50, 3) is None
    assert MapStats.load(MapStats.from_images([_image(rng, 0, tied=False)]).save(tmp_path / "t.npz")).draws is None
