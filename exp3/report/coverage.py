"""Recall by covered fraction: which session still finds an object when most of it is hidden? What is joined, the
levels, bins, image-clustered intervals, pooling and refusals (`CoverageError`): docs/report.md, "Recall by covered
fraction"."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from exp3.evaluate import stats
from exp3.evaluate.metrics import ImageRecord, box_iou, ingredient_sets, optimal_matches
from exp3.fileio import atomic_write_text, sha256_file
from exp3.occlusion.identity import MANIFEST_NAME
from exp3.report import plots
from exp3.report.draws import ReportData
from exp3.report.runs import THRESHOLDS, SessionRun, threshold_conf
from exp3.report.text import fmt_ci, markdown_table, short_session
from exp3.schema import MetricsView
from exp3.session.layout import SessionState
from exp3.sessions import SESSION_LABELS, SESSION_ORDER
from exp3.splits import FIXED_SPLIT, severity_level

N_BINS = 10
BIN_EDGES = np.arange(N_BINS + 1) / N_BINS
"""k / N_BINS: exact decimal edges such as 0.3 (linspace gives 0.30000000000000004)."""
LEVELS: tuple[str, ...] = ("detection", "ingredient")
LEVEL_LABELS: dict[str, str] = {"detection": "detection: box matched (IoU >= match_iou)",
                                "ingredient": "ingredient: class named in the image's set"}
THRESHOLD_LABELS: dict[str, str] = dict(zip(THRESHOLDS, ("primary threshold", "each session's val-chosen threshold")))
ALIGN_IOU = 0.9
"""IoU a prediction file's ground-truth box needs with its manifest box (same class) to be the same box:
both are the label converted to pixels, rounded to 0.01 px and 0.001 px."""
MIN_BOXES_SHOWN = 10
"""The chart draws no point for a bin with fewer boxes (docs/report.md, "Recall by covered fraction", Bins)."""
BOX_COLUMNS: tuple[str, ...] = ("split", "image_id", "box", "class_id", "covered_fraction", "conf",
                                "found_detection", "found_ingredient")
"""Columns of `box_table`: one row per ground-truth box with a covered fraction."""
BIN_COLUMNS: tuple[str, ...] = ("level", "bin", "covered_low", "covered_high", "n_boxes", "n_found", "n_images",
                                "recall", "ci_low", "ci_high")
"""Columns of `bin_recalls`: one row per bin [covered_low, covered_high), recall NaN when empty, the interval NaN when
no bootstrap draw holds a box of the bin."""

Aligned = tuple[np.ndarray, int]
"""One image's `align_boxes`: the covered fraction of each ground-truth box (NaN: zero-area), zero-area boxes."""


class CoverageError(ValueError):
    """Manifest and predictions that cannot be joined; the message is one line naming the fix."""


@dataclass(frozen=True)
class ManifestBox:
    """One ground-truth box of an occluded suite's manifest (pixels xyxy; None = zero-area box)."""

    class_id: int
    xyxy: tuple[float, float, float, float]
    covered_fraction: float | None


@dataclass(frozen=True)
class SessionCurve:
    """Recall by covered fraction of one model x session at one operating point (`threshold`: primary | val), seeds
    and occluded splits pooled; `conf`: the distinct thresholds of its seeds."""

    model: str
    session: str
    threshold: str
    conf: tuple[float, ...]
    bins: pd.DataFrame
    """`BIN_COLUMNS`, the bins of both levels."""
    n_boxes: int
    n_images: int
    excluded_zero_area: int

    def level(self, level: str) -> list[Any]:
        """The bins of one level, as rows with the `BIN_COLUMNS` attributes."""
        return list(self.bins[self.bins["level"] == level].itertuples(index=False))


