"""The picture gallery `plots/gallery_<model>.png`: what S1, S2 and the best masking session (ties to the earlier
session) see on a few test_occ_fixed images, from the stored `predict` records and the suite's image files (no
inference). Rows, columns and colours: GALLERY_RULE (the figure's caption) and docs/report.md, "Charts".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from exp3.evaluate.metrics import DEFAULT_CONF, ImageRecord, above, box_iou, optimal_matches, prf_from_counts
from exp3.fileio import read_json
from exp3.occlusion.identity import MANIFEST_NAME
from exp3.report import plots
from exp3.report.draws import ReportData, split_match_iou
from exp3.report.runs import SessionRun, class_name, threshold_conf
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


def _image_files(run: SessionRun) -> dict[str, Path]:
    """Image id -> occluded image file of the run's fixed suite (metrics.json data.suite_dir, its manifest)."""
    suite = run.view.data.suite_dir
    manifest = read_json(Path(suite) / MANIFEST_NAME) if suite else None
    images = manifest.get("images") if isinstance(manifest, dict) else None
    return {str(entry["id"]): Path(suite) / str(entry["occluded_image"]) for entry in images or []
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
    kept = np.flatnonzero(above(record.pred_conf, threshold_conf(run, GALLERY_SPLIT, "primary") or DEFAULT_CONF))
    iou = box_iou(record.pred_boxes[kept], record.gt_boxes)
    same = record.pred_classes[kept][:, None] == record.gt_classes[None, :]
    matched = set(optimal_matches(iou, same, split_match_iou(run.view, GALLERY_SPLIT))[0].tolist())
    boxes = tuple(GalleryBox(tuple(float(v) for v in record.pred_boxes[index]),
                             f"{names.get(int(record.pred_classes[index]), record.pred_classes[index])} "
                             f"{record.pred_conf[index]:.2f}", position in matched)
                  for position, index in enumerate(kept))
    return GalleryCell(run.suffix, boxes, f1)


def build_gallery(data: ReportData, model: str, summary: pd.DataFrame) -> Gallery | None:
    """The gallery of one model, None when S1, S2, a masking session, the predictions or the
    suite's image files are missing."""
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
    chosen = [done[suffix][0] for suffix in ("S1_clean_train", "S2_occ_train", best)]
    records = [data.records(run, GALLERY_SPLIT) for run in chosen]
    scores = [data.scores(run, GALLERY_SPLIT) for run in chosen]
    files = _image_files(chosen[0])
    if any(item is None for item in (*records, *scores)) or not files:
        return None
    f1 = [_per_image_f1(frame) for frame in scores]
    common = sorted(set(f1[0].index) & set(f1[1].index) & set(f1[2].index) & set(files))
    if not common:
        return None
    f1 = [frame.loc[common] for frame in f1]
    first = _largest(f1[1] - f1[0])
    second = _largest((f1[2] - f1[0]).drop(index=first)) if named else None
    picked = [(first, "1: largest S2 - S1")]
    picked += [(second, f"2: largest {SESSION_LABELS[best].split()[0]} - S1")] if second is not None else []
    rest = [image for image in common if image not in {first, second}]
    drawn = np.random.default_rng(GALLERY_SEED).choice(len(rest), size=min(2, len(rest)), replace=False)
    picked += [(rest[index], f"{3 + number}: random draw") for number, index in enumerate(sorted(drawn))]
    by_id = [{record.image_id: record for record in session_records} for session_records in records]
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
