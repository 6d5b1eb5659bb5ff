"""Recall by covered fraction: which session still finds an object when most of it is hidden?

Every occluded test suite's manifest records, per ground-truth box, the fraction of it the
occluders actually cover (`covered_fraction`, exp3/occlusion/occlude.py). This module joins those
fractions to a session's predictions on that suite and asks, box by box, whether the object was
found, at two levels (docs/report.md, "Recall by covered fraction"):

- detection: the box is matched one-to-one by a detection of its class with confidence >= conf
  and IoU >= match_iou (`exp3.evaluate.metrics.matched_gt`, the Hungarian matcher of detection P/R/F1);
- ingredient: the box's class is in the image's predicted ingredient set at conf
  (`exp3.evaluate.metrics.ingredient_sets`). In a crowded image, several boxes of one class share one
  answer: one detection of the class anywhere "finds" all of them at this level.

Boxes are then binned by covered fraction into `N_BINS` equal bins over [0, 1] (half-open
[k/n, (k+1)/n), the last one closed), and per model and session the recall of each bin is the
found boxes over the boxes in it. Intervals: percentile bootstrap clustered on images (boxes of
one image are not independent): `n_resamples` draws of the images with replacement
(the report's image draws, exp3.report.draws), each draw re-summing the found and total boxes of every
bin; a draw in which a bin has no box says nothing about it and is left out of that bin's
interval. Several seeds of a session and several occluded splits (e.g. severity suites) pool
their boxes; an image id is one cluster across them (the same source picture).

Boxes without a covered fraction (zero area in the manifest) are left out and counted. The
manifest and the predictions must describe the same images and boxes: image ids must agree
exactly, and every ground-truth box of the predictions is paired with the manifest box of its
class with IoU >= `ALIGN_IOU` (`exp3.evaluate.metrics.optimal_matches`); anything else raises
`CoverageError` naming the split, the image and the fix (a number only comes from the inputs it
claims). A manifest box left over is accepted only as an exact duplicate of a paired one (the
validator drops duplicate label rows) and counted.

Outputs (`write_coverage_outputs`): `recall_by_coverage_boxes.csv` (one row per box, threshold
and session seed: re-bin it as you like), `recall_by_coverage.csv` (the bins with intervals) and
`plots/recall_by_coverage_<model>.png|html` (one line per session, one panel per level).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from exp3.evaluate import stats
from exp3.evaluate.metrics import ImageRecord, box_iou, ingredient_sets, matched_gt, optimal_matches
from exp3.fileio import atomic_write_text, sha256_file
from exp3.occlusion.identity import MANIFEST_NAME
from exp3.report import plots
from exp3.report.draws import ReportData, split_match_iou
from exp3.report.runs import THRESHOLDS, SessionRun, threshold_conf
from exp3.report.text import fmt_ci, markdown_table
from exp3.schema import MetricsView
from exp3.session.layout import SessionState
from exp3.sessions import SESSION_LABELS, SESSION_ORDER
from exp3.splits import FIXED_SPLIT, severity_level

N_BINS = 10
"""Equal-width covered-fraction bins over [0, 1]."""
LEVELS: tuple[str, ...] = ("detection", "ingredient")
"""What "found" means for a box (module docstring)."""
LEVEL_LABELS: dict[str, str] = {"detection": "detection: box matched (IoU >= match_iou)",
                                "ingredient": "ingredient: class named in the image's set"}
"""How the chart and report.md name each level."""
REPORT_THRESHOLD = THRESHOLDS[0]
"""The operating point of report.md's tables: the primary threshold, as the report's headline detection F1
(`exp3.report.runs.threshold_conf`). The chart and the csv files also have each session's val-chosen threshold."""
THRESHOLD_LABELS: dict[str, str] = dict(zip(THRESHOLDS, ("primary threshold", "each session's val-chosen threshold")))
"""How the chart names each operating point (`exp3.report.runs.THRESHOLDS`: primary, val)."""
ALIGN_IOU = 0.9
"""IoU a prediction file's ground-truth box needs with its manifest box (same class) to be the same box:
both are the label converted to pixels, rounded to 0.01 px and 0.001 px."""
MIN_BOXES_SHOWN = 10
"""The chart draws no point for a bin with fewer boxes (a recall of 1 box is 0 or 1, and its bootstrap interval
says nothing); empty bins are never drawn as 0. The tables and csv files keep every non-empty bin."""
BOX_COLUMNS: tuple[str, ...] = ("split", "image_id", "box", "class_id", "covered_fraction", "conf",
                                "found_detection", "found_ingredient")
