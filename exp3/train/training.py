"""Training one session, in the session's own process, under the defaults policy: Ultralytics' defaults for
everything except `training_overrides` and the data and output locations, all recorded with the effective args
Ultralytics resolved and the optimizer `optimizer=auto` picked (train_info.json; docs/schema.md, `training.*`).

    plan_training(...)  -> TrainPlan (pure), written to train_plan.json
    run_training(plan)  -> TrainOutcome; weights/, train_info.json, logs/train.log (Ultralytics' output)

Training in process lets the evaluation that follows reuse the torch and Ultralytics already imported. An
out-of-memory error propagates like any other (the session writes FAILED); the runner retries the session in a fresh
process with half the batch, so no training ever runs twice in one process. Resume is from the session's own
unfinished `train/weights/last.pt` only, at its own batch and with the same trainer class (so masking is re-attached);
what cannot be used is set aside first (`_training_state`), and `final_checkpoint` names the checkpoint a finished
training is evaluated from.
"""

from __future__ import annotations

import gc
import os
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

from exp3.config import ExperimentConfig
from exp3.fileio import atomic_write_json, read_json
from exp3.sessions import Session
from exp3.train.offline import apply_offline_environment
from exp3.train.weights import ResolvedWeights

Family = Literal["detect", "rtdetr"]
CheckpointState = Literal["missing", "partial", "finished", "corrupt"]

TRAINER_CLASSES: dict[tuple[str, bool], str] = {
    ("detect", False): "SafeDetectionTrainer",
    ("detect", True): "MaskedDetectionTrainer",
    ("rtdetr", False): "SafeRTDETRTrainer",
    ("rtdetr", True): "MaskedRTDETRTrainer",
}
"""(model family, masked?) -> the exp3/train/trainers.py class a session trains with: Ultralytics' own,
with atomic checkpoint writes, plus masking for S3-S6."""

TRAIN_INFO_FILENAME = "train_info.json"
TRAIN_PLAN_FILENAME = "train_plan.json"  # beside train/: the plan of the last attempt, written as it starts
RESUME_OVERRIDABLE: tuple[str, ...] = ("batch", "imgsz", "device", "workers")
"""The `train:` args the config may set; a resumed training takes them from the plan instead of the checkpoint
(Ultralytics allows these)."""


@dataclass(frozen=True)
class TrainPlan:
    """Everything a training needs, JSON-serialisable (kept as train_plan.json)."""

    session: str
    family: Family
    source: str
    pretrained: bool
    overrides: dict[str, Any]
    locations: dict[str, Any]
    masking_site: str | None
    masking_spec: dict[str, Any] | None
    output_root: str
    run_dir: str

    @property
    def last_pt(self) -> Path:
        return Path(self.run_dir) / "weights" / "last.pt"

    @property
    def best_pt(self) -> Path:
        return Path(self.run_dir) / "weights" / "best.pt"

    @property
    def batch(self) -> int:
        """The batch this plan trains at: its override, else Ultralytics' default."""
        from ultralytics.cfg import DEFAULT_CFG  # lazy: Ultralytics after apply_offline_environment

        return int(self.overrides.get("batch", DEFAULT_CFG.batch))


def training_overrides(config: ExperimentConfig, model_name: str, seed: int = 0) -> dict[str, Any]:
    """The Ultralytics args exp3 changes from their defaults for `model_name` at training `seed`."""
    overrides: dict[str, Any] = {"epochs": config.models[model_name].epochs}
    for key in RESUME_OVERRIDABLE:
        value = getattr(config.train, key)
        if value is not None:
            overrides[key] = value
    if seed != 0:  # Ultralytics' default seed is 0
        overrides["seed"] = seed
    return overrides


