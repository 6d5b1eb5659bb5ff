"""Ultralytics' own logging integrations, switched on by `integrations:` in the config, every other one off (what
each logs where, and which are refused: README, "Trackers: `integrations:`").

Ultralytics reads its settings once, at `import ultralytics` (`SETTINGS = SettingsManager()` in
ultralytics/utils/__init__.py), from `$YOLO_CONFIG_DIR/Ultralytics/settings.json`, and each trainer adds the
callbacks of the integrations whose setting is True (`add_integration_callbacks` in
ultralytics/utils/callbacks/base.py). Its defaults switch clearml, comet, dvc, mlflow and raytune on: they log
whenever their package happens to be installed. `SettingsManager` writes the file (not atomically) only when it is
missing or not of its schema, so exp3 writes the whole file itself, atomically, before any process that trains
imports Ultralytics (`write_ultralytics_settings`: the runner before it starts a session, the session before it
trains): a session process finds it complete, equal to what it would keep, and writes nothing.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from exp3.fileio import atomic_write_text, read_json

ULTRALYTICS_INTEGRATIONS: tuple[str, ...] = ("clearml", "comet", "dvc", "mlflow", "raytune", "tensorboard", "wandb")
"""Every integration setting of Ultralytics 8.4 (`add_integration_callbacks`): all written, True only if chosen."""
SETTINGS_VERSION = "0.0.8"
"""`SettingsManager`'s schema version in the locked Ultralytics (a test checks the whole default set against it)."""
MLFLOW_STORE = "mlruns"
"""The default MLflow store, a folder of the output root (MLflow's file store: self-contained, parallel-safe)."""


def missing_packages(integrations: Sequence[str]) -> str | None:
    """One line naming the chosen integrations whose package is not installed (their Ultralytics callback would
    do nothing, silently) and how to install them; None when all are there."""
    missing = [name for name in integrations if find_spec(name) is None]
    if not missing:
        return None
    return (f"integrations {missing} are configured but not installed: pip install -c requirements.lock "
            f"-e \".[{','.join(missing)}]\" (or remove them from integrations)")


# ---------------------------------------------------------------------------------------------
# The settings file


def ultralytics_default_settings() -> dict[str, Any]:
    """The settings `SettingsManager` creates when there is no file, computed as it does (without importing
    Ultralytics, whose import reads the file): its directories from the git checkout holding the installed
    package, if any, else the current directory."""
    spec = find_spec("ultralytics")
    package = Path(spec.origin).resolve() if spec is not None and spec.origin else Path(__file__).resolve()
    git_root = next((folder for folder in [package, *package.parents] if (folder / ".git").exists()), None)
    root = git_root or Path()
    datasets_root = (root.parent if git_root and os.access(str(root.parent), os.W_OK) else root).resolve()
    return {
        "settings_version": SETTINGS_VERSION,
        "datasets_dir": str(datasets_root / "datasets"),
        "weights_dir": str(root / "weights"),
        "runs_dir": str(root / "runs"),
        "uuid": hashlib.sha256(str(uuid.getnode()).encode()).hexdigest(),
        "sync": True, "api_key": "", "openai_api_key": "",
        "clearml": True, "comet": True, "dvc": True, "mlflow": True, "raytune": True, "tensorboard": False,
        "wandb": False,
        "vscode_msg": True, "openvino_msg": True,
    }


def ultralytics_settings(integrations: Sequence[str]) -> dict[str, Any]:
    """The whole settings file for `integrations`: Ultralytics' defaults, every integration False but those,
    analytics (`sync`) off."""
    return {**ultralytics_default_settings(), "sync": False,
            **{name: name in integrations for name in ULTRALYTICS_INTEGRATIONS}}


def settings_file(config_dir: str | os.PathLike[str]) -> Path:
    """Where Ultralytics reads its settings for YOLO_CONFIG_DIR `config_dir` (`get_user_config_dir`)."""
    return Path(config_dir) / "Ultralytics" / "settings.json"


def write_ultralytics_settings(config_dir: str | os.PathLike[str], integrations: Sequence[str] | None) -> Path:
    """Make `settings_file(config_dir)` hold `ultralytics_settings(integrations)`, atomically, unless it already
    does (then nothing is written). `integrations=None` (a process that does not train: it does not know the
    config's list) keeps a complete file of the same schema as it is, and writes one with everything off otherwise."""
    path = settings_file(config_dir)
    current = read_json(path)
    if integrations is None:
        if isinstance(current, dict) and current.keys() == ultralytics_default_settings().keys() and \
                current.get("settings_version") == SETTINGS_VERSION:
            return path
        integrations = ()
    wanted = ultralytics_settings(integrations)
    if current != wanted:
        atomic_write_text(path, json.dumps(wanted, indent=2))
    return path


