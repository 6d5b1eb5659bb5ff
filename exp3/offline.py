"""Keep Ultralytics offline and its settings inside exp3's output root.

Ultralytics writes `settings.json` under `YOLO_CONFIG_DIR` at import, checks for updates,
auto-installs packages and downloads a font for its plots. None of that may happen on an
air-gapped GPU box, so every training/eval process gets `ultralytics_environment(root)`
*before* `import ultralytics`, and `stage_fonts` puts a local TTF where `check_font` looks first.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

_PLOT_FONTS: tuple[str, ...] = ("Arial.ttf", "Arial.Unicode.ttf")


def ultralytics_config_dir(output_root: str | os.PathLike[str]) -> Path:
    """Where Ultralytics keeps settings.json and fonts for runs under `output_root`."""
    return Path(output_root).absolute() / ".ultralytics"


def ultralytics_environment(output_root: str | os.PathLike[str]) -> dict[str, str]:
    """Environment variables that make Ultralytics offline-safe and keep its files in the root."""
    return {
        "YOLO_OFFLINE": "1",
        "YOLO_AUTOINSTALL": "false",
        "YOLO_VERBOSE": os.environ.get("YOLO_VERBOSE", "true"),
        "YOLO_CONFIG_DIR": str(ultralytics_config_dir(output_root)),
    }


def stage_fonts(output_root: str | os.PathLike[str]) -> Path:
    """Copy matplotlib's DejaVuSans to the names Ultralytics' `check_font` looks for first.

    Without it, plotting labels sends a request for Arial.ttf (a 3 s time-out offline).
    Returns the Ultralytics config sub-directory holding the fonts.
    """
    import matplotlib

    source = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    target_dir = ultralytics_config_dir(output_root) / "Ultralytics"
    target_dir.mkdir(parents=True, exist_ok=True)
    for name in _PLOT_FONTS:
        target = target_dir / name
        if not target.exists():
            shutil.copyfile(source, target)
    return target_dir


def apply_offline_environment(output_root: str | os.PathLike[str]) -> None:
    """Set `ultralytics_environment` in this process and stage fonts (call before importing ultralytics)."""
    os.environ.update(ultralytics_environment(output_root))
    stage_fonts(output_root)