@dataclass
class CoverageReport:
    """Every session curve (per done session and operating point), the per-box table behind them (`BOX_COLUMNS` plus
    model, session, seed, threshold) and the (model, session, reason) of each done session left out."""

    curves: list[SessionCurve]
    boxes: pd.DataFrame
    splits: tuple[str, ...]
    n_resamples: int
    seed: int
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


def align_boxes(record: ImageRecord, boxes: Sequence[ManifestBox], split: str) -> Aligned:
    """The covered fraction of each of `record`'s ground-truth boxes from its manifest boxes (`Aligned`), else
    `CoverageError`. A manifest box left over is accepted only as an exact duplicate of a paired one (the validator
    drops duplicate label rows)."""
    where = f"{split}, image {record.image_id!r}"
    known = [index for index, box in enumerate(boxes) if box.covered_fraction is not None]
    manifest_xyxy = np.array([boxes[index].xyxy for index in known], dtype=np.float64).reshape(-1, 4)
    manifest_cls = np.array([boxes[index].class_id for index in known], dtype=np.int64)
    iou = box_iou(manifest_xyxy, record.gt_boxes)
    rows, cols = optimal_matches(iou, manifest_cls[:, None] == record.gt_classes[None, :], ALIGN_IOU)
    covered = np.full(len(record.gt_classes), np.nan)
    covered[cols] = [boxes[known[row]].covered_fraction for row in rows]
    zero_area = [box.class_id for box in boxes if box.covered_fraction is None]
    for index in np.setdiff1d(np.arange(len(record.gt_classes)), cols):  # only as a zero-area box of its class
        if int(record.gt_classes[index]) not in zero_area:
            raise CoverageError(f"{where}: ground-truth box {index} (class {int(record.gt_classes[index])}, "
                                f"{record.gt_boxes[index].round(2).tolist()}) has no box in the suite manifest: "
                                "the predictions were made on other labels; evaluate the session on this suite")
        zero_area.remove(int(record.gt_classes[index]))
    paired = {(boxes[known[row]].class_id, boxes[known[row]].xyxy) for row in rows}
    strays = [known[row] for row in np.setdiff1d(np.arange(len(known)), rows)
              if (boxes[known[row]].class_id, boxes[known[row]].xyxy) not in paired]
    if strays:
        box = boxes[strays[0]]
        raise CoverageError(f"{where}: manifest box {strays[0]} (class {box.class_id}, {list(box.xyxy)}) is missing "
                            f"from the predictions' ground truth ({len(strays)} such boxes): evaluate the session "
                            "on this suite, or pass the manifest of the suite it was evaluated on")
    return covered, len(boxes) - len(known)


def align_split(records: Sequence[ImageRecord], manifest: Mapping[str, list[ManifestBox]],
                split: str) -> list[Aligned]:
    """`align_boxes` of every record; the predictions and the manifest must list the same images."""
    predicted, listed = {record.image_id for record in records}, set(manifest)
    if predicted != listed:
        only_pred, only_manifest = sorted(predicted - listed), sorted(listed - predicted)
        raise CoverageError(
            f"{split}: the predictions and the suite manifest disagree on image ids ({len(only_pred)} only in the "
            f"predictions, e.g. {only_pred[:3]}; {len(only_manifest)} only in the manifest, e.g. {only_manifest[:3]}): "
            "evaluate the session on this suite, or pass the manifest of the suite it was evaluated on")
    return [align_boxes(record, manifest[record.image_id], split) for record in records]


