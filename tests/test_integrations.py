"""`integrations:`: Ultralytics' TensorBoard and MLflow callbacks log each session under its own name, and with
`integrations: []` no integration writes anything, though both packages are installed (the dev extra).

Two tiny real sessions (yolov8n, imgsz 64, from scratch) run through the runner's own path (`run_session_subprocess`:
the settings file written before `python -m exp3.session` starts): one with [tensorboard, mlflow], read back with
TensorBoard's reader and MLflow's client, one with [], which must leave no trace of either."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import pytest
import yaml

from exp3.config import ConfigError, load_config
from exp3.grid.jobs import SessionJob
from exp3.grid.runner import run_session_subprocess
from exp3.identity import session_inputs
from exp3.session.prepare import prepare_data, resolve_model_weights
from exp3.sessions import Session
from exp3.train.integrations import (
    MLFLOW_STORE,
    ULTRALYTICS_INTEGRATIONS,
    missing_packages,
    mlflow_experiment_name,
    settings_file,
    ultralytics_default_settings,
    ultralytics_settings,
    write_ultralytics_settings,
)

REPO = Path(__file__).resolve().parents[1]
SESSION = Session("yolov8n", "S1_clean_train")
EPOCHS = 2
NOT_IN_TESTS = ("PYTEST_CURRENT_TEST", "GITHUB_ACTIONS", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN")
"""Unset for the session processes: under pytest (or GitHub Actions) Ultralytics' callbacks log nothing, which
would make the [] test prove nothing; a developer's own MLflow variables must not steer these runs."""


def _run_session(base: Path, data_yaml: Path, integrations: list[str], epochs: int) -> Path:
    """One session through the runner, as the flow runs it; returns its output root."""
    root = base / "out"
    config_path = base / "config.yaml"
    config_path.write_text(yaml.safe_dump({
        "base": str(REPO / "configs" / "smoke.yaml"), "output_root": str(root),
        "dataset": {"kind": "yaml", "data_yaml": str(data_yaml)},
        "models": {"yolov8m": None, "rtdetr-l": None, "yolov8n": {"architecture": "yolov8n.yaml", "epochs": epochs}},
        "occlusion": {"severities": []}, "integrations": integrations}))
    config = load_config(config_path)
    prepared = prepare_data(config, root)
    weights = resolve_model_weights(config, SESSION.model)
    key = session_inputs(config, SESSION, prepared.dataset_fingerprint, prepared.suite_id, weights.sha256).key
    job = SessionJob(model=SESSION.model, suffix=SESSION.suffix, cache_key=key, config_path=str(config_path),
                     output_root=str(root), epochs=epochs, prepared=prepared, integrations=tuple(integrations))
    run_session_subprocess(job)
    return root


@pytest.fixture(scope="module")
def sessions(tiny_data_yaml: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """{"on": root of a session with [tensorboard, mlflow], "off": root of one with [], "cwd": the directory both
    ran from (MLflow's default store would land there), "home": their $HOME, "written": settings file -> (inode, mtime) as the runner
    left it before the session started}."""
    cwd, home = tmp_path_factory.mktemp("cwd"), tmp_path_factory.mktemp("home")
    written: dict[Path, tuple[int, int]] = {}

    def write_and_note(config_dir: str, integrations: tuple[str, ...] | None) -> Path:
        path = write_ultralytics_settings(config_dir, integrations)
        written[path] = (path.stat().st_ino, path.stat().st_mtime_ns)  # as the session process will find it
        return path

    with pytest.MonkeyPatch.context() as patch:
        for name in NOT_IN_TESTS:
            patch.delenv(name, raising=False)
        patch.chdir(cwd)
        patch.setenv("HOME", str(home))
        patch.setattr("exp3.grid.runner.write_ultralytics_settings", write_and_note)
        on = _run_session(tmp_path_factory.mktemp("on"), tiny_data_yaml, ["tensorboard", "mlflow"], EPOCHS)
        off = _run_session(tmp_path_factory.mktemp("off"), tiny_data_yaml, [], 1)
    return {"on": on, "off": off, "cwd": cwd, "home": home, "written": written}


def _results_csv(root: Path) -> list[dict[str, float]]:
    path = root / SESSION.model / SESSION.name / "train" / "results.csv"
    with open(path, newline="") as handle:
        return [{key.strip(): float(value) for key, value in row.items()} for row in csv.DictReader(handle)]


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-9)  # results.csv keeps 6 significant digits


def test_tensorboard_events_in_the_session_folder_match_its_results_csv(sessions: dict) -> None:
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    root = sessions["on"]
    events = sorted(root.rglob("events.out.tfevents.*"))
    train = root / SESSION.model / SESSION.name / "train"
    assert [path.parent for path in events] == [train]  # the session's own folder, nothing elsewhere
    reader = EventAccumulator(str(train), size_guidance={SCALARS: 0})
    reader.Reload()
    rows = _results_csv(root)
    assert [row["epoch"] for row in rows] == list(range(1, EPOCHS + 1))
    columns = [key for key in rows[0] if key not in ("epoch", "time")]
    assert set(columns) <= set(reader.Tags()["scalars"]), reader.Tags()["scalars"]
    compared = 0
    for column in columns:
        logged = {event.step: event.value for event in reader.Scalars(column)}
        for row in rows:
            assert _close(logged[int(row["epoch"])], row[column]), (column, row["epoch"], logged, row[column])
            compared += 1
        # metrics (not losses or lr) get one more step: best.pt's final validation (Ultralytics' final_eval)
        assert set(logged) - {int(row["epoch"]) for row in rows} <= {EPOCHS + 1}, (column, logged)
    assert compared == len(columns) * EPOCHS >= 2 * 10


