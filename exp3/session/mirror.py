"""`mirror.path`: the results copied to slower, durable storage beside a local output root, and brought back from it
when the local root is gone: README.md, "A mirror on slower, durable storage" (`push_done`, `push_checkpoint`,
`push_report`, `restore`). The local root keeps the working set (Prefect's database, the locks, data and suites, the
training in progress); nothing on the mirror needs a lock."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import yaml

from exp3.config import MirrorConfig
from exp3.dataset.audit import DatasetError, dataset_fingerprint, read_data_yaml
from exp3.fileio import atomic_write_json, atomic_write_text, link_or_copy, read_json, sha256_file, stable_hash
from exp3.session.layout import DONE_MARKER, FAILED_MARKER, TRAIN_RUN_NAME, SessionPaths, SessionState
from exp3.session.progress import results_rows
from exp3.session.runlock import LOCK_NAME
from exp3.sessions import folder_session

TEMP_SUFFIX = ".mirror-tmp"
PIN_SUFFIX = ".mirror-pin"
"""Beside a checkpoint: a hard link that holds it as it was when a push began copying the checkpoints."""
# in train/weights/, best first, both as one save left them (`_pinned`): a push cut between the two leaves best.pt
# ahead of last.pt, which the resume handles (exp3/train/trainers.py), never behind the best epoch last.pt knows of
CHECKPOINTS = ("best.pt", "last.pt")
REPORT_GLOBS = ("report.md", "report.html", "*.csv", "*.json", "plots/**/*")  # the report's files, at the root
NOT_MIRRORED = ("plan.json", "config_resolved.yaml")  # the run's own, rewritten at its start
REPORT_FILES = ".exp3-report-files.json"
"""In the mirror: the report files exp3 put there (paths from the root), the only ones it ever removes there."""
EXP3_MARKS = (REPORT_FILES, *NOT_MIRRORED, LOCK_NAME, ".prefect", ".ultralytics", "suites")
"""What exp3 writes at the top of a root or mirror first (with session folders): a folder holding one is exp3's."""
COPY_SOURCE = "source.json"
"""Beside a `local_dataset` copy's data.yaml: the dataset it copied and its fingerprint (written once it matched)."""


def _truncate(path: Path) -> None:
    """Empty `path` before it is replaced or removed (a no-op if absent)."""
    with contextlib.suppress(FileNotFoundError):
        os.truncate(path, 0)


