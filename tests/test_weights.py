"""`models.<m>.weights` against `models.<m>.architecture`: a checkpoint of another architecture is refused, in one
line, before anything is written (Ultralytics trains the architecture stored in the checkpoint, not the configured
one: a yolov8n `last.pt` under `architecture: yolov8s.yaml` would train a yolov8n recorded as yolov8s)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from exp3.config import load_config
from exp3.fileio import sha256_file
from exp3.sessions import Session
from exp3.train.weights import WeightsError, resolve_weights

REPO = Path(__file__).resolve().parents[1]


def _config(path: Path, root: Path, models: dict) -> Path:
    path.write_text(yaml.safe_dump({"base": str(REPO / "configs" / "smoke.yaml"), "output_root": str(root),
                                    "models": models, "sessions": ["S1_clean_train"]}))
    return path


def test_a_checkpoint_of_another_scale_or_family_is_refused_naming_both(tiny_yolo_checkpoint: Path) -> None:
    """The tiny checkpoint is a yolov8n (yolov8n.yaml, trained on a 3-class dataset)."""
    with pytest.raises(WeightsError) as refused:
        resolve_weights("yolov8s", "yolov8s.yaml", tiny_yolo_checkpoint)
    message = str(refused.value)
    assert "\n" not in message and str(tiny_yolo_checkpoint) in message
    assert "yolov8n.yaml" in message and "yolov8s.yaml" in message and "scale 'n' vs 's'" in message
    assert "set models.yolov8s.architecture to yolov8n.yaml" in message and "models.yolov8s.weights" in message
    with pytest.raises(WeightsError, match="yolov8n.yaml model, not its architecture rtdetr-l.yaml"):
        resolve_weights("rtdetr-l", "rtdetr-l.yaml", tiny_yolo_checkpoint)
    with pytest.raises(WeightsError, match="architecture 'nosuch.yaml' of model 'x' cannot be read"):
        resolve_weights("x", "nosuch.yaml", tiny_yolo_checkpoint)


def test_a_checkpoint_of_the_configured_architecture_is_accepted(tiny_yolo_checkpoint: Path) -> None:
    """The class count (3, the dataset's, vs the yaml's 80) and the yaml's file name are no part of the architecture;
    yolov8.yaml without a scale letter is built at its first scale (n), as Ultralytics does."""
    for architecture in ("yolov8n.yaml", "yolov8.yaml"):
        weights = resolve_weights("yolov8n", architecture, tiny_yolo_checkpoint)
        assert weights.origin == "local" and weights.sha256 == sha256_file(tiny_yolo_checkpoint)


def test_a_checkpoint_of_a_users_yaml_named_as_ultralytics_own_is_compared(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A user's edited copy named yolov8n.yaml (width 1.0, not 0.25) is no yolov8n: its checkpoint is compared, not
    waved through by the file name."""
    import torch
    from ultralytics.nn.tasks import DetectionModel, yaml_model_load

    monkeypatch.chdir(tmp_path)
    spec = yaml_model_load("yolov8n.yaml")
    spec.pop("yaml_file")
    spec["scales"]["n"] = [0.33, 1.0, 1024]
    (tmp_path / "custom").mkdir()
    (tmp_path / "custom" / "yolov8n.yaml").write_text(yaml.safe_dump(spec))
    torch.save({"model": DetectionModel("custom/yolov8n.yaml", nc=3, verbose=False), "epoch": -1}, "wide.pt")
    with pytest.raises(WeightsError, match=r"a custom/yolov8n.yaml model, not its architecture yolov8n.yaml \(differs "
                                           r"in: multipliers \[0.33, 1.0, 1024\] vs \[0.33, 0.25, 1024\]\)"):
        resolve_weights("yolov8n", "yolov8n.yaml", tmp_path / "wide.pt")


