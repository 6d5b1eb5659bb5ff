"""What a session's result depends on (`SessionInputs`) and its cache key, kept in inputs.json, DONE and metrics.json:
any difference makes the folder stale. Not in it: severity levels (added later from the checkpoint), where and how
fast it runs (device, workers, slots, failure policy, output root), where the dataset lies (its content is
`dataset_fingerprint`) and an out-of-memory retry's batch."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from exp3 import SCHEMA_VERSION, __version__
from exp3.config import ExperimentConfig
from exp3.fileio import stable_hash
from exp3.sessions import Session


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
    values its result depends on."""
    model = config.models[session.model]
    view: dict[str, Any] = {
        "model": {"architecture": model.architecture, "epochs": model.epochs},
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
