"""The one validated experiment config: pydantic models, layering and resolution.

Layering (later wins): pydantic defaults -> config file(s) -> CLI overrides (`key.sub=value`).
A config file may start with `base: other.yaml` (relative to itself) to be a small override
diff of another file, e.g. `configs/smoke.yaml` over `configs/exp3.yaml`; mappings merge key
by key, so an override file adds to its base's `models:` (removing or completing a model:
`ExperimentConfig._fill_known_models`). Every model uses `extra="forbid"`: an unknown key is an error.

The defaults here and `configs/exp3.yaml` must agree; a test checks that they do.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from exp3.fileio import atomic_write_text, read_yaml, stable_hash
from exp3.sessions import SESSION_SUFFIXES

SUPPORTED_INTEGRATIONS: tuple[str, ...] = ("tensorboard", "mlflow")
"""Integrations `integrations:` accepts; each name is also the module its Ultralytics callback imports and the
pyproject extra that installs it (`pip install -c requirements.lock -e ".[tensorboard]"`)."""
REFUSED_INTEGRATIONS: dict[str, str] = {
    "wandb": "Ultralytics' W&B callback names every exp3 run 'train' and logs to wandb.ai, and exp3 runs offline",
    "comet": "Comet logs to comet.com, and exp3 runs offline",
    "clearml": "ClearML logs to a ClearML server, and exp3 runs offline",
    "dvc": "DVCLive needs a DVC repository around the output root",
    "raytune": "Ray Tune reports to a hyperparameter search, which exp3 does not run",
}


class ConfigError(ValueError):
    """A config that cannot be loaded or validated; the message is one line with the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DatasetConfig(_Strict):
    """Where the images come from: the embedded synthetic generator or a user `data.yaml`."""

    kind: Literal["synthetic", "yaml"] = "synthetic"
    preset: Literal["smoke", "full"] = "full"
    synthetic_seed: int = Field(default=0, ge=0)
    data_yaml: Path | None = None

    @model_validator(mode="after")
    def _yaml_needs_path(self) -> "DatasetConfig":
        if self.kind == "yaml" and self.data_yaml is None:
            raise ValueError("dataset.kind is 'yaml' but dataset.data_yaml is not set: give the path of your data.yaml")
        return self


class ModelConfig(_Strict):
    """One detector: its architecture yaml, the weights it starts from (exp3/train/weights.py), epochs.

    `weights`: a local `.pt` path, an Ultralytics asset name (`yolov8m.pt`), or None = from scratch on purpose;
    weights that cannot be found stop the run (README, "Quickstart").
    """

    architecture: str
    weights: str | None = None
    epochs: int = Field(gt=0, strict=True)  # strict: `epochs: on` is not 1

    @property
    def family(self) -> Literal["detect", "rtdetr"]:
        """`rtdetr` for RT-DETR architectures, `detect` for YOLO ones."""
        return "rtdetr" if "rtdetr" in self.architecture.lower() else "detect"


def _default_models() -> dict[str, ModelConfig]:
    return {
        "yolov8m": ModelConfig(architecture="yolov8m.yaml", weights="yolov8m.pt", epochs=100),
        "rtdetr-l": ModelConfig(architecture="rtdetr-l.yaml", weights="rtdetr-l.pt", epochs=100),
    }


class TrainConfig(_Strict):
    """The only training args exp3 may set; `None` leaves Ultralytics' default in force."""

    batch: int | None = Field(default=None, gt=0, strict=True)  # strict: a YAML `true` or `off` is not 1 or 0
    imgsz: int | None = Field(default=None, ge=32, multiple_of=32, strict=True)  # Ultralytics rounds others up
    device: str | None = None
    workers: int | None = Field(default=None, ge=0, strict=True)

    @field_validator("device", mode="before")
    @classmethod
    def _device_as_text(cls, value: Any) -> Any:
        """`device: 0` (YAML int) means the same to Ultralytics as the string. Several devices (`0,1`: one session
        trained on several GPUs, Ultralytics' DDP) are refused: its launcher registers exp3's masking hooks twice and
        deletes the run folder, and the record's training callbacks run in its worker processes only."""
        value = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
        if isinstance(value, str) and "," in value:
            raise ValueError(f"train.device {value!r} would train each session on several GPUs (DDP), which exp3 does "
                             f"not support: set gpus: [{value}] to run one session per GPU")
        return value


DEFAULT_SEVERITIES: tuple[tuple[float, float], ...] = ((0.1, 0.26), (0.26, 0.42), (0.42, 0.58), (0.58, 0.74),
                                                       (0.74, 0.9))
