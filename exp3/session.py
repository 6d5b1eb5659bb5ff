"""One session end to end: data, training (in this process), one-pass evaluation on both test splits,
metrics, and a self-describing session folder.

    python -m exp3.session --config configs/smoke.yaml --model yolov8m --session S1_clean_train

Session folder `<output_root>/<model>/<model>__<session>/`:

    inputs.json                   SessionInputs and their key (exp3/identity.py), written before training
    config_resolved.yaml          the config this session ran with
    train_plan.json               what the training was asked to do (exp3.train.TrainPlan)
    train/                        Ultralytics' run: weights/{best,last}.pt, args.yaml, results.csv,
                                  training plots, train_info.json, masking_stats.json (S3-S6)
    weights/{best,last}.pt        hard links to train/weights/ (no extra disk), for convenience
    plots/<split>/                Ultralytics' validation plots of the evaluated checkpoint (val, test_clean,
                                  test_occ_fixed; not the severity splits)
    predictions_val.json          per-image records of the clean val split (threshold choice only)
    predictions_test_clean.json   per-image records (see exp3.evaluate)
    predictions_test_occ_fixed.json
    predictions_test_occ_sev<k>.json  one per severity level (exp3/splits.py), also added to a finished session
    map_stats_<split>.npz         the validator's per-image matching stats of each test split (mAP's CIs)
    metrics.json                  exp3.schema.SessionMetrics, documented in docs/schema.md
    logs/train.log                Ultralytics' output while training (all attempts)
    DONE | FAILED                 marker (JSON): DONE holds metrics.json's sha256 and the inputs' key

A session with a valid DONE marker made under the same inputs (same key) is skipped; a folder
made under other inputs is `stale`: moved aside to `<root>/stale/` (kept, named in the log) and
the session trains again from scratch. A partial `train/weights/last.pt` of the same inputs is
resumed. Checkpoint evaluated: `best.pt` (selected on the clean `val` split, the same for all
six sessions), falling back to `last.pt` only if `best.pt` is missing. Operating points: the
primary threshold `eval.conf` (predict's 0.25) and each session's own threshold chosen on the
clean val split (docs/thresholds.md).

Severity splits (`occlusion.severities`) are not inputs of the session: a session evaluates every
configured level after training, and a done session whose recorded severity evaluations differ
from the configured ones (levels added, changed or removed) is brought up to date from its own
checkpoint without training (`update_severity_evaluations`): only the missing levels are evaluated,
each recorded with its suite, time and wall (`added_after_training: true`); metrics.json is
replaced atomically and the DONE marker stays valid throughout (`SessionPaths.replace_metrics`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exp3 import __version__
from exp3.config import ConfigError, ExperimentConfig, load_config, resolve_output_root, write_resolved_config
from exp3.dataset import AuditedData, audit_once
from exp3.fileio import atomic_write_json, sha256_file
from exp3.identity import SessionInputs, session_inputs
from exp3.layout import SessionPaths
from exp3.sessions import Session, parse_session
from exp3.runlock import LockBusy
from exp3.schema import (
    Checkpoint,
    Eval,
    Masking,
    PreparedData,
    PreviousFailure,
    Provenance,
    Robustness,
    SessionMetrics,
    Seeds,
    Severity,
    SeverityEvaluation,
    SeverityLevel,
    SeveritySuite,
    SplitMetrics,
    Superseded,
    Thresholds,
    Training,
    TrainingWeights,
)
from exp3.splits import CLEAN_SPLIT, FIXED_SPLIT, PRIMARY_SPLITS
from exp3.weights import ResolvedWeights, resolve_weights

if TYPE_CHECKING:  # annotations only; exp3.evaluate is imported where a session evaluates
    from exp3.evaluate import EvaluationModel

SCHEMA_VERSION = 1
SPLITS: tuple[str, ...] = PRIMARY_SPLITS
"""The splits of a session's inputs; `PreparedData.test_splits()` adds the severity splits."""
VAL_SPLIT = "val"
"""The clean val split of the dataset: checkpoint selection (Ultralytics) and the val-chosen threshold."""
TRAIN_INFO_KEYS: tuple[str, ...] = ("optimizer", "requested", "amp", "device", "epochs_completed", "effective_args",
                                    "trainer", "attempts", "attempt_wall_s")