"""Columns of `BoxTable.frame`: one row per ground-truth box with a covered fraction."""


class CoverageError(ValueError):
    """Manifest and predictions that cannot be joined; the message is one line naming the fix."""


@dataclass(frozen=True)
class ManifestBox:
    """One ground-truth box of an occluded suite's manifest (pixels xyxy; None = zero-area box)."""

    class_id: int
    xyxy: tuple[float, float, float, float]
    covered_fraction: float | None


@dataclass(frozen=True)
class BoxTable:
    """Per-box outcomes of one session on one occluded split at one threshold.

    Attributes:
        frame: `BOX_COLUMNS`, one row per ground-truth box that has a covered fraction.
        excluded_zero_area: boxes left out because the manifest has no covered fraction for them.
        duplicates: manifest boxes that repeat a label row the validator dropped (not in the predictions).
    """

    frame: pd.DataFrame
    excluded_zero_area: int
    duplicates: int


@dataclass(frozen=True)
class BinRecall:
    """Recall of the boxes of one covered-fraction bin [low, high), at one level.

    `recall` is NaN for an empty bin; the interval is NaN when no bootstrap draw holds a box of the bin.
    """

    level: str
    bin: int
    low: float
    high: float
    n_boxes: int
    n_found: int
    n_images: int
    recall: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class SessionCurve:
    """Recall by covered fraction of one model x session at one operating point (seeds and occluded splits pooled).

    `threshold`: `primary` | `val` (exp3.report.runs.THRESHOLDS); `conf`: the distinct thresholds of its seeds.
    """

    model: str
    session: str
    threshold: str
    seeds: tuple[int | None, ...]
    conf: tuple[float, ...]
    bins: tuple[BinRecall, ...]
    n_boxes: int
    n_images: int
    excluded_zero_area: int

    def level(self, level: str) -> list[BinRecall]:
        return [item for item in self.bins if item.level == level]


@dataclass
class CoverageReport:
    """Every session curve of a report, the per-box table behind it and what could not be computed.

    Attributes:
        curves: one per done session and operating point (`primary`, and `val` where recorded).
        boxes: `BOX_COLUMNS` plus model, session, seed, threshold (`primary` | `val`).
        problems: (model, session, reason) of each done session left out.
    """

    curves: list[SessionCurve]
    boxes: pd.DataFrame
    splits: tuple[str, ...]
    n_bins: int
    n_resamples: int
    seed: int
    confidence: float
    problems: list[tuple[str, str, str]] = field(default_factory=list)


# ----------------------------------------------------------------------------- manifest and per-box outcomes

def read_manifest_boxes(path: Path) -> dict[str, list[ManifestBox]]:
    """Image id -> its boxes with covered fractions, from an occluded suite's manifest.json."""
    try:
        manifest = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise CoverageError(f"cannot read the suite manifest {str(path)!r} ({type(error).__name__}): "
                            "rebuild the suite (python -m exp3.occlusion build) or pass its manifest") from None
    images = manifest.get("images") if isinstance(manifest, dict) else None
    if not isinstance(images, list):
        raise CoverageError(f"{str(path)!r} has no `images` list: pass an occlusion suite's manifest.json")
    boxes: dict[str, list[ManifestBox]] = {}
    for image in images:
        entries = image.get("boxes") or []
        if any("covered_fraction" not in entry for entry in entries):
            raise CoverageError(f"{str(path)!r}: image {image.get('id')!r} has boxes without `covered_fraction`: "
                                "pass the manifest of an occluded test suite (not of S2's train set)")
        boxes[str(image["id"])] = [ManifestBox(int(entry["class_id"]), tuple(float(v) for v in entry["xyxy"]),
                                               None if entry["covered_fraction"] is None
                                               else float(entry["covered_fraction"])) for entry in entries]
    return boxes


def _check_same_images(records: Sequence[ImageRecord], manifest: Mapping[str, list[ManifestBox]],
                       split: str) -> None:
    predicted, listed = {record.image_id for record in records}, set(manifest)
    if predicted != listed:
        only_pred, only_manifest = sorted(predicted - listed), sorted(listed - predicted)
        raise CoverageError(
            f"{split}: the predictions and the suite manifest disagree on image ids ({len(only_pred)} only in the "
            f"predictions, e.g. {only_pred[:3]}; {len(only_manifest)} only in the manifest, e.g. {only_manifest[:3]}): "
            "evaluate the session on this suite, or pass the manifest of the suite it was evaluated on")


