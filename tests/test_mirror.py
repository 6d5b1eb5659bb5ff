"""The mirror (exp3/session/mirror.py) on real files: what goes up, what comes back (verified), what a failing mirror does.
The flow-level test (kill -9, the local root deleted, a new root resumes from the mirror) is in test_flow.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from exp3.config import MirrorConfig
from exp3.fileio import sha256_file
from exp3.session.layout import SessionPaths, SessionState
from exp3.session.mirror import REPORT_FILES, TEMP_SUFFIX, Mirror, describe, foreign_folder, mirror_for

KEY = "yolov8n__S1_clean_train-0123456789abcdef"


def _session(root: Path, done: bool, key: str = KEY) -> SessionPaths:
    """A session folder as a session leaves it: inputs, Ultralytics' run (results.csv, checkpoints), the weights/
    links, logs, and when `done` its metrics.json (naming best.pt, as evaluated) and DONE marker."""
    paths = SessionPaths(root / "yolov8n" / "yolov8n__S1_clean_train")
    paths.folder.mkdir(parents=True)
    paths.write_inputs({"session": paths.folder.name}, key)
    weights = paths.run_dir / "weights"
    weights.mkdir(parents=True)
    (weights / "last.pt").write_bytes(os.urandom(3000))
    (weights / "best.pt").write_bytes(os.urandom(2000))
    paths.results_csv.write_text("epoch,metrics/mAP50(B)\n1,0.1\n2,0.2\n")
    paths.logs.mkdir()
    (paths.logs / "train.log").write_text("==== exp3 train yolov8n__S1_clean_train ====\n")
    (paths.run_dir / ".last.pt.tmp").write_bytes(b"torso of a killed save")
    (weights / "last.pt.superseded-20261206-050000").write_bytes(os.urandom(1000))  # set aside: stays local
    (weights / "last.pt.other-batch-20261206-050000").write_bytes(os.urandom(1000))  # an OOM retry's: stays local
    if done:
        (paths.folder / "weights").mkdir()
        os.link(weights / "best.pt", paths.folder / "weights" / "best.pt")
        paths.metrics.write_text(json.dumps({"checkpoint": {"path": str(weights / "best.pt"),
                                                            "sha256": sha256_file(weights / "best.pt")}}))
        paths.write_done(key, {})
    return paths


def _mirror(tmp_path: Path, minutes: float = 0.0) -> Mirror:
    return Mirror(tmp_path / "mirror", tmp_path / "local", checkpoint_minutes=minutes)


def _files(folder: Path) -> set[str]:
    return {str(file.relative_to(folder)) for file in folder.rglob("*") if file.is_file()}


def test_a_done_session_goes_up_without_redundant_checkpoints(tmp_path: Path) -> None:
    mirror = _mirror(tmp_path)
    paths = _session(mirror.root, done=False)
    mirror.push_checkpoint(paths)  # while it trained: its checkpoints and what a resume reads
    held = mirror.path / "yolov8n" / "yolov8n__S1_clean_train"
    assert _files(held) == {"inputs.json", "train/results.csv", "logs/train.log", "train/weights/last.pt",
                            "train/weights/best.pt"}
    in_progress = held / "train" / "weights" / "last.pt"
    os.link(in_progress, tmp_path / "trash")  # the inode Drive's trash would keep
    _session(tmp_path / "done-later", done=True)  # the same session, done
    done = SessionPaths(tmp_path / "done-later" / "yolov8n" / "yolov8n__S1_clean_train")
    Mirror(mirror.path, tmp_path / "done-later").push_done(done)
    assert _files(held) == {"inputs.json", "train/results.csv", "logs/train.log", "train/weights/best.pt",
                            "metrics.json", "DONE"}  # no last.pt, no weights/ links, no temporary files
    assert (tmp_path / "trash").stat().st_size == 0  # truncated before it was removed
    assert SessionPaths(held).is_done(KEY)
    assert describe(mirror.path).startswith(f"mirror {mirror.path}: 1 sessions done, 0 unfinished")


def test_the_checkpoints_go_up_before_the_results_csv_a_resume_reads(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """results.csv first, then an epoch ends, then last.pt: the restored last.pt would hold an epoch the restored
    results.csv lacks, a row lost for good after the resume (the report then drew no curve for the session): it goes
    again after the checkpoints. best.pt before last.pt (the two pinned as they were:
    `test_epochs_that_end_while_the_checkpoints_go_up_leave_the_pair_as_it_was`): a push cut between them leaves
    best.pt ahead of last.pt, which the resume mends, never behind it (`test_a_push_cut_short_after_last_pt_...`)."""
    mirror = _mirror(tmp_path)
    paths = _session(mirror.root, done=False)
    pushed: list[str] = []
    monkeypatch.setattr(Mirror, "_push", lambda self, file, local=None: pushed.append((local or file).name))
    mirror.push_checkpoint(paths)
    checkpoints = pushed.index("best.pt")
    assert pushed[0] == "inputs.json" and pushed[checkpoints:checkpoints + 2] == ["best.pt", "last.pt"]
    assert "results.csv" in pushed[checkpoints + 2:]


def _cut_after_last_pt(mirror: Mirror, paths: SessionPaths, monkeypatch: pytest.MonkeyPatch) -> Mirror:
    """A checkpoint push of `paths` that dies (the VM recycled) just after last.pt is in the mirror; returns the new
    VM's mirror (its local root empty)."""
    real_push = Mirror._push

    def recycled_after_last_pt(self: Mirror, file: Path, local: Path | None = None) -> None:
        real_push(self, file, local)
        if (local or file).name == "last.pt":
            raise SystemExit("the VM is gone")

    monkeypatch.setattr(Mirror, "_push", recycled_after_last_pt)
    with pytest.raises(SystemExit):
        mirror.push_checkpoint(paths)
    monkeypatch.undo()
    return Mirror(mirror.path, mirror.root.parent / "new-vm")


