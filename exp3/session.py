"""One session end to end: data, training (subprocess), one-pass evaluation on both test splits,
metrics, and a self-describing session folder.

    python -m exp3.session --config configs/smoke.yaml --model yolov8m --session S1_clean_train

Session folder `<output_root>/<model>/<model>__<session>/`:

    config_resolved.yaml          the config this session ran with
    train_plan.json               what the training subprocess was asked to do
    train/                        Ultralytics' run: weights/{best,last}.pt, args.yaml, results.csv,
                                  training plots, train_info.json, masking_stats.json (S3-S6)
    weights/{best,last}.pt        hard links to train/weights/ (no extra disk), for convenience
    plots/<split>/                Ultralytics' validation plots of the evaluated checkpoint per split
    predictions_test_clean.json   per-image records (see exp3.evaluate)
    predictions_test_occ_fixed.json
    metrics.json                  schema in docs/schema.md
    logs/train.log                the training subprocess's stdout + stderr (all attempts)
    DONE | FAILED                 marker (JSON): DONE holds metrics.json's sha256

A session with a valid DONE marker is skipped; one with a partial `train/weights/last.pt`
resumes from it. Checkpoint evaluated: `best.pt` (selected on the clean `val` split, the same
for all six sessions), falling back to `last.pt` only if `best.pt` is missing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from exp3 import __version__
from exp3.config import ConfigError, ExperimentConfig, load_config, resolve_output_root, write_resolved_config
from exp3.fileio import atomic_write_json, sha256_file
from exp3.sessions import Session, parse_session

SCHEMA_VERSION = 1
SPLITS: tuple[str, ...] = ("test_clean", "test_occ_fixed")
TRAIN_INFO_KEYS: tuple[str, ...] = ("optimizer", "requested", "amp", "device", "epochs_completed", "effective_args",
                                    "trainer", "attempts")
"""Keys of the training subprocess's train_info.json copied into metrics.json's `training` block."""
DONE_MARKER = "DONE"
FAILED_MARKER = "FAILED"
CHECKPOINT_CHOICE = ("best.pt: the epoch with the best fitness (0.1 mAP50 + 0.9 mAP50-95) on the clean val "
                     "split, chosen the same way for all six sessions; the test splits never influence it")


class SessionFailed(RuntimeError):
    """A session that could not finish; the message is one line, the log tail is in FAILED."""


@dataclass(frozen=True)
class PreparedData:
    """The data every session of a run shares (built once, verified on reuse)."""

    data_yaml: str
    dataset_fingerprint: str
    suite_dir: str
    suite_id: str
    suite_manifest_sha256: str
    s2_data_yaml: str
    s2_manifest_sha256: str

    def split_yaml(self, split: str) -> Path:
        return Path(self.suite_dir) / f"{split}.yaml"


def session_dir(output_root: Path, session: Session) -> Path:
    """`<output_root>/<model>/<model>__<suffix>`."""
    return output_root / session.model / session.name


def dataset_yaml(config: ExperimentConfig, output_root: Path) -> Path:
    """The data.yaml to use: the embedded synthetic dataset (generated on first use) or the user's."""
    if config.dataset.kind == "yaml":
        assert config.dataset.data_yaml is not None  # guaranteed by DatasetConfig's validator
        return Path(config.dataset.data_yaml).absolute()
    from exp3.synth import build_synthetic_dataset

    target = output_root / "data" / f"synthetic-{config.dataset.preset}-seed{config.dataset.synthetic_seed}"
    return build_synthetic_dataset(target, preset=config.dataset.preset, seed=config.dataset.synthetic_seed,
                                   workers=2)


def prepare_data(config: ExperimentConfig, output_root: Path) -> PreparedData:
    """Dataset, its audit, fixed occlusion suite and S2's occluded train set (each idempotent, verified).

    Raises `DatasetError` if the dataset fails the audit (before anything is built from it).
    """
    from exp3.dataset import audit_once
    from exp3.occlusion import build_occluded_train_set, build_occlusion_suite

    data_yaml = dataset_yaml(config, output_root)
    audit = audit_once(data_yaml, output_root / "audits")
    suite = build_occlusion_suite(data_yaml, output_root / "suites", config.occlusion, workers=2)
    s2_yaml = build_occluded_train_set(data_yaml, output_root / "suites", config.occlusion, workers=2)
    return PreparedData(
        data_yaml=str(data_yaml),
        dataset_fingerprint=audit["fingerprint"],  # computed by the audit: no second pass over the files
        suite_dir=str(suite),
        suite_id=suite.name,
        suite_manifest_sha256=sha256_file(suite / "manifest.json"),
        s2_data_yaml=str(s2_yaml),
        s2_manifest_sha256=sha256_file(s2_yaml.parent / "manifest.json"),
    )