def plan_training(config: ExperimentConfig, session: Session, train_data_yaml: Path, run_dir: Path,
                  output_root: Path, weights: ResolvedWeights, retry_batch: int | None = None) -> TrainPlan:
    """Pure: the training plan of one session (data = clean or S2 occluded data.yaml), trained into `run_dir`
    (the session folder's Ultralytics run folder, `SessionPaths.run_dir`).

    `retry_batch` (out-of-memory retry) replaces the batch; it is what really runs, so it is what
    the plan, Ultralytics' args and metrics.json's `overrides` say (the failed attempt's checkpoints, of a larger
    batch, are set aside: the retry trains from the start, `_resume_at_own_batch`).
    """
    overrides = training_overrides(config, session.model, session.training_seed)
    if retry_batch is not None:
        overrides["batch"] = retry_batch
    return TrainPlan(
        session=session.name,
        family=config.models[session.model].family,
        source=weights.source,
        pretrained=weights.pretrained,
        overrides=overrides,
        locations={"data": str(train_data_yaml), "project": str(run_dir.parent), "name": run_dir.name,
                   "exist_ok": True},
        masking_site=session.masking_site,
        masking_spec=masking_spec_for(config, session) if session.masking_site else None,
        output_root=str(output_root),
        run_dir=str(run_dir),
    )


def masking_spec_for(config: ExperimentConfig, session: Session) -> dict[str, Any]:
    """The session's masking spec: the config's, with its generator seed offset by the training seed."""
    return {**config.masking.model_dump(mode="json"), "seed": config.masking.seed + session.training_seed}


def checkpoint_state(checkpoint_pt: Path) -> tuple[CheckpointState, dict[str, Any]]:
    """Whether a checkpoint (last.pt or best.pt) is missing, unreadable, of an unfinished (resumable) or of a
    finished training; plus epoch info (`batch`: the batch it was trained at; `holds_best`: it is its run's best
    epoch, `exp3.train.trainers.holds_best`)."""
    if not checkpoint_pt.is_file():
        return "missing", {}
    import torch  # lazy: torch is heavy; a done session never loads it

    from exp3.train.trainers import holds_best  # lazy: loads Ultralytics (offline env first)

    try:
        checkpoint = torch.load(checkpoint_pt, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - any unreadable file is "corrupt"
        return "corrupt", {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"}
    epoch = int(checkpoint.get("epoch", -1))
    train_args = checkpoint.get("train_args") or {}
    epochs = int(train_args.get("epochs", 0))
    info = {"epoch": epoch, "epochs": epochs, "batch": train_args.get("batch"), "holds_best": holds_best(checkpoint)}
    finished = epoch < 0 or checkpoint.get("optimizer") is None or epoch + 1 >= epochs
    return ("finished" if finished else "partial"), info


def final_checkpoint(plan: TrainPlan) -> tuple[Path | None, dict[str, Any]]:
    """The checkpoint a finished training is evaluated from: best.pt (selected on val), last.pt only when no best.pt
    exists; (None, last.pt's epoch info) while the training is unfinished. A finished training whose last.pt was
    set aside (`_training_state`) is evaluated from its best.pt."""
    state, info = checkpoint_state(plan.last_pt)
    best_state, best_info = checkpoint_state(plan.best_pt)
    if state == "missing" and best_state == "finished":
        return plan.best_pt, best_info
    if state != "finished":
        return None, info
    return (plan.last_pt if best_state == "missing" else plan.best_pt), info


# ---------------------------------------------------------------------------------------------
# Running one training in this process


@dataclass
class TrainOutcome:
    """What one training did."""

    wall_s: float
    info: dict[str, Any] = field(default_factory=dict)
    """train_info.json as the training left it (`resumed_from`: the epoch a resume started from, or None)."""


def run_training(plan: TrainPlan, logs_dir: Path) -> TrainOutcome:
    """Train `plan` in this process, Ultralytics' output appended to `logs_dir/train.log`.

    Errors propagate (their traceback is in the log too); the masking settings are attached only
    for the training and removed after it; the process is left as a fresh one would be (`_after_training`).
    """
    logs_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(plan.run_dir).parent / TRAIN_PLAN_FILENAME, asdict(plan))
    start = time.perf_counter()
    environment = {key: os.environ.get(key) for key in DETERMINISM_ENV}
    header = f"\n==== exp3 train {plan.session} at {time.strftime('%Y-%m-%d %H:%M:%S')} ====\n"
    with _output_to(logs_dir / "train.log", header) as log:
        try:
            _train(plan)
        except BaseException:
            log.write(traceback.format_exc().encode())  # FAILED's log tail shows the error
            raise
        finally:
            _after_training(environment)
    info = read_json(Path(plan.run_dir) / TRAIN_INFO_FILENAME) or {}
    return TrainOutcome(round(time.perf_counter() - start, 2), info)


@contextmanager
def _output_to(log_path: Path, header: str) -> Iterator[BinaryIO]:
    """Send this process's output to `log_path` (appended) for the duration, restored afterwards:
    file descriptors 1 and 2 (progress bars, C-level output, loggers holding the original streams)
    and `sys.stdout`/`sys.stderr` (exp3's own prints, also where a test harness replaced them).
    Yields the log, unbuffered, so its own writes keep their place among the others."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = (os.dup(1), os.dup(2))
    with open(log_path, "ab", buffering=0) as log, \
            open(log_path, "a", buffering=1, encoding="utf-8", errors="replace") as text:
        log.write(header.encode())
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            with redirect_stdout(text), redirect_stderr(text):
                yield log
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


DETERMINISM_ENV: tuple[str, ...] = ("CUBLAS_WORKSPACE_CONFIG", "PYTHONHASHSEED")
"""Environment variables Ultralytics' `deterministic=True` sets for the training (restored after it)."""


def _after_training(environment: dict[str, str | None]) -> None:
    """Leave the process as a fresh one would be for the evaluation that follows: free what the
    trainer held (model, optimizer, dataloaders), undo Ultralytics' `deterministic=True` settings
    (deterministic kernels only, cuDNN deterministic), and put back `environment` (DETERMINISM_ENV
    as they were before the training)."""
    gc.collect()
    if (torch := sys.modules.get("torch")) is None:
        return
    from ultralytics.utils.torch_utils import unset_deterministic  # lazy: only after a training

    unset_deterministic()
    for key, value in environment.items():
        if value is None:
            os.environ.pop(key, None)  # unset before the training: unset again, as in a fresh process
        else:
            os.environ[key] = value
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def log_tail(log_path: str | Path, lines: int = 40) -> str:
    """The last `lines` lines of a log (progress-bar carriage returns folded)."""
    path = Path(log_path)
    if not path.is_file():
        return ""
    text = path.read_bytes()[-200_000:].decode("utf-8", errors="replace").replace("\r", "\n")
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])


