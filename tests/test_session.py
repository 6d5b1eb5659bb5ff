"""One session end to end on tiny real workloads: folder contents, skip, crash + resume, failure, bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from exp3 import SCHEMA_VERSION
from exp3.config import load_config
from exp3.fileio import sha256_file
from exp3.identity import session_inputs
from exp3.schema import SessionMetrics
from exp3.session.layout import DONE_MARKER, FAILED_MARKER, SessionPaths
from exp3.session.prepare import prepare_data, resolve_model_weights
from exp3.session.run import SessionFailed, run_session
from exp3.sessions import Session

REPO = Path(__file__).resolve().parents[1]
TINY_OVERRIDES = {"models": {"yolov8n": {"architecture": "yolov8n.yaml", "epochs": 1},
                             "rtdetr-l": {"architecture": "rtdetr-l.yaml", "epochs": 1}},
                  "occlusion": {"severities": []}}  # test_clean and test_occ_fixed only: levels are test_severity's


def _write_config(path: Path, root: Path, extra: dict | None = None) -> Path:
    payload = {"base": str(REPO / "configs" / "smoke.yaml"), "output_root": str(root), **TINY_OVERRIDES, **(extra or {})}
    path.write_text(yaml.safe_dump(payload))
    return path


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, SessionMetrics]]:
    """Runs yolov8n S1, S2, S3 and rtdetr-l S6 once; returns (output root, metrics by session name)."""
    root = tmp_path_factory.mktemp("sessions")
    config = load_config(_write_config(root / "config.yaml", root / "out", {"eval": {"plots": True}}))  # smoke: off
    output = root / "out"
    sessions = [Session("yolov8n", "S1_clean_train"), Session("yolov8n", "S2_occ_train"),
                Session("yolov8n", "S3_mask_backbone_early"), Session("rtdetr-l", "S6_mask_head")]
    return output, {s.name: run_session(config, s, output) for s in sessions}


SESSION_FILES = ("metrics.json", "predictions_test_clean.json", "predictions_test_occ_fixed.json",
                 "config_resolved.yaml", "train_plan.json", "train/weights/best.pt", "train/weights/last.pt",
                 "train/train_info.json", "train/args.yaml", "logs/train.log", "plots/test_clean",
                 "plots/test_occ_fixed", "weights/best.pt", "weights/last.pt", DONE_MARKER)


@pytest.mark.parametrize("name", ["yolov8n__S1_clean_train", "yolov8n__S3_mask_backbone_early",
                                  "rtdetr-l__S6_mask_head"])
def test_every_file_for_masked_and_unmasked_sessions_of_both_families(grid, name: str) -> None:
    output, _ = grid
    folder = output / name.split("__")[0] / name
    missing = [f for f in SESSION_FILES if not (folder / f).exists()]
    assert missing == []
    masked = "mask" in name
    assert (folder / "train" / "masking_stats.json").is_file() is masked
    assert not (folder / FAILED_MARKER).exists()


@pytest.mark.parametrize("name", ["yolov8n__S1_clean_train", "rtdetr-l__S6_mask_head"])
def test_metrics_match_plain_ultralytics_val_and_predictions_file(grid, name: str, tmp_path: Path) -> None:
    from ultralytics import RTDETR, YOLO

    from exp3.evaluate.metrics import records_from_json, summarize_split

    output, metrics = grid
    m = metrics[name]
    folder = output / name.split("__")[0] / name
    best = folder / "train" / "weights" / "best.pt"
    model_class = RTDETR if m.training.family == "rtdetr" else YOLO
    for split in ("test_clean", "test_occ_fixed"):
        plain = model_class(str(best)).val(data=str(Path(m.data.suite_dir) / f"{split}.yaml"), split="test",
                                           batch=4, device="cpu", plots=False, verbose=False,
                                           project=str(tmp_path), name=split)
        assert m.splits[split].map50 == pytest.approx(float(plain.box.map50), abs=1e-9)
        assert m.splits[split].map50_95 == pytest.approx(float(plain.box.map), abs=1e-9)
        records = records_from_json(json.loads((folder / f"predictions_{split}.json").read_text())["images"])
        again = summarize_split(records, num_classes=10, conf=m.eval.conf, match_iou=m.eval.match_iou)
        assert again["ingredient"] == m.splits[split].ingredient.model_dump()
        assert again["detection"] == m.splits[split].detection.model_dump()


def test_session_folder_is_complete_and_self_describing(grid) -> None:
    output, metrics = grid
    folder = output / "yolov8n" / "yolov8n__S1_clean_train"
    assert (folder / "weights" / "best.pt").stat().st_ino == (folder / "train" / "weights" / "best.pt").stat().st_ino
    done = json.loads((folder / DONE_MARKER).read_text())
    assert done["metrics_sha256"] == sha256_file(folder / "metrics.json")
    m = metrics["yolov8n__S1_clean_train"].to_json()  # the file as written
    assert m["schema_version"] == SCHEMA_VERSION and m["status"] == "done"
    assert m["training"]["overrides"] == {"epochs": 1, "batch": 4, "imgsz": 64, "device": "cpu", "workers": 0}
    assert m["training"]["pretrained"] is False and m["training"]["weights"]["sha256"] is None
    assert m["training"]["weights"]["origin"] == "scratch"
    assert m["training"]["requested"]["optimizer"] == "auto" and m["training"]["optimizer"]["name"] == "AdamW"
    assert m["training"]["effective_args"]["epochs"] == 1 and m["checkpoint"]["which"] == "best.pt"
    assert m["masking"] is None
    for split in ("test_clean", "test_occ_fixed"):
        block = m["splits"][split]
        assert set(block["ingredient"]) == {"micro", "macro", "samples"}
        assert {"precision", "recall", "f1", "tp", "fp", "fn"} <= set(block["detection"])
        assert 0.0 <= block["map50_95"] <= block["map50"] <= 1.0
        predictions = json.loads((folder / f"predictions_{split}.json").read_text())
        assert len(predictions["images"]) == 8 and predictions["split"] == split
    assert set(m["robustness"]) >= {"rF1_micro", "rmAP50", "rmAP50_95"}
    assert m["data"]["suite_id"].startswith("occ-") and len(m["data"]["dataset_fingerprint"]) == 16
    provenance = m["provenance"]
    assert provenance["exp3_version"] and provenance["device"]["names"]
    from importlib.metadata import version
    for package in ("torch", "ultralytics", "prefect"):  # the versions the numbers depend on
        assert provenance["packages"][package] == version(package)
    assert "commit" in provenance["git"] and "dirty" in provenance["git"]


def test_metrics_json_is_exactly_a_session_metrics(grid) -> None:
    """What every session wrote validates as exp3.schema.SessionMetrics and dumps back to the same bytes,
    and is what run_session returned."""
    from exp3.fileio import canonical_json

    output, metrics = grid
    for name, returned in metrics.items():
        text = (output / name.split("__")[0] / name / "metrics.json").read_text(encoding="utf-8")
        model = SessionMetrics.model_validate(json.loads(text))
        assert canonical_json(model.to_json(), indent=2) + "\n" == text
        assert model.to_json() == returned.to_json()


def test_sessions_share_one_suite_and_train_on_their_own_data(grid) -> None:
    _, metrics = grid
    suites = {m.data.suite_id for m in metrics.values()}
    assert len(suites) == 1
    s1, s2 = metrics["yolov8n__S1_clean_train"], metrics["yolov8n__S2_occ_train"]
    assert s1.training.train_images == "clean" and s2.training.train_images == "occluded"
    assert "occtrain-" in s2.training.train_data_yaml and "occtrain-" not in s1.training.train_data_yaml
    paths = SessionPaths.of(grid[0], Session("yolov8n", "S1_clean_train"))
    clean_ids = [r["image_id"] for r in json.loads(paths.predictions("test_clean").read_text())["images"]]
    occ_ids = [r["image_id"] for r in json.loads(paths.predictions("test_occ_fixed").read_text())["images"]]
    assert clean_ids == occ_ids  # the same test images, clean and occluded


def test_masked_sessions_record_masking_that_fired(grid) -> None:
    _, metrics = grid
    for name, site in (("yolov8n__S3_mask_backbone_early", "backbone_early"), ("rtdetr-l__S6_mask_head", "head")):
        masking = metrics[name].masking
        assert masking is not None and masking.stats is not None and masking.site == site
        epoch0 = masking.stats.epochs[0].sites[site]
        assert epoch0.batches == 4  # 16 train images / batch 4: the hook saw every training batch, no more
        assert metrics[name].training.trainer.startswith("Masked")
    assert metrics["rtdetr-l__S6_mask_head"].training.family == "rtdetr"


def test_done_session_is_skipped_without_work(grid, tmp_path: Path) -> None:
    output, metrics = grid
    folder = output / "yolov8n" / "yolov8n__S1_clean_train"
    best = folder / "train" / "weights" / "best.pt"
    before = best.stat().st_mtime_ns
    train_log = (folder / "logs" / "train.log").read_bytes()
    config = load_config(_write_config(tmp_path / "c.yaml", output))
    again = run_session(config, Session("yolov8n", "S1_clean_train"), output)
    assert again.to_json() == json.loads((folder / "metrics.json").read_text()) and best.stat().st_mtime_ns == before
    assert (folder / "logs" / "train.log").read_bytes() == train_log  # no training was started


def test_killed_session_resumes_from_its_own_last_pt_with_masking(tmp_path: Path) -> None:
    output = tmp_path / "out"
    config_path = _write_config(tmp_path / "c.yaml", output, {"models": {"yolov8n": {"architecture": "yolov8n.yaml",
                                                                                    "epochs": 3}}})
    command = [sys.executable, "-m", "exp3.session", "--config", str(config_path), "--model", "yolov8n",
               "--session", "S4_mask_backbone_late"]
    folder = output / "yolov8n" / "yolov8n__S4_mask_backbone_late"
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while not (folder / "train" / "weights" / "last.pt").exists() and time.time() < deadline:
        assert process.poll() is None, "session ended before its first checkpoint"
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)  # the session process (it trains in process), like a power cut
    process.wait()
    assert not (folder / DONE_MARKER).exists()
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["training"]["resumed_from_epoch"] is not None
    training = metrics["training"]
    assert training["ran"]["batch"] == 4 == training["effective_args"]["batch"] == training["overrides"]["batch"]
    assert training["oom_retry_batch"] is None  # (a retry at another batch trains from the start: test_training.py)
    assert len(training["attempt_wall_s"]) == 2 and all(wall > 0 for wall in training["attempt_wall_s"])
    assert training["wall_s"] == pytest.approx(sum(training["attempt_wall_s"]), abs=0.05)  # the whole training
    assert metrics["training"]["trainer"] == "MaskedDetectionTrainer"
    epochs = [row["epoch"] for row in metrics["masking"]["stats"]["epochs"]]
    assert epochs == [0, 1, 2]  # masking ran in every epoch, before and after the crash
    assert all(row["sites"]["backbone_late"]["batches"] > 0 for row in metrics["masking"]["stats"]["epochs"])


def test_the_val_chosen_threshold_ties_to_the_configured_primary_threshold(tmp_path: Path) -> None:
    """eval.conf 0.3 and a one-epoch model whose val F1 is the same at every candidate: the tie went to a hard-coded
    0.25, not to the primary threshold docs/thresholds.md names (a model that finds nothing keeps it)."""
    output = tmp_path / "out"
    config = load_config(_write_config(tmp_path / "c.yaml", output, {"eval": {"conf": 0.3}}))
    metrics = run_session(config, Session("yolov8n", "S1_clean_train"), output)
    assert metrics.thresholds.val_f1_at_val_chosen == metrics.thresholds.val_f1_at_primary  # a tie on val
    assert metrics.thresholds.primary == 0.3 and metrics.thresholds.val_chosen == 0.3


def test_failed_training_leaves_failed_marker_and_no_done(tmp_path: Path) -> None:
    output = tmp_path / "out"
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    config = load_config(_write_config(tmp_path / "c.yaml", output, {"models": {"yolov8n": {
        "architecture": "yolov8n.yaml", "weights": str(broken), "epochs": 1}}}))
    with pytest.raises(SessionFailed, match="broken.pt is not a loadable checkpoint"):  # the cause, in one line
        run_session(config, Session("yolov8n", "S1_clean_train"), output)
    folder = output / "yolov8n" / "yolov8n__S1_clean_train"
    failed = json.loads((folder / FAILED_MARKER).read_text())
    assert "not a loadable checkpoint" in failed["error"]
    assert "not a loadable checkpoint" in failed["train_log_tail"]  # the log tail shows the error
    assert not (folder / DONE_MARKER).exists() and not (folder / "metrics.json").exists()
    fixed = load_config(_write_config(tmp_path / "c2.yaml", output))  # weights: null: from the yaml, on purpose
    metrics = run_session(fixed, Session("yolov8n", "S1_clean_train"), output)
    assert metrics.training.previous_failure is None  # that failure belongs to other inputs ...
    stale = list((output / "stale" / "yolov8n").iterdir())
    assert len(stale) == 1 and "not a loadable" in json.loads((stale[0] / FAILED_MARKER).read_text())["error"]
    assert not (folder / FAILED_MARKER).exists()  # ... and is kept aside, not deleted


def test_dataset_failing_the_audit_fails_the_session_before_building(tmp_path: Path,
                                                                      writable_data_yaml: Path) -> None:
    data = writable_data_yaml.parent
    label = sorted((data / "labels" / "train").glob("*.txt"))[0]
    label.write_text(label.read_text() + "99 0.5 0.5 0.1 0.1\n")
    output = tmp_path / "out"
    config = load_config(_write_config(tmp_path / "c.yaml", output, {"dataset": {
        "kind": "yaml", "data_yaml": str(data / "data.yaml")}}))
    with pytest.raises(SessionFailed, match="fails the audit: error: class_id_out_of_range"):
        run_session(config, Session("yolov8n", "S1_clean_train"), output)
    failed = json.loads((output / "yolov8n" / "yolov8n__S1_clean_train" / FAILED_MARKER).read_text())
    assert "class_id_out_of_range" in failed["error"]
    assert not (output / "suites").exists()  # nothing built from a bad dataset
    assert len(list((output / "audits").glob("audit-*.json"))) == 1


def test_the_flow_hashes_the_dataset_once(tmp_path: Path, tiny_data_yaml: Path, monkeypatch) -> None:
    """The flow's audit task hands its `AuditedData` to the prepare task (`prepare_data(audited=...)`): one
    fingerprint pass over the dataset per run, a first audit included. A session run by hand audits itself."""
    import exp3.dataset.audit
    from exp3.dataset.audit import audit_once
    from exp3.session.prepare import dataset_yaml, prepare_data

    passes: list[Path] = []
    fingerprint = exp3.dataset.audit.dataset_fingerprint
    monkeypatch.setattr(exp3.dataset.audit, "dataset_fingerprint", lambda spec: passes.append(spec.yaml_path)
                        or fingerprint(spec))
    output = tmp_path / "out"
    config = load_config(_write_config(tmp_path / "c.yaml", output, {"dataset": {
        "kind": "yaml", "data_yaml": str(tiny_data_yaml)}}))
    audited = audit_once(dataset_yaml(config, output), output / "audits")   # the audit task (not cached yet)
    prepared = prepare_data(config, output, audited=audited)                # the prepare task
    assert len(passes) == 1 and prepared.dataset_fingerprint == audited.fingerprint
    assert prepared.data_yaml == audited.data_yaml == str(tiny_data_yaml)
    assert prepare_data(config, output) == prepared and len(passes) == 2    # by hand: its own (cached) audit


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--model", "yolov8n", "--session", "S7_magic"], "unknown session 'yolov8n__S7_magic'"),
        (["--model", "yolov9z", "--session", "S1_clean_train"], "unknown model 'yolov9z'"),
        (["--model", "yolov8n", "--session", "S1_clean_train", "--set", "train.batchsize=2"], "unknown config key"),
        (["--model", "yolov8n", "--session", "S1_clean_train", "--prepared", "{not json"],
         "--prepared is not a PreparedData JSON object"),
        (["--model", "yolov8n", "--session", "S1_clean_train", "--seed", "7"], "seed 7 is not in the config's seeds"),
        (["--model", "yolov8n", "--session", "S1_clean_train", "--set", "seeds=[1, 2]"],  # none given: seed 0
         "seed 0 is not in the config's seeds [1, 2]: add it or pick one"),
        (["--model", "yolov8n", "--session", "S1_clean_train__seed3"], "seed 3 is not in the config's seeds [0]"),
        (["--model", "yolov8n", "--session", "S1_clean_train__seed0", "--set", "seeds=[5]"],
         "seed 0 is not in the config's seeds [5]"),
        (["--model", "yolov8n", "--session", "S1_clean_train", "--retry-batch", "0"],  # was AutoBatch, recorded as 0
         "--retry-batch 0 is no batch size: give N >= 1"),
        (["--model", "yolov8n", "--session", "S1_clean_train", "--retry-batch", "-1"], "--retry-batch -1 is no batch"),
    ],
)
def test_bad_cli_input_is_one_line_and_writes_nothing(tmp_path: Path, args: list[str], needle: str) -> None:
    output = tmp_path / "out"
    config_path = _write_config(tmp_path / "c.yaml", output)
    result = subprocess.run([sys.executable, "-m", "exp3.session", "--config", str(config_path), *args],
                            capture_output=True, text=True)
    assert result.returncode == 2 and needle in result.stderr and result.stderr.count("\n") == 1
    assert not output.exists()


def test_an_output_root_that_is_not_a_writable_directory_is_refused_in_one_line(tmp_path: Path) -> None:
    """A file or /proc as output_root: one line naming it, exit 2, the file untouched (was a traceback)."""
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    config_path = _write_config(tmp_path / "c.yaml", tmp_path / "out")
    for root in (notes, Path("/proc/exp3out")):
        result = subprocess.run([sys.executable, "-m", "exp3.session", "--config", str(config_path), "--model",
                                 "yolov8n", "--session", "S1_clean_train", "--set", f"output_root={root}"],
                                capture_output=True, text=True)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr[-2000:]
        assert f"output_root '{root}' is not a writable directory (" in result.stderr
        assert result.stderr.rstrip().endswith("): choose another")
    assert notes.read_text() == "my notes\n" and sorted(tmp_path.iterdir()) == [tmp_path / "c.yaml", notes]


def test_out_of_memory_after_training_records_the_batch_it_trained_at(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Out of memory in the evaluation, after the training finished at the configured batch 4: the runner's retry
    at batch 2 trains nothing, and metrics.json says batch 4 trained, with no out-of-memory retry batch (the report's
    answer would otherwise say "trained at batch 2 after out-of-memory retries")."""
    import torch

    import exp3.session.run as run

    def out_of_memory(*args: object, **kwargs: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB (simulated)")

    output = tmp_path / "out"
    config = load_config(_write_config(tmp_path / "c.yaml", output))
    session = Session("yolov8n", "S1_clean_train")
    with monkeypatch.context() as patch:
        patch.setattr(run, "evaluate_split", out_of_memory)
        with pytest.raises(SessionFailed, match="OutOfMemoryError"):
            run_session(config, session, output)
    metrics = run_session(config, session, output, retry_batch=config.train.batch // 2)
    assert config.train.batch == 4 and metrics.training.ran is not None and metrics.training.ran.batch == 4
    assert metrics.training.overrides["batch"] == 4 and metrics.training.oom_retry_batch is None


def test_truncated_last_pt_is_quarantined_and_training_recovers(tmp_path: Path) -> None:
    output = tmp_path / "out"
    config = load_config(_write_config(tmp_path / "c.yaml", output))
    folder = output / "yolov8n" / "yolov8n__S1_clean_train"
    weights = folder / "train" / "weights"
    weights.mkdir(parents=True)
    prepared = prepare_data(config, output)
    key = session_inputs(config, Session("yolov8n", "S1_clean_train"), prepared.dataset_fingerprint,
                         prepared.suite_id, resolve_model_weights(config, "yolov8n").sha256).key
    SessionPaths(folder).write_inputs({}, key)  # the same inputs: resumable, so the corrupt file is met
    (weights / "last.pt").write_bytes(b"PK\x03\x04 truncated by a power cut")
    metrics = run_session(config, Session("yolov8n", "S1_clean_train"), output)
    assert metrics.status == "done"
    assert len(list(weights.glob("last.pt.corrupt-*"))) == 1  # kept for inspection, not deleted
    assert "is unreadable" in (folder / "logs" / "train.log").read_text()


def test_config_change_after_done_retrains_from_scratch_and_keeps_the_old_result(tmp_path: Path, capsys) -> None:
    output = tmp_path / "out"
    session = Session("yolov8n", "S1_clean_train")
    first = run_session(load_config(_write_config(tmp_path / "c.yaml", output)), session, output)
    folder = SessionPaths.of(output, session).folder
    old_metrics = (folder / "metrics.json").read_bytes()
    changed = load_config(_write_config(tmp_path / "c2.yaml", output, {"models": {"yolov8n": {
        "architecture": "yolov8n.yaml", "epochs": 2}}}))
    second = run_session(changed, session, output)
    assert second.cache_key != first.cache_key and second.training.epochs_completed == 2
    assert second.training.resumed_from_epoch is None  # trained from scratch, not resumed
    moved = list((output / "stale" / "yolov8n").iterdir())
    assert len(moved) == 1 and (moved[0] / "metrics.json").read_bytes() == old_metrics  # kept, byte for byte
    assert str(moved[0]) in capsys.readouterr().out  # named in the log
    again = run_session(changed, session, output)
    assert again.to_json() == second.to_json()  # the new result is trusted for its own inputs


def test_partial_training_under_other_inputs_is_never_resumed(tmp_path: Path) -> None:
    output = tmp_path / "out"
    config = load_config(_write_config(tmp_path / "c.yaml", output))
    folder = output / "yolov8n" / "yolov8n__S3_mask_backbone_early"
    (folder / "train" / "weights").mkdir(parents=True)
    SessionPaths(folder).write_inputs({}, "yolov8n__S3_mask_backbone_early-made-with-other-masking")
    (folder / "train" / "weights" / "last.pt").write_bytes(b"an unfinished training of other inputs")
    metrics = run_session(config, Session("yolov8n", "S3_mask_backbone_early"), output)
    assert metrics.training.resumed_from_epoch is None
    moved = next((output / "stale" / "yolov8n").iterdir())
    assert (moved / "train" / "weights" / "last.pt").read_bytes() == b"an unfinished training of other inputs"


def test_configured_weights_are_used_and_hashed_or_refused(tmp_path: Path, tiny_yolo_checkpoint: Path) -> None:
    from exp3.train.weights import WeightsError

    output = tmp_path / "out"
    missing = load_config(_write_config(tmp_path / "m.yaml", output, {"models": {"yolov8n": {
        "architecture": "yolov8n.yaml", "weights": str(tmp_path / "nope.pt"), "epochs": 1}}}))
    with pytest.raises(WeightsError, match="nope.pt.*weights: null"):
        run_session(missing, Session("yolov8n", "S1_clean_train"), output)
    assert not (output / "yolov8n").exists()  # refused before anything was written
    local = load_config(_write_config(tmp_path / "l.yaml", output, {"models": {"yolov8n": {
        "architecture": "yolov8n.yaml", "weights": str(tiny_yolo_checkpoint), "epochs": 1}}}))
    metrics = run_session(local, Session("yolov8n", "S1_clean_train"), output)
    assert metrics.training.weights.sha256 == sha256_file(tiny_yolo_checkpoint)
    assert metrics.training.pretrained is True and metrics.inputs.weights_sha256 == sha256_file(tiny_yolo_checkpoint)


def test_a_session_runs_in_one_process_at_a_time(tmp_path: Path) -> None:
    output = tmp_path / "out"
    config_path = _write_config(tmp_path / "c.yaml", output)
    paths = SessionPaths.of(output, Session("yolov8n", "S1_clean_train"))
    paths.folder.parent.mkdir(parents=True)
    with paths.session_lock("a test holding the session"):
        result = subprocess.run([sys.executable, "-m", "exp3.session", "--config", str(config_path), "--model",
                                 "yolov8n", "--session", "S1_clean_train"], capture_output=True, text=True)
    assert result.returncode == 2 and "is in use by pid" in result.stderr and result.stderr.count("\n") == 1
    assert not paths.folder.exists()


def test_a_leftover_temp_checkpoint_never_replaces_best(tmp_path: Path) -> None:
    """A killed save left `.best.pt.tmp`; the next, non-improving epoch writes only last.pt."""
    from exp3.train.trainers import _AtomicCheckpointMixin

    class NonImprovingEpoch:
        def save_model(self) -> None:
            self.last.write_bytes(b"epoch 7 last")  # Ultralytics writes best only when fitness improves

    class Trainer(_AtomicCheckpointMixin, NonImprovingEpoch):
        pass

    trainer = Trainer()
    trainer.last, trainer.best = tmp_path / "last.pt", tmp_path / "best.pt"
    trainer.best.write_bytes(b"the good best")
    (tmp_path / ".best.pt.tmp").write_bytes(b"torso of a killed save")
    trainer.save_model()
    assert trainer.best.read_bytes() == b"the good best" and trainer.last.read_bytes() == b"epoch 7 last"
    assert not (tmp_path / ".best.pt.tmp").exists()


def test_evaluation_after_training_in_the_same_process_equals_a_fresh_process(
        tmp_path: Path, tiny_data_yaml: Path, trained_yolo_checkpoint: Path, trained_data_yaml: Path) -> None:
    """A session trains (with masking) and then evaluates in one process: the training leaves nothing
    behind that changes an evaluation. Checked on the non-zero predictions of a trained model against
    the same evaluation in a fresh Python process."""
    from exp3.config import ExperimentConfig
    from exp3.evaluate.evaluation import evaluate_split, load_evaluation_model
    from exp3.train.trainers import MASKING_SPEC_ENV
    from exp3.train.training import TrainPlan, run_training

    plan = TrainPlan(session="check__S4_mask_backbone_late", family="detect", source="yolov8n.yaml", pretrained=False,
                     overrides={"epochs": 1, "imgsz": 64, "batch": 4, "workers": 0, "device": "cpu"},
                     locations={"data": str(tiny_data_yaml), "project": str(tmp_path / "s"), "name": "train",
                                "exist_ok": True},
                     masking_site="backbone_late", masking_spec=ExperimentConfig().masking.model_dump(mode="json"),
                     output_root=str(tmp_path), run_dir=str(tmp_path / "s" / "train"))
    cublas_before = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    outcome = run_training(plan, tmp_path / "logs")
    assert outcome.info["trainer"] == "MaskedDetectionTrainer" and outcome.info["finished"]
    assert MASKING_SPEC_ENV not in os.environ  # masking was attached for the training only
    import torch

    assert not torch.are_deterministic_algorithms_enabled()  # Ultralytics' deterministic=True: training only
    assert os.environ.get("CUBLAS_WORKSPACE_CONFIG") == cublas_before  # the environment as it was
    assert "==== exp3 train" in (tmp_path / "logs" / "train.log").read_text()
    here = evaluate_split(load_evaluation_model(trained_yolo_checkpoint, "detect"), trained_data_yaml, tmp_path,
                          tmp_path / "here", device="cpu", plots=False)
    script = ("import json, sys; from exp3.evaluate.evaluation import evaluate_split, load_evaluation_model; "
              "from exp3.train.offline import apply_offline_environment; apply_offline_environment(sys.argv[3]); "
              "e = evaluate_split(load_evaluation_model(sys.argv[1], 'detect'), sys.argv[2], sys.argv[3], sys.argv[4], "
              "device='cpu', plots=False); print(json.dumps({'records': e.records, 'map': [e.map50, e.map50_95]}))")
    fresh = subprocess.run([sys.executable, "-c", script, str(trained_yolo_checkpoint), str(trained_data_yaml),
                            str(tmp_path / "fresh-root"), str(tmp_path / "fresh")], capture_output=True, text=True)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    other = json.loads(fresh.stdout.strip().splitlines()[-1])
    assert sum(len(record["pred_conf"]) for record in here.records) > 0  # a model that detects, not all-zero
    assert here.map50 > 0
    assert here.records == other["records"]
    assert [here.map50, here.map50_95] == other["map"]


def _trained_but_not_recorded(grid, tmp_path: Path) -> tuple[object, Session, Path, Path]:
    """A session whose training finished but which was killed before its record (no DONE, no metrics.json): the
    grid's yolov8n S1 folder copied into a new root (its data prepared there again; the key is the same):
    (config, session, output root, its train/weights folder)."""
    output = tmp_path / "out"
    config = load_config(_write_config(tmp_path / "c.yaml", output))
    session = Session("yolov8n", "S1_clean_train")
    paths = SessionPaths.of(output, session)
    shutil.copytree(SessionPaths.of(grid[0], session).folder, paths.folder, symlinks=True)
    paths.done_marker.unlink()
    paths.metrics.unlink()
    return config, session, output, paths.folder / "train" / "weights"


def _truncate(path: Path) -> None:
    """What an in-place write killed halfway leaves: the first half of the file."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_truncated_best_pt_is_set_aside_and_the_session_trains_again(grid, tmp_path: Path) -> None:
    """Killed while Ultralytics rewrote best.pt at the end of training: last.pt finished (stripped), best.pt
    truncated. That epoch cannot be recovered from last.pt, and last.pt in its place would change the rule
    (val-selected) for this one session: both are set aside and the session trains again."""
    from exp3.train.training import checkpoint_state

    config, session, output, weights = _trained_but_not_recorded(grid, tmp_path)
    _truncate(weights / "best.pt")
    metrics = run_session(config, session, output)  # before issue 35: SessionFailed, and again on every rerun
    assert metrics.status == "done" and metrics.checkpoint.which == "best.pt"
    assert metrics.checkpoint.path == str(weights / "best.pt")
    assert checkpoint_state(weights / "best.pt")[0] == "finished"
    assert metrics.training.resumed_from_epoch is None and metrics.training.attempts == 1  # a new training
    assert len(list(weights.glob("best.pt.corrupt-*"))) == 1  # the bad file, kept for inspection
    assert len(list(weights.glob("last.pt.superseded-*"))) == 1  # the old training's last epoch, kept
    log = (SessionPaths.of(output, session).logs / "train.log").read_text()
    assert "best.pt is unreadable" in log and "training this session from the start" in log


def test_a_truncated_last_pt_after_training_evaluates_best_pt_without_training_again(grid, tmp_path: Path) -> None:
    """last.pt truncated after the training finished: best.pt is the finished training's val-selected checkpoint,
    which is all the evaluation needs; nothing is trained again."""
    config, session, output, weights = _trained_but_not_recorded(grid, tmp_path)
    best = (weights / "best.pt").read_bytes()
    _truncate(weights / "last.pt")
    metrics = run_session(config, session, output)
    assert metrics.status == "done" and metrics.checkpoint.which == "best.pt"
    assert (weights / "best.pt").read_bytes() == best  # the same file: no second training
    assert len(list(weights.glob("last.pt.corrupt-*"))) == 1 and not (weights / "last.pt").exists()
    assert not (SessionPaths.of(output, session).folder / "weights" / "last.pt").exists()  # no link to a bad file


def test_a_training_without_best_pt_is_evaluated_from_last_pt_and_says_so(grid, tmp_path: Path) -> None:
    """No best.pt after a finished training (Ultralytics writes none when no epoch has a finite val fitness): last.pt
    is evaluated, and metrics.json says which and why: the final epoch, not one selected on val."""
    config, session, output, weights = _trained_but_not_recorded(grid, tmp_path)
    (weights / "best.pt").unlink()
    metrics = run_session(config, session, output)
    assert metrics.checkpoint.which == "last.pt" and metrics.checkpoint.path == str(weights / "last.pt")
    assert metrics.checkpoint.why.startswith("last.pt: the final epoch, not selected on val")
    assert not (SessionPaths.of(output, session).folder / "weights" / "best.pt").exists()


def test_a_severity_level_is_never_added_from_another_checkpoint(grid, tmp_path: Path) -> None:
    """A done session restored from a mirror whose best.pt upload was cut short holds another best.pt: a severity
    level added later was evaluated from it, silently. Now the session fails in one line (its FAILED marker says why:
    before, no marker, and the flow called it "stopped by a signal"); with its own best.pt back, the level is added
    and the marker goes."""
    output = tmp_path / "out"
    session = Session("yolov8n", "S1_clean_train")
    paths = SessionPaths.of(output, session)
    shutil.copytree(SessionPaths.of(grid[0], session).folder, paths.folder, symlinks=True)
    best = paths.folder / "train" / "weights" / "best.pt"
    own = best.read_bytes()
    best.write_bytes(own + b"\0")                                     # other bytes than the evaluated checkpoint
    levels = {"occlusion": {"severities": [[0.10, 0.26], [0.42, 0.58], [0.74, 0.90]]}}
    config = load_config(_write_config(tmp_path / "c.yaml", output, levels))
    with pytest.raises(SessionFailed, match=r"cannot add test_occ_sev1.*: its checkpoint .+best.pt is not the one its "
                                            r"metrics were made from \(sha256 differs\)"):
        run_session(config, session, output)
    assert "sha256 differs" in json.loads(paths.failed_marker.read_text())["error"] and paths.is_done(None)
    best.write_bytes(own)
    metrics = run_session(config, session, output)
    assert "test_occ_sev2" in metrics.splits and not paths.failed_marker.exists()
