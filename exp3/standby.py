"""Session processes started ahead of need: the next session of a lane finds Python, torch and
Ultralytics already imported.

Every session runs in a fresh process of its own (crash isolation; an out-of-memory retry gets a
new one). A fresh process spends ~2.5 s importing torch and Ultralytics before any work. While a
session runs, the runner starts the process for the next session of its lane
(`SessionJob.prestart_next`): `python -m exp3.standby` imports what a session needs (initialising no
CUDA, reading no config; Ultralytics writes its settings file in the output root at import, as
in any session process), then waits on stdin for one request (the session's
`python -m exp3.session` arguments and its log). It sends its output to that log and runs
`exp3.session.main` with those arguments, exactly as `python -m exp3.session` would; end of
input without a request ends it quietly.

A standby process serves only a session whose environment equals the one it was started with
(`CUDA_VISIBLE_DEVICES`, Ultralytics' offline settings of the same output root), so what was
imported is what a fresh process would have imported. Standby processes die with the flow
(`die_with_parent`) and are ended when the flow's process exits.
"""

from __future__ import annotations

import atexit
import json
import os
import stat
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import import_module
from typing import BinaryIO

from exp3.parallel import die_with_parent

PRELOADED: tuple[str, ...] = (
    "torch", "exp3.session", "exp3.train", "exp3.evaluate", "exp3.metrics", "exp3.severity", "exp3.provenance",
)
"""Imported by a standby process before its request: torch, and exp3's session, training and evaluation."""
PRELOADED_WITH_ULTRALYTICS: tuple[str, ...] = ("exp3.trainers", "ultralytics")
"""Imported too where Ultralytics' settings are already set (`YOLO_CONFIG_DIR`), as under the flow:
Ultralytics writes its settings file at import, which must land in the output root."""
MAX_WAITING = 4
"""At most this many standby processes wait for one environment (one per lane is what the flow uses)."""


@dataclass
class _Waiting:
    process: subprocess.Popen
    started: float = field(default_factory=time.perf_counter)


class Standby:
    """The standby processes of this (flow) process, by environment. Thread-safe: lanes are threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[tuple[tuple[str, str], ...], list[_Waiting]] = {}
        self._exit_hook = False

    @staticmethod
    def _key(env: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
        return tuple(sorted(env.items()))

    def prestart(self, env: Mapping[str, str]) -> None:
        """Start one standby process for sessions of environment `env` (imports begin at once)."""
        with tempfile.TemporaryFile() as early_output:  # what it prints before its request; it keeps the file
            process = subprocess.Popen([sys.executable, "-m", "exp3.standby"], stdin=subprocess.PIPE,
                                       stdout=early_output, stderr=subprocess.STDOUT, env=dict(env),
                                       preexec_fn=die_with_parent)
        with self._lock:
            if not self._exit_hook:
                atexit.register(self.close)
                self._exit_hook = True
            waiting = self._waiting.setdefault(self._key(env), [])
            waiting.append(_Waiting(process))
            surplus = waiting[:-MAX_WAITING]
            del waiting[:-MAX_WAITING]
        for spare in surplus:
            _end(spare.process)

    def take(self, env: Mapping[str, str]) -> _Waiting | None:
        """A live standby process started with exactly `env`, or None."""
        with self._lock:
            waiting = self._waiting.get(self._key(env), [])
            while waiting:
                spare = waiting.pop(0)
                if spare.process.poll() is None:
                    return spare
        return None

    def launch(self, arguments: list[str], env: Mapping[str, str], log: BinaryIO) -> subprocess.Popen:
        """Run `python -m exp3.session <arguments>` with `env`, its output appended to `log` (a file
        opened for appending): in a standby process of that environment if one is waiting, else in a
        fresh one. Either way the log says which."""
        while (spare := self.take(env)) is not None:
            try:
                request = json.dumps({"arguments": arguments, "log": os.path.abspath(log.name)}) + "\n"
                log.write(f"==== {session_command_line(arguments)} (in standby process {spare.process.pid}, started "
                          f"{time.perf_counter() - spare.started:.1f} s before) ====\n".encode())
                log.flush()
                spare.process.stdin.write(request.encode())
                spare.process.stdin.close()
                return spare.process
            except OSError:  # it died meanwhile (killed from outside): the next one, or a fresh process
                _end(spare.process)
        log.write(f"==== {session_command_line(arguments)} ====\n".encode())
        log.flush()
        return subprocess.Popen([sys.executable, "-m", "exp3.session", *arguments], stdout=log,
                                stderr=subprocess.STDOUT, env=dict(env), preexec_fn=die_with_parent)

    def close(self) -> None:
        """End every waiting standby process."""
        with self._lock:
            waiting = [spare for spares in self._waiting.values() for spare in spares]
            self._waiting.clear()
        for spare in waiting:
            _end(spare.process)


def session_command_line(arguments: list[str]) -> str:
    """The command line a session with these arguments is logged under (`python -m exp3.session ...`)."""
    return " ".join([sys.executable, "-m", "exp3.session", *arguments])


def _end(process: subprocess.Popen) -> None:
    if process.stdin is not None and not process.stdin.closed:
        try:
            process.stdin.close()  # end of input: it exits by itself once its imports are done
        except OSError:
            pass
    try:
        process.wait(timeout=0.05)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


STANDBY = Standby()
"""The one registry of this process's standby processes (used by `exp3.runner`)."""


def preload() -> None:
    """Import what a session needs (`PRELOADED`, and `PRELOADED_WITH_ULTRALYTICS` where Ultralytics'
    settings directory is set): what a standby process and a fork server hold before any request."""
    for module in PRELOADED + (PRELOADED_WITH_ULTRALYTICS if os.environ.get("YOLO_CONFIG_DIR") else ()):
        import_module(module)


def send_output_to(log_path: str) -> None:
    """Point this process's fds 1 and 2 at `log_path` (appending): a session's output goes to its log."""
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)


def serve() -> int:
    """The standby process: import, wait for one request, run that session."""
    try:
        preload()
    except Exception:  # noqa: BLE001 - the session's own import fails the same way, with this in its log
        traceback.print_exc()
    line = sys.stdin.readline()
    if not line:
        return 0
    request = json.loads(line)
    sys.stdout.flush()
    sys.stderr.flush()
    _move_output_to(request["log"])
    from exp3.session import main

    return main(request["arguments"])


def _move_output_to(log_path: str) -> None:
    """Append what this process printed so far (its early-output file, fd 1) to `log_path`, then send
    fds 1 and 2 there."""
    status = os.fstat(1)
    early = os.pread(1, status.st_size, 0) if stat.S_ISREG(status.st_mode) and status.st_size else b""
    if early:
        with open(log_path, "ab") as log:
            log.write(early)
    send_output_to(log_path)


if __name__ == "__main__":
    from exp3.session import without_shutdown_collection

    raise SystemExit(without_shutdown_collection(serve()))