def test_a_push_cut_short_after_last_pt_leaves_the_rows_of_the_epochs_it_holds(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The second checkpoint push dies just after last.pt went up: the new VM's results.csv and masking_stats.json
    must hold the epochs that last.pt holds. Copied only after the checkpoints, they were the first push's (epochs 1-2
    of 4): the resume went on from epoch 4, and the rows of epochs 3-4 were lost for good (no masking row, silently)."""
    mirror = _mirror(tmp_path)
    paths = _session(mirror.root, done=False)
    stats = paths.run_dir / "masking_stats.json"
    stats.write_text(json.dumps({"epochs": [{"epoch": 0}, {"epoch": 1}]}))
    mirror.push_checkpoint(paths)  # epochs 1-2
    paths.results_csv.write_text("epoch,metrics/mAP50(B)\n1,0.1\n2,0.2\n3,0.3\n4,0.4\n")  # two more epochs
    stats.write_text(json.dumps({"epochs": [{"epoch": epoch} for epoch in range(4)]}))
    paths.last_pt.write_bytes(os.urandom(3100))
    fresh = _cut_after_last_pt(mirror, paths, monkeypatch)
    assert fresh.restore({"yolov8n__S1_clean_train": KEY}) == [
        "yolov8n__S1_clean_train: unfinished (4 epochs in its mirrored results.csv; its last.pt may hold fewer: "
        "those after it train again), resumes from last.pt"]
    restored = SessionPaths(fresh.root / "yolov8n" / "yolov8n__S1_clean_train")
    assert restored.last_pt.read_bytes() == paths.last_pt.read_bytes()
    assert (restored.run_dir / "masking_stats.json").read_text() == stats.read_text()


def _save(checkpoint: Path) -> bytes:
    """A checkpoint save as the trainer makes it (exp3/train/trainers.py): new bytes renamed in over the old."""
    data, when = os.urandom(3000), checkpoint.stat().st_mtime + 60  # an epoch later: same size, another time
    temporary = checkpoint.with_name(f".{checkpoint.name}.tmp")
    temporary.write_bytes(data)
    os.utime(temporary, (when, when))
    os.replace(temporary, checkpoint)
    return data


def test_a_push_cut_short_after_last_pt_leaves_the_best_pt_of_the_epoch_it_holds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Epoch 3 became the best, epoch 4 did not, and the second push died just after last.pt (epoch 4's) went up.
    With last.pt copied first, the mirror's best.pt was still the first push's (epoch 2's): the resume (last.pt does
    not hold the best epoch) kept it, and unless a later epoch beat epoch 3 the session was evaluated from epoch 2's
    weights. best.pt goes up first now."""
    mirror = _mirror(tmp_path)
    paths = _session(mirror.root, done=False)
    mirror.push_checkpoint(paths)  # epochs 1-2
    best = _save(paths.run_dir / "weights" / "best.pt")  # epoch 3, the best
    _save(paths.last_pt)  # epoch 3
    last = _save(paths.last_pt)  # epoch 4
    fresh = _cut_after_last_pt(mirror, paths, monkeypatch)
    fresh.restore({"yolov8n__S1_clean_train": KEY})
    restored = SessionPaths(fresh.root / "yolov8n" / "yolov8n__S1_clean_train").run_dir / "weights"
    assert (restored / "last.pt").read_bytes() == last and (restored / "best.pt").read_bytes() == best