def align_boxes(record: ImageRecord, boxes: Sequence[ManifestBox], split: str) -> tuple[np.ndarray, int, int]:
    """The covered fraction of each of `record`'s ground-truth boxes, from its manifest boxes.

    Returns:
        ((G,) float covered fraction, NaN for a box the manifest has as zero-area; number of the manifest's
        zero-area boxes; number of manifest boxes that duplicate a paired one). Raises `CoverageError` otherwise.
    """
    where = f"{split}, image {record.image_id!r}"
    known = [index for index, box in enumerate(boxes) if box.covered_fraction is not None]
    manifest_xyxy = np.array([boxes[index].xyxy for index in known], dtype=np.float64).reshape(-1, 4)
    manifest_cls = np.array([boxes[index].class_id for index in known], dtype=np.int64)
    iou = box_iou(manifest_xyxy, record.gt_boxes)
    rows, cols = optimal_matches(iou, manifest_cls[:, None] == record.gt_classes[None, :], ALIGN_IOU)
    covered = np.full(len(record.gt_classes), np.nan)
    covered[cols] = [boxes[known[row]].covered_fraction for row in rows]
    unpaired_gt = np.setdiff1d(np.arange(len(record.gt_classes)), cols)
    zero_area = [box.class_id for box in boxes if box.covered_fraction is None]
    for index in unpaired_gt:  # allowed only as one of the manifest's zero-area boxes of that class
        if int(record.gt_classes[index]) not in zero_area:
            raise CoverageError(f"{where}: ground-truth box {index} (class {int(record.gt_classes[index])}, "
                                f"{record.gt_boxes[index].round(2).tolist()}) has no box in the suite manifest: "
                                "the predictions were made on other labels; evaluate the session on this suite")
        zero_area.remove(int(record.gt_classes[index]))
    paired = {(boxes[known[row]].class_id, boxes[known[row]].xyxy) for row in rows}
    leftover = [known[row] for row in np.setdiff1d(np.arange(len(known)), rows)]
    strays = [index for index in leftover if (boxes[index].class_id, boxes[index].xyxy) not in paired]
    if strays:
        box = boxes[strays[0]]
        raise CoverageError(f"{where}: manifest box {strays[0]} (class {box.class_id}, {list(box.xyxy)}) is missing "
                            f"from the predictions' ground truth ({len(strays)} such boxes): evaluate the session "
                            "on this suite, or pass the manifest of the suite it was evaluated on")
    return covered, len(boxes) - len(known), len(leftover)


def align_split(records: Sequence[ImageRecord], manifest: Mapping[str, list[ManifestBox]],
                split: str) -> list[tuple[np.ndarray, int, int]]:
    """`align_boxes` of every record (the same images in both, else `CoverageError`)."""
    _check_same_images(records, manifest, split)
    return [align_boxes(record, manifest[record.image_id], split) for record in records]


def box_table(records: Sequence[ImageRecord], manifest: Mapping[str, list[ManifestBox]], num_classes: int,
              conf: float, match_iou: float, split: str, aligned: Sequence[tuple[np.ndarray, int, int]] | None = None,
              matched: Sequence[np.ndarray] | None = None) -> BoxTable:
    """Per-box covered fraction and whether the box was found at both levels (module docstring), at `conf`.
    `aligned`: `align_split` of these records when already made (it does not depend on `conf`); `matched`: each
    record's `matched_gt` at `conf` and `match_iou`, when already made (exp3.report.draws)."""
    aligned = align_split(records, manifest, split) if aligned is None else aligned
    matched = [matched_gt(record, conf, match_iou) for record in records] if matched is None else matched
    _, predicted_sets = ingredient_sets(records, num_classes, conf)
    kept = [np.flatnonzero(~np.isnan(covered)) for covered, _, _ in aligned]          # boxes with a covered fraction
    classes = [record.gt_classes[boxes].astype(np.int64) for record, boxes in zip(records, kept)]

    def joined(values: list[np.ndarray], dtype: Any) -> np.ndarray:
        return np.concatenate(values).astype(dtype) if values else np.zeros(0, dtype)

    frame = pd.DataFrame({
        "split": [split] * sum(map(len, kept)),
        "image_id": [record.image_id for record, boxes in zip(records, kept) for _ in boxes],
        "box": joined(kept, np.int64), "class_id": joined(classes, np.int64),
        "covered_fraction": joined([covered[boxes] for (covered, _, _), boxes in zip(aligned, kept)], np.float64),
        "conf": float(conf), "found_detection": joined([found[boxes] for found, boxes in zip(matched, kept)], bool),
        "found_ingredient": joined([predicted_sets[row, found] for row, found in enumerate(classes)], bool)},
        columns=list(BOX_COLUMNS))
    excluded, duplicates = (sum(item[index] for item in aligned) for index in (1, 2))
    return BoxTable(frame, excluded, duplicates)


