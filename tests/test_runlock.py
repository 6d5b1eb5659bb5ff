"""Locks: exactly one holder, even when processes race over a dead owner's file; a `kill -9` frees
the lock; a live holder is refused with one line and its file left alone; never blocks.

Real processes and the real `flock(2)`; nothing is mocked.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from exp3.runlock import (LOCK_NAME, SESSION_LOCK_NAME, DirLock, LockBusy, RootBusy, RootLock, check_free,
                          root_is_live)

REPO = Path(__file__).resolve().parents[1]

# A holder process: takes the lock named on the command line (with a `go` file: prints READY, then waits
# for the file to appear), prints one line (HELD / BUSY <message>),
# then obeys stdin: "release" -> releases and prints RELEASED, end of input -> exits.
HOLDER = r"""
import sys
from pathlib import Path
from exp3.runlock import DirLock, LockBusy, RootLock

kind, directory, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]) if len(sys.argv) > 3 else None
if go is not None:
    import time
    print("READY", flush=True)
    while not go.exists():
        time.sleep(0.0005)
lock = RootLock(directory, command="holder") if kind == "root" else DirLock(directory, command="holder")
try:
    lock.acquire()
    print("HELD", flush=True)
except LockBusy as error:
    print("BUSY " + str(error), flush=True)
for line in sys.stdin:
    if line.strip() == "release":
        lock.release()
        print("RELEASED", flush=True)