@dataclass
class Mirror:
    """The mirror of `root` at `path` (see the module docstring)."""

    path: Path
    root: Path
    checkpoint_minutes: float = 30.0
    bytes_written: int = 0
    _problems: set[tuple[str, str]] = field(default_factory=set)
    _started: dict[str, float] = field(default_factory=dict)  # session folder -> when its last checkpoint went
    _counting: threading.Lock = field(default_factory=threading.Lock)  # `bytes_written` of concurrent pushes
    _copied: dict[Path, tuple[int, int]] = field(default_factory=dict)  # target -> (size, mtime_ns) of its source
    # when this run copied it: a mount that keeps no modification times (some network drives) is not copied again

    # ---- files

    def _copy(self, source: Path, target: Path) -> int:
        """`source` -> `target` under a temporary name, then renamed; skipped when `target` already has its size
        and mtime. Returns the bytes written."""
        stat = source.stat()
        signature = (stat.st_size, stat.st_mtime_ns)
        if self._copied.get(target) == signature:  # copied by this run and unchanged since: no stat of the mirror
            return 0
        with contextlib.suppress(FileNotFoundError):
            held = target.stat()
            if held.st_size == stat.st_size and int(held.st_mtime) == int(stat.st_mtime):
                self._copied[target] = signature
                return 0
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}{TEMP_SUFFIX}")
        try:
            shutil.copyfile(source, temporary)
            os.utime(temporary, ns=(stat.st_atime_ns, stat.st_mtime_ns))
            _truncate(target)
            try:
                os.replace(temporary, target)
            except OSError:  # after the truncation: the bytes written in place, not an empty file left there
                shutil.copyfile(temporary, target)
                os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
                temporary.unlink()
        except BaseException:  # a full or lost drive: a half copy left there would fill it for every later copy
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)
            raise
        self._copied[target] = signature
        return stat.st_size

    def _push(self, source: Path, local: Path | None = None) -> None:
        """`source` to the mirror's copy of `local` (default: of `source`)."""
        written = self._copy(source, self.path / (local or source).relative_to(self.root))  # sessions push at once
        with self._counting:
            self.bytes_written += written

    def _remove(self, local: Path) -> None:
        """Remove the mirror's copy of `local` (truncated first)."""
        target = self.path / local.relative_to(self.root)
        _truncate(target)
        target.unlink(missing_ok=True)

    def _warn(self, doing: str, error: OSError,
              then: str = "the run goes on locally and tries again at the next session end") -> None:
        """Once per problem (what failed and why): `WARNING exp3 mirror: ...` in the Prefect run's log (the UI shows it
        as one), else on stdout; `then`: what follows."""
        reason = errno.errorcode.get(error.errno or 0, type(error).__name__)
        if (doing, reason) in self._problems:
            return
        self._problems.add((doing, reason))
        line = f"WARNING exp3 mirror: {doing} {self.path} failed ({reason}: {error.strerror or error}); {then}"
        try:
            # lazy: exp3.grid.cli imports this module before it sets the environment Prefect reads at import
            from prefect.exceptions import MissingContextError
            from prefect.logging import get_run_logger

            get_run_logger().warning(line)
        except (ImportError, MissingContextError):
            print(line, flush=True)

    # ---- what goes up

    def set_aside_stale(self, paths: SessionPaths, key: str | None) -> None:
        """Before a session trains under `key`, or goes up done: its mirror copy made under other inputs, or a done
        copy that did not come back (`restore`: unreadable, or refused) while the session trains again here, goes to
        the mirror's stale/ (kept, as `SessionPaths.move_aside` keeps the local one), so this run's files never land
        beside it (its checkpoints over a done copy's best.pt: the copy lost, and a later VM resumed nothing)."""
        held = SessionPaths(self.path / paths.folder.relative_to(self.root))
        try:
            _drop_torsos(held.folder)  # a killed push's: not another config's session
            if held.folder.is_dir() and (held.state(key) == SessionState.STALE
                                         or held.done_marker.exists() and not paths.is_done(key)):
                held.move_aside()
        except OSError as error:
            self._warn("setting aside a stale session in", error)

    def push_done(self, paths: SessionPaths) -> None:
        """A done session: its files but redundant checkpoints, DONE last; then its in-progress copy goes. A copy made
        under other inputs is set aside first; one done under these whose metrics.json this run replaced (a severity
        level added) stays done throughout, as `SessionPaths.replace_metrics` keeps the local one."""
        held, key = SessionPaths(self.path / paths.folder.relative_to(self.root)), paths.recorded_key()
        try:
            evaluated = Path(json.loads(paths.metrics.read_text(encoding="utf-8"))["checkpoint"]["path"]).name
            redundant = [paths.run_dir / "weights" / name for name in CHECKPOINTS if name != evaluated]
            if held.recorded_key() not in (None, key):
                self.set_aside_stale(paths, key)
            marker = read_json(paths.done_marker)
            if read_json(held.done_marker) != marker and held.is_done(key):  # DONE accepts old and new meanwhile
                atomic_write_json(held.done_marker, {**marker, "replacing_metrics_sha256": sha256_file(held.metrics)})
            for file in [file for file in _session_files(paths) if file not in redundant]:
                self._push(file)
            for file in redundant:
                self._remove(file)
            for pin in (paths.run_dir / "weights").glob(f".*{PIN_SUFFIX}"):  # a killed push's: old bytes held locally
                pin.unlink(missing_ok=True)
            _drop_torsos(self.path / paths.folder.relative_to(self.root))
        except OSError as error:
            self._warn("copying a done session to", error)
        except (ValueError, KeyError, TypeError):
            pass  # no readable metrics.json: not done after all, nothing to push

    def push_checkpoint(self, paths: SessionPaths) -> None:
        """A session in progress: its checkpoints and the files its resume reads, if `checkpoint_minutes` passed
        since its last copy (its first: since this call first saw it)."""
        now, folder = time.monotonic(), str(paths.folder)
        started = self._started.setdefault(folder, now)
        if now - started < self.checkpoint_minutes * 60 or not paths.last_pt.is_file():
            return
        try:
            files = [file for file in _session_files(paths) if file.name not in (DONE_MARKER, FAILED_MARKER)]
            # inputs.json first: a last.pt is restored only beside the key it was trained under (a VM recycled just
            # after the first last.pt went up left it keyless, and the session trained again from scratch); the rest
            # (results.csv, masking_stats.json, the logs) before the checkpoints and again after them: copied after
            # them, it holds every epoch they hold (an epoch that ends in between is a row the resume writes again,
            # read once), never one fewer (a row lost for good), and a push cut short after last.pt leaves it at
            # most the epochs that ended meanwhile behind, not all those since the previous push
            checkpoints = [paths.run_dir / "weights" / name for name in CHECKPOINTS]
            rest = [file for file in files if file not in (paths.inputs, *checkpoints)]
            for file in [paths.inputs, *rest]:
                with contextlib.suppress(FileNotFoundError):  # replaced by the session meanwhile: the next push
                    self._push(file)
            with _pinned(checkpoints) as pinned:
                for file, pin in pinned:
                    self._push(pin, file)
            for file in rest:  # unchanged files are not copied twice
                with contextlib.suppress(FileNotFoundError):
                    self._push(file)
            self._started[folder] = now
        except OSError as error:
            self._warn("copying a checkpoint to", error)

    def push_report(self, done: list[SessionPaths]) -> None:
        """The report's files (one an earlier push put there and the local root no longer holds removed, no other one
        touched: `REPORT_FILES`), and every done session the mirror lacks (a copy that failed earlier)."""
        for paths in done:
            self.push_done(paths)
        try:
            pushed = [file for pattern in REPORT_GLOBS for file in sorted(self.root.glob(pattern))
                      if file.is_file() and file.name not in NOT_MIRRORED]
            for file in pushed:
                self._push(file)
            names = [str(file.relative_to(self.root)) for file in pushed]
            for name in read_json(self.path / REPORT_FILES) or []:
                if name not in names and not (self.root / name).exists():
                    self._remove(self.root / name)
            atomic_write_json(self.path / REPORT_FILES, names)
        except OSError as error:
            self._warn("copying the report to", error)

    # ---- what comes back

    def restore(self, keys: dict[str, str]) -> list[str]:
        """Bring back each session of `keys` (name -> planned key) the local root lacks and the mirror holds
        under that key; returns one line per session restored. Of one that cannot be read back, or does not verify,
        nothing stays (a best.pt left alone would be evaluated as a finished training): it trains here."""
        restored: list[str] = []
        for name, key in keys.items():
            model = name.split("__", 1)[0]
            local, held = SessionPaths(self.root / model / name), SessionPaths(self.path / model / name)
            copied: list[Path] = []
            try:
                if local.state(key) != SessionState.PENDING or not held.folder.is_dir():
                    continue
                if held.is_done(key):
                    self._bring_back(held, local, (FAILED_MARKER,), copied)
                    problem = None if local.is_done(key) else "its copy does not verify"
                    if (problem := problem or local.checkpoint_differs()) is None:
                        restored.append(f"{name}: done (DONE verified), not trained again")
                    else:
                        self._drop(copied, local)
                        restored.append(f"{name}: not restored from the mirror, {problem} (an upload cut short?): "
                                        "trained again")
                elif held.recorded_key() == key and held.last_pt.is_file():
                    self._bring_back(held, local, (DONE_MARKER, FAILED_MARKER), copied)
                    restored.append(f"{name}: unfinished ({len(results_rows(local))} epochs in its mirrored "
                                    "results.csv; its last.pt may hold fewer: those after it train again), resumes "
                                    "from last.pt")
            except OSError as error:
                self._drop(copied, local)
                self._warn("restoring from", error, then="the sessions it could not bring back train here (a done "
                                                         "copy is kept in the mirror's stale/)")
        return restored

    def _bring_back(self, held: SessionPaths, local: SessionPaths, skip: tuple[str, ...], copied: list[Path]) -> None:
        """`held`'s files but `skip` to `local`, each one appended to `copied` once it is there."""
        for file in [file for file in _session_files(held) if file.name not in skip]:
            self._copy(file, copy := local.folder / file.relative_to(held.folder))
            copied.append(copy)

    def _drop(self, copied: list[Path], local: SessionPaths) -> None:
        """Remove what a restore `copied` to `local` (and the folders it leaves empty, `local`'s own too)."""
        for file in copied:
            file.unlink(missing_ok=True)
            self._copied.pop(file, None)
        _prune_empty(local.folder)
        with contextlib.suppress(OSError):
            local.folder.rmdir()


