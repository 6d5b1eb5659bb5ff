"""The picture gallery `plots/gallery_<model>.png`: what S1, S2 and the best masking session see on a few
test_occ_fixed images, from the stored `predict` records and the suite's image files (no inference).

Rows, by a rule fixed in advance (GALLERY_RULE, also the figure's caption):
1. the image with the largest per-image ingredient F1 difference S2 - S1 (ties: the larger per-image
   detection F1 difference, then the smaller image id);
2. the same for best masking - S1, among the other images; the best masking session is the done masking
   session (S3-S6) with the highest ingredient micro F1 on test_occ_fixed (ties: the earlier session);
3-4. two of the remaining images drawn with `numpy.random.default_rng(GALLERY_SEED)` from the sorted ids.
With several seeds a session is shown by its lowest done seed. Columns: the occluded image with its ground
truth, then each session's predictions at the primary threshold (class name + confidence; green = matched
to a ground-truth box one-to-one at IoU >= match_iou with the same class, exp3.evaluate.metrics.optimal_matches;
red = unmatched; the ground truth in thin white for reference).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from exp3.evaluate.metrics import DEFAULT_CONF, ImageRecord, box_iou, optimal_matches, prf_from_counts
from exp3.occlusion.identity import MANIFEST_NAME
from exp3.report import plots
from exp3.report.draws import ReportData, split_match_iou
from exp3.report.runs import SessionRun, threshold_conf
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


def _class_names(run: SessionRun, split: str) -> dict[int, str]:
    """Class id -> name from metrics.json's `per_class` (a block the typed view does not read)."""
    part = ((run.metrics or {}).get("splits") or {}).get(split) or {}
    entries = part.get("per_class") or []
    return {int(entry["class_id"]): str(entry.get("name", entry["class_id"])) for entry in entries
            if isinstance(entry, dict) and "class_id" in entry}


def _image_files(run: SessionRun) -> dict[str, Path]:
    """Image id -> occluded image file of the run's fixed suite (metrics.json data.suite_dir, its manifest)."""
    suite = run.view.data.suite_dir
    if not suite:
        return {}
    try:
        manifest = json.loads((Path(suite) / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(entry["id"]): Path(suite) / str(entry["occluded_image"]) for entry in manifest.get("images") or []
            if isinstance(entry, dict) and entry.get("occluded_image") and "id" in entry}


def _per_image_f1(frame: pd.DataFrame) -> pd.DataFrame:
    detection = prf_from_counts(frame["detection_tp"].to_numpy(), frame["detection_fp"].to_numpy(),
                                frame["detection_fn"].to_numpy())[2]
    return pd.DataFrame({"ingredient": frame["ingredient_f1"].to_numpy(), "detection": detection}, index=frame.index)


def _largest(gain: pd.DataFrame, exclude: set[str]) -> str | None:
    """The image id with the largest (ingredient, detection) difference, ties to the smaller id."""
    part = gain.drop(index=[image for image in exclude if image in gain.index])
    if not len(part):
        return None
    ordered = part.assign(image_id=part.index).sort_values(["ingredient", "detection", "image_id"],
                                                           ascending=[False, False, True], kind="stable")
    return str(ordered.index[0])


def _cell(record: ImageRecord, suffix: str, conf: float, iou_needed: float, names: dict[int, str],
          f1: float) -> GalleryCell:
    kept = np.flatnonzero(record.pred_conf >= conf)
    iou = box_iou(record.pred_boxes[kept], record.gt_boxes)
    same = record.pred_classes[kept][:, None] == record.gt_classes[None, :]
    matched = set(optimal_matches(iou, same, iou_needed)[0].tolist())
    boxes = tuple(GalleryBox(tuple(float(v) for v in record.pred_boxes[index]),
                             f"{names.get(int(record.pred_classes[index]), record.pred_classes[index])} "
                             f"{record.pred_conf[index]:.2f}", position in matched)
                  for position, index in enumerate(kept))
    return GalleryCell(suffix, boxes, f1)


def build_gallery(data: ReportData, model: str, summary: pd.DataFrame, n_random: int = 2) -> Gallery | None:
    """The gallery of one model (module docstring), None when S1, S2, a masking session, the predictions or the
    suite's image files are missing."""
    done = {suffix: sorted(data.done(model, suffix), key=lambda run: (run.seed is None, run.seed or 0))
            for suffix in SESSION_SUFFIXES}
    part = summary[(summary["model"] == model) & (summary["split"] == GALLERY_SPLIT)
                   & summary["session"].isin(SESSION_SUFFIXES[2:]) & summary["ingredient_micro_f1"].notna()]
    part = part[part["session"].map(lambda suffix: bool(done[suffix]))]
    if not done["S1_clean_train"] or not done["S2_occ_train"] or not len(part):
        return None
    best = str(part.assign(order=part["session"].map(SESSION_SUFFIXES.index))
               .sort_values(["ingredient_micro_f1", "order"], ascending=[False, True]).iloc[0]["session"])
    sessions = ("S1_clean_train", "S2_occ_train", best)
    chosen = [done[suffix][0] for suffix in sessions]
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
    first = _largest(f1[1] - f1[0], set())
    second = _largest(f1[2] - f1[0], {first})
    picked = [(first, "1: largest S2 - S1"), (second, f"2: largest {SESSION_LABELS[best].split()[0]} - S1")]
    rest = [image for image in common if image not in {first, second}]
    drawn = np.random.default_rng(GALLERY_SEED).choice(len(rest), size=min(n_random, len(rest)), replace=False)
    picked += [(rest[index], f"{3 + number}: random draw") for number, index in enumerate(sorted(drawn))]
    by_id = [{record.image_id: record for record in session_records} for session_records in records]
    names = _class_names(chosen[0], GALLERY_SPLIT)
    rows = []
    for image_id, reason in picked:
        if image_id is None:
            continue
        gt_record = by_id[0][image_id]
        ground_truth = tuple(GalleryBox(tuple(float(v) for v in box), names.get(int(cls), str(cls)), True)
                             for box, cls in zip(gt_record.gt_boxes, gt_record.gt_classes))
        cells = []
        for run, lookup, frame, suffix in zip(chosen, by_id, f1, sessions):
            conf = threshold_conf(run, GALLERY_SPLIT, "primary") or DEFAULT_CONF
            cells.append(_cell(lookup[image_id], suffix, conf, split_match_iou(run.view, GALLERY_SPLIT), names,
                               float(frame.loc[image_id, "ingredient"])))
        rows.append(GalleryRow(image_id, files[image_id], reason, ground_truth, tuple(cells)))
    return Gallery(model, sessions, tuple(rows))


def write_galleries(data: ReportData, models: list[str], summary: pd.DataFrame, plots_dir: Path) -> list[Path]:
    """plots/gallery_<model>.png for every model with a gallery."""
    written = []
    for model in models:
        gallery = build_gallery(data, model, summary)
        if gallery is not None:
            written.append(plots.save_gallery(gallery, plots_dir / f"gallery_{model}.png"))
    return written
