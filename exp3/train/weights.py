"""Which weights a model starts from (`models.<name>.weights`): honoured exactly as configured, or the run refuses.

`null` trains from the architecture yaml on purpose; a path is used as is; an Ultralytics asset name is looked up
as Ultralytics does (the current directory, then `SETTINGS["weights_dir"]`) and downloaded only with
`download_weights: true`. Anything else is refused before any session starts, with one line saying where to put the
file; a missing file never turns into a from-scratch training (that would report another experiment under the
configured name). The user's view: README (first section) and docs/schema.md, `training.weights`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from exp3.fileio import sha256_file

WeightsOrigin = Literal["scratch", "local", "ultralytics_weights_dir", "downloaded"]


class WeightsError(FileNotFoundError):
    """Configured weights that cannot be had; the message is one line with the fix."""


@dataclass(frozen=True)
class ResolvedWeights:
    """What a model starts from.

    Attributes:
        source: what `YOLO()` / `RTDETR()` is built from: the `.pt` file or the architecture yaml.
        sha256: the weights file's sha256, None when training from scratch.
        origin: how `source` was found (see `WeightsOrigin`).
        configured: the config's `weights` value as written (None = from scratch).
    """

    source: str
    sha256: str | None
    origin: WeightsOrigin
    configured: str | None

    @property
    def pretrained(self) -> bool:
        return self.sha256 is not None


def resolve_weights(model_name: str, architecture: str, weights: str | os.PathLike[str] | None,
                    download: bool = False) -> ResolvedWeights:
    """Resolve one model's configured weights (module docstring); raise `WeightsError` if they cannot be had.

    Call after `exp3.train.offline.apply_offline_environment` so Ultralytics reads exp3's settings.
    """
    if weights is None:
        return ResolvedWeights(architecture, None, "scratch", None)
    configured = str(weights)
    path = Path(configured).expanduser()
    if path.is_file():
        return ResolvedWeights(str(path.absolute()), sha256_file(path), "local", configured)
    # lazy: Ultralytics after apply_offline_environment, and only for a name that is no file
    from ultralytics.utils import SETTINGS
    from ultralytics.utils.downloads import GITHUB_ASSETS_NAMES

    fix = f"or set models.{model_name}.weights: null to train {architecture} from scratch on purpose"
    if path.name != configured or configured not in GITHUB_ASSETS_NAMES:
        raise WeightsError(f"weights {configured!r} of model {model_name!r} not found: put the file there {fix}")
    in_weights_dir = Path(SETTINGS["weights_dir"]) / configured
    if in_weights_dir.is_file():
        return ResolvedWeights(str(in_weights_dir), sha256_file(in_weights_dir), "ultralytics_weights_dir",
                               configured)
    if download:
        downloaded = _download_asset(in_weights_dir)
        if downloaded is not None:
            return ResolvedWeights(str(downloaded), sha256_file(downloaded), "downloaded", configured)
    how = ("the download failed (offline?)" if download else "downloads are off (download_weights: false)")
    raise WeightsError(f"weights {configured!r} of model {model_name!r} not found and {how}: put {configured} "
                       f"in {in_weights_dir.parent} (Ultralytics' weights_dir) or give a path to it, {fix}")


def _download_asset(target: Path) -> Path | None:
    """Let Ultralytics download the asset `target.name` to `target` (network for this call only); None on failure."""
    from ultralytics.utils.downloads import attempt_download_asset  # lazy: Ultralytics after apply_offline_environment

    offline = os.environ.pop("YOLO_OFFLINE", None)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        found = Path(attempt_download_asset(target))
    except Exception:  # noqa: BLE001 - any download failure is reported by the caller as one line
        return None
    finally:
        if offline is not None:
            os.environ["YOLO_OFFLINE"] = offline
    return found if found.is_file() else None