"""Keys of the training's train_info.json copied into metrics.json's `training` block."""
CHECKPOINT_CHOICE = ("best.pt: the epoch with the best fitness (0.1 mAP50 + 0.9 mAP50-95) on the clean val "
                     "split, chosen the same way for all six sessions; the test splits never influence it")


class SessionFailed(RuntimeError):
    """A session that could not finish; the message is one line, the log tail is in FAILED."""


def session_dir(output_root: Path, session: Session) -> Path:
    """`<output_root>/<model>/<model>__<suffix>` (SessionPaths owns the layout)."""
    return SessionPaths.of(output_root, session).folder


def resolve_model_weights(config: ExperimentConfig, model_name: str) -> ResolvedWeights:
    """The weights `model_name` starts from, or `WeightsError` (exp3/weights.py)."""
    model = config.models[model_name]
    return resolve_weights(model_name, model.architecture, model.weights, download=config.download_weights)


def dataset_yaml(config: ExperimentConfig, output_root: Path) -> Path:
    """The data.yaml to use: the embedded synthetic dataset (generated on first use) or the user's."""
    if config.dataset.kind == "yaml":
        assert config.dataset.data_yaml is not None  # guaranteed by DatasetConfig's validator
        return Path(config.dataset.data_yaml).absolute()
    from exp3.synth import build_synthetic_dataset

    target = output_root / "data" / f"synthetic-{config.dataset.preset}-seed{config.dataset.synthetic_seed}"
    return build_synthetic_dataset(target, preset=config.dataset.preset, seed=config.dataset.synthetic_seed,
                                   workers=2)


def prepare_data(config: ExperimentConfig, output_root: Path, audited: AuditedData | None = None) -> PreparedData:
    """Dataset, its audit, fixed occlusion suite and S2's occluded train set (each idempotent, verified).

    `audited`: the flow's audit of this config's dataset (`exp3.dataset.audit_once`), used as is: the
    dataset is not hashed again. Without it (a session run by hand) the dataset is audited here.
    Raises `DatasetError` if the dataset fails the audit (before anything is built from it).
    """
    from exp3.occlusion.suites import build_occluded_train_set, build_occlusion_suite, build_severity_suites
    from exp3.splits import severity_levels

    if audited is None:
        audited = audit_once(dataset_yaml(config, output_root), output_root / "audits")
    data_yaml = Path(audited.data_yaml)
    suite = build_occlusion_suite(data_yaml, output_root / "suites", config.occlusion, workers=2)
    severity_dirs = build_severity_suites(data_yaml, output_root / "suites", config.occlusion, workers=2)
    s2_yaml = build_occluded_train_set(data_yaml, output_root / "suites", config.occlusion, workers=2)
    severity = tuple(SeveritySuite(level=level.level, split=level.split, coverage=level.coverage,
                                   spec_key=level.spec_key, suite_dir=str(path), suite_id=path.name,
                                   manifest_sha256=sha256_file(path / "manifest.json"))
                     for level, path in zip(severity_levels(config.occlusion), severity_dirs))
    return PreparedData(
        data_yaml=str(data_yaml),
        dataset_fingerprint=audited.fingerprint,  # computed by the audit: no second pass over the files
        suite_dir=str(suite),
        suite_id=suite.name,
        suite_manifest_sha256=sha256_file(suite / "manifest.json"),
        s2_data_yaml=str(s2_yaml),
        s2_manifest_sha256=sha256_file(s2_yaml.parent / "manifest.json"),
        severity_suites=severity,
    )


def prepared_from_json(text: str) -> PreparedData:
    """`--prepared` JSON (what the flow prepared) -> PreparedData; ValueError naming the fix if it is not one."""
    from pydantic import ValidationError

    try:
        return PreparedData.model_validate_json(text)
    except ValidationError as error:
        raise ValueError(f"--prepared is not a PreparedData JSON object ({_one_line(error)}): "
                         "leave it out and the session prepares its own data") from None


