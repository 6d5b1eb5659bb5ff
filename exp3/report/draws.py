"""The report's one resampling layer (`ReportData`): what every interval and test of the report is drawn from, read
once (docs/layout.md, `exp3/report/`; docs/report.md, "Intervals and p-values")."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from exp3.evaluate import stats
from exp3.evaluate.mapstats import BOOTSTRAP_RESAMPLES, MapStats, common_image_ids, mean_ap
from exp3.evaluate.metrics import (
    DEFAULT_MATCH_IOU,
    ImageRecord,
    above,
    ingredient_sets,
    matched_gt,
    prf_from_counts,
    records_from_json,
)
from exp3.evaluate.severity import METRICS, split_value
from exp3.fileio import read_json
from exp3.report.runs import SessionRun, as_number, threshold_conf
from exp3.schema import MetricsView
from exp3.session.layout import SessionPaths, SessionState
from exp3.sessions import SESSION_SUFFIXES
from exp3.splits import severity_level

MISSING, UNPAIRED = "missing", "unpaired"
"""`Aligned.reason` of a refusal: a side has no per-image values / the sides hold other image ids."""


def image_scores(records: list[ImageRecord], num_classes: int, conf: float,
                 matched: Sequence[np.ndarray]) -> pd.DataFrame:
    """Per-image counts and scores of one split at threshold `conf`, indexed by image_id: ingredient_tp/fp/fn
    (`exp3.evaluate.metrics.ingredient_sets`), ingredient_f1 (per image; its mean is the samples F1) and
    detection_tp/fp/fn (`exp3.evaluate.metrics.detection_counts` at `conf`, from `matched`: each record's
    `exp3.evaluate.metrics.matched_gt`, `ReportData.matched`)."""
    gt, pred = ingredient_sets(records, num_classes, conf)
    tp, fp, fn = (gt & pred).sum(axis=1), (~gt & pred).sum(axis=1), (gt & ~pred).sum(axis=1)
    detection = np.array([(int(found.sum()), int(above(record.pred_conf, conf).sum()) - int(found.sum()),
                           len(record.gt_boxes) - int(found.sum())) for record, found in zip(records, matched)],
                         dtype=np.int64).reshape(-1, 3)
    return pd.DataFrame({"ingredient_tp": tp, "ingredient_fp": fp, "ingredient_fn": fn,
                         "ingredient_f1": prf_from_counts(tp, fp, fn)[2], "detection_tp": detection[:, 0],
                         "detection_fp": detection[:, 1], "detection_fn": detection[:, 2]},
                        index=[record.image_id for record in records])


def split_match_iou(view: MetricsView, split: str) -> float:
    """The IoU a detection needs to match a ground-truth box on `split`: the split's recorded `match_iou`,
    else the session's (`eval.match_iou`), else exp3.evaluate.metrics' default."""
    for value in (view.split(split).match_iou, view.eval.match_iou):
        if value is not None and math.isfinite(value):
            return float(value)
    return DEFAULT_MATCH_IOU


@dataclass(frozen=True)
class Aligned:
    """The image ids of a paired statistic: `ids` sorted (empty when refused), `reason` MISSING / UNPAIRED / ""."""

    ids: pd.Index
    reason: str = ""


def align(sides: Sequence[pd.DataFrame | None]) -> Aligned:
    """The sorted ids every side holds; refused (no ids) when a side is None or the sides hold other image ids."""
    if not sides or any(side is None for side in sides):
        return Aligned(pd.Index([]), MISSING)
    if len({frozenset(side.index) for side in sides}) > 1:
        return Aligned(pd.Index([]), UNPAIRED)
    return Aligned(pd.Index(sorted(sides[0].index)))


def stack(frames: Sequence[pd.DataFrame], ids: pd.Index, columns: Sequence[str]) -> np.ndarray:
    """(K, N, C) float64 values of `columns` on `ids`, one layer per frame (seed)."""
    return np.stack([frame.loc[ids, list(columns)].to_numpy(dtype=np.float64) for frame in frames])


@dataclass(frozen=True)
class SplitDraws:
    """One session's metric on S splits at the primary threshold: full-sample `points` (S,), `draws` (B, S) on the
    report's resamples, the sorted image `ids` they resample (sessions with other ids are not paired) and, for an
    F1, the per-seed `counts` (K, N, S, 3) behind it."""

    points: np.ndarray
    draws: np.ndarray
    ids: tuple[str, ...]
    counts: np.ndarray | None = None

    @property
    def unpaired(self) -> bool:
        """Its seeds or splits hold other image ids: NaN values, never paired (`ReportData.split_draws`)."""
        return self.ids[:1] == (UNPAIRED,)


class ReportData:
    """Every session's per-image values and the report's draws, each read or computed once."""

    def __init__(self, runs: Iterable[SessionRun], n_resamples: int = stats.DEFAULT_RESAMPLES,
                 seed: int = stats.DEFAULT_SEED) -> None:
        self.runs = list(runs)
        self.n_resamples, self.seed = n_resamples, seed
        self.map_resamples = min(n_resamples, BOOTSTRAP_RESAMPLES)
        self.grouped: dict[tuple[str, str], list[SessionRun]] = {}
        for run in self.runs:
            self.grouped.setdefault((run.model, run.suffix), []).append(run)
        self._records: dict[tuple[Any, str], tuple[list[ImageRecord] | None, Any]] = {}
        self._scores: dict[tuple[Any, str, str], pd.DataFrame | None] = {}
        self._matched: dict[tuple[Any, str, str], list[np.ndarray]] = {}
        self._map_stats: dict[tuple[Any, str], MapStats | None] = {}
        self._map_run_draws: dict[tuple[Any, str], np.ndarray] = {}
        self._map_draws: dict[tuple[str, str, str], tuple[tuple[str, ...], np.ndarray] | None] = {}
        self._weights: dict[int, np.ndarray] = {}
        self.warnings: list[str] = []
        """Problems met while reading the session files (report.md lists them under the status grid)."""

    # ------------------------------------------------------------------------- sessions and files

    def done(self, model: str, suffix: str) -> list[SessionRun]:
        return [run for run in self.grouped.get((model, suffix), []) if run.status == SessionState.DONE]

    def model_runs(self, model: str) -> list[SessionRun]:
        return [run for suffix in SESSION_SUFFIXES for run in self.grouped.get((model, suffix), [])]

    def _predictions(self, run: SessionRun, split: str) -> tuple[list[ImageRecord] | None, Any]:
        """(records, suite id) of a done run's predictions_<split>.json, parsed once; (None, None) when absent. A
        file that is there but cannot be parsed, or was made on another suite than metrics.json records, reads as
        absent too, and is named in `warnings`."""
        key = (run.folder, split)
        if key not in self._records:
            path = run.folder / f"predictions_{split}.json"
            self._records[key] = (None, None)
            if run.status == SessionState.DONE and path.is_file():
                payload = read_json(path)
                try:
                    if not isinstance(payload, dict):
                        raise ValueError("not valid JSON" if payload is None else "not a JSON object")
                    records = records_from_json(payload.get("images") or []) or None
                except (ValueError, TypeError) as error:
                    self._warn(run, split, f"a done session's file that cannot be parsed ({str(error)[:200]})")
                    return self._records[key]
                recorded = _evaluated_suite(run.view, split)
                if recorded and payload.get("suite_id") != recorded:
                    self._warn(run, split, f"made on suite {payload.get('suite_id')!r}, its metrics.json on "
                                           f"{recorded!r} (evaluate the session again)")
                else:
                    self._records[key] = (records, payload.get("suite_id"))
        return self._records[key]

    def _warn(self, run: SessionRun, split: str, problem: str) -> None:
        self.warnings.append(f"`{run.folder.relative_to(run.folder.parent.parent) / f'predictions_{split}.json'}`: "
                             f"{problem}; its per-image statistics read as missing in this report")

    def records(self, run: SessionRun, split: str, suite_id: str | None = None) -> list[ImageRecord] | None:
        """The `ImageRecord`s of a done run's predictions_<split>.json (parsed once); None when absent or empty, or
        when `suite_id` is given and the file was made on another suite."""
        records, suite = self._predictions(run, split)
        return None if suite_id is not None and suite != suite_id else records

    def matched(self, run: SessionRun, split: str, threshold: str, conf: float) -> list[np.ndarray]:
        """Each record's ground-truth boxes matched by a detection at the operating point
        (`exp3.evaluate.metrics.matched_gt` at `conf` and the split's match IoU): the Hungarian matching behind
        detection F1 and coverage, made once."""
        key = (run.folder, split, threshold)
        if key not in self._matched:
            iou = split_match_iou(run.view, split)
            self._matched[key] = [matched_gt(record, conf, iou) for record in self.records(run, split) or []]
        return self._matched[key]

    def scores(self, run: SessionRun, split: str, threshold: str = "primary",
               suite_id: str | None = None) -> pd.DataFrame | None:
        """`image_scores` of one done run at one operating point (`threshold_conf`); None when it lacks what is
        needed, or when `suite_id` is given and the predictions file was made on another suite."""
        records = self.records(run, split, suite_id)
        if records is None:
            return None
        key = (run.folder, split, threshold)
        if key not in self._scores:
            num_classes, conf = run.view.split(split).num_classes, threshold_conf(run, split, threshold)
            usable = num_classes and conf is not None
            frame = image_scores(records, int(num_classes), conf,
                                 self.matched(run, split, threshold, conf)) if usable else None
            if frame is not None and not _reproduces_counts(frame, run.view, split, threshold):
                self._warn(run, split, f"its counts at the {threshold} threshold are not the ones its metrics.json "
                                       "records (evaluate the session again)")
                frame = None
            self._scores[key] = frame
        return self._scores[key]

    def seed_scores(self, model: str, suffix: str, split: str, threshold: str = "primary",
                    suite_id: str | None = None) -> list[pd.DataFrame | None]:
        """`scores` of every done run (seed) of one session, None where a run has none."""
        return [self.scores(run, split, threshold, suite_id) for run in self.done(model, suffix)]

    def pooled(self, model: str, suffix: str, split: str, threshold: str = "primary") -> pd.DataFrame | None:
        """One session's seeds pooled on their images: counts summed, per-image F1 averaged (the seed mean of the
        samples F1 is its mean). None when a seed has no values or the seeds hold other image ids, never a subset
        of the seeds or images (named in `warnings` when some seed has values)."""
        frames = self.seed_scores(model, suffix, split, threshold)
        aligned = align(frames)
        if aligned.reason:
            if any(frame is not None for frame in frames):
                problem = (f"{sum(frame is not None for frame in frames)} of its {len(frames)} done seeds have "
                           "per-image values" if aligned.reason == MISSING else "its seeds hold other image ids")
                warning = (f"{model} {suffix}, {split}: {problem}: no pooled statistic, interval or comparison "
                           "(summary_metrics shows the seed mean); evaluate every seed on the same suite")
                if warning not in self.warnings:  # asked at both thresholds: named once
                    self.warnings.append(warning)
            return None
        total = sum(frame.loc[aligned.ids] for frame in frames)
        total["ingredient_f1"] = total["ingredient_f1"] / len(frames)
        return total

    # ------------------------------------------------------------------------- draws

    def image_weights(self, n_images: int) -> np.ndarray:
        """(B, N) image multiplicities of the report's draws over N sorted image ids (one matrix per N)."""
        if n_images not in self._weights:
            self._weights[n_images] = stats.image_multiplicities(n_images, self.n_resamples, self.seed)
        return self._weights[n_images]

    def seed_weights(self, model: str, suffix: str, n_resamples: int | None = None) -> np.ndarray:
        """(B, K) seed multiplicities of one session (its own stream; all ones with one seed)."""
        return stats.seed_multiplicities(len(self.done(model, suffix)), n_resamples or self.n_resamples, self.seed,
                                         SESSION_SUFFIXES.index(suffix))

    def map_stats(self, run: SessionRun, split: str) -> MapStats | None:
        """A done run's map_stats_<split>.npz (loaded once), None when absent."""
        key = (run.folder, split)
        if key not in self._map_stats:
            path = SessionPaths(run.folder).map_stats(split)
            self._map_stats[key] = MapStats.load(path) if path.is_file() else None
        return self._map_stats[key]

    def map_run_draws(self, run: SessionRun, split: str) -> np.ndarray:
        """(B', 2) bootstrap mAP50 / mAP50-95 of one run: its kept draws when made with (B', seed), else computed."""
        key = (run.folder, split)
        if key not in self._map_run_draws:
            kept = self.map_stats(run, split)
            draws = kept.stored_draws(self.map_resamples, self.seed)
            self._map_run_draws[key] = draws if draws is not None else \
                kept.with_draws(self.map_resamples, self.seed).draws
        return self._map_run_draws[key]

    def map_draws(self, model: str, suffix: str, split: str) -> tuple[tuple[str, ...], np.ndarray] | None:
        """(sorted image ids, (B', 2) bootstrap mAP50 / mAP50-95 averaged over seeds) of one session, or None when a
        done run lacks its map_stats, the runs hold other images, or the stats do not reproduce metrics.json's mAP
        (another evaluation's file: no interval)."""
        key = (model, suffix, split)
        if key not in self._map_draws:
            done = self.done(model, suffix)
            loaded = [self.map_stats(run, split) for run in done]
            self._map_draws[key] = None
            if done and all(kept is not None for kept in loaded) \
                    and all(_reproduces_map(kept, run, split) for kept, run in zip(loaded, done)):
                if ids := common_image_ids(loaded):
                    self._map_draws[key] = (ids, np.mean([self.map_run_draws(run, split) for run in done], axis=0))
        return self._map_draws[key]

    def split_draws(self, model: str, suffix: str, splits: Sequence[str], metric: str,
                    suites: dict[str, str] | None = None) -> SplitDraws | None:
        """`metric` (a count F1 or an mAP of METRICS) of one session on `splits`, each predictions file made on the
        suite `suites` names for its split: the seeds and images drawn as every comparison draws them (docs/report.md,
        "Several seeds"). None when a done run lacks what it needs; `unpaired` when its seeds or splits hold other
        image ids."""
        if METRICS[metric].kind == "count":
            frames = [self.seed_scores(model, suffix, split, "primary", (suites or {}).get(split)) for split in splits]
            own = align([frame for per_split in frames for frame in per_split])
            if own.reason == UNPAIRED:
                return SplitDraws(np.full(len(splits), math.nan), np.full((self.n_resamples, len(splits)), math.nan),
                                  (UNPAIRED, suffix))
            if own.reason or not len(own.ids):
                return None
            counts = np.stack([stack(per_split, own.ids, METRICS[metric].columns) for per_split in frames], axis=2)
            draws = stats.two_level_draws(counts, stats.f1_statistic, self.image_weights(len(own.ids)),
                                          self.seed_weights(model, suffix))
            return SplitDraws(stats.micro_f1(counts.sum(axis=0), axis=0), draws, tuple(own.ids), counts)
        # mAP: the seed means of metrics.json's values, drawn from each split's `map_draws`; None when a split has
        # none, they are of other image ids or a run records none
        done, got = self.done(model, suffix), [self.map_draws(model, suffix, split) for split in splits]
        recorded = [[split_value(run.view.split(split), metric) for run in done] for split in splits]
        if any(entry is None for entry in got) or len({entry[0] for entry in got}) != 1 \
                or any(not values or None in values for values in recorded):
            return None
        column = 0 if metric == "map50" else 1
        seeds = self.seed_weights(model, suffix, self.map_resamples)
        draws = np.stack([entry[1][:, column] if len(done) == 1 else np.einsum(
            "bk,kb->b", seeds, np.stack([self.map_run_draws(run, split)[:, column] for run in done])) / len(done)
            for entry, split in zip(got, splits)], axis=-1)
        return SplitDraws(np.array([float(np.mean(values)) for values in recorded]), draws, got[0][0])