def box_table(records: Sequence[ImageRecord], aligned: Sequence[Aligned], num_classes: int, conf: float, split: str,
              matched: Sequence[np.ndarray]) -> pd.DataFrame:
    """Per-box covered fraction (`aligned`: `align_split` of the records) and whether the box was found at both
    levels, at `conf` (boxes without a covered fraction left out). `matched`: each record's `matched_gt` at `conf`
    (`ReportData.matched`)."""
    _, predicted_sets = ingredient_sets(records, num_classes, conf)
    kept = [np.flatnonzero(~np.isnan(covered)) for covered, _ in aligned]          # boxes with a covered fraction
    classes = [record.gt_classes[boxes].astype(np.int64) for record, boxes in zip(records, kept)]

    def joined(values: list[np.ndarray], dtype: Any) -> np.ndarray:
        return np.concatenate(values).astype(dtype) if values else np.zeros(0, dtype)

    return pd.DataFrame({
        "split": [split] * sum(map(len, kept)),
        "image_id": [record.image_id for record, boxes in zip(records, kept) for _ in boxes],
        "box": joined(kept, np.int64), "class_id": joined(classes, np.int64),
        "covered_fraction": joined([covered[boxes] for (covered, _), boxes in zip(aligned, kept)], np.float64),
        "conf": float(conf), "found_detection": joined([found[boxes] for found, boxes in zip(matched, kept)], bool),
        "found_ingredient": joined([predicted_sets[row, found] for row, found in enumerate(classes)], bool)},
        columns=list(BOX_COLUMNS))


# ----------------------------------------------------------------------------- bins and clustered intervals

def assign_bins(covered: np.ndarray) -> np.ndarray:
    """Bin index of each covered fraction: [k/n, (k+1)/n) for k < n - 1, the last bin [1 - 1/n, 1] closed."""
    values = np.asarray(covered, dtype=np.float64)
    if not np.all((values >= 0.0) & (values <= 1.0)):
        raise ValueError("covered fractions must lie in [0, 1]; read them from an occlusion suite's manifest")
    return np.minimum(np.searchsorted(BIN_EDGES, values, side="right") - 1, N_BINS - 1)


def bin_recalls(frame: pd.DataFrame, level: str, image_weights: np.ndarray) -> pd.DataFrame:
    """Recall per covered-fraction bin (`BIN_COLUMNS`, empty bins included) of the boxes in `frame` at `level`, with
    image-clustered bootstrap intervals.

    Args:
        frame: per-box rows with `image_id`, `covered_fraction` and `found_<level>` (a `box_table`, or
            several pooled: seeds and splits of one session); the clusters are the distinct image ids.
        image_weights: the (B, M) draws of the M sorted image ids (`ReportData.image_weights`).
    """
    images, cluster = np.unique(frame["image_id"].to_numpy(dtype=str), return_inverse=True)
    bins = assign_bins(frame["covered_fraction"].to_numpy())
    totals, hits = np.zeros((len(images), N_BINS)), np.zeros((len(images), N_BINS))
    np.add.at(totals, (cluster, bins), 1.0)
    np.add.at(hits, (cluster, bins), frame[f"found_{level}"].to_numpy(dtype=np.float64))
    n_boxes, n_found = totals.sum(axis=0).astype(np.int64), hits.sum(axis=0).astype(np.int64)
    interval = np.full((N_BINS, 2), np.nan)
    if len(images):
        draw_totals, draw_hits = image_weights @ totals, image_weights @ hits        # (B, N_BINS)
        for index in np.flatnonzero(n_boxes):
            valid = draw_totals[:, index] > 0
            interval[index] = stats.percentile_interval(draw_hits[valid, index] / draw_totals[valid, index],
                                                        stats.DEFAULT_CONFIDENCE)
    return pd.DataFrame({"level": level, "bin": np.arange(N_BINS), "covered_low": BIN_EDGES[:-1],
                         "covered_high": BIN_EDGES[1:], "n_boxes": n_boxes, "n_found": n_found,
                         "n_images": (totals > 0).sum(axis=0),
                         "recall": np.divide(n_found, n_boxes, out=np.full(N_BINS, np.nan), where=n_boxes > 0),
                         "ci_low": interval[:, 0], "ci_high": interval[:, 1]})


# ----------------------------------------------------------------------------- session folders (exp3.report)

