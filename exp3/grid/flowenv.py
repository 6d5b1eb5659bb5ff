"""A flow run's process environment, set before `import prefect` reads it: PREFECT_HOME in the output root (the
run's database beside its results), a generous server start-up time, no telemetry, Ultralytics offline; a user's
own settings win. Also ends the ephemeral API servers a `kill -9` of an earlier run left behind."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import psutil

from exp3.train.offline import apply_offline_environment

EPHEMERAL_SERVER_MARKS: tuple[str, ...] = ("uvicorn", "prefect.server.api.server")
"""In the command line of the API server a flow run starts for itself; not in `prefect server start`'s."""


def configure_flow_environment(output_root: Path) -> list[int]:
    """Set the variables above for this process and its children; return the pids of reaped orphans."""
    home = Path(os.environ.setdefault("PREFECT_HOME", str(Path(output_root).absolute() / ".prefect")))
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_RESULTS_PERSIST_BY_DEFAULT", "false")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    apply_offline_environment(output_root)
    home.mkdir(parents=True, exist_ok=True)
    return reap_orphaned_prefect_servers(home)


def reap_orphaned_prefect_servers(prefect_home: Path) -> list[int]:
    """SIGTERM orphaned (parent = init) ephemeral Prefect API servers whose PREFECT_HOME is ours (they outlive a
    killed flow); return their pids. A UI server the user started with this PREFECT_HOME is left alone."""
    reaped: list[int] = []
    for process in psutil.process_iter(["ppid", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            command = " ".join(process.info["cmdline"] or ())
            if process.info["ppid"] == 1 and all(mark in command for mark in EPHEMERAL_SERVER_MARKS) and \
                    process.environ().get("PREFECT_HOME") == str(Path(prefect_home).absolute()):
                process.terminate()
                reaped.append(process.pid)
    return reaped
