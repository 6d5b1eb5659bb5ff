"""metrics.json as typed objects: `SessionMetrics` is what exp3.session.record writes, `MetricsView` what readers read.

docs/schema.md documents both, field by field (tests/test_schema.py checks it against `SessionMetrics`).
`SessionMetrics` is strict and round-trips (validated and dumped again, a file gives back the same JSON); its `data`
block is `PreparedData`, the one record of the data a run prepared. `MetricsView` is `SessionMetrics` made lenient
field by field (`lenient`), so a reader shows `-` or NaN for a value it cannot read instead of failing.

Blocks whose keys belong to someone else stay dicts: `inputs.config` (exp3.identity), Ultralytics'
`training.effective_args` / `.overrides` / `speed_ms_per_image`, the `masking:` config (`masking.spec`),
`provenance.packages`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, BeforeValidator, ConfigDict, create_model, model_validator

from exp3.identity import SessionInputs
from exp3.splits import PRIMARY_SPLITS


class _Block(BaseModel):
    """A block of metrics.json exp3 shapes: unknown keys are an error."""

    model_config = ConfigDict(extra="forbid")


# ----------------------------------------------------------------------------- splits.<split>


class PRF(_Block):
    """Precision, recall, F1 (null when undefined, e.g. a macro average over no class)."""

    precision: float | None
    recall: float | None
    f1: float | None


class Ingredient(_Block):
    """Ingredient-list P/R/F1 with its three averages (exp3.evaluate.metrics.ingredient_prf)."""

    micro: PRF
    macro: PRF
    samples: PRF


class Detection(PRF):
    """Class-aware box matching at IoU >= match_iou (exp3.evaluate.metrics.detection_prf)."""

    tp: int
    fp: int
    fn: int


class PerClass(PRF):
    """One class of `per_class` (ingredient level)."""

    class_id: int
    name: str
    present: bool
    support: int
    predicted: int
    tp: int


class PerImage(_Block):
    """Column-oriented per-image ingredient scores (paired statistics join on `image_id`)."""

    image_id: list[str]
    precision: list[float | None]
    recall: list[float | None]
    f1: list[float | None]


class F1VsConf(_Block):
    """Micro and samples F1 over a confidence grid (exp3.evaluate.metrics.f1_vs_conf)."""

    conf: list[float]
    micro_f1: list[float | None]
    samples_f1: list[float | None]
    best_conf_micro: float
    best_conf_samples: float


class OperatingPoint(_Block):
    """The metrics at one confidence threshold (exp3.evaluate.metrics.operating_point)."""

    conf: float
    ingredient: Ingredient
    detection: Detection


class EvalStages(_Block):
    """Where a split's `eval_wall_s` went, in seconds (exp3.evaluate.evaluation.EvaluationStages; they add up to it)."""

    validator_s: float
    predict_s: float
    recording_s: float
    draws_s: float
    writing_s: float


class SplitMetrics(_Block):
    """`splits.<split>`: one evaluated test split (exp3.evaluate.metrics.summarize_split plus the validator's mAP)."""

    map50: float | None
    map50_95: float | None
    per_class_map50_95: dict[str, float | None]
    eval_wall_s: float
    eval_stages_s: EvalStages
    speed_ms_per_image: dict[str, float | None]
    n_images: int
    num_classes: int
    conf: float
    match_iou: float
    ingredient: Ingredient
    per_class: list[PerClass]
    per_image: PerImage
    detection: Detection
    f1_vs_conf: F1VsConf
    at_val_threshold: OperatingPoint


# ----------------------------------------------------------------------------- session blocks


class Checkpoint(_Block):
    path: str
    which: str
    why: str
    sha256: str


class TrainingWeights(_Block):
    configured: str | None
    path: str | None
    sha256: str | None
    origin: str


class TrainingLocations(_Block):
    """Where (not how) Ultralytics trains: its data, project, name, exist_ok args."""

    data: str
    project: str
    name: str
    exist_ok: bool


class PreviousFailure(_Block):
    error: str | None
    time: str | None


class TrainingRan(_Block):
    """The resumable args as the last training attempt really ran them."""

    batch: int | None
    imgsz: int | None
    device: str | int | None
    workers: int | None


class Optimizer(_Block):
    """What `optimizer=auto` picked (train_info.json)."""

    name: str | None
    requested: str | None
    lr0: float | None
    momentum: float | None


class Requested(_Block):
    optimizer: str | None
    amp: bool | None