"""


def _start(kind: str, directory: Path, go: Path | None = None) -> subprocess.Popen[str]:
    args = [sys.executable, "-c", HOLDER, kind, str(directory)] + ([str(go)] if go is not None else [])
    return subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)


def _holder(kind: str, directory: Path) -> subprocess.Popen[str]:
    """A subprocess that holds the lock (asserted) until it is told otherwise."""
    child = _start(kind, directory)
    assert child.stdout is not None
    line = child.stdout.readline().strip()
    assert line == "HELD", line
    return child


def _stop(child: subprocess.Popen[str]) -> None:
    if child.poll() is None:
        child.kill()
    child.wait()


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _dead_owner_payload(path: Path) -> dict[str, object]:
    payload = {"host": socket.gethostname(), "pid": _dead_pid(), "proc_start": "12345", "started": "t",
               "command": "a run that was killed"}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))
    return payload


def test_racers_over_a_dead_owners_lock_exactly_one_wins(tmp_path: Path) -> None:
    """Six processes released together onto a stale lock file: one holder, five RootBusy, every round."""
    racers, rounds = 6, 6
    for round_ in range(rounds):
        root = tmp_path / f"round{round_}"
        dead = _dead_owner_payload(root / LOCK_NAME)
        go = tmp_path / f"go{round_}"
        children = [_start("root", root, go) for _ in range(racers)]
        try:
            assert [child.stdout.readline().strip() for child in children if child.stdout] == ["READY"] * racers
            go.touch()  # all of them are polling for it now
            lines = [child.stdout.readline().strip() for child in children if child.stdout is not None]
            winners = [line for line in lines if line == "HELD"]
            busy = [line for line in lines if line.startswith("BUSY ")]
            assert len(winners) == 1 and len(busy) == racers - 1, (round_, lines)
            owner = json.loads((root / LOCK_NAME).read_text())
            winner_pid = children[lines.index("HELD")].pid
            assert owner["pid"] == winner_pid and owner["pid"] != dead["pid"]
            assert all("is in use by" in line for line in busy)
            assert root_is_live(root)
        finally:
            for child in children:
                _stop(child)
        assert not root_is_live(root)


def test_kill_9_of_the_holder_frees_the_lock_and_the_next_run_takes_over(tmp_path: Path) -> None:
    child = _holder("root", tmp_path)
    assert root_is_live(tmp_path)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert (tmp_path / LOCK_NAME).exists() and not root_is_live(tmp_path)  # the file stays, the lock is gone
    lock = RootLock(tmp_path, command="next run").acquire()
    try:
        assert lock.took_over is not None and lock.took_over["pid"] == child.pid
        assert lock.took_over["command"] == "holder"
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    finally:
        lock.release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_live_holder_is_refused_in_one_line_and_its_file_is_untouched(tmp_path: Path) -> None:
    child = _holder("root", tmp_path)
    try:
        path = tmp_path / LOCK_NAME
        before_bytes, before_inode = path.read_bytes(), path.stat().st_ino
        for attempt in (lambda: RootLock(tmp_path).acquire(), lambda: check_free(tmp_path)):
            with pytest.raises(RootBusy, match=f"is in use by pid {child.pid} on {socket.gethostname()}") as caught:
                attempt()
            assert "\n" not in str(caught.value) and "output root" in str(caught.value)
        with pytest.raises(RootBusy):
            with RootLock(tmp_path):
                pass
        assert path.read_bytes() == before_bytes and path.stat().st_ino == before_inode
        assert root_is_live(tmp_path) and child.poll() is None
    finally:
        _stop(child)


def test_root_is_live_while_held_and_not_after_release_or_death(tmp_path: Path) -> None:
    assert not root_is_live(tmp_path / "missing") and not root_is_live(tmp_path)
    child = _holder("root", tmp_path)
    try:
        assert root_is_live(tmp_path)
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write("release\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "RELEASED"
        assert not root_is_live(tmp_path) and not (tmp_path / LOCK_NAME).exists()
        check_free(tmp_path)  # free: no error
    finally:
        _stop(child)
    child = _holder("root", tmp_path)
    _stop(child)  # SIGKILL
    assert not root_is_live(tmp_path)
    with RootLock(tmp_path) as lock:  # this process holding it counts as live too
        assert root_is_live(tmp_path) and lock.held
    assert not root_is_live(tmp_path)


def test_session_lock_is_independent_of_the_root_lock(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    session = root / "yolov8m" / "yolov8m__S1_clean_train"
    child = _holder("root", root)
    try:
        with DirLock(session, command="python -m exp3.session") as lock:  # root held elsewhere: no matter
            assert (session / SESSION_LOCK_NAME).is_file() and lock.took_over is None
            assert DirLock(session).is_live() and root_is_live(root)
    finally:
        _stop(child)
    child = _holder("session", session)
    try:
        with RootLock(root) as lock:  # a session held elsewhere does not block the root
            assert lock.held
        with pytest.raises(LockBusy, match=f"^session folder '{session}' is in use by pid {child.pid} ") as caught:
            DirLock(session).acquire()
        assert not isinstance(caught.value, RootBusy) and "\n" not in str(caught.value)
        DirLock(session / "..").check_free()  # other folders are free
    finally:
        _stop(child)
    with DirLock(session) as lock:
        assert lock.took_over is not None and lock.took_over["pid"] == child.pid


def test_same_process_reacquire_is_a_counted_hold(tmp_path: Path) -> None:
    """The CLI's pre-check then the flow's `with RootLock(...)` in one process: both succeed."""
    check_free(tmp_path)
    pre = RootLock(tmp_path).acquire()  # what flows/exp3.py main() does, never released
    with RootLock(tmp_path, command="exp3 flow") as lock:
        assert lock.took_over is None and root_is_live(tmp_path)
        check_free(tmp_path)  # held by this very process: free for us
    assert root_is_live(tmp_path) and (tmp_path / LOCK_NAME).exists()  # the pre-check's hold remains
    pre.release()
    pre.release()  # a second release is a no-op
    assert not root_is_live(tmp_path) and not (tmp_path / LOCK_NAME).exists()
    with RootLock(tmp_path, reentrant=False):
        with pytest.raises(RootBusy, match=f"in use by pid {os.getpid()} "):
            RootLock(tmp_path, reentrant=False).acquire()


def test_a_dropped_lock_object_still_holds_until_the_process_exits(tmp_path: Path) -> None:
    code = ("import sys; from pathlib import Path; from exp3.runlock import RootLock, root_is_live; "
            "RootLock(Path(sys.argv[1])).acquire(); import gc; gc.collect(); print(root_is_live(Path(sys.argv[1])))")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, cwd=REPO)
    assert result.stdout.strip() == "True", result.stderr
    assert not root_is_live(tmp_path)


def test_a_forked_child_does_not_keep_its_dead_parents_lock(tmp_path: Path) -> None:
    code = ("import os, sys, time; from pathlib import Path; from exp3.runlock import RootLock; "
            "RootLock(Path(sys.argv[1])).acquire(); pid = os.fork()\n"
            "if pid == 0:\n    null = os.open(os.devnull, os.O_RDWR); os.dup2(null, 1); os.dup2(null, 2)\n"
            "    time.sleep(60); os._exit(0)\n"
            "print(pid, flush=True); os._exit(0)")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, cwd=REPO)
    grandchild = int(result.stdout.strip())
    try:
        assert Path(f"/proc/{grandchild}").exists()  # the fork lives on ...
        assert not root_is_live(tmp_path)  # ... without the lock
        with RootLock(tmp_path) as lock:
            assert lock.took_over is not None and lock.took_over["pid"] != grandchild
    finally:
        os.kill(grandchild, signal.SIGKILL)


def test_a_live_process_named_in_an_unlocked_file_is_still_honoured(tmp_path: Path) -> None:
    """A file left by an exp3 that did not flock, naming a live process, is refused until that process ends."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        start = Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
        (tmp_path / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": child.pid,
                                                      "proc_start": start, "started": "t"}))
        assert root_is_live(tmp_path)
        with pytest.raises(RootBusy, match=f"in use by pid {child.pid}") as caught:
            RootLock(tmp_path).acquire()
        assert "\n" not in str(caught.value)
    finally:
        child.kill()
        child.wait()
    lock = RootLock(tmp_path).acquire()  # owner dead now: taken over
    assert lock.took_over is not None and lock.took_over["pid"] == child.pid
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_reused_pid_is_not_mistaken_for_the_owner(tmp_path: Path) -> None:
    (tmp_path / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                                  "proc_start": "not-my-start-time", "started": "t"}))
    assert not root_is_live(tmp_path)
    with RootLock(tmp_path) as lock:
        assert lock.took_over is not None


