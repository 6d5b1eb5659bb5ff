"""Datasets: read any Ultralytics YOLO `data.yaml`, audit it, fingerprint it.

What a split and its labels may be (Ultralytics' rules): docs/occlusion.md, "Input".
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict

from exp3.dataset.labels import box_in_bounds, parse_label_text
from exp3.fileio import atomic_write_json, read_yaml, sha256_bytes, sha256_file
from exp3.splits import SOURCE_SPLITS

READABLE_FORMATS: frozenset[str] = frozenset({"avif", "bmp", "dng", "heic", "heif", "jp2", "jpeg", "jpeg2000", "jpg",
                                              "mpo", "png", "tif", "tiff", "webp"})
"""Image formats (PIL's name, lower case) Ultralytics reads: `ultralytics.data.utils.IMG_FORMATS` and jpeg2000, as
its `check_image` (tests/test_dataset.py keeps them equal; importing Ultralytics here would precede its offline
setup); it skips an image of any other format, or one with a side under MIN_IMAGE_SIDE px."""
IMAGE_SUFFIXES: frozenset[str] = frozenset(f".{kind}" for kind in READABLE_FORMATS - {"jpeg2000"})
"""The file suffixes a split's images have: those Ultralytics' loader takes (`IMG_FORMATS`), so that both see the
same images."""
MIN_IMAGE_SIDE = 10


class DatasetError(ValueError):
    """A dataset that cannot be read; the message is one line naming the value and the fix."""


@dataclass(frozen=True)
class DataSpec:
    """A parsed data.yaml: absolute root, split -> list of sources, class names by index."""

    yaml_path: Path
    root: Path
    splits: dict[str, list[Path]]
    names: list[str]


# ---------------------------------------------------------------------------------------------
# Reading


def _names_list(names: Any, yaml_path: Path) -> list[str]:
    if isinstance(names, list) and names:
        return [str(name) for name in names]
    if isinstance(names, dict) and names:
        try:
            indices = sorted(int(key) for key in names)
        except (TypeError, ValueError):
            raise DatasetError(f"{str(yaml_path)!r}: 'names' keys must be class indices 0..N-1") from None
        if indices != list(range(len(indices))):
            raise DatasetError(
                f"{str(yaml_path)!r}: 'names' indices {indices} must be 0..{len(indices) - 1} with no gaps")
        return [str(names[key]) for key in sorted(names, key=int)]
    raise DatasetError(
        f"{str(yaml_path)!r}: 'names' is missing or empty: list the class names, e.g. names: [tomato, egg]")


def read_data_yaml(path: str | os.PathLike[str]) -> DataSpec:
    """Parse a YOLO data.yaml into a `DataSpec`; raise `DatasetError` with the fix if it is bad (an `nc:` that is
    not the number of `names` included: Ultralytics refuses that yaml)."""
    yaml_path = Path(path).absolute()
    data = read_yaml(yaml_path, "dataset yaml", "pass the path of your data.yaml", DatasetError)
    if not isinstance(data, dict):
        raise DatasetError(f"dataset yaml {str(yaml_path)!r} must be a mapping with path/train/val/test/names")
    root_value = data.get("path")
    root = Path(str(root_value)) if root_value else yaml_path.parent
    if not root.is_absolute():
        root, theirs = (yaml_path.parent / root).resolve(), root.resolve()
        if theirs != root:  # Ultralytics reads a relative `path:` from the working directory: other images
            raise DatasetError(f"{str(yaml_path)!r}: 'path: {root_value}' is relative: exp3 reads it from the yaml's "
                               f"folder ({root}), Ultralytics from the working directory ({theirs}): write it as an "
                               "absolute path, or run from the yaml's folder")
    if not root.is_dir():
        raise DatasetError(f"dataset root {str(root)!r} (from 'path:' in {yaml_path.name}) does not exist: fix 'path:'")
    root = root.resolve()
    splits: dict[str, list[Path]] = {}
    for split in SOURCE_SPLITS:
        value = data.get(split)
        if value in (None, ""):
            continue
        entries = value if isinstance(value, list) else [value]
        splits[split] = [_split_source(root, str(entry), alone=not isinstance(value, list)) for entry in entries]
    names = _names_list(data.get("names"), yaml_path)
    if "nc" in data and data["nc"] != len(names):  # Ultralytics refuses it in every session, after the suites are built
        raise DatasetError(f"{str(yaml_path)!r}: 'nc: {data['nc']}' but 'names' lists {len(names)} classes: "
                           f"set nc: {len(names)} or remove 'nc:'")
    if data.get("channels", 3) != 3:  # Ultralytics builds S1's model for it, but S2's and the suites' yamls are 3
        raise DatasetError(f"{str(yaml_path)!r}: 'channels: {data['channels']}': exp3 trains, occludes and evaluates "
                           "3-channel images: remove 'channels:' (or set it to 3)")
    return DataSpec(yaml_path=yaml_path, root=root, splits=splits, names=names)


def _split_source(root: Path, entry: str, alone: bool) -> Path:
    """A split's folder or list as Ultralytics' `check_det_dataset` makes it (docs/occlusion.md, "Input"), so both read
    the same images and labels; a lone `../x` that does not exist is read as `x`."""
    source = (root / entry).resolve()
    return (root / entry[3:]).resolve() if alone and not source.exists() and entry.startswith("../") else source


def label_path_for(image_path: Path) -> Path:
    """The YOLO label file of an image: last `/images/` component -> `/labels/`, suffix -> `.txt`."""
    parts = list(image_path.parts)
    for index in range(len(parts) - 1, -1, -1):
        if parts[index] == "images":
            parts[index] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def list_split_images(spec: DataSpec, split: str) -> list[Path]:
    """Sorted image paths of `split`, the images Ultralytics' loader takes (`BaseDataset.get_img_files`: IMAGE_SUFFIXES,
    no hidden file or folder, such as macOS's `._x.jpg`); raise `DatasetError` if a source does not exist."""
    if split not in spec.splits:
        raise DatasetError(f"{str(spec.yaml_path)!r} has no '{split}:' split: add it (exp3 needs train, val and test)")
    images: list[Path] = []
    for source in spec.splits[split]:
        if source.is_dir():  # Ultralytics' glob: symlinked folders followed, hidden files and folders left out
            images.extend(Path(p) for p in glob.glob(str(Path(glob.escape(source)) / "**" / "*.*"), recursive=True)
                          if Path(p).suffix.lower() in IMAGE_SUFFIXES and os.path.isfile(p))
        elif source.is_file():
            images.extend(_listed_images(source, split))
        else:
            raise DatasetError(
                f"split '{split}' source {str(source)!r} does not exist: fix '{split}:' in {spec.yaml_path.name}")
    return sorted(images)


def _listed_images(source: Path, split: str) -> list[Path]:
    """The images of a list file, read as Ultralytics reads one (`./x` from the list's folder, another relative
    entry from the working directory); `DatasetError` for a file that is no text, a line naming no file, one with
    spaces or a byte-order mark around its path (Ultralytics would skip that image), a relative one whose label
    Ultralytics would look for elsewhere than exp3, or one named twice (Ultralytics would skip the first as corrupt
    and score the second twice)."""
    try:
        text = source.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as error:
        raise DatasetError(f"split '{split}' source {str(source)!r} is neither a folder nor a list of image paths "
                           f"({type(error).__name__}): point '{split}:' at a folder of images or a text file of paths")
    first_line: dict[Path, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"split '{split}' list {str(source)!r} line {number} ({line!r})"
        if line != line.strip() or line.startswith("\ufeff"):
            raise DatasetError(f"{where} has spaces or a byte-order mark around the path: Ultralytics would skip "
                               "that image; remove them")
        entry = (source.parent / line[2:] if line.startswith("./") else Path(line)).absolute()
        if entry.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if not entry.is_file():
            raise DatasetError(f"{where} names no file: restore the image or remove the line")
        if not line.startswith("./") and not Path(line).is_absolute() and f"{os.sep}images{os.sep}" not in line \
                and label_path_for(entry).parent != entry.parent:  # Ultralytics' img2label_paths on the line's text
            raise DatasetError(f"{where} is relative to the working directory with no '/images/' in it: Ultralytics "
                               "then looks for its label beside the image, not under labels/; write the line as "
                               "./<path from the list's folder> or as an absolute path")
        if entry in first_line:
            raise DatasetError(f"{where} repeats line {first_line[entry]}: remove the repeated line")
        first_line[entry] = number
    return list(first_line)


# ---------------------------------------------------------------------------------------------
# Auditing


@dataclass(frozen=True)
class Problem:
    """One finding of the audit."""

    kind: str
    split: str
    file: str
    detail: str


BLOCKING_KINDS: dict[str, str] = {
    "missing_split": "add the split to data.yaml (exp3 evaluates on test and selects checkpoints on val)",
    "missing_split_source": "fix the split's entry in data.yaml, or the list file it names",
    "empty_split": "put images in the split or point it at the right folder",
    "class_id_out_of_range": "fix the label or add the class to 'names'",
    "malformed_label_line": "each line must be a box 'class cx cy w h' or a polygon 'class x1 y1 x2 y2 x3 y3 ...'",
    "box_out_of_bounds": "box centre/size (or polygon points) must lie in [0, 1] (normalised) with w, h > 0",
    "corrupt_image": "re-export or remove the image",
    "image_skipped_by_ultralytics": "re-save it as JPEG or PNG of at least 10 x 10 px, or remove it: Ultralytics "
                                    "skips it, so training and evaluation would run on fewer images than the split",
    "jpeg_rewritten_by_ultralytics": "re-save it (e.g. PIL: Image.open(p).save(p)): Ultralytics rewrites a JPEG that "
                                     "lacks its end marker in place, changing the dataset under a running grid",
    "image_not_8_bit": "convert it to 8 bits per channel as Ultralytics reads it (e.g. cv2.imwrite(p, cv2.imread(p))): "
                       "Ultralytics scales a 16-bit or float image to 8 bits, while the occluded copies would clip it",
    "no_boxes_in_split": "label the split's images (a labels/ folder beside images/, see docs/occlusion.md): with no "
                         "box, every session would score a perfect F1 on nothing",
    "image_id_shared_across_splits": "rename the image so each id (file stem) lives in one split: the occluded copies "
                                     "and the predictions are keyed by it",
    "image_id_repeated_in_split": "rename one (e.g. cam2_0001.jpg): an image's id is its file stem, unique in its "
                                  "split (predictions, occluded copies and paired statistics are keyed by it)",
    "duplicate_image_across_splits": "remove the duplicate: the same picture in two splits leaks test data",
}
AUDIT_RULES = 5
"""Version of the audit's checks, in its cache file's name: a dataset audited under older rules is audited again."""
WARNING_KINDS: dict[str, str] = {
    "image_without_label": "fine for background images; otherwise add its label file",
    "label_without_image": "delete the orphan label or restore its image",
}


@dataclass
class AuditReport:
    """Everything the audit found; `blocking` is True if any blocking problem was found."""

    data_yaml: str
    names: list[str]
    splits: dict[str, dict[str, Any]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    fingerprint: str = ""

    @property
    def counts(self) -> dict[str, int]:
        return dict(Counter(problem.kind for problem in self.problems))

    @property
    def blocking(self) -> bool:
        return any(problem.kind in BLOCKING_KINDS for problem in self.problems)

    def to_json(self) -> dict[str, Any]:
        return {
            "data_yaml": self.data_yaml,
            "names": self.names,
            "fingerprint": self.fingerprint,
            "blocking": self.blocking,
            "counts": self.counts,
            "splits": self.splits,
            "problems": [asdict(problem) for problem in self.problems],
        }

    def summary_lines(self) -> list[str]:
        """One line per problem kind: severity, kind, count, an example and the fix."""
        lines = []
        for kind, count in sorted(self.counts.items(), key=lambda item: (item[0] not in BLOCKING_KINDS, item[0])):
            severity = "error" if kind in BLOCKING_KINDS else "warning"
            fix = BLOCKING_KINDS.get(kind) or WARNING_KINDS[kind]
            example = next(problem for problem in self.problems if problem.kind == kind)
            where = f"{example.split}:{example.file}" if example.file else example.split
            lines.append(f"{severity}: {kind}: {count} (e.g. {where} {example.detail}) -> {fix}")
        return lines


def _image_problem(path: Path, data: bytes) -> tuple[str, str] | None:
    """(kind, reason) when Ultralytics would not read the image (`data`: its bytes) as it is, by the rules of its
    `ultralytics.data.utils.check_image` (which skips the image, or repairs a JPEG in place); None when it would."""
    try:
        with Image.open(path) as image:
            image.verify()
            kind, (width, height), mode = (image.format or "").lower(), image.size, image.mode
        with Image.open(path) as image:
            image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        return "corrupt_image", str(error).splitlines()[0][:120] or type(error).__name__
    if kind not in READABLE_FORMATS or min(width, height) < MIN_IMAGE_SIDE:
        return "image_skipped_by_ultralytics", f"{kind.upper() or 'unknown format'}, {width} x {height} px"
    if kind in ("jpeg", "jpg") and data[-2:] != b"\xff\xd9":
        return "jpeg_rewritten_by_ultralytics", "the JPEG does not end with its end marker (FF D9)"
    if mode.startswith("I") or mode == "F":  # 16/32-bit integer or float pixels (PIL modes I;16, I, F)
        return "image_not_8_bit", f"{kind.upper()} of PIL mode {mode}"
    return None


def audit_dataset(data_yaml: str | os.PathLike[str]) -> AuditReport:
    """Audit a YOLO dataset: data problems go into the report; `DatasetError` only when the yaml cannot be read."""
    spec = read_data_yaml(data_yaml)
    return _audit(spec, dataset_fingerprint(spec))


def _audit(spec: DataSpec, fingerprint: str) -> AuditReport:
    """The audit of `spec`, whose `dataset_fingerprint` the caller has computed (not hashed again here)."""
    report = AuditReport(data_yaml=str(spec.yaml_path), names=spec.names, fingerprint=fingerprint)
    split_of_id: dict[str, str] = {}
    split_of_sha: dict[str, str] = {}
    path_of_id: dict[tuple[str, str], str] = {}
    for split in SOURCE_SPLITS:
        if split not in spec.splits:
            report.problems.append(Problem("missing_split", split, "", f"no '{split}:' in data.yaml"))
            continue
        try:
            images = list_split_images(spec, split)
        except DatasetError as error:
            report.problems.append(Problem("missing_split_source", split, "", str(error)))
            continue
        if not images:
            report.problems.append(Problem("empty_split", split, "", "no images found"))
        stats = {"images": len(images), "labelled_images": 0, "instances": 0, "instances_per_class": Counter()}
        for image in images:
            relative = os.path.relpath(image, spec.root)
            image_bytes = image.read_bytes()
            image_sha = sha256_bytes(image_bytes)
            if (problem := _image_problem(image, image_bytes)) is not None:
                report.problems.append(Problem(problem[0], split, relative, problem[1]))
            image_id = image.stem
            if (split, image_id) in path_of_id:
                report.problems.append(Problem("image_id_repeated_in_split", split, relative,
                                               f"id {image_id!r} also at {path_of_id[split, image_id]}"))
            path_of_id.setdefault((split, image_id), relative)
            if split_of_id.setdefault(image_id, split) != split:
                report.problems.append(Problem("image_id_shared_across_splits", split, relative,
                                               f"id {image_id!r} also in {split_of_id[image_id]}"))
            if split_of_sha.setdefault(image_sha, split) != split:
                report.problems.append(Problem("duplicate_image_across_splits", split, relative,
                                               f"same bytes as an image in {split_of_sha[image_sha]}"))
            label = label_path_for(image)
            if not label.is_file():
                report.problems.append(Problem("image_without_label", split, relative, "no label file"))
                continue
            stats["labelled_images"] += 1
            rows, malformed = parse_label_text(label.read_text(encoding="utf-8", errors="replace"))
            label_relative = os.path.relpath(label, spec.root)
            for number, why in malformed:
                report.problems.append(Problem("malformed_label_line", split, f"{label_relative}:{number}", why))
            for row in rows:
                if not 0 <= row.class_id < len(spec.names):
                    report.problems.append(Problem("class_id_out_of_range", split, label_relative,
                                                   f"class {row.class_id}, names has {len(spec.names)}"))
                if not box_in_bounds(row):
                    what = "polygon with box" if row.is_polygon else "box"
                    report.problems.append(Problem("box_out_of_bounds", split, label_relative,
                                                   f"{what} {' '.join(f'{v:g}' for v in row.box)}"))
                stats["instances_per_class"][row.class_id] += 1
            stats["instances"] += len(rows)
        image_labels = {label_path_for(image) for image in images}
        label_dirs = [label_path_for(source / "x.jpg").parent for source in spec.splits[split] if source.is_dir()]
        orphans = [label for label_dir in label_dirs if label_dir.is_dir() for label in sorted(label_dir.rglob("*.txt"))
                   if label not in image_labels]
        report.problems.extend(Problem("label_without_image", split, os.path.relpath(label, spec.root),
                                       "no image with this stem") for label in orphans)
        if images and not stats["instances"]:
            report.problems.append(Problem("no_boxes_in_split", split, "",
                                           f"{len(images)} images, {stats['labelled_images']} label files, no box"))
        stats["instances_per_class"] = {spec.names[k] if 0 <= k < len(spec.names) else str(k): v
                                        for k, v in sorted(stats["instances_per_class"].items())}
        report.splits[split] = stats
    return report


def dataset_fingerprint(spec: DataSpec) -> str:
    """16-hex content hash of a dataset: class names + every split's (path, image sha256, label sha256).
    Any changed, added or removed image or label changes it; moving the dataset does not."""
    digest = hashlib.sha256("\n".join(spec.names).encode())
    for split in SOURCE_SPLITS:
        try:
            images = list_split_images(spec, split)
        except DatasetError:  # a missing split or source: the audit reports it
            continue
        for image in images:
            label = label_path_for(image)
            label_sha = sha256_file(label) if label.is_file() else "-"
            digest.update(f"{split}/{os.path.relpath(image, spec.root)}:{sha256_file(image)}:{label_sha}\n".encode())
    return digest.hexdigest()[:16]


class AuditedData(BaseModel):
    """A dataset that passed its audit: its data.yaml and content fingerprint (`dataset_fingerprint`), handed
    from the flow's audit task to `exp3.session.prepare.prepare_data(audited=...)` so a run hashes it once."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    data_yaml: str
    fingerprint: str
    warnings: tuple[str, ...] = ()
    """The audit's warning lines (`AuditReport.summary_lines`): the flow logs them."""


def audit_failure(data_yaml: str | os.PathLike[str], summary_lines: list[str]) -> DatasetError:
    """The one-line refusal of a dataset whose audit found blocking problems (`AuditReport.summary_lines`)."""
    errors = [line for line in summary_lines if line.startswith("error")]
    return DatasetError(f"dataset {str(data_yaml)!r} fails the audit: {' | '.join(errors)} "
                        f"(full report: python -m exp3.dataset audit --data {data_yaml})")


def audit_once(data_yaml: str | os.PathLike[str], cache_dir: Path) -> AuditedData:
    """The dataset as it is now, audited once per content; its fingerprint is computed once here.

    The report is cached as `<cache_dir>/audit-<fingerprint>-rules<AUDIT_RULES>.json`: any change to an
    image or label (or to the audit's rules) runs the audit again. Raises `DatasetError` (one line per problem
    kind, joined) if the dataset has blocking problems.
    """
    spec = read_data_yaml(data_yaml)
    fingerprint = dataset_fingerprint(spec)
    cached = Path(cache_dir) / f"audit-{fingerprint}-rules{AUDIT_RULES}.json"
    if cached.is_file():
        report = json.loads(cached.read_text(encoding="utf-8"))
    else:
        audit = _audit(spec, fingerprint)
        report = {**audit.to_json(), "summary_lines": audit.summary_lines()}
        atomic_write_json(cached, report)
    if report["blocking"]:
        raise audit_failure(spec.yaml_path, report["summary_lines"])
    return AuditedData(data_yaml=str(data_yaml), fingerprint=fingerprint,
                       warnings=tuple(line for line in report["summary_lines"] if line.startswith("warning")))
