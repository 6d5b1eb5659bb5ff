"""File helpers every exp3 module shares: atomic writes (every result write: a reader, or a crash, sees the old file or
the new one, never half of one), durable directories (`publish_dir`), hashing, stable ids."""

from __future__ import annotations

import ctypes
import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_current_umask()
"""Mode of files we write: what `open(path, "w")` would give (mkstemp alone gives 0600)."""


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write `data` to `path` atomically (temp file in the same dir + fsync + rename)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 `text` to `path` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], payload: Any, indent: int | None = 2) -> Path:
    """Write `payload` as key-sorted JSON (trailing newline; indented unless `indent` is None: a large file such as a
    split's predictions, which Python's C encoder writes compact several times faster) atomically."""
    return atomic_write_text(path, canonical_json(payload, indent=indent) + "\n")


def json_safe(payload: Any) -> Any:
    """`payload` with every non-finite float (NaN, +-Infinity) replaced by None, recursively: exp3 writes strict
    JSON only (docs/schema.md), where Python's json module would write `NaN`/`Infinity`."""
    if isinstance(payload, float):
        return payload if math.isfinite(payload) else None
    if isinstance(payload, dict):
        return {key: json_safe(value) for key, value in payload.items()}
    if isinstance(payload, (list, tuple)):
        return [json_safe(value) for value in payload]
    if hasattr(payload, "item") and getattr(payload, "ndim", None) == 0:  # numpy scalar
        return json_safe(payload.item())
    return payload


def canonical_json(payload: Any, indent: int | None = None) -> str:
    """Strict JSON (`json_safe`: NaN -> null) with sorted keys; `default=str` turns Paths into strings."""
    return json.dumps(json_safe(payload), sort_keys=True, indent=indent, default=str, allow_nan=False)


def read_json(path: Path) -> Any:
    """The parsed JSON file at `path`; None when it cannot be read or parsed (a reader that shows what it can)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # ValueError: not JSON (json.JSONDecodeError), not UTF-8 (UnicodeDecodeError)
        return None


def read_yaml(path: Path, what: str, missing_fix: str, error: type[ValueError] = ValueError) -> Any:
    """The YAML document at `path`; else `error`, one line naming `what`, the file and the fix (a missing file:
    `missing_fix`; bad syntax: its line; not UTF-8 text)."""
    if not path.is_file():
        raise error(f"{what} {str(path)!r} {'is a directory' if path.is_dir() else 'does not exist'}: {missing_fix}")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as problem:
        mark = getattr(problem, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise error(f"{what} {str(path)!r} is not valid YAML{where}: fix its syntax") from None
    except UnicodeDecodeError:
        raise error(f"{what} {str(path)!r} is not UTF-8 text: pass a YAML file") from None


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of `data`."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def stable_hash(payload: Any, length: int = 12) -> str:
    """Short hex digest of the canonical JSON of `payload` (stable across runs and machines)."""
    return sha256_bytes(canonical_json(payload).encode("utf-8"))[:length]


def stable_int(text: str) -> int:
    """A 63-bit integer derived from `text` (for seeding per-item RNGs; not Python's `hash`)."""
    return int(sha256_bytes(text.encode("utf-8"))[:16], 16) & ((1 << 63) - 1)


def link_or_copy(source: Path, target: Path) -> Path:
    """`target` as a hard link to `source`, or a copy with its modification time where the file system has none
    (FileNotFoundError when `source` is gone)."""
    try:
        os.link(source, target)
    except FileNotFoundError:
        raise
    except OSError:
        shutil.copy2(source, target)
    return target


def ensure_writable_dir(path: str | os.PathLike[str]) -> Path:
    """Create `path` if needed and check it is writable; raise a one-line error naming it."""
    target = Path(path)
    try:
        target.mkdir(parents=True, exist_ok=True)
        tempfile.NamedTemporaryFile(dir=target, prefix=".write-probe-", delete=True).close()
    except OSError as error:
        raise PermissionError(f"output directory {str(target)!r} is not writable ({error.strerror}): "
                              "choose another --out / output_root or fix its permissions") from None
    return target


def apply_umask(directory: Path, *files: Path) -> None:
    """Give `directory` and `files` the usual umask permissions (mkdtemp/mkstemp create 0700/0600)."""
    umask = _current_umask()
    os.chmod(directory, 0o777 & ~umask)
    for path in files:
        os.chmod(path, 0o666 & ~umask)


def fsync_paths(paths: Iterable[Path]) -> None:
    """fsync each file or directory in `paths`."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _syncfs(path: Path) -> bool:
    """Linux syncfs(2) of the filesystem holding `path`; False where unavailable or failing."""
    try:
        syncfs = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        return syncfs(fd) == 0
    finally:
        os.close(fd)


def make_durable(root: Path) -> None:
    """Everything under `root` on disk before the rename publishes it.

    One syncfs(2) (a single journal commit) instead of an fsync per file, which costs a commit each
    (docs/occlusion.md, "Performance"). Falls back to fsyncing every path.
    """
    if not _syncfs(root):
        fsync_paths([*sorted(root.rglob("*"), reverse=True), root])


def publish_dir(staging: Path, target: Path, keep_existing: Callable[[Path], bool], durable: bool = True) -> bool:
    """Rename the finished directory `staging` to `target`; True if ours is now in place.

    An empty `target` (a placeholder) is replaced. If the rename fails because a concurrent build
    of the same directory won, `staging` is removed and `keep_existing(target)` decides: True keeps
    the winner's (returns False), False re-raises the rename's error; it may raise its own error
    instead (a damaged winner). Any other failure also removes `staging` and is raised.
    `durable`: fsync the parent directory after the rename, so the rename survives a crash (only
    meaningful if `staging`'s contents were made durable first, `make_durable`).
    """
    try:
        if target.exists():
            target.rmdir()  # empty, unless a concurrent build just filled it (then OSError)
        os.rename(staging, target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (target.is_dir() and keep_existing(target)):
            raise
        return False
    if durable:
        fsync_paths([target.parent])  # make the rename itself durable
    return True
