"""Small file helpers every exp3 module shares: atomic writes, hashing, stable ids.

All result writes go through `atomic_write_*`: the data is written to a temporary file in
the same directory, flushed and fsynced, then `os.replace`d over the target, so a reader
(or a crash) sees either the old file or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

_CHUNK_BYTES = 1 << 20


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


def atomic_write_json(path: str | os.PathLike[str], payload: Any) -> Path:
    """Write `payload` as indented, key-sorted JSON (trailing newline) atomically."""
    return atomic_write_text(path, canonical_json(payload, indent=2) + "\n")


def json_safe(payload: Any) -> Any:
    """`payload` with every non-finite float (NaN, +-Infinity) replaced by None, recursively.

    exp3's JSON files hold strict JSON only: an undefined number is `null` (docs/schema.md),
    never the `NaN`/`Infinity` literals that Python's json module would otherwise write and that
    strict parsers (JavaScript, jq, `json.loads(..., parse_constant=...)`) reject.
    """
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


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of `data`."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def stable_hash(payload: Any, length: int = 12) -> str:
    """Short hex digest of the canonical JSON of `payload` (stable across runs and machines)."""
    return sha256_bytes(canonical_json(payload).encode("utf-8"))[:length]


def stable_int(text: str) -> int:
    """A 63-bit integer derived from `text` (for seeding per-item RNGs; not Python's `hash`)."""
    return int(sha256_bytes(text.encode("utf-8"))[:16], 16) & ((1 << 63) - 1)


def ensure_writable_dir(path: str | os.PathLike[str]) -> Path:
    """Create `path` if needed and check it is writable; raise a one-line error naming it."""
    target = Path(path)
    try:
        target.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=target, prefix=".write-probe-", delete=True)
        probe.close()
    except OSError as error:
        raise PermissionError(
            f"output directory {str(target)!r} is not writable ({error.strerror}): "
            "choose another --out / output_root or fix its permissions"
        ) from None
    return target