@pytest.mark.parametrize("links", [True, False], ids=["hard-links", "no-hard-links"])
def test_epochs_that_end_while_the_checkpoints_go_up_leave_the_pair_as_it_was(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, links: bool) -> None:
    """Two epochs end while best.pt is copied to a slow drive: epoch 5 the best, epoch 6 not. Copied as they were
    then, the mirror paired the old best.pt with epoch 6's last.pt, which knows of epoch 5's fitness: a resume from
    it kept the old best.pt (last.pt does not hold the best epoch), and epoch 5's weights were lost. The push sends
    the pair as it was when it began (pinned by hard links, or by copies on a disk without them)."""
    mirror = _mirror(tmp_path)
    paths = _session(mirror.root, done=False)
    weights = paths.run_dir / "weights"
    before = {name: (weights / name).read_bytes() for name in ("best.pt", "last.pt")}
    real_copy = Mirror._copy

    def slow_drive(self: Mirror, source: Path, target: Path) -> int:
        written = real_copy(self, source, target)
        if target.name == "best.pt":
            for checkpoint in (weights / "best.pt", paths.last_pt, paths.last_pt):  # epochs 5 (the best) and 6
                _save(checkpoint)
        return written

    def no_hard_links(*_: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(Mirror, "_copy", slow_drive)
    if not links:
        monkeypatch.setattr(os, "link", no_hard_links)
    mirror.push_checkpoint(paths)
    held = mirror.path / weights.relative_to(mirror.root)
    assert {name: (held / name).read_bytes() for name in before} == before
    assert (weights / "last.pt").read_bytes() != before["last.pt"]  # the session went on
    assert not list(weights.glob(".*")) and _files(held.parent.parent) == {
        "inputs.json", "train/results.csv", "logs/train.log", "train/weights/last.pt", "train/weights/best.pt"}


def test_a_vm_recycled_right_after_the_first_last_pt_went_up_still_resumes_from_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first checkpoint push of a session dies (the VM is recycled) just after last.pt is in the mirror: the new
    VM resumes from it. Before, inputs.json went up after the checkpoints, so the mirror held a last.pt without its
    key, and the session trained again from scratch (seen as a flaky tests/test_flow.py kill -9 test)."""
    mirror = _mirror(tmp_path)
    paths = _session(mirror.root, done=False)
    fresh = _cut_after_last_pt(mirror, paths, monkeypatch)
    assert fresh.restore({"yolov8n__S1_clean_train": KEY}) == [
        "yolov8n__S1_clean_train: unfinished (2 epochs in its mirrored results.csv; its last.pt may hold fewer: "
        "those after it train again), resumes from last.pt"]  # results.csv went up before last.pt (and after it)
    resumed = SessionPaths(fresh.root / "yolov8n" / "yolov8n__S1_clean_train")
    assert resumed.state(KEY) == SessionState.PARTIAL and resumed.last_pt.read_bytes() == paths.last_pt.read_bytes()


def test_a_replaced_file_is_truncated_first_and_an_unchanged_one_is_not_copied_again(tmp_path: Path) -> None:
    mirror = _mirror(tmp_path)
    paths = _session(mirror.root, done=False)
    mirror.push_checkpoint(paths)
    old = tmp_path / "old-last"
    os.link(mirror.path / paths.last_pt.relative_to(mirror.root), old)
    written = mirror.bytes_written
    mirror.push_checkpoint(paths)
    assert mirror.bytes_written == written and old.stat().st_size == 3000  # nothing changed, nothing written
    paths.last_pt.write_bytes(os.urandom(3500))  # the next epoch's checkpoint
    mirror.push_checkpoint(paths)
    assert mirror.bytes_written == written + 3500 and old.stat().st_size == 0
    assert (mirror.path / paths.last_pt.relative_to(mirror.root)).read_bytes() == paths.last_pt.read_bytes()


def test_the_report_goes_up_and_a_chart_it_no_longer_draws_goes_from_the_mirror(tmp_path: Path) -> None:
    """Only what exp3 put there goes: a mirror.path set to a folder that already held the user's own charts (a
    thesis figure in plots/) keeps them (they were emptied and deleted, beyond Drive's trash)."""
    mirror = _mirror(tmp_path)
    (mirror.path / "plots").mkdir(parents=True)
    (mirror.path / "plots" / "thesis_fig3.png").write_bytes(b"the user's figure")
    plots = mirror.root / "plots"
    plots.mkdir(parents=True)
    for name in ("f1_occ_yolov8n.png", "f1_occ_yolov8n.html", "f1_occ_by_model.png", "f1_occ_by_model.html"):
        (plots / name).write_bytes(os.urandom(500))
    (mirror.root / "report.md").write_text("# exp3 report\n")
    (mirror.root / "plan.json").write_text("{}")
    mirror.push_report([])
    assert _files(mirror.path) == {"report.md", "plots/f1_occ_yolov8n.png", "plots/f1_occ_yolov8n.html",
                                   "plots/f1_occ_by_model.png", "plots/f1_occ_by_model.html",  # no plan.json
                                   "plots/thesis_fig3.png", REPORT_FILES}
    (mirror.path / "plots" / "notes.txt").write_text("the user's")
    os.link(mirror.path / "plots" / "f1_occ_by_model.png", tmp_path / "trash")
    for name in ("f1_occ_by_model.png", "f1_occ_by_model.html"):  # the next build did not draw them
        (plots / name).unlink()
    mirror.push_report([])
    assert _files(mirror.path) == {"report.md", "plots/f1_occ_yolov8n.png", "plots/f1_occ_yolov8n.html",
                                   "plots/notes.txt", "plots/thesis_fig3.png", REPORT_FILES}
    assert (mirror.path / "plots" / "thesis_fig3.png").read_bytes() == b"the user's figure"
    assert (tmp_path / "trash").stat().st_size == 0  # truncated before it was removed


def test_checkpoints_go_up_at_most_every_checkpoint_minutes(tmp_path: Path) -> None:
    mirror = _mirror(tmp_path, minutes=30)
    paths = _session(mirror.root, done=False)
    mirror.push_checkpoint(paths)  # its first poll starts the clock: no copy before 30 minutes of training
    assert not mirror.path.exists() and mirror.bytes_written == 0
    mirror._started[str(paths.folder)] -= 31 * 60
    mirror.push_checkpoint(paths)
    assert (mirror.path / paths.last_pt.relative_to(mirror.root)).is_file()


def test_restore_brings_back_a_verified_done_session_and_an_unfinished_one_of_the_same_key(tmp_path: Path) -> None:
    earlier = tmp_path / "earlier"
    mirror_path = tmp_path / "mirror"
    done = _session(earlier / "a", done=True)
    Mirror(mirror_path, earlier / "a").push_done(done)
    unfinished_key = "yolov8n__S3_mask_backbone_early-0123456789abcdef"
    unfinished = _session(earlier / "b", done=False, key=unfinished_key)
    unfinished.folder.rename(unfinished.folder.with_name("yolov8n__S3_mask_backbone_early"))
    unfinished = SessionPaths(unfinished.folder.with_name("yolov8n__S3_mask_backbone_early"))
    Mirror(mirror_path, earlier / "b", checkpoint_minutes=0).push_checkpoint(unfinished)

    fresh = Mirror(mirror_path, tmp_path / "new-root")
    lines = fresh.restore({"yolov8n__S1_clean_train": KEY, "yolov8n__S3_mask_backbone_early": unfinished_key})
    assert lines == ["yolov8n__S1_clean_train: done (DONE verified), not trained again",
                     "yolov8n__S3_mask_backbone_early: unfinished (2 epochs in its mirrored results.csv; its last.pt may "
                     "hold fewer: those after it train again), resumes from last.pt"]
    assert SessionPaths(fresh.root / "yolov8n" / "yolov8n__S1_clean_train").is_done(KEY)
    resumed = SessionPaths(fresh.root / "yolov8n" / "yolov8n__S3_mask_backbone_early")
    assert resumed.state(unfinished_key) == SessionState.PARTIAL
    assert resumed.last_pt.read_bytes() == unfinished.last_pt.read_bytes()
    assert fresh.restore({"yolov8n__S1_clean_train": KEY}) == []  # the local root has it now: local wins


def test_restore_refuses_what_does_not_verify(tmp_path: Path) -> None:
    mirror_path = tmp_path / "mirror"
    done = _session(tmp_path / "earlier", done=True)
    Mirror(mirror_path, tmp_path / "earlier").push_done(done)
    fresh = Mirror(mirror_path, tmp_path / "new-root")
    assert fresh.restore({"yolov8n__S1_clean_train": "yolov8n__S1_clean_train-another-config"}) == []
    assert not (fresh.root / "yolov8n").exists()  # another key: nothing comes back (it trains under its own)
    held = SessionPaths(mirror_path / "yolov8n" / "yolov8n__S1_clean_train")
    held.metrics.write_text(held.metrics.read_text()[:-1])  # a half-uploaded metrics.json: DONE does not match
    assert fresh.restore({"yolov8n__S1_clean_train": KEY}) == []
    assert not SessionPaths(fresh.root / "yolov8n" / "yolov8n__S1_clean_train").is_done(None)


def test_restore_refuses_a_done_session_whose_checkpoint_is_not_the_evaluated_one(tmp_path: Path) -> None:
    """On Drive a small DONE uploads long before a large best.pt: a VM recycled in between leaves the mirror with the
    new DONE and metrics.json but the best.pt of an earlier checkpoint push. Restored as done, a severity level added
    later was evaluated from that other best.pt; now nothing of the session comes back and it trains again."""
    mirror_path = tmp_path / "mirror"
    done = _session(tmp_path / "earlier", done=True)
    Mirror(mirror_path, tmp_path / "earlier").push_done(done)
    held = SessionPaths(mirror_path / "yolov8n" / "yolov8n__S1_clean_train")
    (held.run_dir / "weights" / "best.pt").write_bytes(os.urandom(2000))        # an earlier epoch's best.pt
    fresh = Mirror(mirror_path, tmp_path / "new-root")
    local = SessionPaths(fresh.root / "yolov8n" / "yolov8n__S1_clean_train")
    assert fresh.restore({"yolov8n__S1_clean_train": KEY}) == [
        f"yolov8n__S1_clean_train: not restored from the mirror, its checkpoint {local.run_dir / 'weights' / 'best.pt'}"
        " is not the one its metrics were made from (sha256 differs) (an upload cut short?): trained again"]
    assert local.state(KEY) == SessionState.PENDING and not [file for file in local.folder.rglob("*") if file.is_file()]
    (held.run_dir / "weights" / "best.pt").write_bytes((done.run_dir / "weights" / "best.pt").read_bytes())
    assert fresh.restore({"yolov8n__S1_clean_train": KEY}) == [
        "yolov8n__S1_clean_train: done (DONE verified), not trained again"]


def test_a_failing_mirror_is_warned_about_once_per_problem_and_never_raises(tmp_path: Path, capsys) -> None:
    mirror = _mirror(tmp_path)
    mirror.path.write_text("a file where the mirror folder should be: every write fails (ENOTDIR)")
    paths = _session(mirror.root, done=True)
    (mirror.root / "report.md").write_text("# exp3 report\n")
    for _ in range(3):
        mirror.push_done(paths)
        mirror.push_checkpoint(paths)
    mirror.push_report([paths])
    assert mirror.restore({"yolov8n__S1_clean_train": KEY}) == []
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("WARNING exp3 mirror")]
    assert len(warnings) == 3, warnings  # a done session, a checkpoint, the report: one line each
    assert all("ENOTDIR" in line and "tries again" in line for line in warnings)