"""Five equal-width, contiguous coverage bands from 0.1 to the 0.9 cap (docs/occlusion.md, severity suites)."""
MAX_BOX_COVERAGE = 0.9
"""Cap on the covered fraction of any box, in every mode and suite (exp3.occlusion.planners), so also the top of any
severity level. Rule and why: docs/occlusion.md, "Part of every box stays visible"."""
MAX_SEVERITY_LEVELS = 10


class OcclusionConfig(_Strict):
    """Parameters of the fixed occluded test suite, the severity suites and S2's occluded train set.
    `severities` only adds test suites: docs/occlusion.md, "Not a session input"."""

    mode: Literal["object", "random"] = "object"
    coverage: tuple[float, float] = (0.3, 0.5)
    fills: tuple[Literal["mean", "gray", "noise", "texture"], ...] = ("mean", "noise", "texture")
    random_rects: tuple[int, int] = (1, 3)
    random_area: tuple[float, float] = (0.02, 0.15)
    output_format: Literal["png", "jpg"] = "png"
    seed: int = Field(default=0, ge=0)
    train_fraction: float = Field(default=0.5, ge=0.0, le=1.0)
    severities: tuple[tuple[float, float], ...] = DEFAULT_SEVERITIES

    @field_validator("severities")
    @classmethod
    def _severity_levels(cls, value: tuple[tuple[float, float], ...]) -> tuple[tuple[float, float], ...]:
        """Light to heavy: each level a coverage range 0 < low <= high <= MAX_BOX_COVERAGE, strictly
        increasing (low and high), at most MAX_SEVERITY_LEVELS levels; [] = no severity suites."""
        if len(value) > MAX_SEVERITY_LEVELS:
            raise ValueError(f"{len(value)} levels; give at most {MAX_SEVERITY_LEVELS} (e.g. the default five)")
        for index, (low, high) in enumerate(value):
            if not 0.0 < low <= high <= MAX_BOX_COVERAGE:
                raise ValueError(f"level {index + 1} {[low, high]} is not a range 0 < low <= high <= "
                                 f"{MAX_BOX_COVERAGE} (the per-box coverage cap): fix that level")
            if index and not (low > value[index - 1][0] and high > value[index - 1][1]):
                raise ValueError(f"level {index + 1} {[low, high]} is not heavier than level {index} "
                                 f"{list(value[index - 1])}: list the levels from light to heavy, without repeats")
        return value

    @field_validator("coverage", "random_area")
    @classmethod
    def _fraction_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 < value[0] <= value[1] < 1.0:
            raise ValueError(f"{list(value)} is not a range 0 < low <= high < 1")
        return value

    @field_validator("random_rects")
    @classmethod
    def _count_range(cls, value: tuple[int, int]) -> tuple[int, int]:
        if not 1 <= value[0] <= value[1]:
            raise ValueError(f"{list(value)} is not a range 1 <= low <= high")
        return value

    @field_validator("fills")
    @classmethod
    def _some_fill(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("needs at least one of mean, gray, noise, texture")
        return value


class MaskingConfig(_Strict):
    """Training-only internal activation masking used by S3..S6 (see docs/masking.md)."""

    mode: Literal["channel", "spatial", "channel+spatial"] = "channel"
    p_apply: float = Field(default=0.5, ge=0.0, le=1.0)
    p_channels: float = Field(default=0.15, ge=0.0, lt=1.0)
    p_spatial: float = Field(default=0.1, ge=0.0, lt=1.0)
    block_fraction: float = Field(default=0.15, gt=0.0, le=1.0)
    rescale: Literal["dropout", "none"] = "dropout"
    schedule: Literal["constant", "linear_ramp"] = "linear_ramp"
    ramp_fraction: float = Field(default=0.3, ge=0.0, le=1.0)
    seed: int = Field(default=0, ge=0)


class EvalConfig(_Strict):
    """Thresholds of the ingredient-list and detection-level metrics."""

    conf: float = Field(default=0.25, ge=0.0, le=1.0)
    match_iou: float = Field(default=0.5, gt=0.0, le=1.0)
    plots: bool = True  # Ultralytics' validation figures for test_clean and test_occ_fixed; no number depends on them


class FailureConfig(_Strict):
    """What the flow does when a session fails."""

    policy: Literal["continue", "stop"] = "continue"
    retries: int = Field(default=1, ge=0, le=5)
    oom_halve_batch: bool = True


class MirrorConfig(_Strict):
    """A copy of the results on slower, durable storage beside a local `output_root` (exp3/session/mirror.py)."""

    path: Path | None = None
    checkpoint_minutes: float = Field(default=30.0, ge=0.0)


class ExperimentConfig(_Strict):
    """The whole experiment. `python -m exp3.config show --config FILE` prints it resolved."""

    name: str = "exp3"
    output_root: Path = Path("runs/exp3")
    dataset: DatasetConfig = DatasetConfig()
    models: dict[str, ModelConfig] = Field(default_factory=_default_models)
    sessions: tuple[str, ...] = SESSION_SUFFIXES
    train: TrainConfig = TrainConfig()
    occlusion: OcclusionConfig = OcclusionConfig()
    masking: MaskingConfig = MaskingConfig()
    eval: EvalConfig = EvalConfig()
    failure: FailureConfig = FailureConfig()
    mirror: MirrorConfig = MirrorConfig()
    gpus: tuple[Annotated[int, Field(ge=0)], ...] = ()
    parallel_sessions: int = Field(default=1, ge=1)
    seeds: tuple[int, ...] = (0,)
    download_weights: bool = False
    integrations: tuple[str, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _fill_known_models(cls, data: Any) -> Any:
        """`<name>: null` removes an inherited model (`configs/pilot.yaml` runs only yolov8n that way); a model
        named like a default (yolov8m, rtdetr-l) inherits the default's fields it does not set."""
        if isinstance(data, dict) and isinstance(data.get("models"), dict):
            defaults = {name: model.model_dump(mode="json") for name, model in _default_models().items()}
            data = {**data, "models": {name: {**defaults[name], **entry} if name in defaults and isinstance(entry, dict)
                                       else entry for name, entry in data["models"].items() if entry is not None}}
        return data

    @field_validator("models")
    @classmethod
    def _some_model(cls, value: dict[str, ModelConfig]) -> dict[str, ModelConfig]:
        if not value:
            raise ValueError("needs at least one model, e.g. {yolov8m: {architecture: yolov8m.yaml, epochs: 100}}")
        for name in value:
            if "__" in name or "/" in name:
                raise ValueError(f"model name {name!r} may not contain '__' or '/': rename it")
        return value

    @model_validator(mode="after")
    def _one_way_to_parallelise(self) -> "ExperimentConfig":
        if self.gpus and str(self.train.device).lower() in ("cpu", "mps"):  # each slot's session runs on its GPU
            raise ValueError(f"gpus {list(self.gpus)} with train.device {self.train.device!r}: the gpus list runs "
                             "each session on a GPU; set gpus: [] to train on the CPU, or train.device: null")
        if self.gpus and self.parallel_sessions > 1:
            raise ValueError(f"parallel_sessions {self.parallel_sessions} with gpus {list(self.gpus)}: with GPUs the "
                             "slots are the gpus list (repeat a GPU to pack sessions on it, e.g. gpus: [0, 0]); "
                             "set parallel_sessions: 1 or gpus: []")
        return self

    @field_validator("seeds")
    @classmethod
    def _seed_list(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or len(set(value)) != len(value) or min(value) < 0:
            raise ValueError(f"{list(value)} must be a non-empty list of distinct seeds >= 0, e.g. [0, 1, 2]")
        return value

    @field_validator("integrations", mode="before")
    @classmethod
    def _one_integration_as_a_list(cls, value: Any) -> Any:
        """`--set integrations=tensorboard` means the list [tensorboard]."""
        return [value] if isinstance(value, str) else value

    @field_validator("integrations")
    @classmethod
    def _supported_integrations(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        """Ultralytics integrations to switch on (exp3/train/integrations.py); every other one is off."""
        for index, name in enumerate(value):
            if name in REFUSED_INTEGRATIONS:
                raise ValueError(f"{name!r} is not supported: {REFUSED_INTEGRATIONS[name]}; "
                                 f"use {' or '.join(SUPPORTED_INTEGRATIONS)}")
            if name not in SUPPORTED_INTEGRATIONS:
                raise ValueError(f"unknown integration {name!r}: use {', '.join(SUPPORTED_INTEGRATIONS)} "
                                 "(a list, e.g. [tensorboard]; [] = none)")
            if name in value[:index]:
                raise ValueError(f"{name!r} is listed twice: list each integration once")
        return value

    @field_validator("sessions")
    @classmethod
    def _known_sessions(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for session in value:
            if session not in SESSION_SUFFIXES:
                raise ValueError(f"unknown session {session!r}: use one of {', '.join(SESSION_SUFFIXES)}")
        return value

    def fingerprint(self) -> str:
        """12-hex hash of the resolved config (paths as strings)."""
        return stable_hash(self.model_dump(mode="json"))


# ---------------------------------------------------------------------------------------------
# Loading and layering


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge: mappings merge key by key, anything else replaces."""
    merged = dict(base)
    for key, value in override.items():
        both_mappings = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = _deep_merge(merged[key], value) if both_mappings else value
    return merged


def read_config_layers(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a config file, following `base:` links; returns the merged raw mapping."""
    path = path.resolve()
    if path in _seen:
        raise ConfigError(f"config file {str(path)!r} inherits from itself through 'base:': break the cycle")
    data = read_yaml(path, "config file", "pass an existing YAML file (see configs/)", ConfigError)
    if data is None:  # an empty file
        data = {}
    elif not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level, got {type(data).__name__}")
    base_name = data.pop("base", None)
    if base_name is None:
        return data
    base = read_config_layers(path.parent / str(base_name), (*_seen, path))  # resolved there
    back = [name for name, entry in (data.get("models") or {}).items()  # defaults for the rest: pretrained weights
            if isinstance(entry, dict) and "weights" not in entry and (base.get("models") or {}).get(name, ...) is None]
    if back:
        raise ConfigError(f"config file {str(path)!r}: model {back[0]!r} is removed by its base {base_name} "
                          f"({back[0]}: null) and named again without weights: set models.{back[0]}.weights "
                          "(null = from scratch, or the checkpoint to start from)")
    return _deep_merge(base, data)


def parse_override(text: str) -> dict[str, Any]:
    """`a.b=value` -> {"a": {"b": value}}; the value is parsed as YAML (`1`, `[a, b]`, `null`); an empty value is
    refused (null is written `null`)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not KEY=VALUE: write e.g. train.batch=8")
    key, raw_value = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key: write e.g. train.batch=8")
    if not raw_value.strip():  # YAML reads '' as null: an unset shell variable ($W) would silently mean null
        raise ConfigError(f"override {text!r} has no value: write {key}=null for null")
    try:
        value = yaml.safe_load(raw_value)
    except yaml.YAMLError:
        value = raw_value
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def _format_validation_error(error: ValidationError, source: str) -> str:
    first = error.errors()[0]
    location = ".".join(str(part) for part in first["loc"]) or "<top level>"
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown config key {location!r}: remove it or check the spelling against configs/exp3.yaml"
    if first["type"] == "missing" and first["loc"][:1] == ("models",) and first["loc"][2:] == ("architecture",):
        return (f"{source}: model {first['loc'][1]!r} has no architecture: check the model's name (a typo makes a "
                f"new model), or give a new one models.{first['loc'][1]}.architecture (e.g. yolov8s.yaml)")
    message = first["msg"].removeprefix("Value error, ")
    if not first["loc"]:                       # a check across keys: the message names the values
        return f"{source}: {message}"
    return f"{source}: invalid value for {location!r} ({first.get('input')!r}): {message}"


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Defaults -> file at `path` (following `base:`) -> `overrides` (`key.sub=value` strings); `ConfigError`
    (one line) if bad."""
    raw: dict[str, Any] = ExperimentConfig().model_dump(mode="json") if path is None else read_config_layers(Path(path))
    for override in overrides or []:
        parsed = parse_override(override)
        removed = [name for name, value in (parsed.get("models") or {}).items()
                   if value is not None and (raw.get("models") or {}).get(name, ...) is None]
        if removed:  # it would come back with the built-in defaults (pretrained weights) for every key not set
            raise ConfigError(f"override {override!r}: model {removed[0]!r} is removed by {path} ({removed[0]}: null): "
                              "add it to a config file whole (architecture, weights, epochs) to run it")
        raw = _deep_merge(raw, parsed)
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_format_validation_error(error, "config" if path is None else str(path))) from None


def config_to_yaml(config: ExperimentConfig) -> str:
    """The resolved config as YAML (JSON-mode dump: paths and tuples become plain values)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def write_resolved_config(config: ExperimentConfig, directory: str | Path) -> Path:
    """Write `config_resolved.yaml` into `directory` atomically; returns its path."""
    return atomic_write_text(Path(directory) / "config_resolved.yaml", config_to_yaml(config))


def writable_output_root(config: ExperimentConfig) -> Path:
    """The absolute output root (a relative one from the cwd), created if missing; ConfigError (one line) if it is
    not a directory this process can write in (a file, a path under a file, /proc/...): a probe file tests it."""
    root = config.output_root.absolute()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        reason = "a file is there" if isinstance(error, FileExistsError) else f"cannot create it: {error.strerror}"
        raise ConfigError(f"output_root {str(root)!r} is not a writable directory ({reason}): choose another") from None
    try:
        tempfile.TemporaryFile(dir=root).close()
    except OSError as error:
        raise ConfigError(f"output_root {str(root)!r} is not a writable directory (cannot write in it: "
                          f"{error.strerror}): choose another") from None
    return root


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m exp3.config", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("show", help="print the resolved config as YAML")
    show.add_argument("--config", type=Path, default=None)
    show.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    sys.stdout.write(config_to_yaml(config))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