def prepared_is_current(prepared: PreparedData) -> bool:
    """True if the files `prepared` names are still there and every manifest (fixed suite, S2 set,
    severity suites) still hashes as recorded.

    The cheap check a session makes on data the flow prepared and verified (no pass over the
    dataset or the suites); anything else and the session prepares and verifies for itself.
    """
    suite_manifest = Path(prepared.suite_dir) / "manifest.json"
    s2_manifest = Path(prepared.s2_data_yaml).parent / "manifest.json"
    return (Path(prepared.data_yaml).is_file() and Path(prepared.s2_data_yaml).is_file()
            and suite_manifest.is_file() and s2_manifest.is_file()
            and sha256_file(suite_manifest) == prepared.suite_manifest_sha256
            and sha256_file(s2_manifest) == prepared.s2_manifest_sha256
            and all((Path(suite.suite_dir) / "manifest.json").is_file()
                    and sha256_file(Path(suite.suite_dir) / "manifest.json") == suite.manifest_sha256
                    for suite in prepared.severity_suites))


def prepared_mismatch(prepared: PreparedData, config: ExperimentConfig) -> str | None:
    """Why `prepared` (data handed to a session) is not what `config` asks for, or None if it is: the
    fixed suite's and S2 set's occlusion parameters (from their manifests) and the severity levels'
    spec keys must be the config's. A session never evaluates a config on another config's suites."""
    from exp3.occlusion.identity import suite_parameters, train_set_parameters
    from exp3.splits import evaluation_plan

    manifests = {"fixed suite": (Path(prepared.suite_dir) / "manifest.json", suite_parameters(config.occlusion)),
                 "S2 train set": (Path(prepared.s2_data_yaml).parent / "manifest.json",
                                  train_set_parameters(config.occlusion))}
    for name, (manifest, wanted) in manifests.items():
        try:
            parameters = json.loads(manifest.read_text(encoding="utf-8")).get("parameters")
        except (OSError, ValueError, AttributeError):
            return f"its {name} manifest {manifest} is unreadable"
        if parameters != wanted:
            return f"its {name} was built with other occlusion parameters than the config's"
    plan = evaluation_plan(config.occlusion)
    if {suite.split: suite.spec_key for suite in prepared.severity_suites} != plan:
        return f"its severity suites are not the config's levels ({', '.join(plan) or 'none'})"
    return None


def session_key(config: ExperimentConfig, session: Session, output_root: Path) -> str:
    """The cache key of `session` (prepares and verifies the data, resolves the weights)."""
    from exp3.offline import apply_offline_environment

    apply_offline_environment(output_root)
    weights = resolve_model_weights(config, session.model)
    prepared = prepare_data(config, output_root)
    return session_inputs(config, session, prepared.dataset_fingerprint, prepared.suite_id, weights.sha256).key


def is_done(folder: Path, key: str | None = None) -> bool:
    """True if `folder` has a DONE marker matching its metrics.json (and made under `key`, when given)."""
    return SessionPaths(folder).is_done(key)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _split_metrics(evaluation: Any, records: list[Any], config: ExperimentConfig, names: list[str],
                   val_conf: float) -> SplitMetrics:
    from exp3.metrics import operating_point, summarize_split

    summary = summarize_split(records, num_classes=len(names), conf=config.eval.conf,
                              match_iou=config.eval.match_iou, class_names=names)
    return SplitMetrics.model_validate({
        "map50": evaluation.map50, "map50_95": evaluation.map50_95,
        "per_class_map50_95": evaluation.per_class_map50_95, "eval_wall_s": evaluation.wall_s,
        "eval_stages_s": evaluation.stages.to_json(), "speed_ms_per_image": evaluation.speed_ms_per_image, **summary,
        "at_val_threshold": operating_point(records, len(names), val_conf, config.eval.match_iou)})


def _splits_json(splits: dict[str, SplitMetrics]) -> dict[str, dict[str, Any]]:
    """`splits` as plain dicts, for the functions that read metrics.json's split entries (robustness, mPC)."""
    return {split: metrics.model_dump(mode="json") for split, metrics in splits.items()}