def test_a_mirror_overlapping_the_output_root_is_refused(tmp_path: Path) -> None:
    assert mirror_for(MirrorConfig(), tmp_path) is None  # no mirror.path: nothing changes
    with pytest.raises(ValueError, match="overlaps output_root"):
        mirror_for(MirrorConfig(path=tmp_path / "out" / "mirror"), tmp_path / "out")
    assert mirror_for(MirrorConfig(path=tmp_path / "m"), tmp_path / "out") is \
        mirror_for(MirrorConfig(path=tmp_path / "m"), tmp_path / "out")  # one per run: warnings said once


def test_a_mirror_path_holding_the_users_own_files_is_refused_and_an_exp3_mirror_is_not(tmp_path: Path) -> None:
    """mirror.path at a folder of the user's would overwrite its same-named files (report.md, emptied first): refused
    in one line naming the folder, a file in it and the fix. A new or empty folder, and every mirror exp3 filled (a
    report, a session done or in progress, one set aside), are taken."""
    user = tmp_path / "mirrorU"
    user.mkdir()
    assert foreign_folder(tmp_path / "new", "mirror.path") is None and foreign_folder(user, "mirror.path") is None
    (user / "report.md").write_text("# my thesis notes, only copy\n")
    (user / "yolov8m").mkdir()                                         # a folder of a model's name is not enough
    problem = foreign_folder(user, "mirror.path")
    assert problem == (f"mirror.path {str(user)!r} holds files exp3 did not put there (e.g. 'report.md'), which a run "
                       "would overwrite: point mirror.path at an empty or new folder")
    assert "is a file" in (foreign_folder(user / "report.md", "mirror.path") or "")
    reported = _mirror(tmp_path / "reported")
    (reported.root / "report.md").parent.mkdir(parents=True)
    (reported.root / "report.md").write_text("# exp3 report\n")
    reported.push_report([])
    done, running = _mirror(tmp_path / "done"), _mirror(tmp_path / "running")
    done.push_done(_session(done.root, done=True))
    running.push_checkpoint(_session(running.root, done=False))
    set_aside = tmp_path / "set-aside" / "mirror"
    (set_aside / "stale" / "yolov8n" / "yolov8n__S1_clean_train__20260101-000000").mkdir(parents=True)
    for mirror in (reported.path, done.path, running.path, set_aside):
        assert any(mirror.iterdir()) and foreign_folder(mirror, "mirror.path") is None, mirror


