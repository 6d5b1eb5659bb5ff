"""Root lock: refuse a live owner, take over a dead one, never block."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from exp3.runlock import LOCK_NAME, RootBusy, RootLock, root_is_live


def test_second_owner_is_refused_while_first_lives(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": child.pid,
                                                      "proc_start": Path(f"/proc/{child.pid}/stat").read_text()
                                                      .rsplit(")", 1)[1].split()[19], "started": "t"}))
        assert root_is_live(tmp_path)
        with pytest.raises(RootBusy, match=f"in use by pid {child.pid}") as caught:
            RootLock(tmp_path).acquire()
        assert "\n" not in str(caught.value)
    finally:
        child.kill()
        child.wait()
    lock = RootLock(tmp_path).acquire()  # owner dead now: stale, taken over
    assert lock.took_over is not None and lock.took_over["pid"] == child.pid
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_reused_pid_is_not_mistaken_for_the_owner(tmp_path: Path) -> None:
    (tmp_path / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                                  "proc_start": "not-my-start-time", "started": "t"}))
    assert not root_is_live(tmp_path)
    with RootLock(tmp_path) as lock:
        assert lock.took_over is not None