def robustness(clean: dict[str, Any], occluded: dict[str, Any]) -> dict[str, float | None]:
    """rX = X(test_occ_fixed) / X(test_clean) for the headline metrics (None if clean is 0 or undefined)."""
    from exp3.metrics import robustness_ratio

    def ratio(occ: float | None, cln: float | None) -> float | None:
        if occ is None or cln is None:
            return None
        value = robustness_ratio(occ, cln)
        return None if value != value else value  # NaN -> None (undefined)

    return {
        "rF1_micro": ratio(occluded["ingredient"]["micro"]["f1"], clean["ingredient"]["micro"]["f1"]),
        "rF1_samples": ratio(occluded["ingredient"]["samples"]["f1"], clean["ingredient"]["samples"]["f1"]),
        "rF1_macro": ratio(occluded["ingredient"]["macro"]["f1"], clean["ingredient"]["macro"]["f1"]),
        "rmAP50": ratio(occluded["map50"], clean["map50"]),
        "rmAP50_95": ratio(occluded["map50_95"], clean["map50_95"]),
        "rF1_detection": ratio(occluded["detection"]["f1"], clean["detection"]["f1"]),
    }


def run_session(config: ExperimentConfig, session: Session, output_root: Path,
                retry_batch: int | None = None, prepared: PreparedData | None = None) -> dict[str, Any]:
    """Run (or skip, or resume) one session; return its metrics.json payload.

    `retry_batch`: the batch of an out-of-memory retry (what really runs, recorded as such; the
    session's inputs and key stay those of the config). `prepared`: the data the flow prepared
    and verified, used as is while `prepared_is_current` and it fits `config` (`prepared_mismatch`);
    without it (a session run by hand)
    the session prepares and verifies the data itself. Raises `WeightsError` before anything is
    written when the configured weights cannot be had, `LockBusy` when another process runs this
    session, and `SessionFailed` after writing a FAILED marker (error, log tail) for anything else,
    a dataset failing its audit included.
    """
    from exp3.offline import apply_offline_environment

    paths = SessionPaths.of(output_root, session)
    apply_offline_environment(output_root)
    weights = resolve_model_weights(config, session.model)  # WeightsError: nothing written, nothing trained
    paths.folder.parent.mkdir(parents=True, exist_ok=True)
    with paths.session_lock("python -m exp3.session"):
        if prepared is not None and (mismatch := prepared_mismatch(prepared, config)) is not None:
            print(f"exp3: {session.name}: the data handed to it does not fit its config ({mismatch}): "
                  "preparing it here")
            prepared = None
        try:
            if prepared is None or not prepared_is_current(prepared):
                prepared = prepare_data(config, output_root)
        except Exception as error:
            _write_failure(paths, session, error)
            raise SessionFailed(f"{session.name} failed: {_one_line(error)} (see {paths.failed_marker})") from error
        inputs = session_inputs(config, session, prepared.dataset_fingerprint, prepared.suite_id, weights.sha256)
        if paths.is_done(inputs.key):
            return update_severity_evaluations(config, session, output_root, paths, prepared)
        if paths.state(inputs.key) == "stale":
            moved = paths.move_aside()
            print(f"exp3: {session.name}: results made under other inputs (key {paths_key_text(moved)}) moved "
                  f"aside to {moved}; training again from scratch under key {inputs.key}")
        paths.folder.mkdir(parents=True, exist_ok=True)
        paths.write_inputs(inputs.model_dump(mode="json"), inputs.key)
        try:
            return _run_session_steps(config, session, output_root, paths, prepared, weights, inputs, retry_batch)
        except Exception as error:  # noqa: BLE001 - every failure must leave a FAILED marker
            _write_failure(paths, session, error)
            raise SessionFailed(f"{session.name} failed: {_one_line(error)} (see {paths.failed_marker})") from error


def paths_key_text(folder: Path) -> str:
    """The key recorded in a (moved) session folder, or 'unknown' for folders from before keys."""
    return SessionPaths(folder).recorded_key() or "unknown"


def _one_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}".splitlines()[0]


