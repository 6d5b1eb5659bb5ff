"""The flow's process environment: orphaned ephemeral Prefect servers of a killed run are ended, nothing else."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest


def test_reaping_ends_only_orphaned_ephemeral_servers_of_this_home(tmp_path: Path) -> None:
    """An orphaned ephemeral API server of this PREFECT_HOME is ended; a UI server the user started with the
    same home (`prefect server start`, daemonised) and an ephemeral server of another home are not."""
    from exp3.grid.flowenv import reap_orphaned_prefect_servers

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


def test_no_server_is_reaped_while_a_run_holds_the_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In a container the flow is PID 1, so its live API server's parent is "init": a second command on the root
    (even --dry-run) ended it, and the running flow lost its API (ConnectError)."""
    from exp3.grid import flowenv
    from exp3.session.runlock import RootLock

    asked: list[Path] = []
    monkeypatch.setattr(flowenv, "reap_orphaned_prefect_servers", lambda home: asked.append(home) or [])
    monkeypatch.setattr(flowenv, "apply_offline_environment", lambda root: None)
    for name, value in {"PREFECT_HOME": str(tmp_path / ".prefect"), "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "false",
                        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
                        "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}.items():
        monkeypatch.setenv(name, value)                          # as the flow sets them; restored after the test
    with RootLock(tmp_path, command="exp3 flow"):
        assert flowenv.configure_flow_environment(tmp_path) == [] and asked == []
    flowenv.configure_flow_environment(tmp_path)
    assert asked == [tmp_path / ".prefect"]                      # no run holds it: a killed run's orphans are ended