def describe(path: str | os.PathLike[str]) -> str:
    """One line: what the mirror at `path` holds (sessions done, unfinished ones with a checkpoint, bytes)."""
    path = Path(path)
    try:
        done = sum(1 for _ in path.glob(f"*/*__*/{DONE_MARKER}"))
        unfinished = sum(1 for last in path.glob(f"*/*__*/{TRAIN_RUN_NAME}/weights/last.pt")
                         if not (last.parents[2] / DONE_MARKER).is_file())
        size = sum(file.stat().st_size for file in path.rglob("*") if file.is_file())
    except OSError as error:  # a disconnected mount: said, never fatal
        return f"mirror {path}: not readable now ({errno.errorcode.get(error.errno or 0, type(error).__name__)})"
    return (f"mirror {path}: {done} sessions done, {unfinished} unfinished with a checkpoint (under any config: a "
            f"changed config trains them again), {size / 1e9:.2f} GB")


def on_mirror_storage(path: Path, mirror: Path) -> bool:
    """True if `path` lives on the file system of `mirror` (each: itself or its nearest existing parent, so a root
    or mirror not made yet is judged by where it will be); False when that cannot be told (a disconnected mount)."""
    try:
        path_anchor, mirror_anchor = (next((folder for folder in (where, *where.parents) if folder.exists()), Path("/"))
                                      for where in (Path(path).absolute(), Path(mirror).absolute()))
        return path_anchor.stat().st_dev == mirror_anchor.stat().st_dev
    except OSError:
        return False


