"""The picture gallery `plots/gallery_<model>.png`: what S1, S2 and the best masking session (ties to the earlier
session) see on a few test_occ_fixed images, from the stored `predict` records and the suite's image files (no
inference). Rows, columns and colours: GALLERY_RULE (the figure's caption) and docs/report.md, "Charts".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from exp3.evaluate.metrics import ImageRecord, above, box_iou, optimal_matches, prf_from_counts
from exp3.fileio import read_json
from exp3.report import plots
from exp3.report.coverage import CoverageError, suite_manifest
from exp3.report.draws import ReportData, align, split_match_iou
from exp3.report.runs import SessionRun, class_name, threshold_conf
from exp3.report.text import short_session
from exp3.sessions import SESSION_LABELS, SESSION_SUFFIXES
from exp3.splits import FIXED_SPLIT

GALLERY_SPLIT = FIXED_SPLIT
"""The split the gallery shows: the primary occluded suite."""
GALLERY_SEED = 0
GALLERY_RULE = ("Rows (rule fixed in advance): 1 = largest per-image ingredient F1 difference S2 - S1; 2 = largest "
                "best-masking - S1 among the others (best masking: highest ingredient micro F1 on test_occ_fixed); "
                f"3-4 = two others drawn with numpy default_rng({GALLERY_SEED}). Ties: larger detection F1 difference, "
                "then smaller image id. Boxes at the primary threshold: green = matched to a ground-truth box (same "
                "class, IoU >= 0.5), red = unmatched; white = ground truth.")

NOTHING_NAMED = (" No masking session names any ingredient on test_occ_fixed (F1 0): there is no best masking "
                 "session; the third column is {}, the first in session order, and row 2 is left out.")


@dataclass(frozen=True)
class GalleryBox:
    xyxy: tuple[float, float, float, float]
    label: str
    matched: bool


@dataclass(frozen=True)
class GalleryCell:
    """One session's view of one image: its kept boxes and its per-image ingredient F1."""

    session: str
    boxes: tuple[GalleryBox, ...]
    ingredient_f1: float


@dataclass(frozen=True)
class GalleryRow:
    image_id: str
    image_path: Path
    reason: str
    ground_truth: tuple[GalleryBox, ...]
    cells: tuple[GalleryCell, ...]


@dataclass(frozen=True)
class Gallery:
    model: str
    sessions: tuple[str, ...]
    rows: tuple[GalleryRow, ...]
    caption: str = GALLERY_RULE


def _image_files(manifest_path: Path) -> dict[str, Path]:
    """Image id -> occluded image file of a suite (its manifest.json)."""
    manifest = read_json(manifest_path)
    images = manifest.get("images") if isinstance(manifest, dict) else None
    return {str(entry["id"]): manifest_path.parent / str(entry["occluded_image"]) for entry in images or []
            if isinstance(entry, dict) and entry.get("occluded_image") and "id" in entry}


def _per_image_f1(frame: pd.DataFrame) -> pd.DataFrame:
    detection = prf_from_counts(frame["detection_tp"].to_numpy(), frame["detection_fp"].to_numpy(),
                                frame["detection_fn"].to_numpy())[2]
    return pd.DataFrame({"ingredient": frame["ingredient_f1"].to_numpy(), "detection": detection}, index=frame.index)


def _largest(gain: pd.DataFrame) -> str | None:
    """The image id with the largest (ingredient, detection) difference, ties to the smaller id."""
    ordered = gain.assign(image_id=gain.index).sort_values(["ingredient", "detection", "image_id"],
                                                           ascending=[False, False, True], kind="stable")
    return str(ordered.index[0]) if len(ordered) else None


def _cell(record: ImageRecord, run: SessionRun, names: dict[int, str], f1: float) -> GalleryCell:
    """One session's boxes on one image at the primary threshold, each matched or not (`optimal_matches`)."""
    kept = np.flatnonzero(above(record.pred_conf, threshold_conf(run, GALLERY_SPLIT, "primary")))
    iou = box_iou(record.pred_boxes[kept], record.gt_boxes)
    same = record.pred_classes[kept][:, None] == record.gt_classes[None, :]
    matched = set(optimal_matches(iou, same, split_match_iou(run.view, GALLERY_SPLIT))[0].tolist())
    boxes = tuple(GalleryBox(tuple(float(v) for v in record.pred_boxes[index]),
                             f"{names.get(int(record.pred_classes[index]), record.pred_classes[index])} "
                             f"{record.pred_conf[index]:.2f}", position in matched)
                  for position, index in enumerate(kept))
    return GalleryCell(run.suffix, boxes, f1)