class Training(_Block):
    family: str
    source: str
    pretrained: bool
    weights: TrainingWeights
    train_images: str
    train_data_yaml: str
    overrides: dict[str, Any]
    oom_retry_batch: int | None
    locations: TrainingLocations
    resumed_from_epoch: int | None
    previous_failure: PreviousFailure | None
    wall_s: float | None
    ran: TrainingRan | None
    optimizer: Optimizer | None
    requested: Requested | None
    amp: bool | None
    device: str | None
    epochs_completed: int | None
    effective_args: dict[str, Any] | None
    trainer: str | None
    attempts: int | None
    attempt_wall_s: list[float] | None


class SiteStats(_Block):
    """One masking site's counters over one epoch (exp3.train.masking.MaskingHandle.read_stats)."""

    index: int
    module: str
    strength: float
    batches: int
    masked_batches: int
    masked_share: float
    zeroed_share: float
    zeroed_share_when_masked: float
    inactive_calls: int


class MaskingEpoch(_Block):
    epoch: int
    sites: dict[str, SiteStats]


class MaskingStats(_Block):
    """`train/masking_stats.json` (exp3.train.trainers)."""

    sites: list[str]
    spec: dict[str, Any]
    epochs: list[MaskingEpoch]


class Masking(_Block):
    site: str
    spec: dict[str, Any]
    stats: MaskingStats | None


class Eval(_Block):
    conf: float
    match_iou: float
    wall_s: float
    predictions: str


class Thresholds(_Block):
    """The two operating points (docs/thresholds.md)."""

    primary: float
    val_chosen: float
    criterion: str
    val_f1_at_val_chosen: float | None
    val_f1_at_primary: float | None
    val_map50: float | None
    val_map50_95: float | None


class Robustness(_Block):
    """Value on test_occ_fixed / value on test_clean (null when clean is 0 or undefined)."""

    rF1_micro: float | None
    rF1_samples: float | None
    rF1_macro: float | None
    rmAP50: float | None
    rmAP50_95: float | None
    rF1_detection: float | None


class SeverityLevel(_Block):
    """A configured severity level (`severity.levels`)."""

    level: int
    split: str
    coverage: tuple[float, float]
    spec_key: str
    suite_id: str


class SeverityEvaluation(_Block):
    """What a severity split's numbers come from (`severity.evaluations.<split>`)."""

    level: int
    coverage: tuple[float, float]
    spec_key: str
    suite_id: str
    manifest_sha256: str
    checkpoint: str
    time: str
    added_after_training: bool
    wall_s: float
    exp3_version: str


class SeveritySummary(_Block):
    """Point mPC / rPC (exp3.evaluate.severity.mpc_summary); keys of `mPC` / `rPC` are
    exp3.evaluate.severity.METRICS."""

    levels: list[str]
    mPC: dict[str, float | None]
    rPC: dict[str, float | None]
    definition: str


class Superseded(_Block):
    """Results of a level since removed or changed (kept, never reused)."""

    split: str
    evaluation: SeverityEvaluation | None
    metrics: SplitMetrics | None
    superseded_at: str


class Severity(_Block):
    levels: list[SeverityLevel]
    evaluations: dict[str, SeverityEvaluation]
    summary: SeveritySummary
    superseded: list[Superseded]


class SeveritySuite(SeverityLevel):
    """One built severity suite (exp3.occlusion.suites.build_severity_suites) and the level it is."""

    model_config = ConfigDict(frozen=True)

    suite_dir: str
    manifest_sha256: str


class PreparedData(_Block):
    """The data every session of a run shares: built once (`exp3.session.prepare.prepare_data`), verified on reuse
    (`exp3.session.prepare.prepared_is_current`), handed to each session (`--prepared`), recorded as metrics.json's
    `data`."""

    model_config = ConfigDict(frozen=True)

    data_yaml: str
    dataset_fingerprint: str
    suite_dir: str
    suite_id: str
    suite_manifest_sha256: str
    s2_data_yaml: str
    s2_manifest_sha256: str
    severity_suites: tuple[SeveritySuite, ...]

    def severity_suite(self, split: str) -> SeveritySuite | None:
        """The severity suite holding `split`, None for test_clean / test_occ_fixed."""
        return next((suite for suite in self.severity_suites if suite.split == split), None)

    def split_yaml(self, split: str) -> Path:
        suite = self.severity_suite(split)
        return Path(suite.suite_dir if suite else self.suite_dir) / f"{split}.yaml"

    def test_splits(self) -> tuple[str, ...]:
        """test_clean, test_occ_fixed, then the severity splits, light to heavy."""
        return (*PRIMARY_SPLITS, *(suite.split for suite in self.severity_suites))


class Seeds(_Block):
    train: int | None
    masking: int | None
    occlusion: int | None
    synthetic: int | None


