"""Session names and what each session means (the table: README). A session's name is `<MODEL>__<SUFFIX>`.

The one owner of the session vocabulary (docs/layout.md). It imports nothing from exp3, so it is cheap and
cycle-free to import anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

SESSION_SUFFIXES: tuple[str, ...] = (
    "S1_clean_train",
    "S2_occ_train",
    "S3_mask_backbone_early",
    "S4_mask_backbone_late",
    "S5_mask_neck",
    "S6_mask_head",
)
"""The six sessions, in their fixed order. A session's full name is `<MODEL>__<suffix>`."""

MASKING_SITES: tuple[str, ...] = ("backbone_early", "backbone_late", "neck", "head")
"""Masking sites in network order; S3..S6 map onto them one to one."""

SESSION_SEPARATOR = "__"

MASKING_SITE_OF_SESSION: dict[str, str | None] = dict(zip(SESSION_SUFFIXES, (None, None, *MASKING_SITES)))
"""The masking site a session trains with (None: no internal masking, S1 and S2), one of `MASKING_SITES`."""
TRAIN_IMAGES_OF_SESSION: dict[str, Literal["clean", "occluded"]] = {
    suffix: ("occluded" if suffix == "S2_occ_train" else "clean") for suffix in SESSION_SUFFIXES
}
"""Which training images a session trains on: only S2 trains on occluded copies."""

SESSION_LABELS: dict[str, str] = {
    "S1_clean_train": "S1 clean",
    "S2_occ_train": "S2 occluded-train",
    "S3_mask_backbone_early": "S3 mask backbone-early",
    "S4_mask_backbone_late": "S4 mask backbone-late",
    "S5_mask_neck": "S5 mask neck",
    "S6_mask_head": "S6 mask head",
}
"""Short label of each session (chart axes, tables, report text), in the fixed order of `SESSION_SUFFIXES`."""
SESSION_ORDER: list[str] = [SESSION_LABELS[suffix] for suffix in SESSION_SUFFIXES]
"""The session labels in the fixed order of `SESSION_SUFFIXES` (the order of every chart's session axis)."""

REFERENCES: tuple[str, ...] = ("S1_clean_train", "S2_occ_train")
"""Every session is compared with these two: the clean baseline and the occluded-training anchor."""


SEED_PREFIX = "seed"
UNNAMED_SEED = 0
"""The training seed (the default `seeds: [0]`) whose session names have no seed part; every other seed's end in
`__seed<N>`. So seeds added to a finished grid keep its folders and keys: nothing trains again."""


@dataclass(frozen=True)
class Session:
    """One cell of the grid, trained with seed `seed`; None and UNNAMED_SEED are one session (stored as None)."""

    model: str
    suffix: str
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.seed == UNNAMED_SEED:
            object.__setattr__(self, "seed", None)

    @property
    def name(self) -> str:
        base = f"{self.model}{SESSION_SEPARATOR}{self.suffix}"
        return base if self.seed is None else f"{base}{SESSION_SEPARATOR}{SEED_PREFIX}{self.seed}"

    @property
    def training_seed(self) -> int:
        """The Ultralytics seed this session trains with."""
        return UNNAMED_SEED if self.seed is None else self.seed

    @property
    def masking_site(self) -> str | None:
        return MASKING_SITE_OF_SESSION[self.suffix]

    @property
    def train_images(self) -> Literal["clean", "occluded"]:
        return TRAIN_IMAGES_OF_SESSION[self.suffix]


def parse_session_selector(text: str, models: tuple[str, ...] | list[str]) -> tuple[str | None, str, int | None]:
    """`[<model>__]<suffix>[__seed<N>]` -> (model or None when bare, suffix, seed or None).
    Raises ValueError naming the allowed values (an unknown suffix, or a model not in `models`)."""
    seed: int | None = None
    head, separator, tail = text.rpartition(SESSION_SEPARATOR)
    if separator and tail.startswith(SEED_PREFIX) and tail[len(SEED_PREFIX):].isdigit():
        text, seed = head, int(tail[len(SEED_PREFIX):])
    model, _, suffix = text.rpartition(SESSION_SEPARATOR)  # model "" when bare
    if suffix not in SESSION_SUFFIXES:
        raise ValueError(f"unknown session {text!r}: use one of {', '.join(SESSION_SUFFIXES)} "
                         f"(optionally prefixed '<model>__')")
    if model and model not in models:
        raise ValueError(f"unknown model {model!r} in session {text!r}: configured models are {', '.join(models)}")
    return model or None, suffix, seed


def parse_session(text: str, models: tuple[str, ...] | list[str]) -> Session:
    """`yolov8m__S1_clean_train` or a bare suffix `S1_clean_train` (needs one model) -> Session.
    Raises ValueError naming the allowed values."""
    model, suffix, seed = parse_session_selector(text, models)
    if model is None:
        if len(models) != 1:
            raise ValueError(f"session {text!r} names no model: write <model>__{suffix} with model in "
                             f"{', '.join(models)}")
        model = models[0]
    return Session(model=model, suffix=suffix, seed=seed)


def folder_session(name: str) -> Session | None:
    """The session a folder named `name` holds: `<model>__<suffix>[__seed<N>]` as `Session.name` writes it (not an
    older exp3's `__seed0`); None for any other name."""
    try:
        session = parse_session(name, [name.split(SESSION_SEPARATOR, 1)[0]])  # model names hold no separator
    except ValueError:
        return None
    return session if session.name == name else None


def session_grid(models: list[str] | tuple[str, ...], suffixes: tuple[str, ...],
                 seeds: tuple[int, ...]) -> list[Session]:
    """Model x session x seed in the fixed order: all sessions of the first model, then the next."""
    return [Session(model, suffix, seed) for model in models for suffix in SESSION_SUFFIXES if suffix in suffixes
            for seed in seeds]
