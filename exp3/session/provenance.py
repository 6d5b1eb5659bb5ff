"""metrics.json's `provenance` (docs/schema.md): pure reads of the environment; a missing tool (no git, no CUDA) gives
`None` fields, never an exception: provenance must not stop a run."""

from __future__ import annotations

import contextlib
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import exp3

TRACKED_PACKAGES: tuple[str, ...] = (
    "ultralytics", "torch", "torchvision", "numpy", "prefect", "pydantic", "scipy", "pandas", "pillow",
    "opencv-python", "altair", "vl-convert-python",
    "tensorboard", "mlflow-skinny", "mlflow",  # the `integrations:` loggers (installed or not: None); the session's
                                                # config_resolved.yaml says which were on
)
_REPO = Path(__file__).resolve().parents[2]


def package_versions(names: tuple[str, ...] = TRACKED_PACKAGES) -> dict[str, str | None]:
    """Installed version of each package (None if not installed)."""
    versions: dict[str, str | None] = dict.fromkeys(names)
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def git_state(repo: Path = _REPO) -> dict[str, Any]:
    """{"commit": sha or None, "dirty": bool or None} of the exp3 checkout."""
    def _git(*args: str) -> str | None:
        try:
            result = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return result.stdout.strip() if result.returncode == 0 else None

    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def device_description(device: str | None = None) -> dict[str, Any]:
    """Name of the compute device a run used: CUDA device name(s) or the CPU."""
    import torch  # lazy: torch is heavy; only a session that trained records its device

    if torch.cuda.is_available() and (device is None or str(device) not in {"cpu", "mps"}):
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return {"type": "cuda", "names": names, "cuda": torch.version.cuda}
    from ultralytics.utils.torch_utils import get_cpu_info  # lazy: recorded after training imported Ultralytics

    return {"type": "cpu", "names": [get_cpu_info()], "cuda": None}


def collect_provenance(device: str | None = None) -> dict[str, Any]:
    """Everything above in one JSON-ready dict."""
    return {
        "exp3_version": exp3.__version__,
        "git": git_state(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions(),
        "device": device_description(device),
    }
