"""A session's record, metrics.json (`exp3.schema.SessionMetrics`, docs/schema.md): each block's content decided
here, and written with its DONE marker; the steps that produce the numbers are exp3/session/run.py's."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exp3 import SCHEMA_VERSION, __version__
from exp3.config import ExperimentConfig
from exp3.evaluate.metrics import ImageRecord, operating_point, robustness_ratio, summarize_split
from exp3.evaluate.severity import mpc_summary
from exp3.fileio import atomic_write_json, sha256_file
from exp3.identity import SessionInputs
from exp3.schema import (
    Checkpoint,
    Eval,
    Masking,
    PreparedData,
    PreviousFailure,
    Provenance,
    Robustness,
    Seeds,
    SessionMetrics,
    Severity,
    SeverityEvaluation,
    SeverityLevel,
    SplitMetrics,
    SplitView,
    Superseded,
    Thresholds,
    Training,
    TrainingWeights,
)
from exp3.session.layout import SessionPaths
from exp3.session.provenance import collect_provenance
from exp3.sessions import Session
from exp3.splits import CLEAN_SPLIT, FIXED_SPLIT
from exp3.train.weights import ResolvedWeights

if TYPE_CHECKING:  # annotations only: exp3.evaluate.evaluation and exp3.train.training load Ultralytics
    from exp3.evaluate.evaluation import SplitEvaluation
    from exp3.train.training import TrainOutcome, TrainPlan

TRAIN_INFO_KEYS: tuple[str, ...] = ("optimizer", "requested", "amp", "device", "epochs_completed", "effective_args",
                                    "trainer", "attempts", "attempt_wall_s")
"""Keys of the training's train_info.json copied into metrics.json's `training` block."""
CHECKPOINT_CHOICE = ("best.pt: the epoch with the best Ultralytics fitness (mAP50-95 in Ultralytics 8.4, "
                     "DetMetrics.fitness) on the clean val split, chosen the same way for all six sessions; the test "
                     "splits never influence it")
LAST_CHECKPOINT = ("last.pt: the final epoch, not selected on val: the training left no best.pt (Ultralytics "
                   "writes it at every epoch whose val fitness is the best so far)")
THRESHOLD_CRITERION = "ingredient micro F1 on the clean val split"
PREDICTIONS = ("model.predict as returned (YOLO: one class per box, predict's NMS defaults; "
               "RT-DETR: top 300 over queries x classes); mAP: model.val")


def timestamp() -> str:
    """Local time with its UTC offset: the `time` of metrics.json's records and of the DONE and FAILED markers."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def split_metrics(evaluation: SplitEvaluation, records: list[ImageRecord], config: ExperimentConfig,
                  names: list[str], val_conf: float) -> SplitMetrics:
    """`splits.<split>`: the validator's mAP and timings of `evaluation`, the metrics of its predictions
    at the primary threshold, and the operating point at the session's val-chosen `val_conf`."""
    summary = summarize_split(records, num_classes=len(names), conf=config.eval.conf,
                              match_iou=config.eval.match_iou, class_names=names)
    return SplitMetrics.model_validate({
        "map50": evaluation.map50, "map50_95": evaluation.map50_95,
        "per_class_map50_95": evaluation.per_class_map50_95, "eval_wall_s": evaluation.wall_s,
        "eval_stages_s": evaluation.stages.to_json(), "speed_ms_per_image": evaluation.speed_ms_per_image, **summary,
        "at_val_threshold": operating_point(records, len(names), val_conf, config.eval.match_iou)})


def robustness(clean: SplitMetrics | SplitView, occluded: SplitMetrics | SplitView) -> Robustness:
    """rX = X(test_occ_fixed) / X(test_clean) for the headline metrics (None if clean is 0 or undefined).

    A session passes its `SplitMetrics`; report fixtures, which write a subset of a split entry,
    pass the lenient `SplitView` of it."""
    def ratio(occ: float | None, cln: float | None) -> float | None:
        value = None if occ is None or cln is None else robustness_ratio(occ, cln)
        return None if value != value else value  # NaN -> None (undefined)

    return Robustness(
        rF1_micro=ratio(occluded.ingredient.micro.f1, clean.ingredient.micro.f1),
        rF1_samples=ratio(occluded.ingredient.samples.f1, clean.ingredient.samples.f1),
        rF1_macro=ratio(occluded.ingredient.macro.f1, clean.ingredient.macro.f1),
        rmAP50=ratio(occluded.map50, clean.map50),
        rmAP50_95=ratio(occluded.map50_95, clean.map50_95),
        rF1_detection=ratio(occluded.detection.f1, clean.detection.f1),
    )