def test_an_asset_name_found_in_the_cwd_is_checked_too(tiny_yolo_checkpoint: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """`weights: yolov8m.pt` found in the current directory (as Ultralytics looks it up) that is not a yolov8m."""
    shutil.copyfile(tiny_yolo_checkpoint, tmp_path / "yolov8m.pt")
    monkeypatch.chdir(tmp_path)
    config = load_config(None, ["models.rtdetr-l=null"])  # the default yolov8m: yolov8m.yaml from yolov8m.pt
    with pytest.raises(WeightsError, match="'yolov8m.pt' of model 'yolov8m' are a yolov8n.yaml model, not its "
                                           "architecture yolov8m.yaml"):
        resolve_weights("yolov8m", config.models["yolov8m"].architecture, config.models["yolov8m"].weights)


def test_a_file_ultralytics_would_swap_for_its_yolov5u_name_is_refused(tiny_yolo_checkpoint: Path) -> None:
    """`/content/drive/MyDrive/yolov5n.pt` (a path with no letter u): Ultralytics loads yolov5nu.pt beside it, while
    the record and the key held the sha256 of the file configured."""
    folder = Path("/tmp") / f"exp3-w5-{os.getpid()}"           # Ultralytics renames only paths with no 'u' in them
    try:
        folder.mkdir()
        for name in ("yolov5n.pt", "yolov5nu.pt"):
            shutil.copyfile(tiny_yolo_checkpoint, folder / name)
        with pytest.raises(WeightsError, match=rf"Ultralytics loads '{folder}/yolov5nu.pt' in place of a file of that "
                                               "name .* rename the file, e.g. to yolov5n-weights.pt"):
            resolve_weights("yolov5n", "yolov8n.yaml", folder / "yolov5n.pt")
        shutil.move(folder / "yolov5n.pt", folder / "yolov5n-weights.pt")
        assert resolve_weights("yolov5n", "yolov8n.yaml", folder / "yolov5n-weights.pt").sha256 == \
            sha256_file(folder / "yolov5n-weights.pt")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_a_session_with_mismatched_weights_is_refused_before_anything_is_written(tiny_yolo_checkpoint: Path,
                                                                                 tmp_path: Path) -> None:
    from exp3.session.run import run_session

    output = tmp_path / "out"
    config = load_config(_config(tmp_path / "c.yaml", output, {"yolov8s": {
        "architecture": "yolov8s.yaml", "weights": str(tiny_yolo_checkpoint), "epochs": 1}}))
    with pytest.raises(WeightsError, match="yolov8n.yaml model, not its architecture yolov8s.yaml"):
        run_session(config, Session("yolov8s", "S1_clean_train"), output)
    assert not (output / "yolov8s").exists()


def test_the_command_line_refuses_mismatched_weights_in_one_line(tiny_yolo_checkpoint: Path, tmp_path: Path) -> None:
    config = _config(tmp_path / "c.yaml", tmp_path / "out", {"yolov8m": {
        "architecture": "yolov8m.yaml", "weights": str(tiny_yolo_checkpoint), "epochs": 1}})
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home")}
    result = subprocess.run([sys.executable, str(REPO / "flows" / "exp3.py"), "--config", str(config), "--dry-run",
                             "--models", "yolov8m"], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.stderr.count("\n") == 1 and "yolov8n.yaml model, not its architecture yolov8m.yaml" in result.stderr
    assert not (tmp_path / "out" / "yolov8m").exists()


def test_an_unreadable_architecture_is_refused_in_one_line_without_weights_too(tmp_path: Path) -> None:
    """`weights: null` with an architecture typo passed the dry run, then each session wrote a FAILED marker; now
    both command lines refuse it as they refuse it with weights, before anything is written."""
    typo = ["--set", "models.yolov8m.architecture=yolov8q.yaml", "--set", f"output_root={tmp_path / 'out'}"]
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home")}
    needle = "architecture 'yolov8q.yaml' of model 'yolov8m' cannot be read"
    flow = subprocess.run([sys.executable, str(REPO / "flows" / "exp3.py"), "--smoke", "--dry-run", *typo],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    session = subprocess.run([sys.executable, "-m", "exp3.session", "--config", str(REPO / "configs" / "smoke.yaml"),
                              "--model", "yolov8m", "--session", "S1_clean_train", *typo],
                             cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    for result in (flow, session):
        assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
        assert result.stderr.count("\n") == 1 and needle in result.stderr
    assert load_config(REPO / "configs" / "smoke.yaml").models["yolov8m"].weights is None  # from scratch
    assert not (tmp_path / "out" / "yolov8m").exists() and not (tmp_path / "out" / "data").exists()