def build_gallery(data: ReportData, model: str, summary: pd.DataFrame) -> Gallery | None:
    """The gallery of one model, None when S1, S2 or a masking session is not done, or (a line in `data.warnings`)
    when their predictions or the suite's manifest cannot be shown together."""
    done = {suffix: sorted(data.done(model, suffix), key=lambda run: (run.seed is None, run.seed or 0))
            for suffix in SESSION_SUFFIXES}
    part = summary[(summary["model"] == model) & (summary["split"] == GALLERY_SPLIT)
                   & summary["session"].isin([suffix for suffix in SESSION_SUFFIXES[2:] if done[suffix]])
                   & summary["ingredient_micro_f1"].notna()]
    if not done["S1_clean_train"] or not done["S2_occ_train"] or not len(part):
        return None
    best = str(part.assign(order=part["session"].map(SESSION_SUFFIXES.index))
               .sort_values(["ingredient_micro_f1", "order"], ascending=[False, True]).iloc[0]["session"])
    named = bool(part["ingredient_micro_f1"].max() > 0)  # else no best masking session: row 2 is left out
    suffixes = ("S1_clean_train", "S2_occ_train", best)
    chosen = [done[suffix][0] for suffix in suffixes]
    try:  # the fixed suite S1 was evaluated on, its manifest checked as coverage reads it
        manifest, suite_id = suite_manifest(chosen[0].view, GALLERY_SPLIT)
    except CoverageError as error:
        data.warnings.append(f"{model}: no picture gallery: {error}")
        return None
    files = _image_files(manifest)
    scores = [data.scores(run, GALLERY_SPLIT, suite_id=suite_id) for run in chosen]
    aligned = align(scores)
    if aligned.reason or not set(aligned.ids) <= set(files):
        data.warnings.append(f"{model}: no picture gallery: {', '.join(map(short_session, suffixes))} need "
                             f"per-image predictions on {GALLERY_SPLIT} of suite {suite_id}, of the same images as "
                             "its manifest: evaluate them on that suite")
        return None
    common = list(aligned.ids)
    f1 = [_per_image_f1(frame).loc[common] for frame in scores]
    first = _largest(f1[1] - f1[0])
    second = _largest((f1[2] - f1[0]).drop(index=first)) if named else None
    picked = [(first, "1: largest S2 - S1")]
    picked += [(second, f"2: largest {SESSION_LABELS[best].split()[0]} - S1")] if second is not None else []
    rest = [image for image in common if image not in {first, second}]
    drawn = np.random.default_rng(GALLERY_SEED).choice(len(rest), size=min(2, len(rest)), replace=False)
    picked += [(rest[index], f"{3 + number}: random draw") for number, index in enumerate(sorted(drawn))]
    by_id = [{record.image_id: record for record in data.records(run, GALLERY_SPLIT)} for run in chosen]
    names = {int(entry.class_id): class_name(entry) for entry in chosen[0].view.split(GALLERY_SPLIT).per_class
             if entry.class_id is not None}
    rows = []
    for image_id, reason in picked:
        truth = by_id[0][image_id]
        ground_truth = tuple(GalleryBox(tuple(float(v) for v in box), names.get(int(cls), str(cls)), True)
                             for box, cls in zip(truth.gt_boxes, truth.gt_classes))
        cells = tuple(_cell(lookup[image_id], run, names, float(frame.loc[image_id, "ingredient"]))
                      for run, lookup, frame in zip(chosen, by_id, f1))
        rows.append(GalleryRow(image_id, files[image_id], reason, ground_truth, cells))
    caption = GALLERY_RULE if named else GALLERY_RULE + NOTHING_NAMED.format(SESSION_LABELS[best])
    return Gallery(model, tuple(run.suffix for run in chosen), tuple(rows), caption)


def write_galleries(data: ReportData, models: list[str], summary: pd.DataFrame, plots_dir: Path) -> list[Path]:
    """plots/gallery_<model>.png for every model with a gallery."""
    galleries = {model: build_gallery(data, model, summary) for model in models}
    return [plots.save_gallery(gallery, plots_dir / f"gallery_{model}.png") for model, gallery in galleries.items()
            if gallery is not None]
