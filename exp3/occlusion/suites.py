"""Building suites: the fixed test suite, S2's occluded train set and the severity suites.

Built aside, manifest last, renamed into place; an existing suite is verified and reused, never overwritten
(docs/occlusion.md, "Build, reuse, verify").
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import yaml
from PIL import Image

from exp3.config import OcclusionConfig
from exp3.fileio import (
    apply_umask,
    atomic_write_json,
    ensure_writable_dir,
    make_durable,
    publish_dir,
    sha256_bytes,
    stable_hash,
    stable_int,
)
from exp3.occlusion import OcclusionError, fills, planners
from exp3.occlusion.fills import TextureDonor
from exp3.occlusion.identity import (
    MANIFEST_NAME,
    SEVERITY_KIND,
    STREAM_S2_TRAIN,
    STREAM_TEST_SUITE,
    SUITE_KIND,
    TRAIN_SET_KIND,
    _suite_identity,
    _suite_name,
    _train_set_identity,
    _with_source,
    severity_config,
    severity_spec,
)
from exp3.occlusion.source import _absolute_split, _scan_split, _SourceImage
from exp3.occlusion.verify import verify_occlusion_suite
from exp3.occlusion.worker import _ImageTask, _run_tasks
from exp3.splits import PRIMARY_SPLITS, SOURCE_SPLITS, TEST_SPLIT, TRAIN_SPLIT, VAL_SPLIT


def occlusion_suite_name(data_yaml: Path, config: OcclusionConfig) -> str:
    """The `occ-<hash12>` directory name `build_occlusion_suite` would use (reads, writes nothing)."""
    _, images = _scan_split(Path(data_yaml), TEST_SPLIT)
    return _suite_name(_suite_identity(config, images))


def _donor_pool(images: Sequence[_SourceImage]) -> tuple[TextureDonor, ...]:
    """The `TEXTURE_DONOR_POOL` images with the smallest stable_int(id): a fixed, content-free choice."""
    chosen = sorted(images, key=lambda image: (stable_int(image.image_id), image.image_id))[:fills.TEXTURE_DONOR_POOL]
    return tuple(
        TextureDonor(image.image_id, str(image.image_path), image.image_sha256, tuple(row[1:] for row in image.labels))
        for image in chosen
    )


def _check_inputs(config: OcclusionConfig, workers: int, images: Sequence[_SourceImage], split: str) -> None:
    if not isinstance(workers, int) or workers < 1:
        raise OcclusionError(f"workers={workers!r} must be an integer >= 1: pass --workers 2")
    if "texture" in config.fills and len(images) < 2:
        raise OcclusionError(f"texture fill needs >= 2 images in the {split} split: drop texture from occlusion.fills")
    cap = planners.MAX_BOX_COVERAGE
    if config.mode == "object" and config.coverage[1] > cap:
        raise OcclusionError(f"occlusion.coverage {list(config.coverage)} exceeds MAX_BOX_COVERAGE {cap}: "
                             f"keep its upper end <= {cap}")


def _split_yaml(split_dir: Path, names: list[str]) -> str:
    """An Ultralytics data yaml whose train/val/test all point at one split's images (absolute path)."""
    payload = {"path": str(split_dir), **{split: "images" for split in SOURCE_SPLITS}, "names": dict(enumerate(names))}
    return yaml.safe_dump(payload, sort_keys=False)


def _reusable(final_dir: Path) -> bool:
    """True if an existing suite verifies; raise if it is damaged (it is never rebuilt in place)."""
    if problems := verify_occlusion_suite(final_dir):
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise OcclusionError(f"existing suite {str(final_dir)!r} fails verification: {problems[0]}{more}: "
                             f"delete it (rm -r {final_dir}) and build again")
    return True


def _build(identity: dict[str, Any], out_root: Path, tasks: list[_ImageTask], splits: Sequence[str],
           extra_files: Callable[[Path], dict[str, str]], manifest_extra: dict[str, Any], workers: int) -> Path:
    """Shared build: reuse an existing suite, else build in a temp sibling, manifest last, rename."""
    out_root = Path(os.path.abspath(out_root))
    final_dir = out_root / _suite_name(identity)
    if final_dir.exists() and _reusable(final_dir):
        for name, text in extra_files(final_dir).items():  # the yamls: class names are no part of the identity
            if (final_dir / name).read_text(encoding="utf-8") != text:
                raise OcclusionError(f"existing suite {str(final_dir)!r} was built under other class names than the "
                                     f"dataset's now ({name}): delete the suites built under the old names (rm -r "
                                     f"{out_root}/occ*) and run again; their images are rebuilt the same")
        return final_dir
    missing = [path for path in (out_root, *out_root.parents) if not path.exists()]  # what we create
    ensure_writable_dir(out_root)
    build_dir = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.tmp-", dir=out_root))
    try:
        for split in splits:
            (build_dir / split / "images").mkdir(parents=True)
            (build_dir / split / "labels").mkdir(parents=True)
        files: dict[str, str] = {}
        for name, text in extra_files(final_dir).items():
            (build_dir / name).write_bytes(text.encode("utf-8"))
            files[name] = sha256_bytes(text.encode("utf-8"))
        entries, written = _run_tasks(tasks, build_dir, workers)
        atomic_write_json(build_dir / MANIFEST_NAME, {
            **identity,
            "name": final_dir.name,
            **manifest_extra,
            "environment": {"numpy": np.__version__, "pillow": Image.__version__},
            "images": entries,
            "files": dict(sorted({**files, **written}.items())),
        })
        apply_umask(build_dir, build_dir / MANIFEST_NAME)  # mkdtemp made the directory 0700
        make_durable(build_dir)
    except BaseException:
        shutil.rmtree(build_dir, ignore_errors=True)
        for created in missing:  # a failed build leaves the disk as it found it
            try:
                created.rmdir()
            except OSError:
                break
        raise
    publish_dir(build_dir, final_dir, _reusable)  # a concurrent build that won is verified and reused
    return final_dir