class GitState(_Block):
    commit: str | None
    dirty: bool | None


class Device(_Block):
    type: str
    names: list[str]
    cuda: str | None


class Provenance(_Block):
    """exp3.session.provenance.collect_provenance."""

    exp3_version: str
    git: GitState
    python: str
    platform: str
    packages: dict[str, str | None]
    device: Device


class SessionMetrics(_Block):
    """A session's metrics.json (docs/schema.md), as exp3.session.record assembles and writes it."""

    schema_version: int
    status: str
    session: str
    model: str
    suffix: str
    experiment: str
    cache_key: str
    inputs: SessionInputs
    checkpoint: Checkpoint
    training: Training
    masking: Masking | None
    eval: Eval
    thresholds: Thresholds
    splits: dict[str, SplitMetrics]
    robustness: Robustness
    severity: Severity
    data: PreparedData
    seeds: Seeds
    config_fingerprint: str
    provenance: Provenance

    def to_json(self) -> dict[str, Any]:
        """The JSON object metrics.json holds (what `exp3.fileio.atomic_write_json` is given)."""
        return self.model_dump(mode="json")


# ----------------------------------------------------------------------------- lenient view


def _is(value: Any, kinds: tuple[type, ...]) -> bool:
    """`value` is of one of `kinds`; a bool is a bool only, never the number it also is."""
    return isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool))


def _read(kinds: tuple[type, ...], otherwise: Any = None) -> BeforeValidator:
    """A value of `kinds` goes on to be validated; anything else (absent, null, another type) reads as `otherwise`."""
    return BeforeValidator(lambda value: value if _is(value, kinds) else otherwise)


# A leaf as readers take it: anything not of its type (absent, null, another type; a bool is no number) is None.
Number = Annotated[float | None, _read((int, float))]
Text = Annotated[str | None, _read((str,))]
Flag = Annotated[bool | None, _read((bool,))]


def _range_or_none(value: Any) -> Any:
    pair = isinstance(value, (list, tuple)) and len(value) == 2 and all(_is(item, (int, float)) for item in value)
    return value if pair else None


Range = Annotated[tuple[float, float] | None, BeforeValidator(_range_or_none)]
"""A [low, high] pair of numbers as readers take it: anything else is None."""


class _View(BaseModel):
    """A lenient view: unknown keys ignored, a block that is not an object read as empty."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _object_or_empty(cls, value: Any) -> Any:
        return value if isinstance(value, (dict, BaseModel)) else {}


def _block(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, BaseModel)


def _lenient_field(annotation: Any) -> tuple[Any, Any]:
    """(type, default) of one field of a strict block as readers take it (`lenient`)."""
    kinds = [kind for kind in get_args(annotation) if kind is not type(None)] \
        if get_origin(annotation) in (Union, UnionType) else [annotation]
    if len(kinds) > 1:
        return Any, None
    kind, origin, args = kinds[0], get_origin(kinds[0]), get_args(kinds[0])
    if _block(kind):
        return lenient(kind), lenient(kind)()
    if origin is list and _block(args[0]):
        return Annotated[list[lenient(args[0])], _read((list,), [])], []
    if origin is dict and _block(args[1]):
        return Annotated[dict[str, lenient(args[1])], _read((dict,), {})], {}
    leaves = {bool: Flag, int: Number, float: Number, str: Text}
    return (Range if origin is tuple and args == (float, float) else leaves.get(kind, Any)), None


@lru_cache(maxsize=None)
def lenient(block: type[BaseModel]) -> type[_View]:
    """The lenient view of a strict block, derived field by field: every field optional, a number / string /
    bool / [low, high] pair that is not of its type read as None, a block or a list or dict of blocks read as
    empty when it is not one, unknown keys ignored."""
    fields = {name: _lenient_field(info.annotation) for name, info in block.model_fields.items()}
    return create_model(f"{block.__name__}View", __base__=_View, **fields)


SplitView = lenient(SplitMetrics)
"""What readers take from `splits.<split>`."""
SeverityLevelView = lenient(SeverityLevel)
"""What readers take from one entry of `severity.levels`."""


class MetricsView(lenient(SessionMetrics)):  # type: ignore[misc]
    """metrics.json as readers take it: `SessionMetrics` made lenient (`lenient`), so it cannot drift from it."""

    @classmethod
    def of(cls, metrics: Any) -> MetricsView:
        """The view of a parsed metrics.json (an empty view for None or anything not an object)."""
        return cls.model_validate(metrics if isinstance(metrics, dict) else {})

    def split(self, name: str) -> SplitView:
        """`splits.<name>`, or an empty view when the file has no such split."""
        return self.splits.get(name) or SplitView()