def suite_manifest(metrics: MetricsView, split: str,
                   manifest_paths: Mapping[str, Path] | None = None) -> tuple[Path, str]:
    """The manifest holding `split`'s covered fractions and the id of its suite: the session's suite (`metrics.json`
    `data.suite_dir`), or `manifest_paths[split]` when given (the suite moved since), checked against the sha256 the
    session recorded."""
    data = metrics.data
    if not data.suite_dir or not data.suite_id:
        raise CoverageError("metrics.json records no occlusion suite (data.suite_dir, data.suite_id): re-run the "
                            "session with this exp3 version")
    path, suite_id, recorded = Path(data.suite_dir) / MANIFEST_NAME, data.suite_id, data.suite_manifest_sha256
    if severity_level(split) is not None:  # a severity suite: the one its evaluation record names
        record = metrics.severity.evaluations.get(split)
        if record is None or not record.suite_id:
            raise CoverageError(f"metrics.json records no evaluation of {split}: run the session again to add it")
        path = Path(data.suite_dir).parent / record.suite_id / MANIFEST_NAME  # suites live side by side
        suite_id, recorded = record.suite_id, record.manifest_sha256
    if manifest_paths and split in manifest_paths:
        path = Path(manifest_paths[split])
    if not path.is_file():
        raise CoverageError(f"the session's suite manifest {str(path)!r} is missing: restore the suite, or pass "
                            "its manifest")
    if sha256_file(path) != recorded:
        raise CoverageError(f"{str(path)!r} is not the manifest the session was evaluated with (sha256 differs): "
                            "restore that suite or re-run the session")
    return path, suite_id


def _session_boxes(run: SessionRun, splits: Sequence[str], manifest_paths: Mapping[str, Path] | None,
                   data: ReportData, aligned: dict[tuple[Any, ...], list[Aligned]]) -> tuple[pd.DataFrame, int]:
    """All per-box rows of one done session folder at both thresholds, and its zero-area boxes (`aligned`: the
    alignments made, by manifest, split and ground truth)."""
    frames, excluded = [], 0
    for split in splits:
        part = run.view.splits.get(split)
        path, suite_id = suite_manifest(run.view, split, manifest_paths)
        records = data.records(run, split, suite_id) if part is not None else None
        if part is None or not part.num_classes or not records:
            raise CoverageError(f"no predictions_{split}.json of suite {suite_id} or no metrics for {split}: evaluate "
                                "the session on it")
        truth = (path, split, tuple((record.image_id, record.gt_classes.tobytes(), record.gt_boxes.tobytes())
                                    for record in records))
        if truth not in aligned:  # sessions evaluated on one suite share its ground truth: aligned once
            aligned[truth] = align_split(records, read_manifest_boxes(path), split)
        for threshold in THRESHOLDS:
            conf = threshold_conf(run, split, threshold)
            if conf is None:
                continue
            if data.scores(run, split, threshold, suite_id) is None:
                raise CoverageError(f"predictions_{split}.json is not the file its metrics.json was computed from "
                                    "(report.md's warnings say why): evaluate the session again")
            frames.append(box_table(records, aligned[truth], int(part.num_classes), conf, split,
                                    data.matched(run, split, threshold, conf)).assign(threshold=threshold))
            excluded += sum(count for _, count in aligned[truth]) if threshold == THRESHOLDS[0] else 0
    return pd.concat(frames, ignore_index=True), excluded


def default_splits(runs: Iterable[SessionRun]) -> tuple[str, ...]:
    """test_occ_fixed and the severity splits every done session was evaluated on (light to heavy):
    together they span the covered fractions from light to heavy."""
    present = [{split for split in run.view.splits if severity_level(split)} for run in runs
               if run.status == SessionState.DONE]
    return (FIXED_SPLIT, *sorted(set.intersection(*present) if present else (), key=severity_level))