# ---------------------------------------------------------------------------------------------
# The training itself


def _set_aside(path: Path, label: str, why: str) -> Path:
    """Rename `path` to `<name>.<label>-<time>` beside it (kept for inspection, never deleted), saying `why`."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target, count = path.with_name(f"{path.name}.{label}-{stamp}"), 1
    while target.exists():  # never over an earlier one set aside in the same second
        target, count = path.with_name(f"{path.name}.{label}-{stamp}-{count}"), count + 1
    os.replace(path, target)
    print(f"WARNING exp3: {path} {why}; moved to {target.name}")
    return target


def _set_aside_events(run_dir: Path) -> None:
    """Before a training from the start: TensorBoard merges every events file of a folder into one run, so an earlier
    attempt's (its checkpoints set aside, or killed before its first) would show epochs this training does not hold
    beside its own. They move to `tensorboard.superseded-<time>/`, a run of its own."""
    if events := sorted(run_dir.glob("events.out.tfevents.*")):
        target = run_dir / f"tensorboard.superseded-{time.strftime('%Y%m%d-%H%M%S')}"
        target.mkdir(exist_ok=True)
        for event in events:
            os.replace(event, target / event.name)
        print(f"WARNING exp3: training {run_dir} from the start: an earlier attempt's TensorBoard events moved to "
              f"{target.name}")


def _training_state(plan: TrainPlan) -> tuple[CheckpointState, dict[str, Any]]:
    """What the session's checkpoints leave to train, once what cannot be used is set aside: an unreadable last.pt
    (`_continue_from_best`), an unreadable best.pt (`_recover_from_corrupt_best`), an unfinished training at a
    larger batch than the plan's (`_resume_at_own_batch`)."""
    state, info = checkpoint_state(plan.last_pt)
    if state == "corrupt":
        _set_aside(plan.last_pt, "corrupt", f"is unreadable ({info.get('error')})")
        state, info = "missing", {}
    best_state, best_info = checkpoint_state(plan.best_pt)
    if best_state == "corrupt":
        state, info = _recover_from_corrupt_best(plan, state, info, best_info)
    elif state == "missing" and best_state != "missing":
        state, info = _continue_from_best(plan, best_state, best_info)
    return _resume_at_own_batch(plan, info) if state == "partial" else (state, info)