def test_a_user_dataset_on_the_mirrors_storage_is_trained_from_a_local_copy(writable_data_yaml: Path,
                                                                              tmp_path: Path) -> None:
    """Training images read from Drive are slow: the flow copies the dataset to the local root once, checks the
    copy's fingerprint against the source's, and uses it; a changed source is copied again."""
    from exp3.config import ExperimentConfig
    from exp3.dataset.audit import DatasetError, dataset_fingerprint, read_data_yaml
    from exp3.session.mirror import local_dataset
    from exp3.session.prepare import dataset_yaml

    config = ExperimentConfig.model_validate({"dataset": {"kind": "yaml", "data_yaml": str(writable_data_yaml)},
                                              "mirror": {"path": str(tmp_path / "drive" / "exp3")}})
    local = tmp_path / "local"
    copied = dataset_yaml(config, local)
    assert copied.is_relative_to(local / "data") and read_data_yaml(copied).root.is_relative_to(local)
    assert dataset_fingerprint(read_data_yaml(copied)) == dataset_fingerprint(read_data_yaml(writable_data_yaml))
    stamp = copied.stat().st_mtime_ns
    assert dataset_yaml(config, local) == copied and copied.stat().st_mtime_ns == stamp  # once
    assert dataset_yaml(config, local, build=False) == writable_data_yaml  # a dry run copies nothing
    label = sorted((writable_data_yaml.parent / "labels" / "train").glob("*.txt"))[0]
    label.write_text(label.read_text() + "0 0.5 0.5 0.1 0.1\n")  # the dataset on Drive changed
    again = dataset_yaml(config, local)
    assert again != copied and dataset_fingerprint(read_data_yaml(again)) == \
        dataset_fingerprint(read_data_yaml(writable_data_yaml))
    kept_outside = tmp_path / "cfg" / "foods.yaml"                   # a yaml kept outside the dataset's folder,
    kept_outside.parent.mkdir()                                      # edited: val and test swapped, a class renamed
    spec = yaml.safe_load(writable_data_yaml.read_text())
    kept_outside.write_text(yaml.safe_dump({**spec, "path": str(writable_data_yaml.parent)}))
    first = local_dataset(kept_outside, local / "data")
    names = spec["names"] if isinstance(spec["names"], list) else [spec["names"][key] for key in sorted(spec["names"])]
    edited = {**spec, "path": str(writable_data_yaml.parent), "val": spec["test"], "test": spec["val"],
              "names": ["renamed", *names[1:]]}
    kept_outside.write_text(yaml.safe_dump(edited))
    second = local_dataset(kept_outside, local / "data")
    assert second != first and yaml.safe_load(first.read_text())["val"] == spec["val"]    # the old copy kept as it was
    assert yaml.safe_load(second.read_text())["val"] == spec["test"]
    assert yaml.safe_load(second.read_text())["names"][0] == "renamed"
    without_mirror = config.model_copy(update={"mirror": MirrorConfig()})
    assert dataset_yaml(without_mirror, local) == writable_data_yaml  # no mirror: nothing changes
    outside = writable_data_yaml.with_name("outside.yaml")
    outside.write_text(writable_data_yaml.read_text().replace("test: images/test", f"test: {tmp_path}/elsewhere"))
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(DatasetError, match="outside its root .*copy the dataset to the local disk yourself"):
        local_dataset(outside, local / "data")