def coverage_report(data: ReportData, splits: Sequence[str] | None = None,
                    manifest_paths: Mapping[str, Path] | None = None) -> CoverageReport:
    """Recall by covered fraction of every done session of `data` (the report's runs, predictions and draws).

    Args:
        splits: the occluded splits to pool (each needs predictions_<split>.json and a manifest); None:
            `default_splits(runs)`.
        manifest_paths: split -> manifest.json, for splits whose manifest is not the session's suite
            (`data.suite_dir`); default: the suite of each session.

    A session whose predictions and manifest cannot be joined is left out, its reason in `problems`.
    """
    splits = tuple(dict.fromkeys(default_splits(data.runs) if splits is None else splits))
    if not splits:
        raise ValueError(f"no occluded split given: pass e.g. ({FIXED_SPLIT!r},)")
    aligned: dict[tuple[Any, ...], list[Aligned]] = {}
    curves, frames, problems = [], [], []
    for model, session in data.grouped:
        try:
            parts = [(run, *_session_boxes(run, splits, manifest_paths, data, aligned))
                     for run in data.done(model, session)]
        except CoverageError as error:
            problems.append((model, session, str(error)))
            continue
        if not parts:
            continue
        boxes = pd.concat([frame.assign(model=model, session=session, seed=run.seed) for run, frame, _ in parts],
                          ignore_index=True)
        frames.append(boxes)
        for threshold in dict.fromkeys(boxes["threshold"]):
            part = boxes[boxes["threshold"] == threshold]
            n_images = int(part["image_id"].nunique())
            bins = [bin_recalls(part, level, data.image_weights(n_images)) for level in LEVELS]
            curves.append(SessionCurve(model, session, threshold, tuple(sorted(set(part["conf"].tolist()))),
                                       pd.concat(bins, ignore_index=True), len(part), n_images,
                                       sum(excluded for _, _, excluded in parts)))
    columns = ["model", "session", "seed", "threshold", *BOX_COLUMNS]
    boxes = pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)
    return CoverageReport(curves, boxes, splits, data.n_resamples, data.seed, problems)


# ----------------------------------------------------------------------------- tables, chart, report.md

def bins_frame(report: CoverageReport) -> pd.DataFrame:
    """One row per model x session x level x bin (empty bins included): the `recall_by_coverage.csv` table."""
    columns = ["model", "session", "threshold", *BIN_COLUMNS, "conf"]
    frames = [curve.bins.assign(model=curve.model, session=curve.session, threshold=curve.threshold,
                                conf=";".join(f"{value:g}" for value in curve.conf)) for curve in report.curves]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def _bin_text(low: float, high: float) -> str:
    return f"[{low:.1f}, {high:.1f}{']' if high >= 1 else ')'}"


def chart_frame(report: CoverageReport, model: str) -> pd.DataFrame:
    """The coverage chart's frame of one model (exp3.report.plots.coverage_recall_chart): non-empty bins only, each
    session's points nudged sideways (`x`) so that the intervals of one bin do not hide each other."""
    table = bins_frame(report)
    table = table[(table["model"] == model) & (table["n_boxes"] >= MIN_BOXES_SHOWN)].copy()
    table["session_label"] = table["session"].map(SESSION_LABELS)
    table["level_label"] = table["level"].map(LEVEL_LABELS)
    table["threshold_label"] = table["threshold"].map(THRESHOLD_LABELS)
    rank = table["session_label"].map({label: index for index, label in enumerate(SESSION_ORDER)})
    width = 1.0 / N_BINS
    table["x"] = (table["covered_low"] + table["covered_high"]) / 2 + (rank - (len(SESSION_ORDER) - 1) / 2) * width / 16
    table["bin_text"] = [_bin_text(low, high) for low, high in zip(table["covered_low"], table["covered_high"])]
    return table[["model", "session_label", "threshold_label", "level_label", "conf", "bin_text", "x", "recall",
                  "ci_low", "ci_high", "n_boxes", "n_found"]].reset_index(drop=True)