def _continue_from_best(plan: TrainPlan, best_state: CheckpointState,
                        best_info: dict[str, Any]) -> tuple[CheckpointState, dict[str, Any]]:
    """last.pt is gone: a finished best.pt is the finished training's own checkpoint (nothing to train); an
    unfinished one is resumed (copied to last.pt)."""
    if best_state == "finished":
        print(f"WARNING exp3: {plan.best_pt} is a finished training's ({best_info}): evaluating it, nothing to train")
        return "finished", best_info
    from exp3.train.trainers import copy_checkpoint  # lazy: loads Ultralytics (offline env first)

    copy_checkpoint(plan.best_pt, plan.last_pt)
    print(f"WARNING exp3: resuming from this session's best.pt instead ({best_info})")
    return "partial", best_info


def _recover_from_corrupt_best(plan: TrainPlan, state: CheckpointState, info: dict[str, Any],
                               best_info: dict[str, Any]) -> tuple[CheckpointState, dict[str, Any]]:
    """Set an unreadable best.pt aside. When last.pt holds the same epoch (its fitness is the run's best) best.pt is
    restored from it; otherwise the epoch best.pt held is lost, and evaluating another checkpoint would change how
    this one session's checkpoint is chosen: last.pt is set aside too and the session trains from the start."""
    from exp3.train.trainers import copy_checkpoint  # lazy: loads Ultralytics (offline env first)

    _set_aside(plan.best_pt, "corrupt", f"is unreadable ({best_info.get('error')})")
    if info.get("holds_best"):
        copy_checkpoint(plan.last_pt, plan.best_pt)
        print(f"WARNING exp3: best.pt restored from last.pt, which holds the same epoch ({info})")
        return state, info
    if state != "missing":
        _set_aside(plan.last_pt, "superseded", f"is not known to hold the epoch best.pt held ({info}): it cannot "
                   "stand in for it")
    print("WARNING exp3: no checkpoint of the best epoch left: training this session from the start")
    return "missing", {}


def _resume_at_own_batch(plan: TrainPlan, info: dict[str, Any]) -> tuple[CheckpointState, dict[str, Any]]:
    """An unfinished training is resumed only at its own batch, so that every epoch runs at one batch. Above the
    plan's (the plan is an out-of-memory retry's, smaller), its last.pt and best.pt are set aside and the session
    trains from the start at the plan's batch. Below it (an earlier retry's, left by a kill, or Ultralytics' own
    first-epoch halving), it is resumed at that batch (`_train_with`), which the record names (`training.ran`)."""
    batch = plan.batch
    if not isinstance(info.get("batch"), int) or info["batch"] <= batch:
        return "partial", info
    for checkpoint in (plan.last_pt, plan.best_pt):
        if checkpoint.is_file():
            _set_aside(checkpoint, "other-batch", f"was trained at batch {info['batch']}, this training's is "
                       f"{batch} (resumed, one training would run at both)")
    print(f"WARNING exp3: training this session from the start at batch {batch}")
    return "missing", {}


