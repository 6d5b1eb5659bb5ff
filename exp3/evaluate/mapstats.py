"""Per-image matching statistics of Ultralytics' validator, and mAP recomputed from them.

mAP has no per-image decomposition, so its bootstrap intervals need the validator's own per-image statistics
(each prediction's confidence, class and TP flags at IoU 0.50:0.95, each image's ground-truth classes), captured
by exp3.evaluate.evaluation and kept as `map_stats_<split>.npz` (docs/report.md, "Intervals and p-values").

`mean_ap(stats)` recomputes (mAP50, mAP50-95) exactly as `ultralytics.utils.metrics.ap_per_class` does (same
confidence sort, per-class cumulative TP/FP, sentinels, precision envelope, 101-point interpolation, trapezoid).
`bootstrap_map` weights each image by how often a bootstrap resample draws it: every prediction and target of an
image counts that many times, the mAP of the resampled image set, computed without materialising it. Copies of one
prediction are merged into one point of the PR curve; copies share a confidence and a TP flag, so without tied
confidences the result equals `ap_per_class` on literally duplicated arrays (with ties, Ultralytics' own value
depends on its sort's tie order).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from exp3.evaluate.stats import bootstrap_indices, multiplicities
from exp3.fileio import atomic_write_bytes

IOU_THRESHOLDS = 10
"""Ultralytics' IoU thresholds 0.50, 0.55, ..., 0.95 (columns of `tp`)."""
AP_X = np.linspace(0, 1, 101)
"""COCO's 101 recall points (Ultralytics' `_AP_X`)."""
EPS = 1e-16
"""Ultralytics' `ap_per_class` eps in recall = tpc / (n_l + eps)."""


BOOTSTRAP_RESAMPLES = 1000
"""Bootstrap draws of mAP per split. Each draw is the mAP of a resampled image set, so a session computes
its draws once, right after its evaluation, and keeps them in `map_stats_<split>.npz`; the report only
differences them (BENCHMARKS.md has the cost per 1,000 draws)."""
BOOTSTRAP_SEED = 0
"""Seed of the index matrix (exp3.evaluate.stats.bootstrap_indices over the sorted image ids): the report's default
seed, so every session of a split is resampled identically and the draws pair."""

_BLOCK_VALUES = 1 << 22
"""Bound on (draws x curve points) weights held at once by `_Sorted.resampled_maps`."""
_CHUNK_VALUES = 1 << 16
"""Bound on (draws x points x 10) values per array in `_class_ap`: cache-sized chunks run faster."""