def severity_evaluation(prepared: PreparedData, split: str, checkpoint: Path, metrics: SplitMetrics,
                        added_after_training: bool) -> SeverityEvaluation:
    """What a severity split's numbers come from: its suite, the checkpoint, when, how long."""
    suite = prepared.severity_suite(split)
    return SeverityEvaluation(level=suite.level, coverage=suite.coverage, spec_key=suite.spec_key,
                              suite_id=suite.suite_id, manifest_sha256=suite.manifest_sha256,
                              checkpoint=str(checkpoint), time=timestamp(), added_after_training=added_after_training,
                              wall_s=metrics.eval_wall_s, exp3_version=__version__)


def severity_block(prepared: PreparedData, splits: Mapping[str, SplitMetrics],
                   evaluations: dict[str, SeverityEvaluation], superseded: list[Superseded]) -> Severity:
    """metrics.json's `severity`: the configured levels, each split's evaluation record, mPC / rPC."""
    levels = [SeverityLevel(level=suite.level, split=suite.split, coverage=suite.coverage, spec_key=suite.spec_key,
                            suite_id=suite.suite_id) for suite in prepared.severity_suites]
    return Severity(levels=levels, evaluations=evaluations, superseded=superseded,
                    summary=mpc_summary(splits, [suite.split for suite in prepared.severity_suites]))


def threshold_block(config: ExperimentConfig, val: SplitEvaluation, chosen: Mapping[str, float],
                    val_f1_at_primary: float | None) -> Thresholds:
    """The two operating points (docs/thresholds.md): `eval.conf`, and `chosen` on the clean val split
    (`exp3.evaluate.metrics.choose_threshold`), with val's F1 at each and its mAP."""
    return Thresholds(primary=config.eval.conf, val_chosen=chosen["conf"], criterion=THRESHOLD_CRITERION,
                      val_f1_at_val_chosen=chosen["val_micro_f1"], val_f1_at_primary=val_f1_at_primary,
                      val_map50=val.map50, val_map50_95=val.map50_95)


def ran_batch(plan: TrainPlan, outcome: TrainOutcome, retry_batch: int | None,
              configured_batch: int | None) -> tuple[dict[str, Any], int | None]:
    """(overrides, oom_retry_batch) as the training ran. A checkpoint is trained at one batch (`training.ran`,
    exp3.train.training `_resume_at_own_batch`): not the plan's when an earlier attempt's retry or Ultralytics' own
    first-epoch out-of-memory halving left it below, or when it had finished before an out-of-memory retry (the error
    came in the evaluation: nothing trained at the retry's batch). `configured_batch`: the config's (`train.batch`)."""
    ran = (outcome.info.get("ran") or {}).get("batch")
    if not isinstance(ran, int) or ran == plan.batch:
        return plan.overrides, retry_batch
    configured = {key: value for key, value in plan.overrides.items() if key != "batch"}
    configured.update({} if configured_batch is None else {"batch": configured_batch})
    full = dataclasses.replace(plan, overrides=configured).batch
    if ran == full:
        return configured, None
    return {**plan.overrides, "batch": ran}, ran if ran < full else None


