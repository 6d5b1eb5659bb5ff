"""One live run per output root (and one process per session folder), and cleanup after a `kill -9`.

`DirLock` makes a process the only holder of a directory: it takes an exclusive, non-blocking
`flock(2)` on a lock file in that directory (`<root>/.exp3.lock` for `RootLock`,
`<session folder>/.exp3-session.lock` for a session). The kernel is the referee:

* exactly one open file description can hold the lock, so two processes that start together can
  never both win (no check-then-unlink race: nothing is decided from the file's content);
* the kernel drops the lock when its holder exits, even on `kill -9`, so a crash never leaves a
  lock that refuses forever and a dead holder's file is simply taken over (`took_over` names it);
* a lock file is unlinked only by its holder, while it still holds it; an acquirer checks after
  `flock` that the file it locked is still the one at the path, so an unlinked file is never used.

The file also holds the owner's host, pid, process start time, start date and command (JSON), for
messages and status views only. One exception keeps the upgrade safe: a file whose payload names a
*live* process on this host (same pid and start time; a run of an older exp3 that did not flock,
or a holder whose descriptor was closed behind its back) is honoured as held.

It never blocks: an acquire that finds the lock held retries for at most ~0.1 s (so a status
probe's brief shared lock cannot make it fail) and then raises `LockBusy` (`RootBusy` for a root)
with one line naming the owner and the fix.

Within one process a lock is re-entrant (a counted hold, the default): a process never refuses
itself, e.g. the flow's pre-check followed by the flow's own `with RootLock(...)`. The hold lives
in a process-wide table, not in the `DirLock` object, so dropping the object does not release it;
it ends at the last `release()` or when the process exits. A forked child (os.fork without exec)
closes its inherited copy of the descriptor, so it never keeps its parent's lock alive; exec'd
children never get it (the descriptor is close-on-exec).

`reap_orphaned_prefect_servers` ends the ephemeral Prefect API servers (uvicorn subprocesses)
that a killed run left behind: they were started with our `PREFECT_HOME` and were re-parented
to init when their flow process died.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOCK_NAME = ".exp3.lock"
"""The output root's lock file."""
SESSION_LOCK_NAME = ".exp3-session.lock"
"""A session folder's lock file (the default of `DirLock`)."""

_BUSY_RETRIES = 5
_BUSY_RETRY_SLEEP_S = 0.02
_MAX_REPLACED = 50


class LockBusy(RuntimeError):
    """Another live process holds the directory; the message (one line) names it and the fix."""


class RootBusy(LockBusy):
    """Another live run holds the output root; the message names it and the fix."""


def _process_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state first), or None if there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _process_start_time(pid: int) -> str | None:
    """Start time (clock ticks since boot) of `pid` from /proc, or None if there is no such process."""
    fields = _process_stat(pid)
    return fields[19] if fields is not None and len(fields) > 19 else None


def _payload_names_live_process(owner: dict[str, Any] | None) -> bool:
    """True if `owner` names another process on this host that is alive (same pid *and* start time)."""
    if not isinstance(owner, dict) or owner.get("host") != socket.gethostname():
        return False
    try:
        pid = int(owner.get("pid", -1))
    except (TypeError, ValueError):
        return False
    if pid <= 0 or pid == os.getpid() or owner.get("proc_start") is None:
        return False
    fields = _process_stat(pid)
    if fields is None or len(fields) <= 19 or fields[0] in ("Z", "X"):
        return False  # gone, or a zombie nobody has reaped yet: dead either way
    return fields[19] == owner.get("proc_start")


def _read_payload(path: Path) -> dict[str, Any] | None:
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


@dataclass
class _Hold:
    fd: int
    pid: int
    count: int


_HELD: dict[str, _Hold] = {}
"""This process's held locks by absolute lock-file path (a process-wide table: holds are per process)."""
_TABLE_LOCK = threading.Lock()


