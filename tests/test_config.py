"""Config: defaults == configs/exp3.yaml, layering, strictness, one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from exp3.config import ConfigError, ExperimentConfig, load_config, write_resolved_config

REPO = Path(__file__).resolve().parents[1]


def test_exp3_yaml_equals_builtin_defaults() -> None:
    assert load_config(REPO / "configs" / "exp3.yaml") == ExperimentConfig()


def test_smoke_is_a_small_diff_over_exp3() -> None:
    smoke = load_config(REPO / "configs" / "smoke.yaml")
    full = load_config(REPO / "configs" / "exp3.yaml")
    assert smoke.dataset.preset == "smoke" and full.dataset.preset == "full"
    assert {name: model.epochs for name, model in smoke.models.items()} == {"yolov8m": 1, "rtdetr-l": 1}
    assert smoke.models["yolov8m"].architecture == "yolov8m.yaml"  # inherited, not restated
    assert smoke.sessions == full.sessions and len(smoke.sessions) == 6
    assert smoke.masking == full.masking
    # the smoke keeps at most two severity levels (issue 12: its wall may not grow by more than 15 %)
    assert 1 <= len(smoke.occlusion.severities) <= 2
    assert smoke.occlusion.model_copy(update={"severities": full.occlusion.severities}) == full.occlusion


def test_cli_overrides_win_over_file() -> None:
    config = load_config(REPO / "configs" / "smoke.yaml", ["train.batch=2", "models.yolov8m.epochs=3",
                                                           "occlusion.fills=[gray]"])
    assert config.train.batch == 2
    assert config.models["yolov8m"].epochs == 3
    assert config.models["rtdetr-l"].epochs == 1
    assert config.occlusion.fills == ("gray",)


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    config = load_config(REPO / "configs" / "smoke.yaml")
    written = write_resolved_config(config, tmp_path / "run")
    assert load_config(written) == config
    assert config.fingerprint() == load_config(written).fingerprint()
    assert config.fingerprint() != load_config(written, ["seeds=[1]"]).fingerprint()


@pytest.mark.parametrize(
    ("text", "overrides", "needle"),
    [
        ("traing: {batch: 2}\n", [], "unknown config key 'traing'"),
        ("train: {batchsize: 2}\n", [], "unknown config key 'train.batchsize'"),
        ("train: [1, 2\n", [], "is not valid YAML"),
        ("- a\n- b\n", [], "must hold a mapping"),
        ("sessions: [S7_magic]\n", [], "unknown session 'S7_magic'"),
        ("masking: {p_channels: 1.5}\n", [], "masking.p_channels"),
        ("dataset: {kind: yaml}\n", [], "dataset.data_yaml is not set"),
        ("{}\n", ["train.batch"], "is not KEY=VALUE"),
        ("occlusion: {coverage: [0.6, 0.2]}\n", [], "occlusion.coverage"),
        ("seeds: [1, 1]\n", [], "distinct seeds"),
        ("gpus: [0]\nparallel_sessions: 2\n", [], "parallel_sessions 2 with gpus [0]: with GPUs the slots are the gpus list"),
        ("parallel_sessions: 0\n", [], "parallel_sessions"),
        ("integrations: [tensorflow]\n", [], "invalid value for 'integrations' (['tensorflow']): unknown integration "
                                            "'tensorflow': use tensorboard, mlflow"),
        ("{}\n", ["integrations=[wandb]"], "'wandb' is not supported"),
        ("train: {device: '0,1'}\n", [], "train.device '0,1' would train each session on several GPUs (DDP), which "
                                         "exp3 does not support: set gpus: [0,1]"),
        ("gpus: [-1]\n", [], "gpus.0"),
        ("models: {yolov8m: null}\n", ["models.yolov8m.epochs=3"], "model 'yolov8m' is removed by "),  # not back
        ("{}\n", ["train.imgsz=65"], "invalid value for 'train.imgsz' (65): Input should be a multiple of 32"),
        ("{}\n", ["train.batch=true"], "invalid value for 'train.batch' (True): Input should be a valid integer"),
        ("train: {workers: off}\n", [], "invalid value for 'train.workers' (False)"),
        ("models: {yolov8m: {epochs: on}}\n", [], "invalid value for 'models.yolov8m.epochs' (True)"),
        ("gpus: [0]\ntrain: {device: cpu}\n", [], "gpus [0] with train.device 'cpu': the gpus list runs each session "
                                                   "on a GPU"),
    ],
)
def test_bad_config_gives_one_line_error(tmp_path: Path, text: str, overrides: list[str], needle: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, overrides)
    message = str(caught.value)
    assert needle in message and "\n" not in message


def test_missing_file_and_base_cycle(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=f"config file {str(tmp_path)!r} is a directory: pass an existing YAML"):
        load_config(tmp_path)
    with pytest.raises(ConfigError, match="model 'yolov8M' has no architecture: check the model's name"):
        load_config(None, ["models.yolov8M.epochs=5"])  # a typo of yolov8m (was "Field required")
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="inherits from itself"):
        load_config(tmp_path / "a.yaml")


def test_config_cli_exits_non_zero_on_bad_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("epochz: 3\n")
    result = subprocess.run([sys.executable, "-m", "exp3.config", "show", "--config", str(path)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "epochz" in result.stderr
    good = subprocess.run([sys.executable, "-m", "exp3.config", "show", "--config", str(REPO / "configs/smoke.yaml")],
                          capture_output=True, text=True, check=True)
    assert yaml.safe_load(good.stdout)["train"]["imgsz"] == 64


def test_empty_override_value_is_refused_not_null() -> None:
    """`--set models.yolov8m.weights=$W` with W unset must not train from scratch: '' is no value, `null` is null."""
    command = [sys.executable, "-m", "exp3.config", "show", "--config", str(REPO / "configs/exp3.yaml")]
    empty = subprocess.run([*command, "--set", "models.yolov8m.weights="], capture_output=True, text=True)
    assert empty.returncode == 2 and empty.stdout == ""
    assert empty.stderr.strip() == ("error: override 'models.yolov8m.weights=' has no value: "
                                    "write models.yolov8m.weights=null for null")
    null = subprocess.run([*command, "--set", "models.yolov8m.weights=null"], capture_output=True, text=True,
                          check=True)
    assert yaml.safe_load(null.stdout)["models"]["yolov8m"]["weights"] is None


def test_device_given_as_yaml_int_is_accepted_as_text() -> None:
    # the flow's GPU slots pass `--set train.device=0`; YAML reads that as the int 0
    assert load_config(None, ["train.device=0"]).train.device == "0"


def test_null_removes_an_inherited_model(tmp_path: Path) -> None:
    """An override file adds to its base's models; `<name>: null` removes one (only these models run)."""
    (tmp_path / "only.yaml").write_text(f"base: {REPO / 'configs' / 'exp3.yaml'}\n"
                                        "models:\n  yolov8m: null\n  rtdetr-l: null\n"
                                        "  yolov8n: {architecture: yolov8n.yaml, weights: null, epochs: 3}\n")
    assert list(load_config(tmp_path / "only.yaml").models) == ["yolov8n"]
    (tmp_path / "added.yaml").write_text(f"base: {REPO / 'configs' / 'exp3.yaml'}\n"
                                         "models:\n  yolov8n: {architecture: yolov8n.yaml, epochs: 3}\n")
    assert list(load_config(tmp_path / "added.yaml").models) == ["yolov8m", "rtdetr-l", "yolov8n"]
    assert list(load_config(None, ["models.rtdetr-l=null"]).models) == ["yolov8m"]
    with pytest.raises(ConfigError, match="at least one model"):
        load_config(None, ["models.rtdetr-l=null", "models.yolov8m=null"])


