"""Session processes forked from one that has already imported torch and Ultralytics (CPU lanes).

Every session runs in a process of its own (crash isolation; an out-of-memory retry gets a new
one). A fresh `python -m exp3.session` spends ~2.5 s of a core importing torch and Ultralytics
before any work. On a GPU lane that import is moved out of the way (`exp3.standby` starts the
next session's process while the current one trains, on an idle core). A CPU lane has no idle
core to hide it on, so there the import is paid once per flow instead of once per session:

    python -m exp3.forkserver      # imports what a session needs, then forks one child per request

Only on Linux machines without a GPU (`fork_is_safe`). The server imports what a standby process
imports (`exp3.standby.preload`), refuses to serve if a GPU driver got loaded meanwhile, starts
no thread of its own, then reads requests (one JSON line: the session's `python -m exp3.session`
arguments and its log) on stdin. For each
it forks a child that sends its output to that log and runs `exp3.session.main` with those
arguments, exactly as `python -m exp3.session` would after its imports; the child is a new
process (its own memory, its own exit, SIGKILLed if the server dies). The server answers on
stdout: `{"ready": ...}` once imported, `{"id", "pid"}` per fork, `{"id", "returncode"}` per exit.

In the flow, `FORKS.launch(arguments, env, log)` returns a `ForkedSession` (the part of
`subprocess.Popen` the runner uses), or None where no server can serve (its imports failed):
the runner then starts a fresh process. One server per environment (`CUDA_VISIBLE_DEVICES`,
Ultralytics' offline settings of the output root), so what was imported is what a fresh process
would have imported. A server dies with the flow and is ended when the flow's process exits.
"""

from __future__ import annotations

import atexit
import itertools
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
from collections.abc import Mapping
from typing import Any, BinaryIO

from exp3.parallel import die_with_parent
from exp3.standby import preload, send_output_to, session_command_line

GPU_DEVICE_NODES: tuple[str, ...] = ("/dev/nvidiactl", "/dev/kfd")
"""NVIDIA's and AMD ROCm's device nodes: a machine with either gets no fork servers (`fork_is_safe`)."""
READY_TIMEOUT_S = 300.0
"""How long a launch waits for a server's imports (a cold disk, a loaded box) before starting a fresh process."""


def fork_is_safe() -> bool:
    """Whether session processes may be forked on this machine: Linux (macOS frameworks are not
    fork-safe) without a GPU. A CUDA context does not survive a fork, so the server must never touch
    CUDA; it checks that, but no GPU run has exercised forked sessions yet, so machines with a GPU
    start processes ahead instead (`exp3.standby`)."""
    return sys.platform.startswith("linux") and not any(os.path.exists(node) for node in GPU_DEVICE_NODES)


class ForkedSession:
    """A session process forked by a fork server: `pid`, `returncode`, `poll`, `wait`, `kill` as in Popen."""

    def __init__(self) -> None:
        self.pid = 0
        self.returncode: int | None = None
        self._forked = threading.Event()
        self._ended = threading.Event()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._ended.wait(timeout):
            raise subprocess.TimeoutExpired(f"forked session {self.pid}", timeout or 0.0)
        assert self.returncode is not None
        return self.returncode

    def kill(self) -> None:
        if self.pid and self.returncode is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _set_pid(self, pid: int) -> None:
        self.pid = pid
        self._forked.set()

    def _end(self, returncode: int) -> None:
        self.returncode = returncode
        self._forked.set()
        self._ended.set()