def _train(plan: TrainPlan) -> None:
    apply_offline_environment(plan.output_root)
    if plan.masking_site is None:
        _train_with(plan)
        return
    from exp3.train.trainers import MASKING_SPEC_ENV, write_masking_settings  # lazy: loads Ultralytics (offline env)

    settings = write_masking_settings(Path(plan.run_dir).parent / "masking_spec.json", plan.masking_site,
                                      plan.masking_spec or {})
    os.environ[MASKING_SPEC_ENV] = str(settings)
    try:
        _train_with(plan)
    finally:
        os.environ.pop(MASKING_SPEC_ENV, None)  # the evaluation that follows in this process never masks


class TrainInfo:
    """train_info.json of one training: what Ultralytics resolved and the training time of this attempt and the
    earlier ones (`earlier`: their train_info.json, resuming), rewritten at each of its `callbacks()` (a killed
    attempt still leaves its training time on record) and once the training is over (`finish`)."""

    def __init__(self, path: Path, earlier: dict[str, Any]) -> None:
        self.path = path
        self.walls: list[float] = list(earlier.get("attempt_wall_s", []))  # training time of earlier attempts
        self.captured: dict[str, Any] = {key: earlier[key] for key in ("optimizer", "requested", "amp", "device")
                                         if key in earlier}
        self.start = time.perf_counter()

    def callbacks(self) -> dict[str, list[Any]]:
        """Its hooks, `{event: [fn]}` (every exp3 training hook: exp3/train/trainers.py's docstring)."""
        return {"on_pretrain_routine_start": [self._requested],
                "on_train_start": [self._resolved],
                "on_train_epoch_start": [self._one_batch],
                "on_train_epoch_end": [self._progress],  # before validation and the checkpoint save
                "on_fit_epoch_end": [self._progress],
                "on_train_end": [self._effective_args]}

    def write(self, final: bool) -> None:
        attempt_walls = [*self.walls, round(time.perf_counter() - self.start, 2)]
        atomic_write_json(self.path, {**self.captured, "attempt_wall_s": attempt_walls,
                                      "wall_s_total": round(sum(attempt_walls), 2), "attempts": len(attempt_walls),
                                      "finished": final})

    def finish(self, **fields: Any) -> None:
        """The last write, once `model.train` returned, with `fields` added."""
        self.captured.update(fields)
        self.write(final=True)

    def _requested(self, trainer: Any) -> None:  # before Ultralytics resolves them
        self.captured["requested"] = {"optimizer": trainer.args.optimizer, "amp": trainer.args.amp}

    def _resolved(self, trainer: Any) -> None:
        captured, optimizer = self.captured, trainer.optimizer
        group = optimizer.param_groups[0] if optimizer is not None and optimizer.param_groups else {}
        captured["optimizer"] = {"name": type(optimizer).__name__ if optimizer is not None else None,
                                 "requested": captured.get("requested", {}).get("optimizer"),
                                 "lr0": group.get("initial_lr", group.get("lr")),
                                 "momentum": group.get("momentum", (group.get("betas") or [None])[0])}
        captured["amp"] = bool(getattr(trainer, "amp", False))
        captured["device"] = str(trainer.device)
        captured["start_epoch"] = int(trainer.start_epoch)
        captured["ran"] = {key: getattr(trainer.args, key) for key in RESUME_OVERRIDABLE}
        self.write(final=False)

    def _one_batch(self, trainer: Any) -> None:
        """Ultralytics halves the batch when a run's first epoch runs out of memory, and goes on
        (`BaseTrainer._do_train`). A fresh training then runs at the smaller batch: `ran` says it. A resumed one would
        run its earlier epochs at the larger: it fails as out of memory instead, and the runner's retry trains from
        the start at a smaller batch (`_resume_at_own_batch`), so every epoch of a training runs at one batch."""
        ran = self.captured["ran"]
        if trainer.batch_size == ran["batch"]:
            return
        if trainer.start_epoch > 0:
            import torch  # loaded with Ultralytics already

            raise torch.OutOfMemoryError(
                f"out of memory in epoch {trainer.start_epoch + 1}, the first after a resume at batch {ran['batch']}: "
                f"Ultralytics halved the batch to {trainer.batch_size}, but epochs 1-{trainer.start_epoch} ran at "
                f"{ran['batch']}; the out-of-memory retry trains this session from the start at a smaller batch")
        ran["batch"] = trainer.batch_size
        self.write(final=False)

    def _progress(self, trainer: Any) -> None:
        self.write(final=False)

    def _effective_args(self, trainer: Any) -> None:
        self.captured["effective_args"] = {key: (str(value) if isinstance(value, Path) else value)
                                           for key, value in vars(trainer.args).items()}
        self.captured["epochs_completed"] = int(trainer.epoch) + 1