def test_a_model_removed_by_a_base_comes_back_only_with_its_weights_said(tmp_path: Path) -> None:
    """A file naming again a model its base removes (`yolov8m: null`) with some fields came back with the built-in
    defaults for the rest: `yolov8m.pt`, pretrained, in a run meant to train from scratch (the --set form was already
    refused). Saying `weights` (configs/pilot-gpu.yaml: null, from scratch) brings it back."""
    (tmp_path / "base.yaml").write_text("models: {yolov8m: null}\n")
    (tmp_path / "partial.yaml").write_text("base: base.yaml\nmodels: {yolov8m: {epochs: 16}}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "partial.yaml")
    assert str(caught.value) == (f"config file {str(tmp_path / 'partial.yaml')!r}: model 'yolov8m' is removed by its "
                                 "base base.yaml (yolov8m: null) and named again without weights: set "
                                 "models.yolov8m.weights (null = from scratch, or the checkpoint to start from)")
    (tmp_path / "said.yaml").write_text("base: base.yaml\nmodels: {yolov8m: {weights: null, epochs: 16}}\n")
    assert load_config(tmp_path / "said.yaml").models["yolov8m"].weights is None
    assert load_config(REPO / "configs" / "pilot-gpu.yaml").models["yolov8m"].weights is None
