"""What a session's result depends on, and the cache key that names it.

A finished session is trusted only for the inputs that produced it. `SessionInputs` lists them:
model, session, the part of the resolved config the session depends on, the dataset
fingerprint, the occlusion-suite id, the sha256 of the weights it starts from (None = from
scratch) and the exp3 version. Its `key` is stored in the session's `inputs.json` (written before
training starts), in `DONE` and in `metrics.json`; any difference makes the folder `stale`
(exp3/layout.py): the old result is moved aside and the session trains again from scratch.

Not part of the key: the severity levels (`occlusion.severities`: evaluations added to a
finished session from its checkpoint, exp3/splits.py), where and how fast it runs (`train.device`, `train.workers`, GPU slots,
failure policy, output root) and an out-of-memory retry's halved batch (recorded in
metrics.json as what really ran, not as a different experiment).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from exp3 import __version__
from exp3.config import ExperimentConfig
from exp3.fileio import stable_hash
from exp3.sessions import Session


def session_config_view(config: ExperimentConfig, session: Session) -> dict[str, Any]:
    """The config values `session`'s result depends on (JSON-ready)."""
    model = config.models[session.model]
    view: dict[str, Any] = {
        "model": {"architecture": model.architecture, "epochs": model.epochs},
        "train": config.train.model_dump(mode="json", exclude={"workers", "device"}),
        "eval": config.eval.model_dump(mode="json"),
        "occlusion": config.occlusion.model_dump(mode="json", exclude={"train_fraction", "severities"}),
        "dataset": config.dataset.model_dump(mode="json"),
        "seed": session.training_seed(config.seeds),
    }
    if session.masking_site is not None:
        view["masking"] = config.masking.model_dump(mode="json")
    if session.train_images == "occluded":
        view["train_fraction"] = config.occlusion.train_fraction
    return view


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

    @property
    def key(self) -> str:
        """`<session name>-<16 hex>`: readable in logs, different for any different input."""
        return f"{self.session}-{stable_hash(self.model_dump(mode='json'), length=16)}"


def session_inputs(config: ExperimentConfig, session: Session, dataset_fingerprint: str, suite_id: str,
                   weights_sha256: str | None) -> SessionInputs:
    """The inputs of `session` under `config` with the prepared data and resolved weights."""
    return SessionInputs(model=session.model, session=session.name, config=session_config_view(config, session),
                         dataset_fingerprint=dataset_fingerprint, suite_id=suite_id, weights_sha256=weights_sha256)