@dataclass(frozen=True)
class MapStats:
    """The validator's per-image statistics of one split, images in the validator's order.

    Predictions: `tp` (P, 10) bool, `conf` (P,), `pred_cls` (P,), `pred_image` (P,) index into
    `image_ids`. Targets: `target_cls` (G,), `target_image` (G,).
    """

    image_ids: tuple[str, ...]
    tp: np.ndarray
    conf: np.ndarray
    pred_cls: np.ndarray
    pred_image: np.ndarray
    target_cls: np.ndarray
    target_image: np.ndarray
    draws: np.ndarray | None = None
    """(B, 2) bootstrap mAP50 / mAP50-95 (`with_draws`), or None."""
    draws_seed: int | None = None

    def with_draws(self, n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> "MapStats":
        """A copy holding the bootstrap draws over the sorted image ids (`stats.bootstrap_indices(N, B, seed)`)."""
        ids = tuple(sorted(self.image_ids))
        return replace(self, draws=bootstrap_map(self, ids, bootstrap_indices(len(ids), n_resamples, seed)),
                       draws_seed=seed)

    def stored_draws(self, n_resamples: int, seed: int) -> np.ndarray | None:
        """The kept draws when they were made with `n_resamples` and `seed`, else None."""
        if self.draws is None or self.draws_seed != seed or self.draws.shape != (n_resamples, 2):
            return None
        return self.draws

    @classmethod
    def from_images(cls, images: list[dict[str, Any]]) -> "MapStats":
        """From one dict per image: image_id, tp (P, 10), conf (P,), pred_cls (P,), target_cls (G,)."""
        def cat(key: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
            parts = [np.asarray(image[key]).reshape(-1, *shape[1:]) for image in images]
            return np.concatenate(parts).astype(dtype) if parts else np.zeros(shape, dtype)

        return cls(
            image_ids=tuple(str(image["image_id"]) for image in images),
            tp=cat("tp", (0, IOU_THRESHOLDS), bool),
            conf=cat("conf", (0,), np.float32),
            pred_cls=cat("pred_cls", (0,), np.float32),
            pred_image=np.repeat(np.arange(len(images)), [len(image["conf"]) for image in images]),
            target_cls=cat("target_cls", (0,), np.float32),
            target_image=np.repeat(np.arange(len(images)), [len(image["target_cls"]) for image in images]),
        )

    def save(self, path: str | Path) -> Path:
        """Write as a compressed .npz, atomically."""
        buffer = io.BytesIO()
        extra = {} if self.draws is None else {"draws": self.draws, "draws_seed": np.array(self.draws_seed)}
        np.savez_compressed(buffer, image_ids=np.array(self.image_ids, dtype=str), tp=self.tp, conf=self.conf,
                            pred_cls=self.pred_cls, pred_image=self.pred_image, target_cls=self.target_cls,
                            target_image=self.target_image, **extra)
        return atomic_write_bytes(path, buffer.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> "MapStats":
        with np.load(path, allow_pickle=False) as data:
            return cls(image_ids=tuple(str(v) for v in data["image_ids"]), tp=data["tp"], conf=data["conf"],
                       pred_cls=data["pred_cls"], pred_image=data["pred_image"], target_cls=data["target_cls"],
                       target_image=data["target_image"], draws=data["draws"] if "draws" in data else None,
                       draws_seed=int(data["draws_seed"]) if "draws_seed" in data else None)

    def weights_for(self, image_ids: list[str] | tuple[str, ...], counts: np.ndarray) -> np.ndarray:
        """Per-image weights in this object's order from `counts` given in the order of `image_ids`."""
        position = {image_id: index for index, image_id in enumerate(image_ids)}
        return np.asarray(counts)[..., [position[image_id] for image_id in self.image_ids]]


class _Sorted:
    """Predictions in Ultralytics' order (argsort of -conf), grouped by class, ready for weighted AP."""

    def __init__(self, stats: MapStats) -> None:
        order = np.argsort(-stats.conf)                               # exactly ap_per_class's sort
        order = order[np.argsort(stats.pred_cls[order], kind="stable")]  # per class, conf order kept
        self.classes = np.unique(stats.target_cls)
        self.tp = stats.tp[order].astype(np.float64)
        self.pred_cls = stats.pred_cls[order]
        self.pred_image = stats.pred_image[order]
        self.stats = stats
        self.bounds = {float(c): (int(np.searchsorted(self.pred_cls, c, "left")),
                                  int(np.searchsorted(self.pred_cls, c, "right"))) for c in self.classes}

    def resampled_maps(self, weights: np.ndarray) -> np.ndarray:
        """(B, 2) mAP50 / mAP50-95 of each row of `weights` (B, N), many draws per numpy call.

        Same numbers as a weighted AP per row (the tests' loop), from a shorter curve holding every point np.interp
        uses. (1) A run of predictions that are false positives at all ten IoU thresholds (consecutive
        in a class's order) is one point whose FP weight is the run's total: inside the run recall is
        constant and precision only falls, so the envelope and np.interp see only its last point (the
        point before the run has the same recall and a higher precision). Weights are counts, so the
        sums are exact and that point is bit-identical. A class keeps about two points per TP row
        instead of thousands of low-confidence FPs. (2) A point of weight 0 in a draw is kept, not
        dropped: it repeats the previous (recall, precision), a duplicate that changes neither the
        envelope nor np.interp; leading ones (0/0) get precision 1, a duplicate of the (0, 1) sentinel.
        (3) The points' weights in all draws are one sparse product (`members` counts each point's
        predictions per image); each class's curves are then built for a chunk of draws at once.
        """
        from scipy import sparse  # here, not at the top: importing exp3.evaluate.mapstats stays light

        weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
        stats = self.stats
        n_draws, n_images = weights.shape
        any_tp = self.tp.any(axis=1)
        new_point = np.ones(len(any_tp), dtype=bool)                   # a TP row and the row after it start points
        new_point[1:] = any_tp[1:] | any_tp[:-1] | (self.pred_cls[1:] != self.pred_cls[:-1])
        point = np.cumsum(new_point) - 1
        n_points = int(new_point.sum())
        members = sparse.csr_array((np.ones(len(point)), (point, self.pred_image)), shape=(n_points, n_images))
        point_tp = self.tp[new_point].T                                # (10, L): a TP row, or an all-FP run
        targets = sparse.csr_array((np.ones(len(stats.target_cls)),
                                    (np.searchsorted(self.classes, stats.target_cls), stats.target_image)),
                                   shape=(len(self.classes), n_images))
        ap = np.zeros((n_draws, len(self.classes), IOU_THRESHOLDS))
        n_labels = np.zeros((n_draws, len(self.classes)))
        block = max(1, _BLOCK_VALUES // max(n_points, 1))
        for first in range(0, n_draws, block):
            rows = slice(first, first + block)
            n_labels[rows] = (targets @ weights[rows].T).T             # exact: sums of counts
            w = np.ascontiguousarray((members @ weights[rows].T).T)   # (b, L) weight of each point per draw
            for index, c in enumerate(self.classes):
                start, stop = self.bounds[float(c)]
                if start < stop:
                    span = slice(point[start], point[stop - 1] + 1)
                    ap[rows, index] = _class_ap(w[:, span], np.ascontiguousarray(point_tp[:, span]),
                                                n_labels[rows, index])
        present = n_labels > 0                                         # absent classes leave the mean
        out = np.zeros((n_draws, 2))
        for row in range(n_draws):
            if present[row].any():
                draw = ap[row, present[row]]                           # (C', 10) as mean_ap stacks it
                out[row] = draw[:, 0].mean(), draw.mean()
        return out


def _class_ap(weights: np.ndarray, point_tp: np.ndarray, n_labels: np.ndarray) -> np.ndarray:
    """(B, 10) AP of one class per draw: `weights` (B, L) of its points, `point_tp` (10, L), `n_labels` (B,)."""
    ap = np.zeros((len(weights), IOU_THRESHOLDS))
    width = weights.shape[1] + 3                                       # mean_ap's curve: sentinels around the points
    columns = np.arange(IOU_THRESHOLDS)[:, None]
    queries: dict[float, np.ndarray] = {}
    chunk = max(1, _CHUNK_VALUES // (width * IOU_THRESHOLDS))
    for first in range(0, len(weights), chunk):
        rows = slice(first, first + chunk)
        w = weights[rows]
        b = len(w)
        seen = np.cumsum(w, axis=1)[:, None, :]                        # tpc + fpc, exactly
        tpc = np.cumsum(point_tp * w[:, None, :], axis=2)              # (b, 10, L)
        recall = tpc / (n_labels[rows, None, None] + EPS)
        precision = tpc / np.where(seen > 0, seen, 1.0) + (seen == 0)  # leading weight 0: (0, 1) again
        # mean_ap's mrec / mpre (envelope) per IoU column, shifted by j * (ceil(max mrec) + 1)
        steps = np.ceil(np.maximum(recall[:, :, -1].max(axis=1), 1.0)) + 1.0
        offsets = steps[:, None, None] * columns
        xp = np.empty((b, IOU_THRESHOLDS, width))
        xp[:, :, :1] = offsets
        xp[:, :, 1:-2] = recall + offsets
        xp[:, :, -2:-1] = recall[:, :, -1:] + offsets
        xp[:, :, -1:] = 1.0 + offsets
        fp = np.zeros((b, IOU_THRESHOLDS, width))
        fp[:, :, 0] = 1.0
        fp[:, :, 1:-2] = np.maximum.accumulate(precision[:, :, ::-1], axis=2)[:, :, ::-1]
        curve = np.empty((b, IOU_THRESHOLDS * len(AP_X)))
        for row, step in enumerate(steps.tolist()):
            if step not in queries:
                queries[step] = (AP_X[None, :] + step * columns).ravel()
            curve[row] = np.interp(queries[step], xp[row].ravel(), fp[row].ravel())
        block = np.trapezoid(curve.reshape(b, IOU_THRESHOLDS, -1), AP_X, axis=-1)
        block[seen[:, 0, -1] == 0] = 0.0                               # no weighted prediction: AP 0
        ap[rows] = block
    return ap


def mean_ap(stats: MapStats) -> tuple[float, float]:
    """(mAP50, mAP50-95) of `stats`, each image counted once: the one draw of weight 1. See module docstring."""
    return tuple(float(v) for v in _Sorted(stats).resampled_maps(np.ones((1, len(stats.image_ids))))[0])


def bootstrap_map(stats: MapStats, image_ids: list[str] | tuple[str, ...], indices: np.ndarray) -> np.ndarray:
    """(B, 2) mAP50 / mAP50-95 of each resample; `indices` (B, N) index `image_ids`
    (exp3.evaluate.stats.bootstrap_indices)."""
    weights = stats.weights_for(image_ids, multiplicities(np.asarray(indices), len(image_ids)))
    return _Sorted(stats).resampled_maps(weights)


def common_image_ids(runs: list[MapStats]) -> tuple[str, ...] | None:
    """The sorted image ids when every run holds the same images (pairing is possible), else None."""
    sets = {frozenset(stats.image_ids) for stats in runs}
    return tuple(sorted(next(iter(sets)))) if len(sets) == 1 and runs else None