def test_a_mount_that_keeps_no_modification_times_is_not_copied_twice_by_one_run(tmp_path: Path) -> None:
    """Some network mounts report their own times: the mirror's stat cannot say a file is there already. What this
    run copied is remembered (size, mtime of the source), so the report's pass over the done sessions writes
    nothing new."""
    mirror = _mirror(tmp_path)
    paths = _session(mirror.root, done=True)
    mirror.push_done(paths)
    written = mirror.bytes_written
    for held in (mirror.path / "yolov8n").rglob("*"):
        if held.is_file():
            os.utime(held, (1, 1))  # what such a mount shows
    mirror.push_report([paths])
    assert written > 0 and mirror.bytes_written == written
    paths.metrics.write_text(paths.metrics.read_text() + " ")  # a changed source is still copied
    mirror.push_done(paths)
    assert mirror.bytes_written == written + paths.metrics.stat().st_size


def test_a_mirror_copy_made_under_other_inputs_is_set_aside_before_the_session_trains_again(tmp_path: Path) -> None:
    """A config edit between two nights: the mirror holds the session done under the old key. Before the session
    trains again under the new key, its mirror copy goes to the mirror's stale/ (kept), so the new checkpoints never
    land beside the old DONE, metrics and predictions, and a restore never mixes the two. A copy of this key stays."""
    mirror = _mirror(tmp_path)
    Mirror(mirror.path, tmp_path / "old").push_done(_session(tmp_path / "old", done=True, key=KEY))
    held = mirror.path / "yolov8n" / "yolov8n__S1_clean_train"
    new_key = "yolov8n__S1_clean_train-fedcba9876543210"
    paths = SessionPaths(mirror.root / "yolov8n" / "yolov8n__S1_clean_train")
    Mirror(mirror.path, tmp_path / "same").set_aside_stale(_session(tmp_path / "same", done=True, key=KEY), KEY)
    assert SessionPaths(held).is_done(KEY)                                       # same key, done here: kept
    mirror.set_aside_stale(paths, new_key)
    (aside,) = (mirror.path / "stale" / "yolov8n").iterdir()
    assert not held.exists() and SessionPaths(aside).is_done(KEY)               # kept, never deleted
    mirror.push_checkpoint(_session(mirror.root, done=False, key=new_key))
    assert SessionPaths(held).recorded_key() == new_key and not SessionPaths(held).done_marker.exists()
    assert Mirror(mirror.path, tmp_path / "new-vm").restore({"yolov8n__S1_clean_train": new_key}) == [
        "yolov8n__S1_clean_train: unfinished (2 epochs in its mirrored results.csv; its last.pt may hold fewer: "
        "those after it train again), resumes from last.pt"]


