"""A flow run's process environment, set before `import prefect` reads it: PREFECT_HOME in the output root (the
run's database beside its results), a generous server start-up time, no telemetry, Ultralytics offline; a user's
own settings win. Also ends the ephemeral API servers a `kill -9` of an earlier run left behind."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

import psutil

from exp3.session.runlock import RootLock
from exp3.train.offline import apply_offline_environment

EPHEMERAL_SERVER_MARKS: tuple[str, ...] = ("uvicorn", "prefect.server.api.server")
"""In the command line of the API server a flow run starts for itself; not in `prefect server start`'s."""


PREFECT_SETTINGS: dict[str, str] = {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
                                    "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "false",
                                    "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
"""A flow run's Prefect settings, unless set already: a slow box's temporary server given time to start; no result
files; no telemetry writer beside the run's own in the temporary server's SQLite (a busy 2-core box saw it end a
run's start with "database is locked")."""


def configure_flow_environment(output_root: Path) -> list[int]:
    """Set the variables above for this process and its children; return the pids of reaped orphans (none while a
    run holds the root's lock)."""
    home = Path(os.environ.setdefault("PREFECT_HOME", str(Path(output_root).absolute() / ".prefect")))
    for name, value in PREFECT_SETTINGS.items():
        os.environ.setdefault(name, value)
    apply_offline_environment(output_root)
    home.mkdir(parents=True, exist_ok=True)
    if RootLock(output_root).is_live():  # a run of this root is alive, and its server with it (its parent looks like
        return []                        # init where the flow is PID 1, in a container)
    return reap_orphaned_prefect_servers(home)


def database_problem(prefect_home: Path) -> str | None:
    """Why Prefect's SQLite database cannot live in `prefect_home`, None when it can: a few rows written in WAL mode,
    as Prefect's server writes them. A network or cloud mount (Google Drive, SMB) without shared memory maps fails
    here at once, where Prefect's server retries for minutes and ends in thousands of lines of traceback."""
    probe = Path(prefect_home) / ".exp3-database-probe.db"
    try:
        with contextlib.closing(sqlite3.connect(probe, timeout=5)) as database:
            database.execute("PRAGMA journal_mode=WAL")
            database.execute("CREATE TABLE IF NOT EXISTS probe (x)")
            database.execute("INSERT INTO probe VALUES (1)")
            database.commit()
    except sqlite3.Error as error:
        return str(error)
    finally:
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(OSError):
                Path(f"{probe}{suffix}").unlink(missing_ok=True)
    return None


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