# ----------------------------------------------------------------------------- bins and clustered intervals

def bin_edges(n_bins: int = N_BINS) -> np.ndarray:
    """(n_bins + 1,) edges k / n_bins (exact decimal edges such as 0.3, not linspace's 0.30000000000000004)."""
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins={n_bins!r}; pass a positive int such as {N_BINS}")
    return np.arange(n_bins + 1) / n_bins


def assign_bins(covered: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """Bin index of each covered fraction: [k/n, (k+1)/n) for k < n - 1, the last bin [1 - 1/n, 1] closed."""
    values = np.asarray(covered, dtype=np.float64)
    if not np.all((values >= 0.0) & (values <= 1.0)):
        raise ValueError("covered fractions must lie in [0, 1]; read them from an occlusion suite's manifest")
    return np.minimum(np.searchsorted(bin_edges(n_bins), values, side="right") - 1, n_bins - 1)


def bin_recalls(frame: pd.DataFrame, level: str, n_bins: int = N_BINS, n_resamples: int = stats.DEFAULT_RESAMPLES,
                seed: int = stats.DEFAULT_SEED, confidence: float = stats.DEFAULT_CONFIDENCE,
                image_weights: np.ndarray | None = None) -> list[BinRecall]:
    """Recall per covered-fraction bin of the boxes in `frame` at `level`, with image-clustered bootstrap intervals.

    Args:
        frame: per-box rows with `image_id`, `covered_fraction` and `found_<level>` (a `BoxTable.frame`, or
            several pooled: seeds and splits of one session); the clusters are the distinct image ids.
        image_weights: the (B, M) draws of the M sorted image ids (default `stats.image_multiplicities(M, B, seed)`).

    Returns:
        One `BinRecall` per bin (n_bins), empty bins included (recall NaN).
    """
    if level not in LEVELS:
        raise ValueError(f"level {level!r}; pass one of {', '.join(LEVELS)}")
    edges = bin_edges(n_bins)
    images, cluster = np.unique(frame["image_id"].to_numpy(dtype=str), return_inverse=True)
    bins = assign_bins(frame["covered_fraction"].to_numpy(), n_bins)
    found = frame[f"found_{level}"].to_numpy(dtype=bool)
    totals, hits = np.zeros((len(images), n_bins)), np.zeros((len(images), n_bins))
    np.add.at(totals, (cluster, bins), 1.0)
    np.add.at(hits, (cluster, bins), found.astype(np.float64))
    if len(images):
        weights = stats.image_multiplicities(len(images), n_resamples, seed) if image_weights is None \
            else image_weights
        draw_totals, draw_hits = weights @ totals, weights @ hits        # (B, n_bins)
    result = []
    for index in range(n_bins):
        n_boxes, n_found = int(totals[:, index].sum()), int(hits[:, index].sum())
        low = high = math.nan
        if n_boxes:
            valid = draw_totals[:, index] > 0
            low, high = stats.percentile_interval(draw_hits[valid, index] / draw_totals[valid, index], confidence)
        result.append(BinRecall(level, index, float(edges[index]), float(edges[index + 1]), n_boxes, n_found,
                                int((totals[:, index] > 0).sum()), n_found / n_boxes if n_boxes else math.nan,
                                low, high))
    return result


def session_curve(model: str, session: str, threshold: str, seeds: Sequence[int | None], boxes: pd.DataFrame,
                  excluded: int, data: ReportData, n_bins: int = N_BINS,
                  confidence: float = stats.DEFAULT_CONFIDENCE) -> SessionCurve:
    """The `SessionCurve` of one session's pooled per-box rows (both levels), on the report's image draws."""
    weights = data.image_weights(int(boxes["image_id"].nunique())) if len(boxes) else None
    bins = [item for level in LEVELS for item in bin_recalls(boxes, level, n_bins, data.n_resamples, data.seed,
                                                             confidence, weights)]
    return SessionCurve(model, session, threshold, tuple(seeds), tuple(sorted(set(boxes["conf"].tolist()))), tuple(bins),
                        len(boxes), int(boxes["image_id"].nunique()), excluded)


# ----------------------------------------------------------------------------- session folders (exp3.report)

def suite_manifest(metrics: MetricsView, split: str, manifest_paths: Mapping[str, Path] | None = None) -> Path:
    """The manifest holding `split`'s covered fractions: `manifest_paths[split]` when given, else the session's
    suite (`metrics.json` `data.suite_dir`), checked against the sha256 the session recorded."""
    if manifest_paths and split in manifest_paths:
        return Path(manifest_paths[split])
    data = metrics.data
    if not data.suite_dir:
        raise CoverageError("metrics.json records no occlusion suite (data.suite_dir): re-run the session with this "
                            "exp3 version, or pass the manifest "
                            "(exp3.report.coverage.coverage_report(manifest_paths=...))")
    path, recorded = Path(data.suite_dir) / MANIFEST_NAME, data.suite_manifest_sha256
    if severity_level(split) is not None:  # a severity suite: the one its evaluation record names
        record = metrics.severity.evaluations.get(split)
        if record is None or not record.suite_id:
            raise CoverageError(f"metrics.json records no evaluation of {split}: run the session again to add it")
        path = Path(data.suite_dir).parent / record.suite_id / MANIFEST_NAME  # suites live side by side
        recorded = record.manifest_sha256
    if not path.is_file():
        raise CoverageError(f"the session's suite manifest {str(path)!r} is missing: restore the suite, or pass "
                            "its manifest")
    if recorded and sha256_file(path) != recorded:
        raise CoverageError(f"{str(path)!r} is not the manifest the session was evaluated with (sha256 differs): "
                            "restore that suite or re-run the session")
    return path


def _session_boxes(run: SessionRun, splits: Sequence[str], manifest_paths: Mapping[str, Path] | None,
                   cache: dict[Path, dict[str, list[ManifestBox]]], data: ReportData,
                   aligned_cache: dict[tuple[Any, ...], list[tuple[np.ndarray, int, int]]]) -> tuple[pd.DataFrame, int]:
    """All per-box rows of one done session folder at both thresholds (`cache`: the manifests read, `aligned_cache`:
    the alignments made, by manifest, split and ground truth)."""
    view: MetricsView = run.view
    frames, excluded = [], 0
    for split in splits:
        part = view.splits.get(split)
        records = data.records(run, split) if part is not None else None
        if part is None or not part.num_classes or not records:
            raise CoverageError(f"no predictions_{split}.json or metrics for {split}: evaluate the session on it")
        path = suite_manifest(view, split, manifest_paths)
        if path not in cache:
            cache[path] = read_manifest_boxes(path)
        truth = (path, split, tuple((record.image_id, record.gt_classes.tobytes(), record.gt_boxes.tobytes())
                                    for record in records))
        if truth not in aligned_cache:  # sessions evaluated on one suite share its ground truth: aligned once
            aligned_cache[truth] = align_split(records, cache[path], split)
        iou_needed, aligned = split_match_iou(view, split), aligned_cache[truth]
        for threshold in THRESHOLDS:
            conf = threshold_conf(run, split, threshold)
            if conf is None:
                continue
            table = box_table(records, cache[path], int(part.num_classes), conf, iou_needed, split, aligned,
                              data.matched(run, split, threshold, conf))
            frames.append(table.frame.assign(threshold=threshold))
            excluded += table.excluded_zero_area if threshold == THRESHOLDS[0] else 0
    return pd.concat(frames, ignore_index=True), excluded


def default_splits(runs: Iterable[SessionRun]) -> tuple[str, ...]:
    """test_occ_fixed and the severity splits every done session was evaluated on (light to heavy):
    together they span the covered fractions from light to heavy."""
    common: set[str] | None = None
    for run in runs:
        if run.status == SessionState.DONE:
            present = {split for split in run.view.splits if severity_level(split)}
            common = present if common is None else common & present
    return (FIXED_SPLIT, *sorted(common or (), key=severity_level))


def coverage_report(data: ReportData, splits: Sequence[str] | None = None,
                    manifest_paths: Mapping[str, Path] | None = None, n_bins: int = N_BINS,
                    confidence: float = stats.DEFAULT_CONFIDENCE) -> CoverageReport:
    """Recall by covered fraction of every done session of `data` (the report's runs, predictions and draws).

    Args:
        splits: the occluded splits to pool (each needs predictions_<split>.json and a manifest); None:
            `default_splits(runs)` (test_occ_fixed and the severity splits every done session has).
        manifest_paths: split -> manifest.json, for splits whose manifest is not the session's suite
            (`data.suite_dir`); default: the suite of each session.

    A session whose predictions and manifest cannot be joined is left out, its reason in `problems`.
    """
    runs = data.runs
    splits = tuple(dict.fromkeys(default_splits(runs) if splits is None else splits))
    if not splits:
        raise ValueError(f"no occluded split given: pass e.g. ({FIXED_SPLIT!r},)")
    grouped: dict[tuple[str, str], list[SessionRun]] = {}
    for run in runs:
        if run.status == SessionState.DONE:
            grouped.setdefault((run.model, run.suffix), []).append(run)
    cache: dict[Path, dict[str, list[ManifestBox]]] = {}
    aligned: dict[tuple[Any, ...], list[tuple[np.ndarray, int, int]]] = {}
    curves, frames, problems = [], [], []
    for (model, session), session_runs in grouped.items():
        try:
            parts = [(run, *_session_boxes(run, splits, manifest_paths, cache, data, aligned)) for run in session_runs]
        except CoverageError as error:
            problems.append((model, session, str(error)))
            continue
        boxes = pd.concat([frame.assign(model=model, session=session, seed=run.seed) for run, frame, _ in parts],
                          ignore_index=True)
        frames.append(boxes)
        for threshold in dict.fromkeys(boxes["threshold"]):
            curves.append(session_curve(model, session, threshold, [run.seed for run, _, _ in parts],
                                        boxes[boxes["threshold"] == threshold],
                                        sum(excluded for _, _, excluded in parts), data, n_bins, confidence))
    columns = ["model", "session", "seed", "threshold", *BOX_COLUMNS]
    boxes = pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)
    return CoverageReport(curves, boxes, splits, n_bins, data.n_resamples, data.seed, confidence, problems)