def _finish_record(plan: TrainPlan, info: dict[str, Any], trainer: str) -> None:
    """A kill after the last epoch's checkpoint, before the training's end (in Ultralytics' final validation, after
    it stripped the checkpoints: epoch -1), leaves train_info.json unfinished: the checkpoint's own args (what
    Ultralytics resolved, as `TrainInfo` records them at the end) and epochs finish it."""
    path = Path(plan.run_dir) / TRAIN_INFO_FILENAME
    recorded = read_json(path)
    if not isinstance(recorded, dict) or recorded.get("finished"):
        return
    import torch  # loaded with Ultralytics already

    checkpoint = torch.load(plan.last_pt if plan.last_pt.is_file() else plan.best_pt, map_location="cpu",
                            weights_only=False)
    epoch = info.get("epoch", -1)  # stripped: its results' epochs (early stopping may end before `epochs`)
    epochs = epoch + 1 if epoch >= 0 else len(set((checkpoint.get("train_results") or {}).get("epoch") or [])) or None
    atomic_write_json(path, {**recorded, "finished": True, "trainer": trainer, "epochs_completed": epochs,
                             "effective_args": {key: str(value) if isinstance(value, Path) else value
                                                for key, value in (checkpoint.get("train_args") or {}).items()}})


def _train_with(plan: TrainPlan) -> None:
    from ultralytics import RTDETR, YOLO  # lazy: Ultralytics after apply_offline_environment

    from exp3.train import trainers  # lazy: loads Ultralytics (offline env first)

    trainer_class = getattr(trainers, TRAINER_CLASSES[(plan.family, plan.masking_site is not None)])
    state, info = _training_state(plan)
    if state == "finished":
        print(f"exp3: {plan.run_dir} holds a finished training (epoch info {info}): nothing to train")
        _finish_record(plan, info, trainer_class.__name__)
        return
    resuming = state == "partial"
    info_path = Path(plan.run_dir) / TRAIN_INFO_FILENAME
    train_info = TrainInfo(info_path, (read_json(info_path) or {}) if resuming else {})
    if resuming:
        train_info.captured["resumed_from"] = info.get("epoch")  # on record from its first write: a kill may follow
        print(f"exp3: resuming {plan.session} from its own {plan.last_pt} ({info})")
    model = (RTDETR if plan.family == "rtdetr" else YOLO)(str(plan.last_pt) if resuming else plan.source)
    trainers.add_callbacks(model, train_info.callbacks())
    if resuming:
        # Ultralytics restores the checkpoint's args on resume; these may (and must) follow the plan: the config's
        # imgsz/device/workers, and where the data and the run are now (a root moved or restored from a mirror: never
        # the paths the checkpoint was made at). The batch is the checkpoint's own (`_resume_at_own_batch`)
        resumed = {key: value for key, value in plan.overrides.items() if key in RESUME_OVERRIDABLE}
        if isinstance(info.get("batch"), int):
            resumed["batch"] = info["batch"]
        model.train(resume=True, trainer=trainer_class, data=plan.locations["data"], save_dir=plan.run_dir, **resumed)
    else:
        _set_aside_events(Path(plan.run_dir))
        # a .pt keeps its own training's imgsz, data, task and single_cls as the base of `train`'s args (Ultralytics'
        # `Model._reset_ckpt_args`): a fresh training takes its weights only, and Ultralytics' defaults and the plan
        model.overrides = {key: model.overrides[key] for key in ("model", "task")}
        model.train(trainer=trainer_class, **plan.locations, **plan.overrides)
    train_info.finish(trainer=trainer_class.__name__, resumed_from=info.get("epoch") if resuming else None)