def test_a_done_copy_that_could_not_be_read_back_is_kept_aside_while_the_session_trains_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """The new VM's restore of a done session fails half way (Drive: EIO). What it had copied stayed (a finished
    best.pt without DONE, evaluated as the training's own), and the session's new checkpoints went up over the done
    copy's best.pt: the copy was lost, and a later VM refused it ('does not verify') without resuming the new
    training. Now nothing of the half restore stays, and the done copy goes to the mirror's stale/ (kept) before the
    session trains here."""
    import errno

    mirror = _mirror(tmp_path)
    Mirror(mirror.path, tmp_path / "old").push_done(_session(tmp_path / "old", done=True))
    real_copy = Mirror._copy

    def drive_error(self: Mirror, source: Path, target: Path) -> int:
        if source.name == "DONE":
            raise OSError(errno.EIO, "Input/output error")
        return real_copy(self, source, target)

    monkeypatch.setattr(Mirror, "_copy", drive_error)
    assert mirror.restore({"yolov8n__S1_clean_train": KEY}) == []
    monkeypatch.undo()
    assert "restoring from" in capsys.readouterr().out and _files(mirror.root) == set()
    paths = SessionPaths(mirror.root / "yolov8n" / "yolov8n__S1_clean_train")
    mirror.set_aside_stale(paths, KEY)  # the session trains here
    (aside,) = (mirror.path / "stale" / "yolov8n").iterdir()
    assert SessionPaths(aside).is_done(KEY) and not SessionPaths(aside).checkpoint_differs()
    mirror.push_checkpoint(_session(mirror.root, done=False))
    assert Mirror(mirror.path, tmp_path / "vm3").restore({"yolov8n__S1_clean_train": KEY}) == [
        "yolov8n__S1_clean_train: unfinished (2 epochs in its mirrored results.csv; its last.pt may hold fewer: "
        "those after it train again), resumes from last.pt"]


def test_a_done_session_goes_up_beside_nothing_of_other_inputs_and_stays_done_while_it_is_replaced(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two gaps of `push_done`. (1) The mirror holds the session done under an old key (Drive was away while it
    trained again here): its files were overwritten one by one, the two configs' files mixed; now that copy goes to
    stale/ first. (2) A done session gains a severity level (metrics.json replaced): a push cut between metrics.json
    and DONE left the old DONE beside the new metrics.json, a copy that no longer verified (trained again from
    scratch on a new VM); the mirror's DONE now accepts both meanwhile, as `SessionPaths.replace_metrics` does."""
    mirror = _mirror(tmp_path)
    Mirror(mirror.path, tmp_path / "old").push_done(_session(tmp_path / "old", done=True))
    new_key = "yolov8n__S1_clean_train-fedcba9876543210"
    paths = _session(mirror.root, done=True, key=new_key)
    mirror.push_done(paths)
    held = SessionPaths(mirror.path / "yolov8n" / "yolov8n__S1_clean_train")
    (aside,) = (mirror.path / "stale" / "yolov8n").iterdir()
    assert SessionPaths(aside).is_done(KEY) and held.is_done(new_key)
    payload = json.loads(paths.metrics.read_text())
    paths.replace_metrics({**payload, "severity": "a level added"}, {})
    real_push = Mirror._push

    def cut_after_metrics(self: Mirror, file: Path, local: Path | None = None) -> None:
        real_push(self, file, local)
        if file.name == "metrics.json":
            raise SystemExit("the VM is gone")

    monkeypatch.setattr(Mirror, "_push", cut_after_metrics)
    with pytest.raises(SystemExit):
        mirror.push_done(paths)
    monkeypatch.undo()
    assert held.metrics.read_bytes() == paths.metrics.read_bytes() and held.is_done(new_key)
    mirror.push_done(paths)
    assert held.done_marker.read_bytes() == paths.done_marker.read_bytes() and held.is_done(new_key)


def test_a_mirror_path_that_links_to_the_output_root_is_refused(tmp_path: Path) -> None:
    """A link is not another folder: its pushes truncated and removed the root's own files."""
    root, link = tmp_path / "root", tmp_path / "drive-link"
    root.mkdir()
    link.symlink_to(root)
    with pytest.raises(ValueError, match="overlaps output_root"):
        mirror_for(MirrorConfig(path=str(link)), root)


def test_a_copy_that_fails_half_way_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys) -> None:
    """The drive fills up while a checkpoint is copied: the half-written temporary file is removed (left there it
    kept the drive full, and every later copy, the done sessions and the report included, failed too)."""
    import errno
    import shutil

    mirror = _mirror(tmp_path)
    paths = _session(mirror.root, done=False)
    real_copyfile = shutil.copyfile

    def full_drive(source: Path, target: Path) -> None:
        if Path(source).name == ".last.pt.mirror-pin":
            Path(target).write_bytes(Path(source).read_bytes()[:1000])
            raise OSError(errno.ENOSPC, "No space left on device")
        real_copyfile(source, target)

    monkeypatch.setattr(shutil, "copyfile", full_drive)
    mirror.push_checkpoint(paths)
    assert "WARNING exp3 mirror: copying a checkpoint to" in capsys.readouterr().out
    assert not list(mirror.path.rglob(f"*{TEMP_SUFFIX}"))