def _evaluated_suite(view: MetricsView, split: str) -> str | None:
    """The suite id metrics.json records for `split`'s predictions (a severity split's evaluation record, else
    `data.suite_id`: test_clean's file names the run's fixed suite too), None when it records none."""
    if severity_level(split) is None:
        return view.data.suite_id
    record = view.severity.evaluations.get(split)
    return record.suite_id if record is not None else None


def _reproduces_counts(frame: pd.DataFrame, view: MetricsView, split: str, threshold: str) -> bool:
    """False when `frame` (`image_scores` at one operating point) contradicts what metrics.json records there: its
    detection tp / fp / fn or its ingredient micro F1 (a value metrics.json lacks contradicts nothing)."""
    part = view.split(split)
    point = part if threshold == "primary" else part.at_val_threshold
    totals = frame.sum()
    found = [*(totals[f"detection_{name}"] for name in ("tp", "fp", "fn")),
             prf_from_counts(totals["ingredient_tp"], totals["ingredient_fp"], totals["ingredient_fn"])[2]]
    recorded = [*(as_number(getattr(point.detection, name)) for name in ("tp", "fp", "fn")),
                as_number(point.ingredient.micro.f1)]
    return all(math.isnan(want) or math.isclose(float(got), want, abs_tol=1e-9) for got, want in zip(found, recorded))


def _reproduces_map(map_stats: MapStats, run: SessionRun, split: str) -> bool:
    """True when `map_stats` give exactly the mAP50 / mAP50-95 that the run's metrics.json reports for `split`."""
    part = run.view.split(split)
    recorded = (as_number(part.map50), as_number(part.map50_95))
    return all(math.isfinite(value) for value in recorded) and np.allclose(mean_ap(map_stats), recorded, rtol=0,
                                                                            atol=1e-9)
