"""Synthetic dataset: deterministic, well-formed, never overwrites."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from exp3 import parallel
from exp3.dataset.labels import parse_label_text
from exp3.dataset.synth import CLASS_NAMES, build_synthetic_dataset, compose_image
from exp3.splits import SOURCE_SPLITS

SMALL = {"train": 6, "val": 3, "test": 3}


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_files_and_other_seed_differs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parallel, "MIN_TASKS_PER_WORKER", 1)  # `second` is built by a pool of two
    first = build_synthetic_dataset(tmp_path / "a", preset="smoke", seed=3, counts=SMALL).parent
    second = build_synthetic_dataset(tmp_path / "b", preset="smoke", seed=3, counts=SMALL, workers=2).parent
    other = build_synthetic_dataset(tmp_path / "c", preset="smoke", seed=4, counts=SMALL).parent
    a, b, c = _tree_bytes(first), _tree_bytes(second), _tree_bytes(other)
    assert a.keys() == b.keys()
    differing = [name for name in a if a[name] != b[name]]
    assert differing == ["data.yaml"]  # only the absolute path inside differs
    assert a["images/train/train_00000.jpg"] != c["images/train/train_00000.jpg"]


def test_layout_labels_and_classes(tmp_path: Path) -> None:
    data_yaml = build_synthetic_dataset(tmp_path / "d", preset="smoke", seed=0, counts={"train": 30, "val": 3, "test": 3})
    spec = yaml.safe_load(data_yaml.read_text())
    root = Path(spec["path"])
    assert root.is_absolute() and root == data_yaml.parent
    assert list(spec["names"].values()) == list(CLASS_NAMES) and len(CLASS_NAMES) >= 8
    seen_classes: set[int] = set()
    counts = []
    for split in SOURCE_SPLITS:
        images = sorted((root / spec[split]).glob("*.jpg"))
        assert len(images) == {"train": 30, "val": 3, "test": 3}[split]
        for image in images:
            assert image.stem.startswith(f"{split}_")
            with Image.open(image) as opened:
                assert opened.size == (128, 128) and opened.mode == "RGB"
            rows, malformed = parse_label_text((root / "labels" / split / f"{image.stem}.txt").read_text())
            assert not malformed and 1 <= len(rows) <= 8
            counts.append(len(rows))
            for row in rows:
                assert not row.is_polygon  # the generator writes boxes
                cx, cy, w, h = row.box
                seen_classes.add(row.class_id)
                assert 0 < w <= 1 and 0 < h <= 1
                eps = 1e-6  # labels carry 6 decimals
                assert -eps <= cx - w / 2 and cx + w / 2 <= 1 + eps and -eps <= cy - h / 2 and cy + h / 2 <= 1 + eps
    assert len(seen_classes) >= 8  # all kinds appear even in a small sample
    assert max(counts) >= 4  # multi-object scenes


def test_objects_partially_overlap() -> None:
    overlaps = 0
    for index in range(40):
        _, objects = compose_image(np.random.default_rng([0, 9, index]), 256)
        boxes = [obj.box for obj in objects]
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                if min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1]):
                    overlaps += 1
    assert overlaps > 0  # partial overlaps happen


def test_rebuild_is_a_no_op_and_foreign_dir_is_refused(tmp_path: Path) -> None:
    data_yaml = build_synthetic_dataset(tmp_path / "e", preset="smoke", counts=SMALL)
    marker = data_yaml.parent / "images" / "train" / "train_00000.jpg"
    mtime = marker.stat().st_mtime_ns
    assert build_synthetic_dataset(tmp_path / "e", preset="smoke", counts=SMALL) == data_yaml
    assert marker.stat().st_mtime_ns == mtime
    before = _tree_bytes(data_yaml.parent)
    with pytest.raises(FileExistsError, match="not this synthetic dataset"):
        build_synthetic_dataset(tmp_path / "e", preset="smoke", seed=1, counts=SMALL)
    assert _tree_bytes(data_yaml.parent) == before
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        build_synthetic_dataset(foreign, preset="smoke", counts=SMALL)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_cli_synth_and_bad_preset(tmp_path: Path) -> None:
    ok = subprocess.run([sys.executable, "-m", "exp3.dataset", "synth", "--out", str(tmp_path / "s"),
                         "--counts", "2,1,1", "--seed", "5"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert Path(ok.stdout.strip()).name == "data.yaml"
    bad = subprocess.run([sys.executable, "-m", "exp3.dataset", "synth", "--out", str(tmp_path / "t"),
                          "--preset", "huge"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown synthetic preset 'huge'" in bad.stderr
    assert not (tmp_path / "t").exists()


def test_concurrent_build_of_the_same_dataset_reuses_the_winner(tmp_path, monkeypatch):
    """Two sessions started at once both generate; the one that renames second keeps the first's files.

    Seen on a GPU box: two `python -m exp3.session` runs on a fresh root, one failed with
    'OSError: [Errno 39] Directory not empty'. Here the other build wins between this build's
    existence check and its rename.
    """
    import exp3.dataset.synth as synth

    target = tmp_path / "data"
    real_replace = synth.os.replace
    raced = []

    def replace_after_a_concurrent_build(source, destination):
        if not raced:
            raced.append(True)
            monkeypatch.setattr(synth.os, "replace", real_replace)
            winner = build_synthetic_dataset(target, preset="smoke", seed=1, counts=SMALL)  # the other process
            raced.append(winner.parent.joinpath("synth_manifest.json").read_bytes())
        return real_replace(source, destination)

    monkeypatch.setattr(synth.os, "replace", replace_after_a_concurrent_build)
    data_yaml = build_synthetic_dataset(target, preset="smoke", seed=1, counts=SMALL)
    assert len(raced) == 2, "the concurrent build did not run"
    assert data_yaml == target / "data.yaml"
    assert (target / "synth_manifest.json").read_bytes() == raced[1]  # the winner's files, untouched
    assert not [entry for entry in tmp_path.iterdir() if entry.name.startswith(".data.")]  # no staging left


def test_concurrent_build_of_another_dataset_still_refuses(tmp_path, monkeypatch):
    import exp3.dataset.synth as synth

    target = tmp_path / "data"
    real_replace = synth.os.replace

    def replace_after_another_build(source, destination):
        monkeypatch.setattr(synth.os, "replace", real_replace)
        build_synthetic_dataset(target, preset="smoke", seed=2, counts=SMALL)  # a different dataset won
        return real_replace(source, destination)

    monkeypatch.setattr(synth.os, "replace", replace_after_another_build)
    with pytest.raises(OSError):
        build_synthetic_dataset(target, preset="smoke", seed=1, counts=SMALL)
    assert json.loads((target / "synth_manifest.json").read_text())["spec"]["seed"] == 2  # nothing overwritten
