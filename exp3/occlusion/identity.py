"""What a suite is and what it is called: generator version, RNG streams, kinds, the hashed identity.

Suites are content-addressed (`occ-`, `occtrain-`, `occsev-<hash12>`); what the hash covers: docs/occlusion.md,
"Suite layout".
"""

from __future__ import annotations

from typing import Any, Sequence

from exp3.config import OcclusionConfig
from exp3.fileio import stable_hash
from exp3.occlusion import codec, fills, planners
from exp3.occlusion.source import _SourceImage, source_fingerprint
from exp3.splits import severity_split

GENERATOR_VERSION = "3"
"""Bump whenever a change alters any output byte or manifest field: it is part of the suite hash.
What versions 1 and 2 did differently: docs/occlusion.md, "Occluders add no objects", "Part of every box stays
visible" and "Severity suites" (measured coverage)."""

STREAM_TEST_SUITE = 1
"""RNG stream of the fixed test suite (`test_occ_fixed`)."""
STREAM_S2_TRAIN = 2
"""RNG stream of S2's occluded train set; disjoint from the test suite's stream."""
STREAM_SEVERITY_BASE = 100
"""Severity level k (1-based) draws from stream `STREAM_SEVERITY_BASE + k`: per-image seeds are
(seed, level, image id), disjoint from the fixed suite's and S2's streams."""

MANIFEST_NAME = "manifest.json"
"""Every suite's manifest, written last: its identity, its images' records and every file's sha256."""

SUITE_PREFIX = "occ-"
TRAIN_SET_PREFIX = "occtrain-"
SEVERITY_PREFIX = "occsev-"
SUITE_KIND = "test_suite"
TRAIN_SET_KIND = "s2_train_set"
SEVERITY_KIND = "severity_suite"


def suite_parameters(config: OcclusionConfig) -> dict[str, Any]:
    """The parameters a test suite depends on: all but train_fraction (only S2 uses it) and
    severities (each level is a suite of its own, `severity_config`)."""
    return config.model_dump(mode="json", exclude={"train_fraction", "severities"})


def train_set_parameters(config: OcclusionConfig) -> dict[str, Any]:
    """The parameters S2's occluded train set depends on (all but the severity levels)."""
    return config.model_dump(mode="json", exclude={"severities"})


def algorithm_constants() -> dict[str, Any]:
    """The module constants that shape a suite's bytes, hashed into its identity next to GENERATOR_VERSION
    (a tuned constant makes a new suite name); each read from the module that uses it when called, never copied."""
    return {
        "aspect_range": list(planners.ASPECT_RANGE),
        "gray_rgb": list(fills.GRAY_RGB),
        "jpeg_quality": codec.JPEG_QUALITY,
        "max_box_coverage": planners.MAX_BOX_COVERAGE,
        "mean_rgb": list(fills.MEAN_RGB),
        "placement_attempts": planners.PLACEMENT_ATTEMPTS,
        "placement_shrink": planners.PLACEMENT_SHRINK,
        "placement_sizes": planners.PLACEMENT_SIZES,
        "png_compress_level": codec.PNG_COMPRESS_LEVEL,
        "texture_box_margin": fills.TEXTURE_BOX_MARGIN,
        "texture_donor_pool": fills.TEXTURE_DONOR_POOL,
    }


_IDENTITY_KEYS = ("generator_version", "algorithm", "kind", "stream", "parameters", "source_fingerprint", "references")


def _identity(manifest: dict[str, Any]) -> dict[str, Any]:
    """The hashed identity of a suite, as stored in its manifest; a version 1 manifest's missing `algorithm` is left
    out, not hashed as null (docs/occlusion.md, "Suite layout")."""
    return {key: manifest.get(key) for key in _IDENTITY_KEYS if key != "algorithm" or key in manifest}


def _suite_name(identity: dict[str, Any]) -> str:
    prefix = {SUITE_KIND: SUITE_PREFIX, SEVERITY_KIND: SEVERITY_PREFIX}.get(identity["kind"], TRAIN_SET_PREFIX)
    return prefix + stable_hash(identity)


def _spec(kind: str, stream: int, parameters: dict[str, Any]) -> dict[str, Any]:
    """What a suite is, apart from the images it is made from."""
    return {"generator_version": GENERATOR_VERSION, "algorithm": algorithm_constants(), "kind": kind, "stream": stream,
            "parameters": parameters}


def _with_source(spec: dict[str, Any], images: Sequence[_SourceImage],
                 references: dict[str, list[str] | None] | None = None) -> dict[str, Any]:
    """A suite's hashed identity: its spec, the source fingerprint and, for S2's train set, the clean
    val/test splits its data.yaml points at (`references`)."""
    return {**spec, "source_fingerprint": source_fingerprint(images), "references": references}


def _suite_identity(config: OcclusionConfig, images: Sequence[_SourceImage]) -> dict[str, Any]:
    return _with_source(_spec(SUITE_KIND, STREAM_TEST_SUITE, suite_parameters(config)), images)


def _train_set_identity(config: OcclusionConfig, images: Sequence[_SourceImage],
                        references: dict[str, list[str] | None]) -> dict[str, Any]:
    return _with_source(_spec(TRAIN_SET_KIND, STREAM_S2_TRAIN, train_set_parameters(config)), images, references)


def severity_config(config: OcclusionConfig, level: int) -> OcclusionConfig:
    """The occlusion parameters of severity level `level` (1-based): object mode, that level's coverage
    range, every other parameter (fills, format, seed) as configured."""
    return OcclusionConfig.model_validate({**config.model_dump(mode="json"), "mode": "object",
                                           "coverage": list(config.severities[level - 1])})


def severity_spec(config: OcclusionConfig, level: int) -> dict[str, Any]:
    """What severity level `level`'s suite is, apart from the images it is made from: generator version,
    algorithm constants, kind, stream, parameters and split name. Its hash (`severity_spec_key`) tells,
    from the config alone, whether an evaluation recorded for that split is of this suite."""
    parameters = {**suite_parameters(severity_config(config, level)), "severity_level": level,
                  "split": severity_split(level)}
    return _spec(SEVERITY_KIND, STREAM_SEVERITY_BASE + level, parameters)


def severity_spec_key(config: OcclusionConfig, level: int) -> str:
    """12-hex hash of `severity_spec` (recorded with every evaluation of the level's split)."""
    return stable_hash(severity_spec(config, level))


def evaluation_plan(config: OcclusionConfig) -> dict[str, str]:
    """{severity split: spec key} a finished session must have evaluations for, levels light to heavy (config only;
    compared with metrics.json by `exp3.session.layout.severity_changes`)."""
    return {severity_split(level): severity_spec_key(config, level) for level in range(1, len(config.severities) + 1)}