def _forget_inherited_holds() -> None:
    """In a forked child: close the inherited descriptors (never LOCK_UN: that would free the parent's lock)."""
    global _TABLE_LOCK
    _TABLE_LOCK = threading.Lock()
    for hold in _HELD.values():
        try:
            os.close(hold.fd)
        except OSError:
            pass
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_inherited_holds)


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)


class DirLock:
    """Exclusive, non-blocking ownership of `directory` by this process (re-entrant within it).

    `DirLock(folder, command="python -m exp3.session ...")` locks a session folder;
    `what` names the directory in the busy message ("session folder '<dir>' is in use by pid ...").
    `reentrant=False` makes a second acquire in the same process fail like any other.
    """

    busy_error: type[LockBusy] = LockBusy
    hint = "wait for it to finish or stop it (the lock frees itself when that process exits)"

    def __init__(self, directory: Path, lock_name: str = SESSION_LOCK_NAME, command: str = "",
                 what: str = "session folder", reentrant: bool = True) -> None:
        self.directory = Path(directory)
        self.path = self.directory / lock_name
        self.command = command
        self.what = what
        self.reentrant = reentrant
        self.took_over: dict[str, Any] | None = None
        self._holding = False

    @property
    def _key(self) -> str:
        return os.path.abspath(self.path)

    @property
    def held(self) -> bool:
        """True while this object holds the lock (acquired and not yet released)."""
        return self._holding

    def _busy(self, owner: dict[str, Any] | None) -> LockBusy:
        where = f"{self.what} {str(self.directory)!r}"
        if owner is None:
            return self.busy_error(f"{where} is in use by another process (it has not written its name to "
                                   f"{str(self.path)!r} yet): {self.hint}")
        command = f" ({owner.get('command')})" if owner.get("command") else ""
        return self.busy_error(f"{where} is in use by pid {owner.get('pid')} on {owner.get('host')} since "
                               f"{owner.get('started')}{command}: {self.hint}".replace("\n", " "))

    def _owner_for_message(self) -> dict[str, Any] | None:
        """The holder's payload; a holder that has just locked may not have written it yet: look again briefly."""
        for _ in range(_BUSY_RETRIES):
            owner = self.owner()
            if owner is not None:
                return owner
            time.sleep(_BUSY_RETRY_SLEEP_S)
        return None

    def acquire(self) -> "DirLock":
        """Take the lock or raise `busy_error` (one line naming the owner); never waits more than ~0.1 s."""
        if self._holding:
            raise RuntimeError(f"this {type(self).__name__} already holds {str(self.path)!r}")
        with _TABLE_LOCK:
            hold = _HELD.get(self._key)
            if hold is not None and hold.pid == os.getpid():
                if not self.reentrant:
                    raise self._busy(self.owner())
                hold.count += 1
                self.took_over = None
                self._holding = True
                return self
            self.directory.mkdir(parents=True, exist_ok=True)
            for _ in range(_MAX_REPLACED):
                fd = self._lock_file()
                if fd is None:
                    continue  # the file we locked was unlinked or replaced by its last holder: open the new one
                try:
                    previous = _read_payload(self.path)
                    if _payload_names_live_process(previous):
                        raise self._busy(previous)
                    self._write_payload(fd)
                except BaseException:
                    os.close(fd)
                    raise
                _HELD[self._key] = _Hold(fd=fd, pid=os.getpid(), count=1)
                self.took_over = previous
                self._holding = True
                return self
        raise self.busy_error(f"could not take the lock {str(self.path)!r}: it was replaced {_MAX_REPLACED} "
                              f"times while we tried; try again")

    def _lock_file(self) -> int | None:
        """An fd holding LOCK_EX on the file now at `self.path`; None if that file was replaced meanwhile."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            for attempt in range(_BUSY_RETRIES + 1):
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as error:
                    if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                        raise
                    if attempt == _BUSY_RETRIES:
                        raise self._busy(self._owner_for_message()) from None
                    time.sleep(_BUSY_RETRY_SLEEP_S)  # perhaps only a status probe's brief shared lock
            if not _same_file(fd, self.path):
                os.close(fd)
                return None
            return fd
        except BaseException:
            try:
                os.close(fd)
            except OSError:
                pass
            raise

    def _write_payload(self, fd: int) -> None:
        payload = {"host": socket.gethostname(), "pid": os.getpid(), "proc_start": _process_start_time(os.getpid()),
                   "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": self.command}
        data = json.dumps(payload).encode("utf-8")
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)

    def owner(self) -> dict[str, Any] | None:
        """The payload in the lock file (the holder's, or a dead holder's), or None."""
        return _read_payload(self.path)

    def release(self) -> None:
        """End this object's hold; the last hold in the process unlinks the file and frees the lock."""
        if not self._holding:
            return
        self._holding = False
        with _TABLE_LOCK:
            hold = _HELD.get(self._key)
            if hold is None or hold.pid != os.getpid():
                return
            hold.count -= 1
            if hold.count > 0:
                return
            del _HELD[self._key]
            try:
                if _same_file(hold.fd, self.path):
                    self.path.unlink(missing_ok=True)  # still holding it: nobody else can be using this file
            finally:
                os.close(hold.fd)

    def is_live(self) -> bool:
        """True if a live process (this one included) holds the lock; probes without taking it from anyone."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        except OSError:
            return _payload_names_live_process(self.owner())
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return True
            raise
        finally:
            os.close(fd)  # drops the probe's shared lock at once
        return _payload_names_live_process(self.owner())

    def check_free(self) -> None:
        """Raise `busy_error` if another live process holds the lock; take nothing (a pre-check)."""
        with _TABLE_LOCK:
            hold = _HELD.get(self._key)
            if hold is not None and hold.pid == os.getpid():
                return
        if self.is_live():
            raise self._busy(self._owner_for_message())

    def __enter__(self) -> "DirLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class RootLock(DirLock):
    """Exclusive, non-blocking ownership of an output root (`<root>/.exp3.lock`) by this process."""

    busy_error = RootBusy
    hint = ("wait for it, stop it, or choose another output_root "
            "(the lock frees itself when that process exits)")

    def __init__(self, root: Path, command: str = "", reentrant: bool = True) -> None:
        super().__init__(root, lock_name=LOCK_NAME, command=command, what="output root", reentrant=reentrant)

    def acquire(self) -> "RootLock":
        super().acquire()
        return self


def root_is_live(root: Path) -> bool:
    """True if a live run (this process included) holds `root` (for status views)."""
    return RootLock(root).is_live()


def check_free(root: Path) -> None:
    """Raise `RootBusy` (one line) if another live process holds `root`; take nothing (the CLI's pre-check)."""
    RootLock(root).check_free()


EPHEMERAL_SERVER_MARKS: tuple[bytes, ...] = (b"uvicorn", b"prefect.server.api.server")
"""What the command line of Prefect's ephemeral API server (the one a flow run starts for itself) holds;
a server the user started (`prefect server start`, e.g. to watch runs in the UI) does not match."""


def reap_orphaned_prefect_servers(prefect_home: Path) -> list[int]:
    """SIGTERM orphaned (parent = init) ephemeral Prefect API servers whose PREFECT_HOME is ours; return pids.

    Only the ephemeral server's command line (EPHEMERAL_SERVER_MARKS) is matched: a UI server the user
    started with the same PREFECT_HOME, even daemonised (`nohup ... &`), is left alone.
    """
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
            if not all(mark in cmdline for mark in EPHEMERAL_SERVER_MARKS):
                continue
            if wanted not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            os.kill(pid, signal.SIGTERM)
            reaped.append(pid)
        except (OSError, ValueError, StopIteration):
            continue
    return reaped
