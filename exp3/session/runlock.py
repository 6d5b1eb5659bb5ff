"""One live run per output root (`RootLock`), one process per session folder (`SessionLock`): an exclusive
`flock(2)`, dropped by the kernel when its holder exits, even on `kill -9`. The file is never deleted (another
could be locked at its path); it names its holder for messages, emptied on a clean release (`took_over`).
A watcher's probe (`is_live`) holds the lock shared for microseconds: a start that meets one tries again for up to
`PROBE_GRACE_S` instead of failing, so `exp3.status --watch` can never fail a session or the flow."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from exp3.fileio import read_json

LOCK_NAME = ".exp3.lock"
PROBE_GRACE_S = 0.5  # how long a start retries a held lock: far above a probe's hold, far below a real holder's
_HELD: set[int] = set()  # this process's lock descriptors: a forked child (a dataloader worker) closes its copies
os.register_at_fork(after_in_child=lambda: [os.close(fd) for fd in _HELD] and _HELD.clear())


class LockBusy(RuntimeError):
    """Another live process holds the lock; the message (one line) names it and the fix."""


class SessionLock:
    """Exclusive hold of the lock file `path` by this process, never waiting on a holder (only out a watcher's
    probe, `PROBE_GRACE_S`); `what` names it in messages."""

    fix = "wait for it to finish or stop it"

    def __init__(self, path: Path, what: str, command: str = "") -> None:
        self.path, self.what, self.command, self._fd, self.took_over = Path(path), what, command, None, None

    def owner(self) -> dict:
        return read_json(self.path) or {}

    def busy(self) -> LockBusy:
        owner = self.owner()
        who = f"pid {owner.get('pid')} on {owner.get('host')} ({owner.get('command')})"
        return LockBusy(f"{self.what} is in use by {who if owner else 'another process'}: {self.fix} "
                        "(the lock frees itself when that process exits)".replace("\n", " "))

    def acquire(self) -> SessionLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)  # children never inherit it
        deadline = time.monotonic() + PROBE_GRACE_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise self.busy() from None
                time.sleep(0.01)
            except OSError as error:  # a file system without locks (Google Drive's mount, some network shares)
                os.close(fd)
                raise LockBusy(f"{self.what} cannot be locked there ({os.strerror(error.errno or 0)}): keep the output "
                               "root on a local disk, and set mirror.path to copy the results to that folder "
                               "(README, \"A mirror on slower, durable storage\")") from None
        self.took_over, self._fd = self.owner() or None, fd
        _HELD.add(fd)
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command}
        os.ftruncate(fd, os.pwrite(fd, json.dumps(holder).encode(), 0))
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # a clean end: the next holder takes over from nobody
            _HELD.discard(self._fd)
            os.close(self._fd)
            self._fd = None

    def is_live(self) -> bool:  # this process holding it counts; the probe's shared hold lasts microseconds
        with contextlib.suppress(FileNotFoundError), open(self.path, "rb") as probe:
            try:
                return fcntl.flock(probe, fcntl.LOCK_SH | fcntl.LOCK_NB) is not None  # returns None: free
            except BlockingIOError:
                return True
            except OSError:  # a file system without locks: nothing can hold one there (`acquire` refuses it)
                return False
        return False

    __enter__ = acquire

    def __exit__(self, *exc: object) -> None:
        self.release()


class RootLock(SessionLock):
    fix = "wait for it, stop it, or choose another output_root"

    def __init__(self, root: Path, command: str = "") -> None:
        super().__init__(Path(root) / LOCK_NAME, f"output root {str(root)!r}", command)