# ----------------------------------------------------------------------------- tables, chart, report.md

def bins_frame(report: CoverageReport) -> pd.DataFrame:
    """One row per model x session x level x bin (empty bins included): the `recall_by_coverage.csv` table."""
    rows = [{"model": curve.model, "session": curve.session, "threshold": curve.threshold, "level": item.level, "bin": item.bin,
             "covered_low": item.low, "covered_high": item.high, "n_boxes": item.n_boxes, "n_found": item.n_found,
             "n_images": item.n_images, "recall": item.recall, "ci_low": item.ci_low, "ci_high": item.ci_high,
             "conf": ";".join(f"{value:g}" for value in curve.conf)}
            for curve in report.curves for item in curve.bins]
    return pd.DataFrame(rows, columns=["model", "session", "threshold", "level", "bin", "covered_low", "covered_high", "n_boxes",
                                       "n_found", "n_images", "recall", "ci_low", "ci_high", "conf"])


def chart_frame(report: CoverageReport, model: str) -> pd.DataFrame:
    """The coverage chart's frame of one model (exp3.report.plots.coverage_recall_chart): non-empty bins only, each
    session's points nudged sideways (`x`) so that the intervals of one bin do not hide each other."""
    table = bins_frame(report)
    table = table[(table["model"] == model) & (table["n_boxes"] >= MIN_BOXES_SHOWN)].copy()
    table["session_label"] = table["session"].map(SESSION_LABELS)
    table["level_label"] = table["level"].map(LEVEL_LABELS)
    table["threshold_label"] = table["threshold"].map(THRESHOLD_LABELS)
    width = 1.0 / report.n_bins
    rank = table["session_label"].map({label: index for index, label in enumerate(SESSION_ORDER)})
    table["x"] = (table["covered_low"] + table["covered_high"]) / 2 + (rank - (len(SESSION_ORDER) - 1) / 2) * width / 16
    table["bin_text"] = [f"[{low:.1f}, {high:.1f}{']' if high >= 1 else ')'}" for low, high
                         in zip(table["covered_low"], table["covered_high"])]
    return table[["model", "session_label", "threshold_label", "level_label", "conf", "bin_text", "x", "recall",
                  "ci_low", "ci_high", "n_boxes", "n_found"]].reset_index(drop=True)