def local_dataset(data_yaml: Path, data_dir: Path) -> Path:
    """A copy on the local disk of a user dataset kept on the mirror's storage (training from Drive is slow): its
    root folder, with a data.yaml naming the copy's root. Made once per source: a copy whose recorded listing
    (files, sizes, times) and data.yaml text still match the source's is used as is; a new one is checked against
    the source's fingerprint before it is used. `DatasetError` when a split lies outside the dataset's root folder."""
    spec = read_data_yaml(data_yaml)
    if outside := [str(source) for sources in spec.splits.values() for source in sources
                   if not source.is_relative_to(spec.root)]:
        raise DatasetError(f"dataset {str(data_yaml)!r} is on the mirror's storage but its split {outside[0]!r} lies "
                           f"outside its root {str(spec.root)!r}: copy the dataset to the local disk yourself and "
                           "point dataset.data_yaml at the copy")
    listing = sorted((str(file.relative_to(spec.root)), file.stat().st_size, int(file.stat().st_mtime))
                     for file in spec.root.rglob("*") if file.is_file())
    text = data_yaml.read_text(encoding="utf-8")  # kept outside the root, an edited yaml changes no listing
    target = data_dir / f"user-{stable_hash([str(data_yaml.absolute()), text, listing])}"
    copied = target / "data.yaml"
    if copied.is_file() and (target / COPY_SOURCE).is_file():
        return copied
    if target.exists():
        shutil.rmtree(target)  # a copy that never finished
    shutil.copytree(spec.root, target / "root")
    atomic_write_text(copied, yaml.safe_dump({**yaml.safe_load(text), "path": str(target / "root")}))
    source, copy = dataset_fingerprint(spec), dataset_fingerprint(read_data_yaml(copied))
    if source != copy:
        shutil.rmtree(target)
        raise DatasetError(f"the local copy of {str(data_yaml)!r} does not match it (fingerprint {copy} vs {source}): "
                           "the dataset changed while it was copied; run again")
    atomic_write_json(target / COPY_SOURCE, {"data_yaml": str(data_yaml.absolute()), "fingerprint": source})
    return copied


def copied_from(data_yaml: Path) -> Path | None:
    """The data.yaml a `local_dataset` copy was made from; None for any other data.yaml."""
    record = read_json(Path(data_yaml).parent / COPY_SOURCE)
    return Path(record["data_yaml"]) if isinstance(record, dict) and "data_yaml" in record else None


def done_sessions(root: Path, keys: dict[str, str]) -> list[SessionPaths]:
    """The folders under `root` of the sessions of `keys` (name -> key) that are done under their key."""
    found = {name: SessionPaths(Path(root) / name.split("__", 1)[0] / name) for name in keys}
    return [paths for name, paths in found.items() if paths.is_done(keys[name])]


def _prune_empty(folder: Path) -> None:
    """Remove the empty folders under `folder` (deepest first); a file is never removed."""
    for path in sorted(folder.rglob("*"), key=lambda path: -len(path.parts)):
        with contextlib.suppress(OSError):
            path.rmdir()


def _drop_torsos(folder: Path) -> None:
    """A mirror folder without the partial copies a killed push left there (`TEMP_SUFFIX`: never read, only counted
    against the quota; truncated first) and without the folders they leave empty."""
    torsos = list(folder.rglob(f"*{TEMP_SUFFIX}")) if folder.is_dir() else []
    for torso in torsos:
        _truncate(torso)
        torso.unlink(missing_ok=True)
    if torsos:
        _prune_empty(folder)


