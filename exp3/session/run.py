"""One session end to end, in this process: lock, state, training, one-pass evaluation, then its record.

    python -m exp3.session --config configs/smoke.yaml --model yolov8m --session S1_clean_train

Data and weights come from exp3/session/prepare.py, metrics.json from exp3/session/record.py. The rules: skip, stale
and resume in README.md, "Crash safety"; the folder and its checkpoint in docs/schema.md (set aside: exp3.train.training
`_training_state`); the operating points in docs/thresholds.md; severity levels added later in docs/schema.md,
"Severity splits of a finished session".
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

from pydantic import ValidationError

from exp3 import SCHEMA_VERSION
from exp3.config import ConfigError, ExperimentConfig, load_config, writable_output_root, write_resolved_config
from exp3.dataset.audit import read_data_yaml
from exp3.evaluate.evaluation import (
    EvaluationModel,
    SplitEvaluation,
    evaluate_split,
    load_evaluation_model,
    save_split_files,
)
from exp3.evaluate.metrics import choose_threshold, ingredient_prf, ingredient_sets, records_from_json
from exp3.fileio import atomic_write_json, link_or_copy
from exp3.identity import SessionInputs, session_inputs
from exp3.schema import PreparedData, SessionMetrics, SeverityEvaluation, SplitMetrics
from exp3.session.layout import SessionPaths, SessionState, severity_changes
from exp3.session.prepare import (
    prepare_data,
    prepared_from_json,
    prepared_is_current,
    prepared_mismatch,
    resolve_model_weights,
)
from exp3.session.record import (
    session_record,
    severity_evaluation,
    split_metrics,
    threshold_block,
    timestamp,
    with_severity_levels,
    write_record,
)
from exp3.session.runlock import LockBusy
from exp3.sessions import UNNAMED_SEED, Session, parse_session_selector
from exp3.splits import CLEAN_SPLIT, FIXED_SPLIT, PRIMARY_SPLITS, VAL_SPLIT
from exp3.train.integrations import missing_packages, session_integrations
from exp3.train.offline import apply_offline_environment
from exp3.train.training import final_checkpoint, log_tail, plan_training, run_training
from exp3.train.weights import ResolvedWeights


class SessionFailed(RuntimeError):
    """A session that could not finish; the message is one line, the log tail is in FAILED."""


def run_session(config: ExperimentConfig, session: Session, output_root: Path,
                retry_batch: int | None = None, prepared: PreparedData | None = None) -> SessionMetrics:
    """Run (or skip, or resume) one session; return its metrics.json as `SessionMetrics`.

    `retry_batch`: the batch of an out-of-memory retry (what really runs, recorded as such; the session's inputs and
    key stay the config's). `prepared`: the data the flow prepared, used while it still fits (exp3/session/prepare.py),
    else prepared here. Raises `WeightsError` before anything is written when the configured weights cannot be had,
    `LockBusy` when another process runs this session, and `SessionFailed` after writing a FAILED marker (error, log
    tail) for anything else, a dataset failing its audit included.
    """
    paths = SessionPaths.of(output_root, session)
    if config.integrations and (missing := missing_packages(config.integrations)) is not None:
        raise ConfigError(missing)  # nothing written, nothing trained
    apply_offline_environment(output_root, config.integrations)  # before this process imports Ultralytics
    weights = resolve_model_weights(config, session.model)  # WeightsError: nothing written, nothing trained
    with paths.session_lock("python -m exp3.session"):
        if prepared is not None and (mismatch := prepared_mismatch(prepared, config, output_root)) is not None:
            print(f"exp3: {session.name}: the data handed to it does not fit its config ({mismatch}): "
                  "preparing it here")
            prepared = None
        try:
            if prepared is None or not prepared_is_current(prepared):
                prepared = prepare_data(config, output_root)
        except Exception as error:
            raise _failed(paths, session, error) from error
        inputs = session_inputs(config, session, prepared.dataset_fingerprint, prepared.suite_id, weights.sha256)
        if paths.is_done(inputs.key):
            try:
                metrics = update_severity_evaluations(config, session, output_root, paths, prepared)
            except Exception as error:  # noqa: BLE001 - a done session's update failing leaves a FAILED marker too
                raise _failed(paths, session, error) from error
            paths.failed_marker.unlink(missing_ok=True)
            return metrics
        if paths.state(inputs.key) == SessionState.STALE:
            moved = paths.move_aside()
            print(f"exp3: {session.name}: results made under other inputs (key "
                  f"{SessionPaths(moved).recorded_key() or 'unknown'}) moved aside to {moved}; training again "
                  f"from scratch under key {inputs.key}")
        paths.write_inputs(inputs.model_dump(mode="json"), inputs.key)
        try:
            with session_integrations(config.integrations, output_root, config.name, session.name):
                metrics = _train_and_evaluate(config, session, output_root, paths, prepared, weights, inputs,
                                              retry_batch)
            write_record(paths, metrics)
        except Exception as error:  # noqa: BLE001 - every failure must leave a FAILED marker
            raise _failed(paths, session, error) from error
        return metrics


def _one_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}".splitlines()[0]


def _failed(paths: SessionPaths, session: Session, error: BaseException) -> SessionFailed:
    """Write the FAILED marker of `error` (handled now); the one-line `SessionFailed` to raise."""
    atomic_write_json(paths.failed_marker, {
        "session": session.name, "error": _one_line(error), "traceback": traceback.format_exc(),
        "train_log_tail": log_tail(paths.logs / "train.log"), "time": timestamp(),
    })
    return SessionFailed(f"{session.name} failed: {_one_line(error)} (see {paths.failed_marker})")


def _evaluate(model: EvaluationModel, split_yaml: Path, split: str, config: ExperimentConfig, output_root: Path,
              save_dir: Path, plots: bool = True) -> SplitEvaluation:
    """One split of the session's `exp3.evaluate.evaluation.EvaluationModel` (loaded once for all its splits)."""
    return evaluate_split(model, split_yaml, output_root, save_dir, split=split,
                          batch=config.train.batch, device=config.train.device, plots=plots,
                          workers=config.train.workers)


def _train_and_evaluate(config: ExperimentConfig, session: Session, output_root: Path, paths: SessionPaths,
                        prepared: PreparedData, weights: ResolvedWeights, inputs: SessionInputs,
                        retry_batch: int | None) -> SessionMetrics:
    """Train (or resume), evaluate the checkpoint on val and every test split; the record, not yet written."""
    folder, logs = paths.folder, paths.logs
    previous_failure = paths.failure()
    paths.failed_marker.unlink(missing_ok=True)
    write_resolved_config(config, folder)
    train_yaml = Path(prepared.s2_data_yaml if session.train_images == "occluded" else prepared.data_yaml)
    plan = plan_training(config, session, train_yaml, paths.run_dir, output_root, weights, retry_batch)
    outcome = run_training(plan, logs)
    checkpoint, epoch_info = final_checkpoint(plan)
    if checkpoint is None:
        raise SessionFailed(f"training stopped early ({epoch_info}); run the session again to resume")
    _link_weights(Path(plan.run_dir) / "weights", folder / "weights")
    names = read_data_yaml(prepared.data_yaml).names
    model = load_evaluation_model(checkpoint, plan.family)  # once, for val and every test split
    val = _evaluate(model, Path(prepared.data_yaml), VAL_SPLIT, config, output_root, folder / "plots" / VAL_SPLIT,
                    plots=False)  # its figures are train/'s: Ultralytics' final validation of the same checkpoint
    eval_wall = val.wall_s  # taken before its file is written: val's share of eval.wall_s counts no writing
    save_split_files(val, paths.predictions(VAL_SPLIT), {"schema_version": SCHEMA_VERSION, "session": session.name,
                                                         "split": VAL_SPLIT, "checkpoint": str(checkpoint)})
    val_records = records_from_json(val.records)
    chosen = choose_threshold(val_records, len(names), prefer=config.eval.conf)  # ties: to the primary threshold
    splits: dict[str, SplitMetrics] = {}
    evaluations: dict[str, SeverityEvaluation] = {}
    for split in prepared.test_splits():
        splits[split] = _evaluate_test_split(model, split, config, output_root, paths, session, prepared, names,
                                             chosen["conf"])
        eval_wall += splits[split].eval_wall_s
        if split not in PRIMARY_SPLITS:
            evaluations[split] = severity_evaluation(prepared, split, checkpoint, splits[split], False)
    val_at_primary = ingredient_prf(*ingredient_sets(val_records, len(names), config.eval.conf))["micro"]["f1"]
    return session_record(config, session, inputs, prepared, weights=weights, plan=plan, outcome=outcome,
                          retry_batch=retry_batch, previous_failure=previous_failure, checkpoint=checkpoint,
                          thresholds=threshold_block(config, val, chosen, val_at_primary), splits=splits,
                          evaluations=evaluations, eval_wall_s=eval_wall)


def _evaluate_test_split(model: EvaluationModel, split: str, config: ExperimentConfig, output_root: Path,
                         paths: SessionPaths, session: Session, prepared: PreparedData, names: list[str],
                         val_conf: float) -> SplitMetrics:
    """One inference pass on `split`: its files and metrics (docs/schema.md, `splits.<split>`). Ultralytics' figures
    not on a severity split: they would cost more than its evaluation and show nothing the severity charts do not."""
    evaluation = _evaluate(model, prepared.split_yaml(split), "test", config, output_root,
                           paths.folder / "plots" / split, plots=config.eval.plots and split in PRIMARY_SPLITS)
    suite = prepared.severity_suite(split)
    save_split_files(evaluation, paths.predictions(split),
                     {"schema_version": SCHEMA_VERSION, "session": session.name, "split": split,
                      "suite_id": suite.suite_id if suite else prepared.suite_id,
                      "checkpoint": str(model.checkpoint)}, paths.map_stats(split))
    return split_metrics(evaluation, records_from_json(evaluation.records), config, names, val_conf)


def update_severity_evaluations(config: ExperimentConfig, session: Session, output_root: Path, paths: SessionPaths,
                                prepared: PreparedData) -> SessionMetrics:
    """A done session's metrics.json brought up to the configured severity levels, without training (rules:
    docs/schema.md, "Severity splits of a finished session"). Returns the metrics (unchanged, nothing written, when
    nothing differs); `SessionFailed` when metrics.json does not validate or a missing level's checkpoint is gone.
    """
    try:
        current = SessionMetrics.model_validate(json.loads(paths.metrics.read_text(encoding="utf-8")))
    except ValidationError as error:
        held = "" if config.mirror.path is None else \
            f" and its copy {Path(config.mirror.path) / paths.folder.relative_to(output_root)} (restored otherwise)"
        raise SessionFailed(f"{session.name}: {paths.metrics} does not match the metrics.json schema "
                            f"(docs/schema.md): {_one_line(error)}; move the session folder{held} away to train it "
                            "again") from None
    missing, extra = severity_changes(current, {suite.split: suite.spec_key for suite in prepared.severity_suites})
    if not missing and not extra:
        return current
    checkpoint = paths.here(current.checkpoint.path)  # the folder may have moved since (a mirror's new root)
    if missing and (problem := paths.checkpoint_differs()) is not None:
        raise SessionFailed(f"{session.name}: cannot add {', '.join(missing)}: {problem}; restore it, or move the "
                            "session folder away to train it again")
    names = read_data_yaml(prepared.data_yaml).names
    model = load_evaluation_model(checkpoint, current.training.family) if missing else None
    added: dict[str, SplitMetrics] = {}
    for split in missing:
        print(f"exp3: {session.name}: evaluating {split} from {checkpoint.name} (added to a finished session; "
              "no training)")
        added[split] = _evaluate_test_split(model, split, config, output_root, paths, session, prepared, names,
                                            current.thresholds.val_chosen)
    updated = with_severity_levels(current, prepared, added, extra, checkpoint)
    paths.replace_metrics(updated.to_json(), {"severity_updated": timestamp()})
    return updated


def _link_weights(source: Path, target: Path) -> None:
    """`target/{best,last}.pt` as hard links to the trained files (a copy across file systems); a link to a file
    since set aside is removed."""
    target.mkdir(parents=True, exist_ok=True)
    for name in ("best.pt", "last.pt"):
        (target / name).unlink(missing_ok=True)
        if not (source / name).is_file():
            continue
        link_or_copy(source / name, target / name)


def main(argv: list[str] | None = None) -> int:
    """`python -m exp3.session --config CFG --model M --session S [--set KEY=VALUE ...]`."""
    parser = argparse.ArgumentParser(prog="python -m exp3.session", description="run one exp3 session end to end")
    parser.add_argument("--config", type=Path, default=None, help="experiment config (default: built-in defaults)")
    parser.add_argument("--model", required=True, help="a model name from the config, e.g. yolov8m")
    parser.add_argument("--session", required=True, help="S1_clean_train ... S6_mask_head, or <model>__<session>")
    parser.add_argument("--seed", type=int, default=None, help="training seed (one of the config's seeds; "
                        "default: the only one, else 0; folders of seeds other than 0 end in __seed<N>)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--retry-batch", type=int, default=None, metavar="N",
                        help="out-of-memory retry: train with batch N >= 1 (recorded; the session's key is unchanged)")
    parser.add_argument("--prepared", default=None, metavar="JSON",
                        help="the data the flow prepared (PreparedData as JSON): used as is if its manifests "
                        "still match; by hand, leave it out and the session prepares and verifies its data")
    args = parser.parse_args(argv)
    try:
        if args.retry_batch is not None and args.retry_batch < 1:  # 0 or -1: Ultralytics' AutoBatch, recorded as N
            raise ConfigError(f"--retry-batch {args.retry_batch} is no batch size: give N >= 1 (e.g. half of "
                              "train.batch), or leave it out for the configured batch")
        prepared = None if args.prepared is None else prepared_from_json(args.prepared)
        config = load_config(args.config, args.overrides)
        if args.model not in config.models:
            raise ConfigError(f"unknown model {args.model!r}: configured models are {', '.join(config.models)}")
        name = args.session if "__" in args.session else f"{args.model}__{args.session}"
        _, suffix, named = parse_session_selector(name, [args.model])  # a `__seed<N>` tail as written (0 included)
        seed = args.seed if args.seed is not None else named
        if seed is None:  # none given: a one-seed config's seed, else seed 0
            seed = config.seeds[0] if len(config.seeds) == 1 else UNNAMED_SEED
        session = Session(args.model, suffix, seed)
        if session.training_seed not in config.seeds:
            raise ConfigError(f"seed {session.training_seed} is not in the config's seeds {list(config.seeds)}: "
                              "add it or pick one")
        output_root = writable_output_root(config)
        metrics = run_session(config, session, output_root, retry_batch=args.retry_batch, prepared=prepared)
    except (ConfigError, ValueError, FileNotFoundError, FileExistsError, PermissionError, SessionFailed,
            LockBusy) as error:
        print(f"error: {error}".splitlines()[0], file=sys.stderr)
        return 1 if isinstance(error, SessionFailed) else 2
    clean, occluded = metrics.splits[CLEAN_SPLIT], metrics.splits[FIXED_SPLIT]
    print(f"{session.name}: done. F1 (micro) clean {clean.ingredient.micro.f1:.3f} / occluded "
          f"{occluded.ingredient.micro.f1:.3f}; mAP50-95 clean {clean.map50_95:.3f} / occluded "
          f"{occluded.map50_95:.3f} -> {SessionPaths.of(output_root, session).folder}")
    return 0