def is_done(folder: Path) -> bool:
    """True if `folder` has a DONE marker whose recorded sha256 matches its metrics.json."""
    marker, metrics = folder / DONE_MARKER, folder / "metrics.json"
    if not marker.is_file() or not metrics.is_file():
        return False
    try:
        recorded = json.loads(marker.read_text(encoding="utf-8")).get("metrics_sha256")
    except (json.JSONDecodeError, AttributeError):
        return False
    return recorded == sha256_file(metrics)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _split_metrics(evaluation: Any, config: ExperimentConfig, names: list[str]) -> dict[str, Any]:
    from exp3.metrics import records_from_json, summarize_split

    summary = summarize_split(records_from_json(evaluation.records), num_classes=len(names), conf=config.eval.conf,
                              match_iou=config.eval.match_iou, class_names=names)
    return {"map50": evaluation.map50, "map50_95": evaluation.map50_95,
            "per_class_map50_95": evaluation.per_class_map50_95, "eval_wall_s": evaluation.wall_s,
            "speed_ms_per_image": evaluation.speed_ms_per_image, **summary}


def robustness(clean: dict[str, Any], occluded: dict[str, Any]) -> dict[str, float]:
    """rX = X(test_occ_fixed) / X(test_clean) for the headline metrics (NaN if clean is 0)."""
    from exp3.metrics import robustness_ratio

    return {
        "rF1_micro": robustness_ratio(occluded["ingredient"]["micro"]["f1"], clean["ingredient"]["micro"]["f1"]),
        "rF1_samples": robustness_ratio(occluded["ingredient"]["samples"]["f1"], clean["ingredient"]["samples"]["f1"]),
        "rF1_macro": robustness_ratio(occluded["ingredient"]["macro"]["f1"], clean["ingredient"]["macro"]["f1"]),
        "rmAP50": robustness_ratio(occluded["map50"], clean["map50"]),
        "rmAP50_95": robustness_ratio(occluded["map50_95"], clean["map50_95"]),
        "rF1_detection": robustness_ratio(occluded["detection"]["f1"], clean["detection"]["f1"]),
    }


def run_session(config: ExperimentConfig, session: Session, output_root: Path) -> dict[str, Any]:
    """Run (or skip, or resume) one session; return its metrics.json payload.

    Raises `SessionFailed` after writing a FAILED marker with the error and the log tail.
    """
    folder = session_dir(output_root, session)
    if is_done(folder):
        return json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    folder.mkdir(parents=True, exist_ok=True)
    logs = folder / "logs"
    try:
        return _run_session_steps(config, session, output_root, folder, logs)
    except Exception as error:  # noqa: BLE001 - every failure must leave a FAILED marker
        from exp3.train import log_tail

        message = f"{type(error).__name__}: {error}".splitlines()[0]
        atomic_write_json(folder / FAILED_MARKER, {
            "session": session.name, "error": message, "traceback": traceback.format_exc(),
            "train_log_tail": log_tail(logs / "train.log"), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })
        raise SessionFailed(f"{session.name} failed: {message} (see {folder / FAILED_MARKER})") from error