@contextlib.contextmanager
def _pinned(checkpoints: list[Path]) -> Iterator[list[tuple[Path, Path]]]:
    """(checkpoint, pin) of each of `checkpoints` there, the pins hard links taken one after the other (a copy where
    the disk has none), removed after. A save renames new files in over the old (exp3/train/trainers.py), so the pins
    hold the pair as it was at one moment, however many epochs end while they are copied: copied unpinned, a last.pt
    two epochs newer than best.pt could know of a best epoch the mirror's best.pt lacks, which the resume cannot
    mend (a save between the two links leaves best.pt ahead, or last.pt holding the best epoch: both mended)."""
    pins = [(file, file.with_name(f".{file.name}{PIN_SUFFIX}")) for file in checkpoints]
    pinned = []
    try:
        for file, pin in pins:
            pin.unlink(missing_ok=True)  # a killed push's
            with contextlib.suppress(FileNotFoundError):  # no best.pt yet
                pinned.append((file, link_or_copy(file, pin)))
        yield pinned
    finally:
        for _, pin in pins:
            pin.unlink(missing_ok=True)


def _session_files(paths: SessionPaths) -> Iterator[Path]:
    """The files of a session folder worth mirroring, DONE last (a copy is done only once the rest arrived): not the
    weights/ links (the same bytes as train/weights/), not a checkpoint set aside (`.corrupt-`, `.superseded-`,
    `.other-batch-`: kept locally), not a temporary file (exp3's and the mirror's start with a dot)."""
    for file in sorted(paths.folder.rglob("*"), key=lambda file: (file.name == DONE_MARKER, file)):
        if file.is_file() and file.relative_to(paths.folder).parts[0] != "weights" and not file.name.startswith(".") \
                and not any(mark in file.name for mark in (".corrupt-", ".superseded-", ".other-batch-")):
            yield file


def foreign_folder(path: str | os.PathLike[str], setting: str) -> str | None:
    """The one-line refusal of a `setting` folder (`output_root`, `mirror.path`) that holds files exp3 did not put
    there, which a run would overwrite (report.md, summary_metrics.csv, ...; README.md, "A mirror on slower, durable
    storage"). None for a new or empty folder, one exp3 wrote to (its marks, a session folder, sessions set aside in
    `stale/`), or one not readable now (the run says so later)."""
    path = Path(path)
    try:
        if not path.exists():
            return None
        if not path.is_dir():
            return f"{setting} {str(path)!r} is a file: point {setting} at an empty or new folder"
        found = sorted(path.iterdir())
        sessions = [folder for folder in path.glob("*/*__S*")
                    if folder.name.startswith(f"{folder.parent.name}__") and folder_session(folder.name)]
        if not found or any((path / mark).exists() for mark in EXP3_MARKS) or sessions \
                or any(path.glob("stale/*/*__S*")):
            return None
    except OSError:
        return None
    return (f"{setting} {str(path)!r} holds files exp3 did not put there (e.g. {found[0].name!r}), which a run would "
            f"overwrite: point {setting} at an empty or new folder")


def mirror_for(settings: MirrorConfig, root: str | os.PathLike[str]) -> Mirror | None:
    """The one `Mirror` of this process for `root` under `settings` (its warnings and checkpoint times last the
    whole run); None without `mirror.path`. ValueError when the mirror and the root overlap, or the mirror is a
    folder of the user's (`foreign_folder`): the command line, the UI's and a deployment's runs alike."""
    if settings.path is None:
        return None
    return _mirror(str(Path(settings.path).absolute()), str(Path(root).absolute()), settings.checkpoint_minutes)


@lru_cache(maxsize=None)
def _mirror(path: str, root: str, checkpoint_minutes: float) -> Mirror:
    mirror, local = Path(path), Path(root)
    real_mirror, real_local = mirror.resolve(), local.resolve()  # a link to the root is the root
    if real_mirror == real_local or real_mirror.is_relative_to(real_local) or real_local.is_relative_to(real_mirror):
        raise ValueError(f"mirror.path {str(mirror)!r} overlaps output_root {str(local)!r}: the mirror must be a "
                         "folder of its own on other storage (e.g. /content/drive/MyDrive/exp3 beside a local "
                         "output_root under /content)")
    if (problem := foreign_folder(mirror, "mirror.path")) is not None:
        raise ValueError(problem)
    return Mirror(mirror, local, checkpoint_minutes)
