"""What a session's result depends on (`SessionInputs`) and its cache key, kept in inputs.json, DONE and metrics.json:
any difference makes the folder stale. Not in it: severity levels (added later from the checkpoint), where and how
fast it runs (device, workers, slots, failure policy, output root), where the dataset lies (its content is
`dataset_fingerprint`) and an out-of-memory retry's batch."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict

from exp3 import SCHEMA_VERSION, __version__
from exp3.config import ExperimentConfig
from exp3.fileio import stable_hash
from exp3.sessions import Session

_SET_BY_ULTRALYTICS = ("nc", "channels", "ch", "yaml_file")
"""Model-yaml keys that do not make the architecture: the class count and input channels (the dataset's: Ultralytics
writes them when it builds the model) and the file the yaml was read from (same content, another path is fine)."""


def architecture_spec(model_yaml: dict[str, Any]) -> dict[str, Any]:
    """What a model yaml builds, as Ultralytics' `parse_model` reads it: the yaml without `_SET_BY_ULTRALYTICS`,
    its scale resolved (`scale`: the letter Ultralytics guessed from the yaml's file name, e.g. `s` for
    `yolov8s.yaml`, or the first of `scales` where none was; `multipliers`: that scale's depth, width and
    max_channels, or the yaml's own `depth_multiple` / `width_multiple`), in JSON types."""
    spec = {key: value for key, value in model_yaml.items() if key not in _SET_BY_ULTRALYTICS}
    scales, scale = spec.pop("scales", None), spec.pop("scale", None) or ""
    depth, width = spec.pop("depth_multiple", 1.0), spec.pop("width_multiple", 1.0)
    if scales:
        scale = scale or next(iter(scales))
        spec["multipliers"] = list(scales[scale]) if scale in scales else None
    else:
        spec["multipliers"] = [depth, width, None]
    spec["scale"] = scale
    if spec.get("backbone") and spec["backbone"][0][2] == "Silence":  # Ultralytics renames it when it builds
        spec["backbone"] = [[*spec["backbone"][0][:2], "nn.Identity", *spec["backbone"][0][3:]], *spec["backbone"][1:]]
    return json.loads(json.dumps(spec, default=str))


def architecture_digest(architecture: str) -> str:
    """A hash of what `architecture` builds (`architecture_spec` of the yaml Ultralytics resolves now): in the cache
    key, so an edited yaml, or another file of that name that Ultralytics finds first (its working directory), makes
    the sessions trained on the old one stale. Call after exp3.train.weights.resolve_weights (which refuses a yaml
    that cannot be read, in one line) and `exp3.train.offline.apply_offline_environment`."""
    from ultralytics.nn.tasks import yaml_model_load  # lazy: Ultralytics after apply_offline_environment

    return stable_hash(architecture_spec(yaml_model_load(architecture)), length=16)


OWN_CONFIG: tuple[str, ...] = ("seed", "masking", "train_fraction")
"""The parts of `SessionInputs.config` one session of a model has and its siblings need not share."""


def shared_differences(first: dict[str, Any], second: dict[str, Any]) -> list[str]:
    """The inputs (metrics.json `inputs` blocks) two sessions of one model should share and do not: `config.<part>`
    and the other top-level fields, except the model and session names and `OWN_CONFIG`."""
    configs = (first.get("config") or {}, second.get("config") or {})
    parts = sorted({*configs[0], *configs[1]} - set(OWN_CONFIG))
    fields = sorted({*first, *second} - {"model", "session", "config"})
    return [f"config.{part}" for part in parts if configs[0].get(part) != configs[1].get(part)] + \
        [name for name in fields if first.get(name) != second.get(name)]


class SessionInputs(BaseModel):
    """Everything a session's result depends on; `key` names it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    session: str
    config: dict[str, Any]
    dataset_fingerprint: str
    suite_id: str
    weights_sha256: str | None
    exp3_version: str = __version__
    schema_version: int = SCHEMA_VERSION  # of the files the session writes: another format, another key

    @property
    def key(self) -> str:
        """`<session name>-<16 hex>`: readable in logs, different for any different input."""
        return f"{self.session}-{stable_hash(self.model_dump(mode='json'), length=16)}"


def session_inputs(config: ExperimentConfig, session: Session, dataset_fingerprint: str, suite_id: str,
                   weights_sha256: str | None) -> SessionInputs:
    """The inputs of `session` under `config` with the prepared data and resolved weights: of the config, only the
    values its result depends on, and what its architecture yaml builds (`architecture_digest`: Ultralytics reads
    it; call after `exp3.train.offline.apply_offline_environment`)."""
    model = config.models[session.model]
    view: dict[str, Any] = {
        "model": {"architecture": model.architecture, "builds": architecture_digest(model.architecture),
                  "epochs": model.epochs},
        "train": config.train.model_dump(mode="json", exclude={"workers", "device"}),
        "eval": config.eval.model_dump(mode="json", exclude={"plots"}),  # figures only: no number changes
        "occlusion": config.occlusion.model_dump(mode="json", exclude={"train_fraction", "severities"}),
        "dataset": config.dataset.model_dump(mode="json", exclude={"data_yaml"}),  # its content: the fingerprint
        "seed": session.training_seed,
    }
    if session.masking_site is not None:
        view["masking"] = config.masking.model_dump(mode="json")
    if session.train_images == "occluded":
        view["train_fraction"] = config.occlusion.train_fraction
    return SessionInputs(model=session.model, session=session.name, config=view,
                         dataset_fingerprint=dataset_fingerprint, suite_id=suite_id, weights_sha256=weights_sha256)
