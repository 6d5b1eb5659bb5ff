"""The names of a run's splits, one owner, importing nothing from exp3: the source data's (`SOURCE_SPLITS`), the fixed
suite's test_clean and test_occ_fixed (docs/occlusion.md, "Suite layout") and the severity levels `test_occ_sev<k>`,
light to heavy, which are no session input (docs/occlusion.md, "Not a session input"; their spec keys:
`exp3.occlusion.identity`)."""

from __future__ import annotations

import re

TRAIN_SPLIT, VAL_SPLIT, TEST_SPLIT = "train", "val", "test"
SOURCE_SPLITS: tuple[str, ...] = (TRAIN_SPLIT, VAL_SPLIT, TEST_SPLIT)
"""The source dataset's splits, named as its data.yaml names them (Ultralytics' keys). Sessions train on
train, select checkpoints and their val-chosen threshold on the clean val split, and every test split
below holds the images of test."""
CLEAN_SPLIT = "test_clean"
FIXED_SPLIT = "test_occ_fixed"
PRIMARY_SPLITS: tuple[str, ...] = (CLEAN_SPLIT, FIXED_SPLIT)
"""The two splits every session is trained-and-evaluated for (part of its inputs)."""
SEVERITY_PREFIX = "test_occ_sev"
_SEVERITY_NAME = re.compile(rf"^{SEVERITY_PREFIX}([1-9][0-9]*)$")


def severity_split(level: int) -> str:
    """`test_occ_sev<level>` (level 1-based)."""
    return f"{SEVERITY_PREFIX}{level}"


def severity_level(split: str) -> int | None:
    """The level of a severity split name, None for any other split."""
    match = _SEVERITY_NAME.match(split)
    return int(match.group(1)) if match else None

