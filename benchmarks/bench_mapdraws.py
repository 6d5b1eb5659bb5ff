"""Bootstrap mAP draws: the per-draw loop (mean_ap per row of weights) vs exp3.evaluate.mapstats.bootstrap_map.

    python benchmarks/bench_mapdraws.py [--images 200] [--per-image 300] [--draws 1000] [--repeats 3]

A synthetic MapStats shaped like RT-DETR's validator output (300 queries per image kept at conf
0.001: a few matched predictions per image, the rest low-confidence false positives; 10 classes,
about 4 targets per image). Times `--draws` draws with a copy of the former per-draw loop and with
today's `bootstrap_map` (median of `--repeats`; wall and process CPU time, the box may be shared),
checks that they agree to 1e-12, prints JSON.
Target: <= 1 s for 1,000 draws at 200 x 300 predictions.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from exp3.evaluate.mapstats import AP_X, EPS, IOU_THRESHOLDS, MapStats, _Sorted, bootstrap_map
from exp3.evaluate.stats import bootstrap_indices


def synthetic_stats(n_images: int, per_image: int, n_classes: int = 10, seed: int = 0) -> MapStats:
    """Validator-like stats: each target matched at most once, by one prediction, at IoU 0.50 up to some threshold."""
    rng = np.random.default_rng(seed)
    images = []
    for index in range(n_images):
        targets = rng.integers(0, n_classes, rng.poisson(4))
        pred_cls = rng.integers(0, n_classes, per_image)
        conf = rng.beta(0.3, 12.0, per_image).clip(0.001, 1.0)        # most queries barely above 0.001
        tp = np.zeros((per_image, IOU_THRESHOLDS), bool)
        for target in targets:
            free = np.flatnonzero((pred_cls == target) & ~tp[:, 0])
            if len(free) and rng.random() < 0.8:
                hit = free[0]
                tp[hit, :rng.integers(1, IOU_THRESHOLDS + 1)] = True
                conf[hit] = rng.uniform(0.2, 0.95)
            for duplicate in free[1:1 + rng.integers(0, 3)]:             # unmatched duplicates of a detection
                conf[duplicate] = rng.uniform(0.05, 0.6)
        images.append({"image_id": f"im{index:04d}", "tp": tp, "conf": conf.astype(np.float32),
                       "pred_cls": pred_cls.astype(np.float32), "target_cls": targets.astype(np.float32)})
    return MapStats.from_images(images)


def former_mean_ap(prepared: _Sorted, w_image: np.ndarray) -> tuple[float, float]:
    """The former weighted mean_ap of one draw: `ap_per_class`'s curve, each image counted `w_image[i]` times
    (also tests/test_mapstats.py's reference)."""
    stats, classes = prepared.stats, prepared.classes
    n_labels = np.bincount(np.searchsorted(classes, stats.target_cls), weights=w_image[stats.target_image],
                           minlength=len(classes))
    aps = []
    for index, c in enumerate(classes):
        if n_labels[index] == 0:
            continue
        start, stop = prepared.bounds[float(c)]
        w = w_image[prepared.pred_image[start:stop]]
        keep = w > 0
        if not keep.any():
            aps.append(np.zeros(IOU_THRESHOLDS))
            continue
        tp, w = prepared.tp[start:stop][keep], w[keep][:, None]
        tpc = np.cumsum(tp * w, axis=0)
        fpc = np.cumsum((1.0 - tp) * w, axis=0)
        recall = tpc / (n_labels[index] + EPS)
        precision = tpc / (tpc + fpc)
        mrec = np.concatenate([np.zeros((1, IOU_THRESHOLDS)), recall, recall[-1:], np.ones((1, IOU_THRESHOLDS))])
        mpre = np.concatenate([np.ones((1, IOU_THRESHOLDS)), precision, np.zeros((2, IOU_THRESHOLDS))])
        mpre = np.flip(np.maximum.accumulate(np.flip(mpre, 0), axis=0), 0)
        offsets = (np.ceil(mrec.max()) + 1.0) * np.arange(IOU_THRESHOLDS)
        queries = (AP_X[None, :] + offsets[:, None]).ravel()
        curve = np.interp(queries, (mrec + offsets).T.ravel(), mpre.T.ravel()).reshape(IOU_THRESHOLDS, -1)
        aps.append(np.trapezoid(curve, AP_X, axis=1))
    if not aps:
        return 0.0, 0.0
    ap = np.vstack(aps)
    return float(ap[:, 0].mean()), float(ap.mean())


def former_bootstrap_map(stats: MapStats, image_ids, indices: np.ndarray) -> np.ndarray:
    """exp3.evaluate.mapstats.bootstrap_map before issue 25: one weighted mean_ap per draw (its former loop)."""
    indices = np.asarray(indices)
    counts = np.zeros((indices.shape[0], len(image_ids)), dtype=np.int64)
    np.add.at(counts, (np.arange(indices.shape[0])[:, None], indices), 1)
    prepared = _Sorted(stats)
    weights = stats.weights_for(image_ids, counts).astype(np.float64)
    return np.array([former_mean_ap(prepared, row) for row in weights]).reshape(-1, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--per-image", type=int, default=300)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-former", action="store_true", help="time only today's bootstrap_map")
    args = parser.parse_args()

    stats = synthetic_stats(args.images, args.per_image)
    ids = tuple(sorted(stats.image_ids))
    indices = bootstrap_indices(len(ids), args.draws, seed=0)

    def timed(function) -> tuple[float, float, np.ndarray]:
        start, cpu = time.perf_counter(), time.process_time()
        draws = function(stats, ids, indices)
        return time.perf_counter() - start, time.process_time() - cpu, draws

    arms = {"new": bootstrap_map} if args.skip_former else {"former": former_bootstrap_map, "new": bootstrap_map}
    seconds: dict[str, list[float]] = {name: [] for name in arms}
    cpu_seconds: dict[str, list[float]] = {name: [] for name in arms}
    results: dict[str, np.ndarray] = {}
    for _ in range(args.repeats):
        for name, function in arms.items():
            wall, cpu, results[name] = timed(function)
            seconds[name].append(wall)
            cpu_seconds[name].append(cpu)
    report = {
        "predictions": len(stats.conf), "tp_rows": int(stats.tp[:, 0].sum()), "targets": len(stats.target_cls),
        "draws": args.draws, **{f"{name}_s": [round(s, 3) for s in values] for name, values in seconds.items()},
        **{f"{name}_median_s": round(statistics.median(values), 3) for name, values in seconds.items()},
        **{f"{name}_cpu_median_s": round(statistics.median(values), 3) for name, values in cpu_seconds.items()},
        "mean_map50_95": round(float(results["new"][:, 1].mean()), 4),
    }
    if "former" in results:
        difference = float(np.abs(results["former"] - results["new"]).max())
        report["ratio"] = round(statistics.median(seconds["former"]) / statistics.median(seconds["new"]), 1)
        report["max_abs_difference"] = difference
        if difference > 1e-12:
            print(json.dumps(report))
            raise SystemExit(f"error: draws differ by {difference:g}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
