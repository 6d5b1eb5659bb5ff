"""Which weights a model starts from (`models.<name>.weights`): honoured exactly as configured, or the run refuses.

The rules: README, "Quickstart", and docs/schema.md, `training.weights`. An asset name is looked up as Ultralytics does
(the current directory, then `SETTINGS["weights_dir"]`); weights of another architecture (`check_architecture`) and an
architecture yaml that cannot be read (`read_architecture`) are refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from exp3.fileio import sha256_file
from exp3.identity import architecture_spec

WeightsOrigin = Literal["scratch", "local", "ultralytics_weights_dir", "downloaded"]


class WeightsError(FileNotFoundError):
    """Configured weights that cannot be had, or that are of another architecture; one line with the fix."""


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
    if weights is None:  # from scratch: the session builds the model from the yaml, so it must be readable now
        read_architecture(model_name, architecture)
        return ResolvedWeights(architecture, None, "scratch", None)
    configured = str(weights)
    path = Path(configured).expanduser()
    if path.is_file():
        return _checked(model_name, architecture, configured, path.absolute(), "local")
    # lazy: Ultralytics after apply_offline_environment, and only for a name that is no file
    from ultralytics.utils import SETTINGS
    from ultralytics.utils.downloads import GITHUB_ASSETS_NAMES

    fix = f"or set models.{model_name}.weights: null to train {architecture} from scratch on purpose"
    if path.name != configured or configured not in GITHUB_ASSETS_NAMES:
        raise WeightsError(f"weights {configured!r} of model {model_name!r} not found: put the file there {fix}")
    in_weights_dir = Path(SETTINGS["weights_dir"]) / configured
    if in_weights_dir.is_file():
        return _checked(model_name, architecture, configured, in_weights_dir, "ultralytics_weights_dir")
    if download and (downloaded := _download_asset(in_weights_dir)) is not None:
        return _checked(model_name, architecture, configured, downloaded, "downloaded")
    how = ("the download failed (offline?)" if download else "downloads are off (download_weights: false)")
    raise WeightsError(f"weights {configured!r} of model {model_name!r} not found and {how}: put {configured} "
                       f"in {in_weights_dir.parent} (Ultralytics' weights_dir) or give a path to it, {fix}")


_CHECKED: set[tuple[str, str]] = set()
"""(weights sha256, architecture) pairs found to agree in this process: a checkpoint is loaded once to check it."""


def _checked(model_name: str, architecture: str, configured: str, file: Path, origin: WeightsOrigin) -> ResolvedWeights:
    """The weights in `file`, once `check_architecture` finds them of `architecture` (once per process and content)."""
    from ultralytics.utils.checks import check_yolov5u_filename  # lazy: Ultralytics after apply_offline_environment

    if (loaded := check_yolov5u_filename(str(file), verbose=False)) != str(file):  # it loads that file, or downloads it
        raise WeightsError(f"weights {configured!r} of model {model_name!r}: Ultralytics loads {loaded!r} in place of "
                           f"a file of that name (its YOLOv5u rename): rename the file, e.g. to "
                           f"{file.stem}-weights.pt, so that the weights recorded are the weights trained")
    weights = ResolvedWeights(str(file), sha256_file(file), origin, configured)
    if (weights.sha256, architecture) not in _CHECKED:
        check_architecture(model_name, architecture, weights)
        _CHECKED.add((weights.sha256, architecture))
    return weights


def read_architecture(model_name: str, architecture: str) -> dict[str, Any]:
    """The model yaml Ultralytics resolves for `architecture` (`yaml_model_load`); `WeightsError` in one line if it
    cannot be read (a typo such as yolov8q.yaml)."""
    from ultralytics.nn.tasks import yaml_model_load  # lazy: Ultralytics after apply_offline_environment

    try:
        return yaml_model_load(architecture)
    except Exception as error:  # noqa: BLE001 - any unreadable yaml is refused in one line
        raise WeightsError(f"architecture {architecture!r} of model {model_name!r} cannot be read "
                           f"({type(error).__name__}): give an Ultralytics model yaml (e.g. yolov8m.yaml, "
                           "rtdetr-l.yaml) or a path to one") from None


def check_architecture(model_name: str, architecture: str, weights: ResolvedWeights) -> None:
    """Raise `WeightsError` unless the checkpoint `weights.source` builds what `architecture` builds
    (`architecture_spec` of the checkpoint's own model yaml vs. the yaml Ultralytics resolves for `architecture`).

    A file Ultralytics cannot load as a checkpoint is not judged here: building the model from it fails the
    session with Ultralytics' own message, as it always did.
    """
    # lazy: Ultralytics after apply_offline_environment, and only where weights are given
    from ultralytics.nn.tasks import torch_safe_load

    try:
        checkpoint, _ = torch_safe_load(weights.source)
        stored = (checkpoint.get("ema") or checkpoint.get("model")).yaml  # what Ultralytics trains from it
    except Exception:  # noqa: BLE001 - unreadable: the session fails on it when it builds the model (docstring)
        return
    if not isinstance(stored, dict) or stored.get("yaml_file") == architecture == Path(architecture).name:
        return  # built from Ultralytics' own yaml of that name: a published checkpoint holds it as it was then
    have, want = architecture_spec(stored), architecture_spec(read_architecture(model_name, architecture))
    if have == want:
        return  # another file of the same architecture
    differs = [key for key in dict.fromkeys(["scale", *want, *have]) if have.get(key) != want.get(key)]
    named = stored.get("yaml_file") or "an unnamed yaml"
    detail = ", ".join(f"{key} {have.get(key)!r} vs {want.get(key)!r}" if key in ("scale", "multipliers") else key
                       for key in differs)
    raise WeightsError(f"weights {weights.configured!r} of model {model_name!r} are a {named} model, not its "
                       f"architecture {architecture} (differs in: {detail}): set models.{model_name}.architecture "
                       f"to {named} to train these weights, or point models.{model_name}.weights at a checkpoint "
                       f"of {architecture} (null = from scratch on purpose)")


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