def session_record(config: ExperimentConfig, session: Session, inputs: SessionInputs, prepared: PreparedData, *,
                   weights: ResolvedWeights, plan: TrainPlan, outcome: TrainOutcome, retry_batch: int | None,
                   previous_failure: dict[str, Any] | None, checkpoint: Path, thresholds: Thresholds,
                   splits: dict[str, SplitMetrics], evaluations: dict[str, SeverityEvaluation],
                   eval_wall_s: float) -> SessionMetrics:
    """The metrics.json of a session that has just trained (`plan`, `outcome`; `retry_batch` of an
    out-of-memory retry) and evaluated `checkpoint` on every test split (`splits`; `evaluations` for
    the severity splits), with its provenance. `previous_failure`: the FAILED marker it replaced."""
    stats_file = Path(plan.run_dir) / "masking_stats.json"
    masking_stats = json.loads(stats_file.read_text(encoding="utf-8")) if stats_file.is_file() else None
    overrides, oom_retry_batch = ran_batch(plan, outcome, retry_batch, config.train.batch)
    return SessionMetrics(
        schema_version=SCHEMA_VERSION,
        status="done",
        session=session.name,
        model=session.model,
        suffix=session.suffix,
        experiment=config.name,
        cache_key=inputs.key,
        inputs=inputs,
        checkpoint=Checkpoint(path=str(checkpoint), which=checkpoint.name, sha256=sha256_file(checkpoint),
                              why=CHECKPOINT_CHOICE if checkpoint.name == "best.pt" else LAST_CHECKPOINT),
        training=Training.model_validate({
            "family": plan.family,
            "source": plan.source,
            "pretrained": weights.pretrained,
            "weights": TrainingWeights(configured=weights.configured,
                                       path=weights.source if weights.pretrained else None,
                                       sha256=weights.sha256, origin=weights.origin),
            "train_images": session.train_images,
            "train_data_yaml": plan.locations["data"],
            "overrides": overrides,
            "oom_retry_batch": oom_retry_batch,
            "locations": plan.locations,
            "resumed_from_epoch": outcome.info.get("resumed_from"),
            "previous_failure": None if previous_failure is None else PreviousFailure(
                error=previous_failure.get("error"), time=previous_failure.get("time")),
            "wall_s": outcome.info.get("wall_s_total", outcome.wall_s),
            "ran": outcome.info.get("ran"),
            **{key: outcome.info.get(key) for key in TRAIN_INFO_KEYS},
        }),
        masking=None if session.masking_site is None else Masking.model_validate(
            {"site": session.masking_site, "spec": plan.masking_spec, "stats": masking_stats}),
        eval=Eval(conf=config.eval.conf, match_iou=config.eval.match_iou, wall_s=round(eval_wall_s, 3),
                  predictions=PREDICTIONS),
        thresholds=thresholds,
        splits=splits,
        robustness=robustness(splits[CLEAN_SPLIT], splits[FIXED_SPLIT]),
        severity=severity_block(prepared, splits, evaluations, []),
        data=prepared,
        seeds=Seeds(train=session.training_seed,
                    masking=None if plan.masking_spec is None else plan.masking_spec["seed"],
                    occlusion=config.occlusion.seed, synthetic=config.dataset.synthetic_seed),
        config_fingerprint=config.fingerprint(),
        provenance=Provenance.model_validate(collect_provenance(config.train.device)),
    )


def write_record(paths: SessionPaths, metrics: SessionMetrics) -> None:
    """metrics.json written atomically, then the DONE marker that names its sha256 and key."""
    atomic_write_json(paths.metrics, metrics.to_json())
    paths.write_done(metrics.cache_key, {"session": metrics.session, "exp3_version": __version__, "time": timestamp()})


def with_severity_levels(current: SessionMetrics, prepared: PreparedData, added: dict[str, SplitMetrics],
                         removed: list[str], checkpoint: Path) -> SessionMetrics:
    """`current` (a done session's record) brought up to `prepared`'s severity levels, without training.

    `added`: the levels just evaluated from `checkpoint`; `removed`: recorded levels no longer
    configured. A result replaced or removed is kept in `severity.superseded`, never reused.
    """
    evaluations, superseded = dict(current.severity.evaluations), list(current.severity.superseded)
    splits = dict(current.splits)
    for split in [*removed, *(split for split in added if split in evaluations or split in splits)]:
        superseded.append(Superseded(split=split, evaluation=evaluations.pop(split, None),
                                     metrics=splits.pop(split, None), superseded_at=timestamp()))
    for split, metrics in added.items():
        splits[split] = metrics
        evaluations[split] = severity_evaluation(prepared, split, checkpoint, metrics, True)
    ordered = {split: splits[split] for split in (*prepared.test_splits(), *splits) if split in splits}
    # `data`: where the data is now (a root restored from a mirror: its paths), with the bytes the session was trained
    # and tested on (a suite rebuilt under its id with other bytes, another numpy, must fail the report's manifest
    # check, not pass it as the record's)
    data = prepared.model_copy(update={"suite_manifest_sha256": current.data.suite_manifest_sha256,
                                       "s2_manifest_sha256": current.data.s2_manifest_sha256})
    return SessionMetrics.model_validate({
        **dict(current), "splits": ordered, "severity": severity_block(prepared, ordered, evaluations, superseded),
        "data": data})
