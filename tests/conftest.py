"""Shared fixtures: offline Ultralytics settings in a temp dir and one tiny real dataset."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from exp3.offline import apply_offline_environment

# Before any test imports ultralytics: no network, settings and fonts in a throw-away dir.
_OFFLINE_ROOT = Path(tempfile.mkdtemp(prefix="exp3-tests-"))
apply_offline_environment(_OFFLINE_ROOT)


@pytest.fixture(scope="session")
def tiny_data_yaml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke preset at 96 px: 8 train / 4 val / 4 test images, built once per test session."""
    from exp3.synth import build_synthetic_dataset

    out = tmp_path_factory.mktemp("tiny-data") / "synthetic"
    return build_synthetic_dataset(out, preset="smoke", seed=0, counts={"train": 8, "val": 4, "test": 4},
                                   image_size=96)


@pytest.fixture()
def writable_data_yaml(tiny_data_yaml: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny dataset that a test may damage; returns its data.yaml."""
    import shutil

    import yaml

    root = tmp_path / "data-copy"
    shutil.copytree(tiny_data_yaml.parent, root)
    spec = yaml.safe_load(tiny_data_yaml.read_text())
    spec["path"] = str(root)
    (root / "data.yaml").write_text(yaml.safe_dump(spec))
    return root / "data.yaml"


@pytest.fixture(scope="session")
def tiny_yolo_checkpoint(tiny_data_yaml: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`last.pt` of yolov8n.yaml trained 1 epoch at imgsz 64 on the tiny dataset (plain Ultralytics)."""
    from ultralytics import YOLO

    project = tmp_path_factory.mktemp("tiny-train")
    YOLO("yolov8n.yaml").train(data=str(tiny_data_yaml), epochs=1, imgsz=64, batch=4, device="cpu", amp=False,
                               workers=0, plots=False, project=str(project), name="run", exist_ok=True,
                               verbose=False)
    return project / "run" / "weights" / "last.pt"


@pytest.fixture(scope="session")
def trained_data_yaml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke preset at 96 px with 64 train / 16 val / 16 test images (for `trained_yolo_checkpoint`)."""
    from exp3.synth import build_synthetic_dataset

    out = tmp_path_factory.mktemp("trained-data") / "synthetic"
    return build_synthetic_dataset(out, preset="smoke", seed=0, counts={"train": 64, "val": 16, "test": 16},
                                   image_size=96)


@pytest.fixture(scope="session")
def trained_yolo_checkpoint(trained_data_yaml: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`last.pt` of yolov8n.yaml trained 100 epochs at imgsz 96 (about 1.5 min on 2 CPU cores).

    A model that really detects (test mAP50 about 0.19, a few boxes above conf 0.25), so metric
    code is checked against independent implementations on non-zero predictions, not only on the
    all-zero output of a one-epoch model. Faster-converging args than Ultralytics' defaults
    (AdamW, no mosaic, short warmup): this is a test instrument, not an exp3 session.
    """
    from ultralytics import YOLO

    project = tmp_path_factory.mktemp("trained")
    YOLO("yolov8n.yaml").train(data=str(trained_data_yaml), epochs=100, imgsz=96, batch=8, device="cpu", amp=False,
                               workers=0, plots=False, project=str(project), name="run", exist_ok=True,
                               verbose=False, optimizer="AdamW", lr0=0.005, warmup_epochs=1, mosaic=0.0, val=False)
    return project / "run" / "weights" / "last.pt"


@pytest.fixture(scope="session")
def trained_evaluation(trained_yolo_checkpoint: Path, trained_data_yaml: Path,
                       tmp_path_factory: pytest.TempPathFactory):
    """`exp3.evaluate.evaluate_split` of the trained checkpoint on its test split (predict-equivalent records)."""
    from exp3.evaluate import evaluate_split

    root = tmp_path_factory.mktemp("eval-trained")
    return evaluate_split(trained_yolo_checkpoint, trained_data_yaml, "detect", output_root=root,
                          save_dir=root / "test", device="cpu")


@pytest.fixture()
def one_model_config(tmp_path: Path) -> Path:
    """A smoke config of one model (yolov8n from its yaml, 1 epoch, no severity levels), output under
    `tmp_path / "out"`."""
    import yaml

    repo = Path(__file__).resolve().parents[1]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "base": str(repo / "configs" / "smoke.yaml"), "output_root": str(tmp_path / "out"),
        "models": {"yolov8m": None, "rtdetr-l": None, "yolov8n": {"architecture": "yolov8n.yaml", "epochs": 1}},
        "occlusion": {"severities": []}}))
    return path