def write_coverage_outputs(report: CoverageReport, root: Path, models: Sequence[str],
                           charts: bool = True) -> list[Path]:
    """`recall_by_coverage_boxes.csv`, `recall_by_coverage.csv` and one chart per model with a curve."""
    files = [atomic_write_text(root / "recall_by_coverage_boxes.csv", report.boxes.to_csv(index=False)),
             atomic_write_text(root / "recall_by_coverage.csv", bins_frame(report).to_csv(index=False))]
    if not charts:
        return files
    for model in models:
        frame = chart_frame(report, model)
        if len(frame):
            subtitle = (f"{', '.join(report.splits)}; one line per session; error bars: "
                        f"{stats.DEFAULT_CONFIDENCE:.0%} bootstrap CI over images; point size: boxes in the bin; "
                        f"bins with < {MIN_BOXES_SHOWN} boxes not drawn (see report.md)")
            files += plots.save_chart(plots.coverage_recall_chart(
                frame, title=f"Recall by covered fraction of the box: {model}", subtitle=subtitle),
                root / "plots" / f"recall_by_coverage_{model}")
    return files


def _table(curves: list[SessionCurve], level: str) -> pd.DataFrame:
    """report.md's table of one model and level: one row per non-empty bin, boxes, one column per session."""
    return pd.DataFrame([{"covered fraction": _bin_text(items[0].covered_low, items[0].covered_high),
                          "boxes": " / ".join(sorted({str(item.n_boxes) for item in items})),
                          **{SESSION_LABELS.get(curve.session, curve.session):
                             fmt_ci(item._asdict(), "recall", "ci_low", "ci_high", digits=2) if item.n_boxes else ""
                             for curve, item in zip(curves, items)}}
                         for items in zip(*(curve.level(level) for curve in curves))
                         if any(item.n_boxes for item in items)])


def coverage_markdown(report: CoverageReport, models: Sequence[str]) -> list[str]:
    """The "Recall by covered fraction" section of report.md (lines)."""
    lines = ["## Recall by covered fraction", "",
             f"Which session still finds an object when most of it is hidden? Every ground-truth box of "
             f"{', '.join(report.splits)}, binned by the fraction of it the occluders cover (suite manifest), at the "
             "primary threshold. Detection: the box is matched by a detection of its class (IoU >= match_iou, "
             "one-to-one); ingredient: its class is in the image's predicted set. Cells: recall "
             f"[{stats.DEFAULT_CONFIDENCE:.0%} bootstrap CI, images resampled ({report.n_resamples} resamples, seed "
             f"{report.seed})]; `boxes`: boxes in the bin (seeds pooled). The chart also shows each session's "
             "val-chosen threshold; per-box table (both thresholds, to re-bin): `recall_by_coverage_boxes.csv`; "
             "definitions: docs/report.md.", ""]
    if not report.curves:
        lines += ["n/a: no done session could be joined to its suite manifest.", ""]
    for model in models:
        curves = [curve for curve in report.curves if curve.model == model and curve.threshold == THRESHOLDS[0]]
        if not curves:
            continue
        excluded = sum(curve.excluded_zero_area for curve in curves)
        lines += [f"### {model}", "", f"{curves[0].n_boxes} boxes in {curves[0].n_images} images per session"
                  + (f"; {excluded} zero-area boxes left out" if excluded else "") + ".", ""]
        for level in LEVELS:
            label = LEVEL_LABELS[level]
            lines += [f"{label[0].upper()}{label[1:]}:", "", markdown_table(_table(curves, level)), ""]
    if report.problems:
        reasons: dict[str, list[str]] = {}
        for model, session, reason in report.problems:
            reasons.setdefault(reason, []).append(f"{model} {short_session(session)}")
        lines += ["Left out (predictions and suite manifest could not be joined):", ""]
        lines += [f"- {', '.join(sessions)}: {reason}" for reason, sessions in reasons.items()] + [""]
    return lines
