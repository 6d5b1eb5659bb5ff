"""Process environment for a flow run, set BEFORE `import prefect` (Prefect reads it at import).

- `PREFECT_HOME` inside the output root, so the run's database, logs and persisted results
  live with the results they describe (and a Colab/Drive root carries them across reconnects);
- a generous ephemeral-server start-up timeout (a cold start is slow on a small, busy machine);
- Ultralytics offline settings (see exp3.offline);
- orphaned ephemeral API servers left by a `kill -9` of an earlier run on this root are ended.

Explicit settings in the environment win: a user's `PREFECT_API_URL` (a real server or
Prefect Cloud) or `PREFECT_HOME` is never overridden.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from exp3.offline import apply_offline_environment

STARTUP_TIMEOUT_S = "180"


def prefect_home(output_root: Path) -> Path:
    """Where Prefect keeps its state for runs on `output_root`."""
    return Path(output_root).absolute() / ".prefect"


def configure_flow_environment(output_root: Path) -> list[int]:
    """Set the variables above for this process and its children; return pids of reaped orphans."""
    home = Path(os.environ.setdefault("PREFECT_HOME", str(prefect_home(output_root))))
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", STARTUP_TIMEOUT_S)
    os.environ.setdefault("PREFECT_RESULTS_PERSIST_BY_DEFAULT", "false")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no network: no telemetry
    apply_offline_environment(output_root)
    home.mkdir(parents=True, exist_ok=True)
    return reap_orphaned_prefect_servers(home)


EPHEMERAL_SERVER_MARKS: tuple[bytes, ...] = (b"uvicorn", b"prefect.server.api.server")
"""What the command line of Prefect's ephemeral API server (the one a flow run starts for itself) holds;
a server the user started (`prefect server start`, e.g. to watch runs in the UI) does not match."""


def reap_orphaned_prefect_servers(prefect_home: Path) -> list[int]:
    """SIGTERM orphaned (parent = init) ephemeral Prefect API servers whose PREFECT_HOME is ours; return pids.

    A `kill -9` of a flow leaves its ephemeral server running (Prefect starts it; it does not die with
    the flow). A UI server the user started with the same PREFECT_HOME, even daemonised, is left alone.
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
            if not all(mark in (entry / "cmdline").read_bytes() for mark in EPHEMERAL_SERVER_MARKS):
                continue
            if wanted not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            os.kill(pid, signal.SIGTERM)
            reaped.append(pid)
        except (OSError, ValueError, StopIteration):
            continue
    return reaped