def test_reaping_ends_only_orphaned_ephemeral_servers_of_this_home(tmp_path: Path) -> None:
    """An orphaned ephemeral API server of this PREFECT_HOME is ended; a UI server the user started with the
    same home (`prefect server start`, daemonised) and an ephemeral server of another home are not."""
    from exp3.runlock import reap_orphaned_prefect_servers

    home, other = tmp_path / "home", tmp_path / "other"
    sleeper = f"{sys.executable} -c 'import time; time.sleep(120)'"
    spawn = {"ephemeral": (home, "-m uvicorn --factory prefect.server.api.server:create_app"),
             "user_ui": (home, "prefect server start --port 4299"),
             "other_home": (other, "-m uvicorn --factory prefect.server.api.server:create_app")}
    pids = {}
    for name, (prefect_home, args) in spawn.items():
        # a subshell that exits at once: the sleeper is re-parented (orphaned), like a killed flow's server
        out = subprocess.run(["bash", "-c", f"PREFECT_HOME={prefect_home} setsid {sleeper} {args} "
                              "> /dev/null 2>&1 & echo $!"], capture_output=True, text=True, check=True)
        pids[name] = int(out.stdout.strip())
    try:
        time.sleep(0.5)
        parents = {name: int(next(line.split()[1] for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                                  if line.startswith("PPid:"))) for name, pid in pids.items()}
        if set(parents.values()) != {1}:
            pytest.skip(f"orphans are re-parented to a subreaper here ({parents}), not to init")
        assert reap_orphaned_prefect_servers(home) == [pids["ephemeral"]]
    finally:
        for pid in pids.values():
            try:
                os.kill(pid, 9)
            except OSError:
                pass