def _run_session_steps(config: ExperimentConfig, session: Session, output_root: Path, folder: Path,
                       logs: Path) -> dict[str, Any]:
    from exp3.offline import apply_offline_environment

    apply_offline_environment(output_root)
    from exp3.dataset import read_data_yaml
    from exp3.evaluate import evaluate_split
    from exp3.provenance import collect_provenance
    from exp3.train import checkpoint_state, plan_training, run_training

    previous_failure = _read_json(folder / FAILED_MARKER)
    (folder / FAILED_MARKER).unlink(missing_ok=True)
    write_resolved_config(config, folder)
    prepared = prepare_data(config, output_root)
    train_yaml = Path(prepared.s2_data_yaml if session.train_images == "occluded" else prepared.data_yaml)
    plan = plan_training(config, session, train_yaml, folder, output_root)
    outcome = run_training(plan, logs)
    if outcome.returncode != 0:
        raise SessionFailed(f"training exited with code {outcome.returncode}; see {outcome.log_path}")
    state, epoch_info = checkpoint_state(plan.last_pt)
    if state != "finished":
        raise SessionFailed(f"training stopped early ({epoch_info}); run the session again to resume")
    checkpoint = plan.best_pt if plan.best_pt.is_file() else plan.last_pt
    _link_weights(Path(plan.run_dir) / "weights", folder / "weights")
    names = read_data_yaml(prepared.data_yaml).names
    splits: dict[str, Any] = {}
    eval_wall = 0.0
    for split in SPLITS:
        evaluation = evaluate_split(checkpoint, prepared.split_yaml(split), plan.family, output_root,
                                    folder / "plots" / split, batch=config.train.batch, device=config.train.device)
        atomic_write_json(folder / f"predictions_{split}.json",
                          {"schema_version": SCHEMA_VERSION, "session": session.name, "split": split,
                           "checkpoint": str(checkpoint), "images": evaluation.records})
        splits[split] = _split_metrics(evaluation, config, names)
        eval_wall += evaluation.wall_s
    run_dir = Path(plan.run_dir)
    metrics = {
        "schema_version": SCHEMA_VERSION,
        "status": "done",
        "session": session.name,
        "model": session.model,
        "suffix": session.suffix,
        "experiment": config.name,
        "checkpoint": {"path": str(checkpoint), "which": checkpoint.name, "why": CHECKPOINT_CHOICE},
        "training": {
            "family": plan.family,
            "source": plan.source,
            "pretrained": plan.pretrained,
            "weights_note": plan.weights_note,
            "train_images": session.train_images,
            "train_data_yaml": str(train_yaml),
            "overrides": plan.overrides,
            "locations": plan.locations,
            "resumed_from_epoch": outcome.resumed_from_epoch,
            "previous_failure": None if previous_failure is None else {
                key: previous_failure.get(key) for key in ("error", "time")},
            "wall_s": outcome.wall_s,
            **{key: outcome.info.get(key) for key in TRAIN_INFO_KEYS},
        },
        "masking": None if session.masking_site is None else {
            "site": session.masking_site,
            "spec": plan.masking_spec,
            "stats": _read_json(run_dir / "masking_stats.json"),
        },
        "eval": {"conf": config.eval.conf, "match_iou": config.eval.match_iou, "wall_s": round(eval_wall, 3)},
        "splits": splits,
        "robustness": robustness(splits["test_clean"], splits["test_occ_fixed"]),
        "data": asdict(prepared),
        "seeds": {"train": session.training_seed(config.seeds),
                  "masking": None if plan.masking_spec is None else plan.masking_spec["seed"],
                  "occlusion": config.occlusion.seed, "synthetic": config.dataset.synthetic_seed},
        "config_fingerprint": config.fingerprint(),
        "provenance": collect_provenance(config.train.device),
    }
    metrics_path = atomic_write_json(folder / "metrics.json", metrics)
    atomic_write_json(folder / DONE_MARKER, {"session": session.name, "metrics_sha256": sha256_file(metrics_path),
                                             "exp3_version": __version__,
                                             "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return metrics


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
    args = parser.parse_args(argv)
    try:
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
        metrics = run_session(config, session, output_root)
    except (ConfigError, ValueError, FileNotFoundError, FileExistsError, PermissionError, SessionFailed) as error:
        print(f"error: {error}".splitlines()[0], file=sys.stderr)
        return 1 if isinstance(error, SessionFailed) else 2
    clean, occluded = metrics["splits"]["test_clean"], metrics["splits"]["test_occ_fixed"]
    print(f"{session.name}: done. F1 (micro) clean {clean['ingredient']['micro']['f1']:.3f} / occluded "
          f"{occluded['ingredient']['micro']['f1']:.3f}; mAP50-95 clean {clean['map50_95']:.3f} / occluded "
          f"{occluded['map50_95']:.3f} -> {session_dir(output_root, session)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
