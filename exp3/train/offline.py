"""Keep Ultralytics offline and its settings in exp3's output root: at import it writes settings, checks for
updates, installs packages and fetches a font, none of which may happen on an air-gapped GPU box. Every training
or evaluation process calls `apply_offline_environment(root)` before `import ultralytics`; a process that trains
passes the config's `integrations` (exp3/train/integrations.py: the settings file switches on exactly those)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from exp3.train.integrations import write_ultralytics_settings


def ultralytics_environment(output_root: str | os.PathLike[str]) -> dict[str, str]:
    """Environment variables that make Ultralytics offline-safe and keep its files in the root; and MLflow's
    telemetry off (on by default, it calls home from every session that logs to MLflow and writes into $HOME)."""
    return {
        "YOLO_OFFLINE": "1",
        "YOLO_AUTOINSTALL": "false",
        "YOLO_VERBOSE": os.environ.get("YOLO_VERBOSE", "true"),
        "YOLO_CONFIG_DIR": str(Path(output_root).absolute() / ".ultralytics"),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
    }


def apply_offline_environment(output_root: str | os.PathLike[str], integrations: Sequence[str] | None = None) -> None:
    """Set `ultralytics_environment` in this process (and drop ULTRALYTICS_API_KEY), write the root's Ultralytics
    settings file with exactly `integrations` on (None: keep the file there, or all off;
    `exp3.train.integrations.write_ultralytics_settings`), and put matplotlib's DejaVuSans under the names
    Ultralytics' `check_font` looks for first (else it requests Arial.ttf from the internet)."""
    import matplotlib  # lazy: heavy; exp3.grid.cli imports this module (exp3.grid.flowenv) for its environment alone

    environment = ultralytics_environment(output_root)
    os.environ.update(environment)
    # Ultralytics Platform's callbacks are on every trainer, not a setting: with this key in the environment they
    # post the training's args, metrics and checkpoints over the network, whatever `integrations:` says
    os.environ.pop("ULTRALYTICS_API_KEY", None)
    source = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    fonts = Path(environment["YOLO_CONFIG_DIR"]) / "Ultralytics"
    fonts.mkdir(parents=True, exist_ok=True)
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        if not (fonts / name).exists():
            shutil.copyfile(source, fonts / name)
    write_ultralytics_settings(environment["YOLO_CONFIG_DIR"], integrations)