def write_coverage_outputs(report: CoverageReport, root: Path, models: Sequence[str], charts: bool = True) -> list[Path]:
    """`recall_by_coverage_boxes.csv`, `recall_by_coverage.csv` and one chart per model with a curve."""
    files = [atomic_write_text(root / "recall_by_coverage_boxes.csv", report.boxes.to_csv(index=False)),
             atomic_write_text(root / "recall_by_coverage.csv", bins_frame(report).to_csv(index=False))]
    if not charts:
        return files
    for model in models:
        frame = chart_frame(report, model)
        if len(frame):
            subtitle = (f"{', '.join(report.splits)}; one line per session; error bars: {report.confidence:.0%} "
                        f"bootstrap CI over images; point size: boxes in the bin; bins with < {MIN_BOXES_SHOWN} "
                        "boxes not drawn (see report.md)")
            files += plots.save_chart(plots.coverage_recall_chart(
                frame, title=f"Recall by covered fraction of the box: {model}", subtitle=subtitle),
                root / "plots" / f"recall_by_coverage_{model}")
    return files


def _cell(item: BinRecall) -> str:
    return fmt_ci(vars(item), "recall", "ci_low", "ci_high", digits=2) if item.n_boxes else ""


def coverage_table(report: CoverageReport, model: str, level: str) -> pd.DataFrame:
    """report.md's table of one model and level: one row per non-empty bin, boxes, one column per session."""
    curves = [curve for curve in report.curves if curve.model == model and curve.threshold == REPORT_THRESHOLD]
    if not curves:
        return pd.DataFrame()
    rows = []
    for index in range(report.n_bins):
        items = [curve.level(level)[index] for curve in curves]
        if not any(item.n_boxes for item in items):
            continue
        first = items[0]
        row = {"covered fraction": f"[{first.low:.1f}, {first.high:.1f}{']' if first.high >= 1 else ')'}",
               "boxes": " / ".join(sorted({str(item.n_boxes) for item in items}))}
        row.update({SESSION_LABELS.get(curve.session, curve.session): _cell(item) for curve, item in zip(curves, items)})
        rows.append(row)
    return pd.DataFrame(rows)