def build_occlusion_suite(data_yaml: Path, out_root: Path, config: OcclusionConfig, workers: int = 2) -> Path:
    """Build (or verify and reuse) the fixed occlusion suite of `data_yaml`'s test split; return its dir.
    Layout: docs/occlusion.md, "Suite layout"."""
    spec, images = _scan_split(Path(data_yaml), TEST_SPLIT)
    _check_inputs(config, workers, images, TEST_SPLIT)
    identity = _suite_identity(config, images)
    donors = _donor_pool(images)
    tasks = [_ImageTask(image, SUITE_KIND, config, STREAM_TEST_SUITE, donors) for image in images]

    def extra_files(final_dir: Path) -> dict[str, str]:
        return {f"{split}.yaml": _split_yaml(final_dir / split, spec.names) for split in PRIMARY_SPLITS}

    manifest_extra = _manifest_extra(config, Path(data_yaml), TEST_SPLIT, spec.names, images, donors)
    return _build(identity, Path(out_root), tasks, PRIMARY_SPLITS, extra_files, manifest_extra, workers)


def build_severity_suites(data_yaml: Path, out_root: Path, config: OcclusionConfig, workers: int = 2) -> list[Path]:
    """Build (or verify and reuse) one suite per `config.severities` level; return their dirs, level order.

    Each is a fixed suite like `build_occlusion_suite`'s occluded half, in object mode at the level's
    coverage range: rules and layout in docs/occlusion.md, "Severity suites".
    """
    if not config.severities:
        return []
    spec, images = _scan_split(Path(data_yaml), TEST_SPLIT)
    donors = _donor_pool(images)
    return [_build_severity_suite(Path(data_yaml), Path(out_root), config, level, spec.names, images, donors, workers)
            for level in range(1, len(config.severities) + 1)]


def _build_severity_suite(data_yaml: Path, out_root: Path, config: OcclusionConfig, level: int, names: list[str],
                          images: Sequence[_SourceImage], donors: tuple[TextureDonor, ...], workers: int) -> Path:
    level_config = severity_config(config, level)
    _check_inputs(level_config, workers, images, TEST_SPLIT)
    spec = severity_spec(config, level)
    split = spec["parameters"]["split"]
    identity = _with_source(spec, images)
    tasks = [_ImageTask(image, SEVERITY_KIND, level_config, spec["stream"], donors, split) for image in images]

    def extra_files(final_dir: Path) -> dict[str, str]:
        return {f"{split}.yaml": _split_yaml(final_dir / split, names)}

    manifest_extra = {**_manifest_extra(level_config, data_yaml, TEST_SPLIT, names, images, donors), "split": split,
                      "severity_level": level, "coverage": list(level_config.coverage),
                      "spec_key": stable_hash(spec)}
    return _build(identity, out_root, tasks, [split], extra_files, manifest_extra, workers)


def _manifest_extra(config: OcclusionConfig, data_yaml: Path, split: str, names: list[str],
                    images: Sequence[_SourceImage], donors: Sequence[TextureDonor]) -> dict[str, Any]:
    """Manifest fields beyond the identity: seed, source, class names, texture donors."""
    return {
        "global_seed": config.seed,
        "source": {"data_yaml": str(data_yaml.resolve()), "split": split, "num_images": len(images)},
        "names": names,
        "texture_donors": [donor.image_id for donor in donors] if "texture" in config.fills else [],
    }


def build_occluded_train_set(data_yaml: Path, out_root: Path, config: OcclusionConfig, workers: int = 2) -> Path:
    """Build (or verify and reuse) S2's occluded train set; return the data.yaml S2 trains with.

    A `config.train_fraction` share of train images (decided per image by its own RNG) is occluded, the rest
    copied byte for byte; val and test stay the ORIGINAL clean splits. Layout and why: docs/occlusion.md,
    "Suite layout" and "Which validation split selects checkpoints".
    """
    data_yaml = Path(data_yaml)
    spec, images = _scan_split(data_yaml, TRAIN_SPLIT)
    _check_inputs(config, workers, images, TRAIN_SPLIT)
    val = _absolute_split(spec, data_yaml, VAL_SPLIT)
    if val is None:
        raise OcclusionError(f"data yaml {str(data_yaml)!r} has no 'val' split: S2 selects checkpoints on clean val; "
                             "add val:")
    references = {VAL_SPLIT: val, TEST_SPLIT: _absolute_split(spec, data_yaml, TEST_SPLIT)}
    identity = _train_set_identity(config, images, references)
    donors = _donor_pool(images)
    tasks = [_ImageTask(image, TRAIN_SET_KIND, config, STREAM_S2_TRAIN, donors) for image in images]

    def extra_files(final_dir: Path) -> dict[str, str]:
        tests = {} if references[TEST_SPLIT] is None else {TEST_SPLIT: references[TEST_SPLIT]}
        payload = {"path": str(final_dir), TRAIN_SPLIT: f"{TRAIN_SPLIT}/images", VAL_SPLIT: references[VAL_SPLIT],
                   **tests, "names": dict(enumerate(spec.names))}
        return {"data.yaml": yaml.safe_dump(payload, sort_keys=False)}

    manifest_extra = _manifest_extra(config, data_yaml, TRAIN_SPLIT, spec.names, images, donors)
    return _build(identity, Path(out_root), tasks, [TRAIN_SPLIT], extra_files, manifest_extra, workers) / "data.yaml"