def loaded_settings_mismatch(integrations: Sequence[str]) -> str | None:
    """None when the Ultralytics imported in this process switched on exactly `integrations`; else one line saying
    what it loaded (it reads its settings once, at import: a process that imported it under other settings, or an
    Ultralytics of another settings schema that rewrote the file with its defaults)."""
    from ultralytics.utils import SETTINGS  # lazy: Ultralytics after apply_offline_environment

    loaded = tuple(name for name in ULTRALYTICS_INTEGRATIONS if SETTINGS.get(name) is True)
    if set(loaded) == set(integrations):
        return None
    return (f"Ultralytics in this process loaded integrations {list(loaded)} from {SETTINGS.file}, the config asks "
            f"for {list(integrations)}: run the session in a fresh process (python -m exp3.session), and if this "
            "persists, the installed Ultralytics rewrote exp3's settings (another settings schema): use the locked one")


# ---------------------------------------------------------------------------------------------
# Each session under its own name


def mlflow_experiment_name(config_name: str, output_root: str | os.PathLike[str]) -> str:
    """The one MLflow experiment of an output root: the config's name and the root, e.g. `exp3 /content/runs/exp3`."""
    return f"{config_name} {Path(output_root).absolute()}"


def integration_environment(integrations: Sequence[str], output_root: str | os.PathLike[str], config_name: str,
                            session_name: str) -> dict[str, str]:
    """The environment Ultralytics' callbacks read for one session (nothing for TensorBoard: its folder is the
    session's own `train/`)."""
    if "mlflow" not in integrations:
        return {}
    # an MLFLOW_TRACKING_URI the environment sets wins; else the root's local file store
    store = os.environ.get("MLFLOW_TRACKING_URI") or (Path(output_root).absolute() / MLFLOW_STORE).as_uri()
    return {"MLFLOW_TRACKING_URI": store,
            "MLFLOW_ALLOW_FILE_STORE": "true",  # MLflow 3 refuses its file store without it ("maintenance mode")
            "MLFLOW_EXPERIMENT_NAME": mlflow_experiment_name(config_name, output_root),
            "MLFLOW_RUN": session_name}


@contextmanager
def session_integrations(integrations: Sequence[str], output_root: str | os.PathLike[str], config_name: str,
                         session_name: str) -> Iterator[None]:
    """For one session's training in this process: its integration environment set (and put back afterwards),
    the loaded Ultralytics settings checked against `integrations` (`loaded_settings_mismatch`: RuntimeError),
    the MLflow experiment created once, under a lock (parallel sessions would each create one of that name)."""
    environment = integration_environment(integrations, output_root, config_name, session_name)
    saved = {key: os.environ.get(key) for key in environment}
    os.environ.update(environment)
    try:
        if (mismatch := loaded_settings_mismatch(integrations)) is not None:
            raise RuntimeError(mismatch)
        from ultralytics.utils import TESTS_RUNNING  # lazy: Ultralytics after apply_offline_environment

        if integrations and TESTS_RUNNING:
            print(f"WARNING exp3: integrations {list(integrations)} are on, but Ultralytics logs nothing to them "
                  "while it believes tests run (PYTEST_CURRENT_TEST, or GITHUB_ACTIONS + GITHUB_WORKFLOW + "
                  "RUNNER_OS set)")
        if "tensorboard" in integrations:
            keep_training_intact_after_the_tensorboard_graph()
        if "mlflow" in integrations:
            _create_mlflow_experiment(output_root, environment)
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def keep_training_intact_after_the_tensorboard_graph() -> None:
    """Ultralytics' TensorBoard callback traces the model for its graph under `torch.inference_mode`
    (`_log_tensorboard_graph`, at on_train_start); RT-DETR's decoder keeps the anchors and valid mask it computed
    then, and the first training step fails ("Inference tensors cannot be saved for backward"). Wrapped here (once
    per process): after the graph, the decoders forget them and recompute them at the next forward, under autograd.
    """
    # lazy: Ultralytics, imported only after the session has written its settings file (module docstring)
    from ultralytics.nn.modules.head import RTDETRDecoder
    from ultralytics.utils.callbacks import tensorboard

    original = getattr(tensorboard, "_log_tensorboard_graph", None)
    if original is None or getattr(original, "exp3_keeps_training_intact", False):
        return

    def log_graph(trainer: Any) -> None:
        try:
            original(trainer)
        finally:
            for module in trainer.model.modules():
                if isinstance(module, RTDETRDecoder):
                    module.shapes = []  # the cache key: anchors and valid mask are made again

    log_graph.exp3_keeps_training_intact = True  # type: ignore[attr-defined]
    tensorboard._log_tensorboard_graph = log_graph


def _create_mlflow_experiment(output_root: str | os.PathLike[str], environment: dict[str, str]) -> None:
    """The root's experiment, created by the first session that gets there (Ultralytics' callback then finds it)."""
    import mlflow  # lazy: optional (the [mlflow] extra), and only a session that logs to it needs it

    lock_path = Path(output_root) / ".ultralytics" / "mlflow-experiment.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        client = mlflow.MlflowClient(tracking_uri=environment["MLFLOW_TRACKING_URI"])
        if client.get_experiment_by_name(environment["MLFLOW_EXPERIMENT_NAME"]) is None:
            client.create_experiment(environment["MLFLOW_EXPERIMENT_NAME"])
    print(f"exp3: MLflow run {environment['MLFLOW_RUN']!r} in experiment {environment['MLFLOW_EXPERIMENT_NAME']!r} "
          f"at {environment['MLFLOW_TRACKING_URI']}")