def coverage_markdown(report: CoverageReport, models: Sequence[str]) -> list[str]:
    """The "Recall by covered fraction" section of report.md (lines)."""
    lines = ["## Recall by covered fraction", "",
             f"Which session still finds an object when most of it is hidden? Every ground-truth box of "
             f"{', '.join(report.splits)}, binned by the fraction of it the occluders cover (suite manifest), at the "
             "primary threshold. Detection: the box is matched by a detection of its class (IoU >= match_iou, "
             "one-to-one); ingredient: its class is in the image's predicted set. Cells: recall "
             f"[{report.confidence:.0%} bootstrap CI, images resampled ({report.n_resamples} resamples, seed "
             f"{report.seed})]; `boxes`: boxes in the bin (seeds pooled). The chart also shows each session's "
             "val-chosen threshold; per-box table (both thresholds, to re-bin): `recall_by_coverage_boxes.csv`; "
             "definitions: docs/report.md.", ""]
    if not report.curves:
        lines += ["n/a: no done session could be joined to its suite manifest.", ""]
    for model in models:
        curves = [curve for curve in report.curves if curve.model == model and curve.threshold == REPORT_THRESHOLD]
        if not curves:
            continue
        excluded = sum(curve.excluded_zero_area for curve in curves)
        lines += [f"### {model}", "", f"{curves[0].n_boxes} boxes in {curves[0].n_images} images per session"
                  + (f"; {excluded} zero-area boxes left out" if excluded else "") + ".", ""]
        for level in LEVELS:
            lines += [f"{LEVEL_LABELS[level][0].upper()}{LEVEL_LABELS[level][1:]}:", "", markdown_table(coverage_table(report, model, level)),
                      ""]
    if report.problems:
        reasons: dict[str, list[str]] = {}
        for model, session, reason in report.problems:
            reasons.setdefault(reason, []).append(f"{model} {session.split('_')[0]}")
        lines += ["Left out (predictions and suite manifest could not be joined):", ""]
        lines += [f"- {', '.join(sessions)}: {reason}" for reason, sessions in reasons.items()] + [""]
    return lines