def test_mlflow_run_named_after_the_session_in_the_roots_local_store(sessions: dict,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    root = sessions["on"]
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = mlflow.MlflowClient(tracking_uri=(root / MLFLOW_STORE).as_uri())
    experiments = [e for e in client.search_experiments() if e.name != "Default"]
    assert [e.name for e in experiments] == [mlflow_experiment_name("exp3", root)]  # one experiment per root
    runs = client.search_runs([experiments[0].experiment_id])
    assert [(run.info.run_name, run.info.status) for run in runs] == [(SESSION.name, "FINISHED")]
    history = client.get_metric_history(runs[0].info.run_id, "metrics/mAP50-95B")
    by_step = {entry.step: entry.value for entry in history}
    rows = _results_csv(root)
    for row in rows:  # MLflow's steps are 0-based epochs
        assert _close(by_step[int(row["epoch"]) - 1], row["metrics/mAP50-95(B)"]), (by_step, row)
    artifacts = {entry.path for entry in client.list_artifacts(runs[0].info.run_id)}
    assert {"weights", "results.csv"} <= artifacts  # Ultralytics' callback logs the run's files as well


def test_mlflow_telemetry_stays_off(sessions: dict) -> None:
    """MLflow 3 calls home (config.mlflow-telemetry.io) from every process that logs, unless told not to, and notes
    its installation in $HOME: exp3's sessions run with MLFLOW_DISABLE_TELEMETRY and DO_NOT_TRACK."""
    assert (sessions["on"] / MLFLOW_STORE).is_dir()  # MLflow did log
    assert not (sessions["home"] / ".config" / "mlflow").exists()


def test_no_integration_writes_anything_with_an_empty_list(sessions: dict) -> None:
    root, cwd = sessions["off"], sessions["cwd"]
    assert (root / SESSION.model / SESSION.name / "DONE").is_file()
    assert not list(root.rglob("events.out.tfevents.*"))
    assert not list(root.rglob("mlflow.db")) and not list(root.rglob(MLFLOW_STORE))
    assert not list(root.rglob("wandb")) and not list(root.rglob("dvclive"))
    assert sorted(path.name for path in cwd.iterdir()) == []  # nothing in the directory the sessions ran from
    settings = json.loads(settings_file(root / ".ultralytics").read_text())
    assert settings == ultralytics_settings(()) and not any(settings[name] for name in ULTRALYTICS_INTEGRATIONS)
    assert settings["sync"] is False


def test_the_settings_exp3_writes_are_what_ultralytics_keeps(sessions: dict) -> None:
    """The runner wrote each root's file before the session process started, and nothing wrote it again: the
    session found it equal to its own, Ultralytics found it complete (it would rewrite it, non-atomically, if it
    were missing or of another schema)."""
    for name, integrations in (("on", ("tensorboard", "mlflow")), ("off", ())):
        path = settings_file(sessions[name] / ".ultralytics")
        assert path.read_text() == json.dumps(ultralytics_settings(integrations), indent=2)
        assert (path.stat().st_ino, path.stat().st_mtime_ns) == sessions["written"][path]


def test_the_settings_mirror_the_installed_ultralytics_defaults() -> None:
    """exp3 computes Ultralytics' defaults without importing it: they must be the installed release's own (same
    keys, types, schema version and directories), or a session's Ultralytics would rewrite the file."""
    from ultralytics.utils import SETTINGS

    assert ultralytics_default_settings() == SETTINGS.defaults
    assert set(ULTRALYTICS_INTEGRATIONS) <= set(SETTINGS.defaults)


def test_settings_are_written_atomically_once_and_kept_by_processes_that_do_not_train(tmp_path: Path) -> None:
    path = write_ultralytics_settings(tmp_path, None)  # no file yet: everything off
    assert json.loads(path.read_text()) == ultralytics_settings(())
    path = write_ultralytics_settings(tmp_path, ["tensorboard"])
    inode = path.stat().st_ino
    assert json.loads(path.read_text())["tensorboard"] is True
    write_ultralytics_settings(tmp_path, ["tensorboard"])  # equal: not written again
    write_ultralytics_settings(tmp_path, None)  # an evaluation process keeps the run's file
    assert path.stat().st_ino == inode and json.loads(path.read_text()) == ultralytics_settings(["tensorboard"])
    path.write_text("{not json")
    write_ultralytics_settings(tmp_path, None)
    assert json.loads(path.read_text()) == ultralytics_settings(())
    assert sorted(p.name for p in path.parent.iterdir()) == ["settings.json"]  # no temp file left behind


@pytest.mark.parametrize(("value", "needle"), [
    ("[tensorbord]", "unknown integration 'tensorbord': use tensorboard, mlflow"),
    ("[wandb]", "'wandb' is not supported: Ultralytics' W&B callback names every exp3 run 'train'"),
    ("[comet]", "'comet' is not supported: Comet logs to comet.com, and exp3 runs offline"),
    ("[mlflow, mlflow]", "'mlflow' is listed twice"),
    ("{tensorboard: true}", "integrations"),
])
def test_bad_integration_names_are_refused_with_one_line(value: str, needle: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(None, [f"integrations={value}"])
    assert needle in str(error.value) and "\n" not in str(error.value)


def test_one_name_is_a_list_of_one_and_the_default_is_none() -> None:
    assert load_config(None, ["integrations=tensorboard"]).integrations == ("tensorboard",)
    assert load_config(REPO / "configs" / "exp3.yaml").integrations == ()


def test_an_integration_not_installed_is_named_with_its_install_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("exp3.train.integrations.find_spec", lambda name: None)
    message = missing_packages(["tensorboard", "mlflow"])
    assert message is not None and "\n" not in message
    assert "['tensorboard', 'mlflow']" in message and 'pip install -c requirements.lock -e ".[tensorboard,mlflow]"' \
        in message
    assert missing_packages([]) is None


def test_sessions_get_their_mlflow_names_only_when_mlflow_is_on(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from exp3.train.integrations import integration_environment

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert integration_environment(["tensorboard"], tmp_path, "exp3", "yolov8n__S1_clean_train") == {}
    environment = integration_environment(["mlflow"], tmp_path, "exp3", "yolov8n__S1_clean_train")
    assert environment["MLFLOW_RUN"] == "yolov8n__S1_clean_train"
    assert environment["MLFLOW_EXPERIMENT_NAME"] == f"exp3 {tmp_path.absolute()}"
    assert environment["MLFLOW_TRACKING_URI"] == (tmp_path / "mlruns").absolute().as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere/mlflow.db")  # the user's own store wins
    assert integration_environment(["mlflow"], tmp_path, "exp3", "x")["MLFLOW_TRACKING_URI"] == \
        "sqlite:////elsewhere/mlflow.db"
    assert os.environ.get("MLFLOW_RUN") is None


def test_rt_detr_still_trains_after_ultralytics_logs_its_tensorboard_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ultralytics' graph logging runs the model under inference mode; RT-DETR's decoder kept the anchors it made
    then and its first training step failed (seen in the smoke). exp3's wrapper makes the decoder forget them."""
    from types import SimpleNamespace

    import torch
    from ultralytics.nn.modules.head import RTDETRDecoder
    from ultralytics.utils.callbacks import tensorboard

    from exp3.train.integrations import keep_training_intact_after_the_tensorboard_graph

    decoder = RTDETRDecoder(nc=2, ch=(8, 8, 8), hd=16, nq=5, ndp=2, nh=2, ndl=1, d_ffn=16)
    features = [torch.rand(1, 8, size, size) for size in (8, 4, 2)]

    def graph(trainer: SimpleNamespace) -> None:  # what `_log_tensorboard_graph` does to the model
        with torch.inference_mode():
            trainer.model.eval()
            trainer.model(features)

    def step() -> None:  # a forward whose outputs autograd tracks, as in training
        decoder(features)[0].sum().backward()

    graph(SimpleNamespace(model=decoder))
    with pytest.raises(RuntimeError, match="Inference tensors cannot be saved for backward"):
        step()
    decoder.shapes = []
    monkeypatch.setattr(tensorboard, "_log_tensorboard_graph", graph)
    keep_training_intact_after_the_tensorboard_graph()
    tensorboard._log_tensorboard_graph(SimpleNamespace(model=decoder))
    step()
    assert not decoder.valid_mask.is_inference()


def test_an_ultralytics_api_key_in_the_environment_never_switches_platform_tracking_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ultralytics Platform's callbacks sit on every trainer whatever its settings say; with ULTRALYTICS_API_KEY set
    (a user's key for something else) they streamed the training's args, metrics and checkpoints to the network,
    with `integrations: []` and the record saying nothing was on."""
    import types

    from ultralytics.utils.callbacks import platform

    from exp3.train.offline import apply_offline_environment, ultralytics_environment

    for name in ultralytics_environment(tmp_path):  # restored after the test: the other tests keep theirs
        monkeypatch.setenv(name, os.environ.get(name, ""))
    monkeypatch.setenv("ULTRALYTICS_API_KEY", "a-key-for-something-else")
    monkeypatch.setattr(platform, "TESTS_RUNNING", False)  # else the callback returns at once under pytest
    monkeypatch.setattr(platform, "SETTINGS", {"api_key": ""})  # the key exp3's settings file holds
    apply_offline_environment(tmp_path, [])
    trainer = types.SimpleNamespace(args=types.SimpleNamespace(project=str(tmp_path / "yolov8n"), name="train"))
    platform.on_pretrain_routine_start(trainer)
    assert "ULTRALYTICS_API_KEY" not in os.environ and not hasattr(trainer, "platform")
