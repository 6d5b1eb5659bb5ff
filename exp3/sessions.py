"""Session names and what each session means. A session's name is `<MODEL>__<SUFFIX>`.

    SUFFIX                    train images    masking site
    S1_clean_train            clean           -
    S2_occ_train              occluded        -
    S3_mask_backbone_early    clean           backbone_early
    S4_mask_backbone_late     clean           backbone_late
    S5_mask_neck              clean           neck
    S6_mask_head              clean           head
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from exp3.config import SESSION_SUFFIXES

SESSION_SEPARATOR = "__"

MASKING_SITE_OF_SESSION: dict[str, str | None] = {
    "S1_clean_train": None,
    "S2_occ_train": None,
    "S3_mask_backbone_early": "backbone_early",
    "S4_mask_backbone_late": "backbone_late",
    "S5_mask_neck": "neck",
    "S6_mask_head": "head",
}
TRAIN_IMAGES_OF_SESSION: dict[str, Literal["clean", "occluded"]] = {
    suffix: ("occluded" if suffix == "S2_occ_train" else "clean") for suffix in SESSION_SUFFIXES
}


@dataclass(frozen=True)
class Session:
    """One cell of the grid."""

    model: str
    suffix: str

    @property
    def name(self) -> str:
        return f"{self.model}{SESSION_SEPARATOR}{self.suffix}"

    @property
    def masking_site(self) -> str | None:
        return MASKING_SITE_OF_SESSION[self.suffix]

    @property
    def train_images(self) -> Literal["clean", "occluded"]:
        return TRAIN_IMAGES_OF_SESSION[self.suffix]


def parse_session(text: str, models: tuple[str, ...] | list[str]) -> Session:
    """`yolov8m__S1_clean_train` or a bare suffix `S1_clean_train` (needs one model) -> Session.

    Raises ValueError naming the allowed values.
    """
    model, separator, suffix = text.rpartition(SESSION_SEPARATOR)
    if not separator:
        model, suffix = "", text
    if suffix not in SESSION_SUFFIXES:
        raise ValueError(f"unknown session {text!r}: use one of {', '.join(SESSION_SUFFIXES)} "
                         f"(optionally prefixed '<model>__')")
    if not model:
        if len(models) != 1:
            raise ValueError(f"session {text!r} names no model: write <model>__{suffix} with model in {', '.join(models)}")
        model = models[0]
    if model not in models:
        raise ValueError(f"unknown model {model!r} in session {text!r}: configured models are {', '.join(models)}")
    return Session(model=model, suffix=suffix)


def session_grid(models: list[str] | tuple[str, ...], suffixes: tuple[str, ...] = SESSION_SUFFIXES) -> list[Session]:
    """Model x session in the fixed order: all sessions of the first model, then the next."""
    return [Session(model, suffix) for model in models for suffix in SESSION_SUFFIXES if suffix in suffixes]
