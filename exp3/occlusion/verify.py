"""Checking a built suite or S2 train set against its manifest (`verify_occlusion_suite`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from exp3.fileio import sha256_file
from exp3.occlusion.geometry import covered_fractions, rect_mask
from exp3.occlusion.identity import MANIFEST_NAME, SEVERITY_KIND, TRAIN_SET_KIND, _identity, _suite_name
from exp3.splits import PRIMARY_SPLITS

IGNORED_FILE_NAMES = frozenset({"labels.cache"})
"""Files `verify` tolerates although the manifest does not list them: Ultralytics writes
`<split>/labels.cache` next to a split's `labels/` directory the first time it evaluates on it. Hidden files
(`.DS_Store`, a file manager's) are tolerated too: Ultralytics' listing (`glob` of `*.*`) never reads them."""


def _check_yaml_paths(suite_dir: Path, manifest: dict[str, Any]) -> list[str]:
    """The data yamls must point into this very directory (they hold absolute paths)."""
    expected = (
        {"data.yaml": suite_dir}
        if manifest.get("kind") == TRAIN_SET_KIND
        else {f"{manifest.get('split')}.yaml": suite_dir / str(manifest.get("split"))}
        if manifest.get("kind") == SEVERITY_KIND
        else {f"{split}.yaml": suite_dir / split for split in PRIMARY_SPLITS}
    )
    problems = []
    for name, path in expected.items():
        try:
            data = yaml.safe_load((suite_dir / name).read_text(encoding="utf-8"))
            pointed = Path(str(data.get("path")))
        except (OSError, yaml.YAMLError, AttributeError):
            continue  # missing/modified files are reported by the hash check
        if pointed.resolve() != path.resolve():
            problems.append(f"{name}: path: is {str(pointed)!r}, not this suite ({str(path)!r}): "
                            "the suite was moved; build it again at its new place")
    return problems + [f"data.yaml: the original {split} split {location!r} no longer exists: restore it or build again"
                       for split, locations in (manifest.get("references") or {}).items()
                       for location in locations or [] if not Path(location).exists()]


def _check_images(manifest: dict[str, Any]) -> list[str]:
    """Each occluded image's record against the rest of the manifest: its `output_sha256` is its file's, and each
    box's `covered_fraction` is what the recorded occluders cover of it (what coverage bins it by). A box's xyxy is
    rounded to 0.001 px: its fraction may move by 0.002 (w + h) / (w h), never more."""
    problems = []
    for image in manifest.get("images") or []:
        where = f"manifest image {image.get('id')!r}"
        if "occluded_image" in image and manifest["files"].get(image["occluded_image"]) != image.get("output_sha256"):
            problems.append(f"{where}: output_sha256 is not its file's ({image['occluded_image']})")
        boxes = [box for box in image.get("boxes") or [] if "covered_fraction" in box]
        if not boxes or "occluders" not in image:
            continue  # S2's train set: no fraction recorded
        xyxy = np.array([box["xyxy"] for box in boxes], dtype=np.float64).reshape(-1, 4)
        mask = rect_mask([tuple(occluder["xyxy"]) for occluder in image["occluders"]], image["width"], image["height"])
        sides = xyxy[:, 2:] - xyxy[:, :2]
        slack = 0.002 * sides.sum(axis=1) / np.maximum(sides.prod(axis=1), 1e-12) + 1e-6
        for index, (box, measured, allowed) in enumerate(zip(boxes, covered_fractions(mask, xyxy), slack)):
            recorded = box["covered_fraction"]  # None: zero-area (measured None too, or a box rounded to none)
            if measured is not None and (recorded is None or abs(recorded - measured) > allowed):
                problems.append(f"{where}: box {index} records covered_fraction {recorded}, its occluders cover "
                                f"{measured} of it (changed since the build)")
    return problems


def moved_root(root: Path) -> str | None:
    """One line when `root` (an output root) holds a suite or the embedded dataset whose yaml points outside it:
    the root was moved or copied, and its yamls, manifests and session records hold the old absolute paths (the
    flow would stop at the first suite, with a traceback). None otherwise."""
    for path in sorted([*root.glob("suites/*/*.yaml"), *root.glob("data/*/data.yaml")]):
        try:
            pointed = Path(str(yaml.safe_load(path.read_text(encoding="utf-8"))["path"]))
        except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError):
            continue  # not one of exp3's yamls: nothing to say
        if pointed.is_absolute() and not pointed.resolve().is_relative_to(root.resolve()):
            return (f"output_root {str(root)!r} was moved or copied from another place: {path.relative_to(root)} "
                    f"points at {str(pointed)!r} (exp3 roots hold absolute paths): run at the old place, or start a "
                    "new output_root")
    return None


def verify_occlusion_suite(suite_dir: Path) -> list[str]:
    """Check a suite or S2 train set against its manifest; return the problems (empty = intact). What it checks:
    docs/occlusion.md, "Build, reuse, verify"."""
    suite_dir = Path(suite_dir)
    if not suite_dir.is_dir():
        return [f"{str(suite_dir)!r} is not a directory"]
    try:
        manifest = json.loads((suite_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
        expected: dict[str, str] = manifest["files"]
        name = _suite_name(_identity(manifest))
    except FileNotFoundError:
        return [f"{MANIFEST_NAME} is missing"]
    except (ValueError, KeyError, TypeError, AttributeError):
        return [f"{MANIFEST_NAME} is unreadable or incomplete"]
    problems = []
    if name != suite_dir.name:
        problems.append(f"{MANIFEST_NAME} describes suite {name!r}, but the directory is named {suite_dir.name!r}")
    present = {
        path.relative_to(suite_dir).as_posix(): path
        for path in suite_dir.rglob("*")
        if path.is_file() and path.name not in IGNORED_FILE_NAMES
        and not any(part.startswith(".") for part in path.relative_to(suite_dir).parts)
    }
    present.pop(MANIFEST_NAME, None)
    for rel in sorted(expected):
        if rel not in present:
            problems.append(f"missing file {rel}")
        elif sha256_file(present[rel]) != expected[rel]:
            problems.append(f"modified file {rel}")
    problems += [f"extra file {rel}" for rel in sorted(set(present) - set(expected))]
    problems += [f"link {path.relative_to(suite_dir).as_posix()} (a suite holds files only: Ultralytics would read "
                 "what it points to)" for path in sorted(suite_dir.rglob("*")) if path.is_symlink()]
    try:
        problems += _check_images(manifest)
    except (KeyError, TypeError, ValueError, AttributeError):
        problems.append(f"{MANIFEST_NAME} has image records that cannot be read")
    return problems + _check_yaml_paths(suite_dir, manifest)