def test_a_rename_that_fails_after_the_truncation_leaves_the_new_bytes_not_an_empty_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """The mount refuses the rename over the copy it has just emptied (Drive's FUSE can fail one with EIO): the new
    bytes are written in place. Before, the mirror kept an empty last.pt, which a new VM could not resume from."""
    import errno

    mirror = _mirror(tmp_path)
    paths = _session(mirror.root, done=False)
    mirror.push_checkpoint(paths)
    paths.last_pt.write_bytes(os.urandom(3500))  # the next epoch's checkpoint
    real_replace = os.replace

    def failing_rename(source: Path, target: Path) -> None:
        if Path(target).name == "last.pt" and Path(target).is_relative_to(mirror.path):
            raise OSError(errno.EIO, "Input/output error")
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", failing_rename)
    mirror.push_checkpoint(paths)
    copy = mirror.path / paths.last_pt.relative_to(mirror.root)
    assert copy.read_bytes() == paths.last_pt.read_bytes()
    assert int(copy.stat().st_mtime) == int(paths.last_pt.stat().st_mtime)  # the next push skips it
    assert not list(mirror.path.rglob(f"*{TEMP_SUFFIX}")) and "WARNING" not in capsys.readouterr().out


def test_bytes_written_counts_every_push_of_sessions_pushing_at_once(tmp_path: Path) -> None:
    """Two sessions' pushes overlap (the flow polls each in its own thread): `self.bytes_written += self._copy(...)`
    read the total before a copy of seconds, so one push overwrote the other's (1224 MB logged, 2313 MB written)."""
    import threading

    mirror = _mirror(tmp_path)
    files = [mirror.root / f"big{index}.bin" for index in range(4)]
    mirror.root.mkdir(parents=True)
    for file in files:
        file.write_bytes(os.urandom(8_000_000))
    threads = [threading.Thread(target=mirror._push, args=(file,)) for file in files]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert mirror.bytes_written == 4 * 8_000_000 == sum(file.stat().st_size for file in mirror.path.glob("big*.bin"))


def test_a_killed_pushs_partial_copy_is_dropped_not_filed_as_another_configs_session(tmp_path: Path) -> None:
    """kill -9 while a checkpoint was being copied left `.best.pt.mirror-tmp` (19 MB) on Drive for good; the next run
    took the folder holding only it for another config's session and moved it to the mirror's stale/ silently."""
    mirror = _mirror(tmp_path)
    paths = _session(mirror.root, done=False)
    held = mirror.path / paths.folder.relative_to(mirror.root)
    torso = held / "train" / "weights" / f".best.pt{TEMP_SUFFIX}"
    torso.parent.mkdir(parents=True)
    torso.write_bytes(os.urandom(5000))
    os.link(torso, tmp_path / "trash")
    mirror.set_aside_stale(paths, KEY)
    assert not any(held.rglob("*")) and not (mirror.path / "stale").exists()  # nothing left, nothing set aside
    assert (tmp_path / "trash").stat().st_size == 0                          # truncated before it was removed
    done = _session(tmp_path / "other", done=True)
    leftover = mirror.path / "yolov8n" / "yolov8n__S1_clean_train" / f".last.pt{TEMP_SUFFIX}"
    leftover.write_bytes(b"torso")                                           # the folder is there, emptied
    Mirror(mirror.path, tmp_path / "other").push_done(done)
    assert not leftover.exists() and (leftover.parent / "DONE").is_file()


def test_a_done_session_that_cannot_be_read_names_its_mirror_copy_to_move_away_too(tmp_path: Path) -> None:
    """A metrics.json of another format (an older exp3's) fails the session with "move the session folder away to
    train it again": with a mirror, the next run restored the same folder from it, and the session failed alike every
    run. The line names the mirror's copy too."""
    from exp3.config import load_config
    from exp3.session.run import SessionFailed, update_severity_evaluations
    from exp3.sessions import Session

    mirror = _mirror(tmp_path)
    paths = _session(mirror.root, done=True)  # its metrics.json: a checkpoint block only
    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml",
                         [f"output_root={mirror.root}", f"mirror.path={mirror.path}"])
    with pytest.raises(SessionFailed, match="does not match the metrics.json schema") as failed:
        update_severity_evaluations(config, Session("yolov8n", "S1_clean_train"), mirror.root, paths, None)
    held = mirror.path / "yolov8n" / "yolov8n__S1_clean_train"
    assert f"move the session folder and its copy {held} (restored otherwise) away to train it again" in \
        str(failed.value)