class _Server:
    """One `python -m exp3.forkserver` process and the thread that owns it (it started it, reads its
    answers and waits for it: the server's PDEATHSIG is tied to that thread, which outlives it)."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = dict(env)
        self.ready = threading.Event()
        self.error: str | None = None
        self.process: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._sessions: dict[int, ForkedSession] = {}
        self._started = threading.Event()
        threading.Thread(target=self._own, name="exp3-forkserver", daemon=True).start()
        self._started.wait()

    def _own(self) -> None:
        try:
            with tempfile.TemporaryFile() as early_output:  # its import-time output (tracebacks); it keeps the file
                self.process = subprocess.Popen(
                    [sys.executable, "-m", "exp3.forkserver"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    stderr=early_output, env=self.env, preexec_fn=die_with_parent)
        except OSError as error:
            self._fail(f"could not start the fork server: {error}")
            return
        finally:
            self._started.set()
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._answer(json.loads(line))
        self.process.wait()
        self._fail(f"the fork server ended (exit {self.process.returncode})")

    def _answer(self, answer: dict[str, Any]) -> None:
        if "ready" in answer:
            self.error = None if answer["ready"] else answer.get("error", "its imports failed")
            self.ready.set()
            return
        with self._lock:
            session = self._sessions.get(answer["id"])
        if session is None:
            return
        if "pid" in answer:
            session._set_pid(answer["pid"])
        else:
            with self._lock:
                self._sessions.pop(answer["id"], None)
            session._end(answer["returncode"])

    def _fail(self, error: str) -> None:
        """The server is gone: its children died with it (SIGKILL); nothing more will be forked."""
        with self._lock:
            self.error = self.error or error
            sessions, self._sessions = list(self._sessions.values()), {}
        self.ready.set()
        for session in sessions:
            session._end(session.returncode if session.returncode is not None else -signal.SIGKILL)

    def fork(self, arguments: list[str], log_path: str) -> ForkedSession | None:
        """A child running `exp3.session.main(arguments)` with its output in `log_path`, or None (call
        once the server is ready)."""
        session = ForkedSession()
        with self._lock:
            if self.error is not None or self.process is None:  # it died meanwhile (`_fail` holds this lock)
                return None
            request_id = next(self._ids)
            self._sessions[request_id] = session
            try:
                assert self.process.stdin is not None
                self.process.stdin.write(json.dumps({"id": request_id, "arguments": arguments,
                                                     "log": log_path}).encode() + b"\n")
                self.process.stdin.flush()
            except OSError:
                self._sessions.pop(request_id, None)
                return None
        session._forked.wait()
        return session if session.pid else None

    def close(self) -> None:
        if self.process is not None and self.process.stdin is not None:
            try:
                self.process.stdin.close()  # end of input: the server exits
            except OSError:
                pass


class ForkServers:
    """The fork servers of this (flow) process, one per environment. Thread-safe: lanes are threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._servers: dict[tuple[tuple[str, str], ...], _Server] = {}

    def start(self, env: Mapping[str, str]) -> None:
        """Start the server of environment `env` if it is not running (its imports begin at once)."""
        self._server(env)

    def _server(self, env: Mapping[str, str]) -> _Server:
        key = tuple(sorted(env.items()))
        with self._lock:
            server = self._servers.get(key)
            if server is None:  # one per environment, never restarted: after a failure, fresh processes
                if not self._servers:
                    atexit.register(self.close)
                server = self._servers[key] = _Server(env)
        return server

    def launch(self, arguments: list[str], env: Mapping[str, str], log: BinaryIO) -> ForkedSession | None:
        """Run `exp3.session.main(arguments)` in a child of the server of `env`, its output appended to
        `log` (a file opened for appending; the log says it was forked), or None: no server could."""
        server = self._server(env)
        if not server.ready.wait(READY_TIMEOUT_S) or server.error is not None or server.process is None:
            why = server.error or f"not ready after {READY_TIMEOUT_S:.0f} s"
            log.write(f"==== no fork server ({why}): a fresh process instead ====\n".encode())
            log.flush()
            return None
        log.write(f"==== {session_command_line(arguments)} (forked from fork server {server.process.pid}) ====\n".encode())
        log.flush()
        session = server.fork(arguments, os.path.abspath(log.name))
        if session is None:
            log.write(b"==== the fork server could not fork: a fresh process instead ====\n")
            log.flush()
        return session

    def close(self) -> None:
        """End every fork server (a session still running dies with its server)."""
        with self._lock:
            servers, self._servers = list(self._servers.values()), {}
        for server in servers:
            server.close()


FORKS = ForkServers()
"""The one registry of this process's fork servers (used by `exp3.runner`)."""


# ---- the server process --------------------------------------------------------------------------


def serve() -> int:
    """Import, say ready, then fork one session per request until end of input."""
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # what the imports print goes to the early-output file, not into the answers
    try:
        preload()
        import torch

        if torch.cuda.is_initialized() or _gpu_driver_loaded():
            raise RuntimeError("a GPU driver was initialised at import: a forked child could not use it")
    except Exception as error:  # noqa: BLE001 - the runner starts fresh processes, which fail with their own log
        traceback.print_exc()
        print(json.dumps({"ready": False, "error": f"{type(error).__name__}: {error}"}), file=answers)
        return 0
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the sessions (same process group), not their server
    print(json.dumps({"ready": True}), file=answers)
    wake_read, wake_write = os.pipe()
    for fd in (wake_read, wake_write):
        os.set_blocking(fd, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_write)
    children: dict[int, int] = {}  # pid -> request id
    pending = b""
    while True:
        readable, _, _ = select.select([0, wake_read], [], [], 1.0)
        if wake_read in readable:
            while _read_or_empty(wake_read):
                pass
        _reap(children, answers)
        if 0 not in readable:
            continue
        data = os.read(0, 1 << 16)
        if not data:
            return 0  # the flow ended: children still running die with this process (SIGKILL)
        pending += data
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            request = json.loads(line)
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(request, closing=(answers.fileno(), wake_read, wake_write))
            children[pid] = request["id"]
            print(json.dumps({"id": request["id"], "pid": pid}), file=answers)


def _gpu_driver_loaded() -> bool:
    """Whether this process has loaded the CUDA or ROCm driver library (what CUDA's first call does)."""
    with open("/proc/self/maps") as maps:
        return any("libcuda.so" in line or "libamdhip64.so" in line for line in maps)


def _read_or_empty(fd: int) -> bytes:
    try:
        return os.read(fd, 4096)
    except BlockingIOError:
        return b""


def _reap(children: dict[int, int], answers: Any) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        request_id = children.pop(pid, None)
        if request_id is not None:
            print(json.dumps({"id": request_id, "returncode": os.waitstatus_to_exitcode(status)}), file=answers)


def _child(request: dict[str, Any], closing: tuple[int, ...]) -> None:
    """In the forked child: become the session process of `request`, then exit with its code."""
    code = 1
    try:
        server = os.getppid()
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as in any Python process
        die_with_parent()
        if os.getppid() != server:  # the server died before the line above
            os._exit(1)
        for fd in closing:
            os.close(fd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        send_output_to(request["log"])
        from exp3.session import __file__ as session_file
        from exp3.session import main

        sys.argv = [session_file, *request["arguments"]]
        code = main(request["arguments"])
    except SystemExit as exit_:
        code = _exit_code(exit_.code)
    except KeyboardInterrupt:  # as Python: the traceback, then end by SIGINT (the runner says "stopped")
        traceback.print_exc()
        code = -signal.SIGINT
    except BaseException:  # noqa: BLE001 - as Python prints an uncaught exception before exiting 1
        traceback.print_exc()
        code = 1
    finally:
        try:
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            if code == -signal.SIGINT:
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGINT)
            os._exit(code)


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(serve())