def _write_failure(paths: SessionPaths, session: Session, error: BaseException) -> None:
    from exp3.train import log_tail

    paths.folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(paths.failed_marker, {
        "session": session.name, "error": _one_line(error), "traceback": traceback.format_exc(),
        "train_log_tail": log_tail(paths.logs / "train.log"), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })


def _evaluate(model: EvaluationModel, split_yaml: Path, split: str, config: ExperimentConfig, output_root: Path,
              save_dir: Path, plots: bool = True) -> Any:
    """One split of the session's `exp3.evaluate.EvaluationModel` (loaded once for all its splits)."""
    from exp3.evaluate import evaluate_split

    return evaluate_split(model, split_yaml, model.family, output_root, save_dir, split=split,
                          batch=config.train.batch, device=config.train.device, plots=plots,
                          workers=config.train.workers)


def _run_session_steps(config: ExperimentConfig, session: Session, output_root: Path, paths: SessionPaths,
                       prepared: PreparedData, weights: ResolvedWeights, inputs: SessionInputs,
                       retry_batch: int | None) -> dict[str, Any]:
    from exp3.dataset import read_data_yaml
    from exp3.evaluate import load_evaluation_model
    from exp3.metrics import choose_threshold, ingredient_prf, ingredient_sets, records_from_json
    from exp3.provenance import collect_provenance
    from exp3.train import checkpoint_state, plan_training, run_training

    folder, logs = paths.folder, paths.logs
    previous_failure = paths.failure()
    paths.failed_marker.unlink(missing_ok=True)
    write_resolved_config(config, folder)
    train_yaml = Path(prepared.s2_data_yaml if session.train_images == "occluded" else prepared.data_yaml)
    plan = plan_training(config, session, train_yaml, folder, output_root, weights, retry_batch)
    outcome = run_training(plan, logs)
    state, epoch_info = checkpoint_state(plan.last_pt)
    if state != "finished":
        raise SessionFailed(f"training stopped early ({epoch_info}); run the session again to resume")
    checkpoint = plan.best_pt if plan.best_pt.is_file() else plan.last_pt
    _link_weights(Path(plan.run_dir) / "weights", folder / "weights")
    names = read_data_yaml(prepared.data_yaml).names
    eval_wall = 0.0
    model = load_evaluation_model(checkpoint, plan.family)  # once, for val and every test split
    val = _evaluate(model, Path(prepared.data_yaml), VAL_SPLIT, config, output_root, folder / "plots" / VAL_SPLIT)
    atomic_write_json(paths.predictions(VAL_SPLIT), {"schema_version": SCHEMA_VERSION, "session": session.name,
                                                     "split": VAL_SPLIT, "checkpoint": str(checkpoint),
                                                     "images": val.records})
    eval_wall += val.wall_s
    val_records = records_from_json(val.records)
    chosen = choose_threshold(val_records, len(names))
    splits: dict[str, SplitMetrics] = {}
    evaluations: dict[str, SeverityEvaluation] = {}
    for split in prepared.test_splits():
        splits[split] = _evaluate_test_split(model, split, config, output_root, paths, session, prepared, names,
                                             chosen["conf"])
        eval_wall += splits[split].eval_wall_s
        if split not in SPLITS:
            evaluations[split] = _evaluation_record(prepared, split, checkpoint, splits[split], False)
    val_at_primary = ingredient_prf(*ingredient_sets(val_records, len(names), config.eval.conf))["micro"]["f1"]
    run_dir = Path(plan.run_dir)
    masking_stats = _read_json(run_dir / "masking_stats.json")
    splits_json = _splits_json(splits)
    metrics = SessionMetrics(
        schema_version=SCHEMA_VERSION,
        status="done",
        session=session.name,
        model=session.model,
        suffix=session.suffix,
        experiment=config.name,
        cache_key=inputs.key,
        inputs=inputs,
        checkpoint=Checkpoint(path=str(checkpoint), which=checkpoint.name, why=CHECKPOINT_CHOICE),
        training=Training.model_validate({
            "family": plan.family,
            "source": plan.source,
            "pretrained": weights.pretrained,
            "weights": TrainingWeights(configured=weights.configured,
                                       path=weights.source if weights.pretrained else None,
                                       sha256=weights.sha256, origin=weights.origin),
            "train_images": session.train_images,
            "train_data_yaml": str(train_yaml),
            "overrides": plan.overrides,
            "oom_retry_batch": retry_batch,
            "locations": plan.locations,
            "resumed_from_epoch": outcome.resumed_from_epoch,
            "previous_failure": None if previous_failure is None else PreviousFailure(
                error=previous_failure.get("error"), time=previous_failure.get("time")),
            "wall_s": outcome.info.get("wall_s_total", outcome.wall_s),
            "ran": outcome.info.get("ran"),
            **{key: outcome.info.get(key) for key in TRAIN_INFO_KEYS},
        }),
        masking=None if session.masking_site is None else Masking.model_validate(
            {"site": session.masking_site, "spec": plan.masking_spec, "stats": masking_stats}),
        eval=Eval(conf=config.eval.conf, match_iou=config.eval.match_iou, wall_s=round(eval_wall, 3),
                  predictions="model.predict as returned (YOLO: one class per box, predict's NMS defaults; "
                              "RT-DETR: top 300 over queries x classes); mAP: model.val"),
        thresholds=Thresholds(primary=config.eval.conf, val_chosen=chosen["conf"],
                              criterion="ingredient micro F1 on the clean val split",
                              val_f1_at_val_chosen=chosen["val_micro_f1"], val_f1_at_primary=val_at_primary,
                              val_map50=val.map50, val_map50_95=val.map50_95),
        splits=splits,
        robustness=Robustness(**robustness(splits_json[CLEAN_SPLIT], splits_json[FIXED_SPLIT])),
        severity=_severity_block(prepared, splits, evaluations, []),
        data=prepared,
        seeds=Seeds(train=session.training_seed(config.seeds),
                    masking=None if plan.masking_spec is None else plan.masking_spec["seed"],
                    occlusion=config.occlusion.seed, synthetic=config.dataset.synthetic_seed),
        config_fingerprint=config.fingerprint(),
        provenance=Provenance.model_validate(collect_provenance(config.train.device)),
    )
    atomic_write_json(paths.metrics, metrics.to_json())
    paths.write_done(inputs.key, {"session": session.name, "exp3_version": __version__,
                                  "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return json.loads(paths.metrics.read_text(encoding="utf-8"))  # as a later run reads it (tuples as lists)


def _evaluate_test_split(model: EvaluationModel, split: str, config: ExperimentConfig, output_root: Path, paths: SessionPaths,
                         session: Session, prepared: PreparedData, names: list[str], val_conf: float) -> SplitMetrics:
    """One inference pass on `split`: predictions_<split>.json, map_stats_<split>.npz; returns its metrics.

    Its `eval_wall_s` is the whole evaluation of the split (validator and predict passes, recording,
    mAP's bootstrap draws kept in the npz, writing), `eval_stages_s` its breakdown.

    Ultralytics' validation figures (plots/<split>/) only for test_clean and test_occ_fixed: on a
    severity split they would cost more than its evaluation (measured in BENCHMARKS.md) and add
    nothing the severity charts do not show.
    """
    from exp3.evaluate import save_split_files
    from exp3.metrics import records_from_json

    evaluation = _evaluate(model, prepared.split_yaml(split), "test", config, output_root,
                           paths.folder / "plots" / split, plots=split in SPLITS)
    suite = prepared.severity_suite(split)
    save_split_files(evaluation, paths.predictions(split),
                     {"schema_version": SCHEMA_VERSION, "session": session.name, "split": split,
                      "suite_id": suite.suite_id if suite else prepared.suite_id,
                      "checkpoint": str(model.checkpoint)}, paths.map_stats(split))
    return _split_metrics(evaluation, records_from_json(evaluation.records), config, names, val_conf)


def _evaluation_record(prepared: PreparedData, split: str, checkpoint: Path, metrics: SplitMetrics,
                       added_after_training: bool) -> SeverityEvaluation:
    """What a severity split's numbers come from: its suite, the checkpoint, when, how long."""
    suite = next(suite for suite in prepared.severity_suites if suite.split == split)
    return SeverityEvaluation(level=suite.level, coverage=suite.coverage, spec_key=suite.spec_key,
                              suite_id=suite.suite_id, manifest_sha256=suite.manifest_sha256,
                              checkpoint=str(checkpoint), time=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                              added_after_training=added_after_training, wall_s=metrics.eval_wall_s,
                              exp3_version=__version__)


def _severity_block(prepared: PreparedData, splits: dict[str, SplitMetrics],
                    evaluations: dict[str, SeverityEvaluation], superseded: list[Superseded]) -> Severity:
    """metrics.json's `severity`: the configured levels, each split's evaluation record, mPC / rPC."""
    from exp3.severity import mpc_summary

    levels = [SeverityLevel(level=suite.level, split=suite.split, coverage=suite.coverage, spec_key=suite.spec_key,
                            suite_id=suite.suite_id) for suite in prepared.severity_suites]
    return Severity.model_validate({
        "levels": levels, "evaluations": evaluations,
        "summary": mpc_summary(_splits_json(splits), [suite.split for suite in prepared.severity_suites]),
        "superseded": superseded})


def _read_metrics(paths: SessionPaths, session: Session) -> SessionMetrics:
    """A done session's metrics.json as `SessionMetrics`; `SessionFailed` naming the file if it is not one."""
    from pydantic import ValidationError

    from exp3.schema import read_session_metrics

    try:
        return read_session_metrics(paths.metrics)
    except ValidationError as error:
        raise SessionFailed(f"{session.name}: {paths.metrics} does not match the metrics.json schema "
                            f"(docs/schema.md): {_one_line(error)}; move the session folder away to train it "
                            "again") from None


def update_severity_evaluations(config: ExperimentConfig, session: Session, output_root: Path, paths: SessionPaths,
                                prepared: PreparedData) -> dict[str, Any]:
    """A done session's metrics.json brought up to the configured severity levels, without training.

    Evaluates only the missing levels from the session's recorded checkpoint (at its recorded
    val-chosen threshold), moves results of levels no longer configured (or evaluated on another
    suite) to `severity.superseded`, and replaces metrics.json keeping DONE valid. Returns the
    metrics (unchanged, nothing written, when nothing differs). Raises `SessionFailed` when the
    checkpoint is gone (the session stays done with what it has).
    """
    from exp3.dataset import read_data_yaml
    from exp3.evaluate import load_evaluation_model
    from exp3.splits import severity_changes

    metrics = json.loads(paths.metrics.read_text(encoding="utf-8"))
    missing, extra = severity_changes(metrics, {suite.split: suite.spec_key for suite in prepared.severity_suites})
    if not missing and not extra:
        return metrics
    current = _read_metrics(paths, session)
    checkpoint = Path(current.checkpoint.path)
    if missing and not checkpoint.is_file():
        raise SessionFailed(f"{session.name}: cannot add {', '.join(missing)}: its checkpoint {checkpoint} is gone; "
                            "restore it, or move the session folder away to train it again")
    evaluations = dict(current.severity.evaluations) if current.severity else {}
    superseded = list(current.severity.superseded) if current.severity else []
    splits = dict(current.splits)
    for split in [*extra, *(split for split in missing if split in evaluations or split in splits)]:
        superseded.append(Superseded(split=split, evaluation=evaluations.pop(split, None),
                                     metrics=splits.pop(split, None),
                                     superseded_at=time.strftime("%Y-%m-%dT%H:%M:%S%z")))
    names = read_data_yaml(prepared.data_yaml).names
    val_conf = current.thresholds.val_chosen
    model = load_evaluation_model(checkpoint, current.training.family) if missing else None
    for split in missing:
        print(f"exp3: {session.name}: evaluating {split} from {checkpoint.name} (added to a finished session; "
              "no training)")
        splits[split] = _evaluate_test_split(model, split, config, output_root, paths, session, prepared, names,
                                             val_conf)
        evaluations[split] = _evaluation_record(prepared, split, checkpoint, splits[split], True)
    ordered = {split: splits[split] for split in (*prepared.test_splits(), *splits) if split in splits}
    updated = SessionMetrics.model_validate({
        **dict(current), "splits": ordered, "severity": _severity_block(prepared, ordered, evaluations, superseded),
        "data": prepared})
    paths.replace_metrics(updated.to_json(), {"severity_updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return json.loads(paths.metrics.read_text(encoding="utf-8"))


def _link_weights(source: Path, target: Path) -> None:
    """`target/{best,last}.pt` as hard links to the trained files (a copy across file systems)."""
    import os
    import shutil

    target.mkdir(parents=True, exist_ok=True)
    for name in ("best.pt", "last.pt"):
        if not (source / name).is_file():
            continue
        (target / name).unlink(missing_ok=True)
        try:
            os.link(source / name, target / name)
        except OSError:
            shutil.copy2(source / name, target / name)


def main(argv: list[str] | None = None) -> int:
    """`python -m exp3.session --config CFG --model M --session S [--set KEY=VALUE ...]`."""
    parser = argparse.ArgumentParser(prog="python -m exp3.session", description="run one exp3 session end to end")
    parser.add_argument("--config", type=Path, default=None, help="experiment config (default: built-in defaults)")
    parser.add_argument("--model", required=True, help="a model name from the config, e.g. yolov8m")
    parser.add_argument("--session", required=True, help="S1_clean_train ... S6_mask_head, or <model>__<session>")
    parser.add_argument("--seed", type=int, default=None, help="training seed (one of the config's seeds; "
                        "with several seeds the folder gets __seed<N>)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--retry-batch", type=int, default=None, metavar="N",
                        help="out-of-memory retry: train with batch N (recorded; the session's key is unchanged)")
    parser.add_argument("--prepared", default=None, metavar="JSON",
                        help="the data the flow prepared (PreparedData as JSON): used as is if its manifests "
                        "still match; by hand, leave it out and the session prepares and verifies its data")
    args = parser.parse_args(argv)
    try:
        prepared = None if args.prepared is None else prepared_from_json(args.prepared)
        config = load_config(args.config, args.overrides)
        if args.model not in config.models:
            raise ConfigError(f"unknown model {args.model!r}: configured models are {', '.join(config.models)}")
        session = parse_session(args.session if "__" in args.session else f"{args.model}__{args.session}",
                                [args.model])
        if args.seed is not None:
            session = Session(session.model, session.suffix, args.seed)
        if session.seed is not None and session.seed not in config.seeds:
            raise ConfigError(f"seed {session.seed} is not in the config's seeds {list(config.seeds)}: add it or pick one")
        if len(config.seeds) == 1 and session.seed is not None:
            session = Session(session.model, session.suffix)  # single-seed grids have no seed in folder names
        output_root = resolve_output_root(config)
        metrics = run_session(config, session, output_root, retry_batch=args.retry_batch, prepared=prepared)
    except (ConfigError, ValueError, FileNotFoundError, FileExistsError, PermissionError, SessionFailed,
            LockBusy) as error:
        print(f"error: {error}".splitlines()[0], file=sys.stderr)
        return 1 if isinstance(error, SessionFailed) else 2
    clean, occluded = metrics["splits"]["test_clean"], metrics["splits"]["test_occ_fixed"]
    print(f"{session.name}: done. F1 (micro) clean {clean['ingredient']['micro']['f1']:.3f} / occluded "
          f"{occluded['ingredient']['micro']['f1']:.3f}; mAP50-95 clean {clean['map50_95']:.3f} / occluded "
          f"{occluded['map50_95']:.3f} -> {session_dir(output_root, session)}")
    return 0


def without_shutdown_collection(code: int) -> int:
    """`code`, after moving every object alive now out of reach of the garbage collection CPython runs
    when the process exits: with torch and Ultralytics loaded that collection took 1.5-1.9 s after a
    smoke session (0.3 s without; BENCHMARKS.md) and frees nothing the exit does not free anyway.
    Objects are still released by reference counting and `atexit` still runs; every result file is
    already closed and renamed into place."""
    import gc

    gc.freeze()
    return code


if __name__ == "__main__":
    from exp3.parallel import forked_children_die_with_this_process

    forked_children_die_with_this_process()  # DataLoader workers end with the session, as it ends with the flow
    raise SystemExit(without_shutdown_collection(main()))
