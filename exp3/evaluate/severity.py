"""The headline metrics' vocabulary (`METRICS`), and mPC and rPC: the point values a session writes into its
metrics.json (`severity.summary`), defined in docs/report.md, "Occlusion severity" (docs/references.md section 1).

It runs in every session process (exp3.session.record `severity_block`), so it imports only numpy and exp3.schema;
the curves, the intervals, the paired tests vs S1 and the crossings are exp3/report/severity.py's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from exp3.schema import SeveritySummary, SplitMetrics, SplitView
from exp3.splits import CLEAN_SPLIT


@dataclass(frozen=True)
class Metric:
    """One headline metric, named once: every table, chart and sentence of the report takes it from here.

    `kind`: `count` (micro F1 of per-image (tp, fp, fn) summed over images), `mean` (the mean of a per-image score)
    or `map` (the validator's mAP: no per-image decomposition; intervals from exp3.evaluate.mapstats). `path`: its
    attribute path inside a split entry of metrics.json (`exp3.schema.SplitMetrics`); `columns`: the per-image
    columns of the report's scores behind it (exp3.report.draws.image_scores); `short`: its header in report.md's
    split tables.
    """

    key: str
    label: str
    kind: str
    path: tuple[str, ...]
    columns: tuple[str, ...] = ()
    short: str = ""


METRICS: dict[str, Metric] = {metric.key: metric for metric in (
    Metric("ingredient_micro_f1", "ingredient micro F1", "count", ("ingredient", "micro", "f1"),
           ("ingredient_tp", "ingredient_fp", "ingredient_fn"), "F1 micro"),
    Metric("ingredient_samples_f1", "ingredient samples F1", "mean", ("ingredient", "samples", "f1"),
           ("ingredient_f1",), "F1 samples"),
    Metric("detection_f1", "detection F1", "count", ("detection", "f1"),
           ("detection_tp", "detection_fp", "detection_fn"), "det F1"),
    Metric("map50", "mAP50", "map", ("map50",), short="mAP50"),
    Metric("map50_95", "mAP50-95", "map", ("map50_95",), short="mAP50-95"),
)}
"""The headline metrics, in the report's order (the keys of metrics.json's `severity.summary.mPC` / `rPC`)."""


def split_value(split: SplitMetrics | SplitView | None, metric: str) -> float | None:
    """The value of `metric` in one split entry: the session's `SplitMetrics` or a reader's `SplitView`;
    None when the split or the value is absent."""
    value: Any = split
    for key in METRICS[metric].path:
        if value is None:
            return None
        value = getattr(value, key)
    return value


def mpc_summary(splits: Mapping[str, SplitMetrics | SplitView], severity_splits: Sequence[str]) -> SeveritySummary:
    """Point mPC / rPC of every `METRICS` entry over `splits` (metrics.json's, by split name; None where
    undefined). A session passes its typed `SplitMetrics`; tests may pass the lenient `SplitView`."""
    mpc: dict[str, float | None] = {}
    rpc: dict[str, float | None] = {}
    for metric in METRICS:
        values = [split_value(splits.get(split), metric) for split in severity_splits]
        mean = float(np.mean(values)) if values and all(v is not None for v in values) else None
        clean = split_value(splits.get(CLEAN_SPLIT), metric)
        mpc[metric] = None if mean is None else round(mean, 6)
        rpc[metric] = None if mean is None or not clean else round(mean / clean, 6)
    return SeveritySummary(levels=list(severity_splits), mPC=mpc, rPC=rpc,
                           definition="mPC = mean over severity levels; rPC = mPC / test_clean")
