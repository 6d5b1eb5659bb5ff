"""One live run per output root, and cleanup after a `kill -9`.

`RootLock` is a lock *file* `<root>/.exp3.lock` holding the owner's host, pid and start time,
created with O_CREAT | O_EXCL (atomic). A second run on the same root is refused while the
owner lives; a lock whose owner is dead (same host, pid gone or reused by another program) is
stale and taken over, so a crash never leaves a run that hangs or refuses forever. It never
blocks: there is no waiting on a lock, ever.

`reap_orphaned_prefect_servers` ends the ephemeral Prefect API servers (uvicorn subprocesses)
that a killed run left behind: they were started with our `PREFECT_HOME` and were re-parented
to init when their flow process died.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

LOCK_NAME = ".exp3.lock"


class RootBusy(RuntimeError):
    """Another live run holds the output root; the message names it and the fix."""


def _process_start_time(pid: int) -> str | None:
    """Start time (clock ticks since boot) of `pid` from /proc, or None if there is no such process."""
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(owner: dict[str, Any]) -> bool:
    if owner.get("host") != socket.gethostname():
        return True  # cannot check another machine: assume it is alive (the message says how to clear it)
    pid = int(owner.get("pid", -1))
    if pid <= 0:
        return False
    started = _process_start_time(pid)
    if started is None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return owner.get("proc_start") is None
    return started == owner.get("proc_start")


class RootLock:
    """Exclusive, non-blocking ownership of an output root by this process."""

    def __init__(self, root: Path, command: str = "") -> None:
        self.path = Path(root) / LOCK_NAME
        self.command = command
        self.took_over: dict[str, Any] | None = None

    def acquire(self) -> "RootLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"host": socket.gethostname(), "pid": os.getpid(), "proc_start": _process_start_time(os.getpid()),
                   "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": self.command}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self.owner()
                if owner is not None and _alive(owner):
                    raise RootBusy(
                        f"output root {str(self.path.parent)!r} is in use by pid {owner.get('pid')} on "
                        f"{owner.get('host')} since {owner.get('started')}: wait for it, stop it, or choose "
                        f"another output_root (delete {str(self.path)!r} only if that run is really gone)"
                    ) from None
                self.took_over = owner
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as handle:
                json.dump(payload, handle)
            return self
        raise RootBusy(f"could not take the lock {str(self.path)!r}: another run raced us; try again")

    def owner(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None

    def release(self) -> None:
        owner = self.owner()
        if owner is not None and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "RootLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def root_is_live(root: Path) -> bool:
    """True if a live run holds `root` (for status views)."""
    lock = RootLock(root)
    owner = lock.owner()
    return owner is not None and _alive(owner)


def reap_orphaned_prefect_servers(prefect_home: Path) -> list[int]:
    """SIGTERM orphaned (parent = init) Prefect server processes whose PREFECT_HOME is ours; return pids."""
    reaped: list[int] = []
    wanted = f"PREFECT_HOME={Path(prefect_home).absolute()}".encode()
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            pid = int(entry.name)
            status = (entry / "status").read_text()
            ppid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
            if ppid != 1 or pid == os.getpid():
                continue
            cmdline = (entry / "cmdline").read_bytes()
            if b"uvicorn" not in cmdline and b"prefect" not in cmdline:
                continue
            if wanted not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            os.kill(pid, signal.SIGTERM)
            reaped.append(pid)
        except (OSError, ValueError, StopIteration):
            continue
    return reaped
