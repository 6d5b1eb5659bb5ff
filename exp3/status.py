"""`python -m exp3.status --root runs/exp3`: the grid as a matrix, read from the files on disk.

The grid comes from `<root>/config_resolved.yaml` (written by the flow at start) when present,
else from the session folders found under the root; `<root>/plan.json` (the flow's cache keys)
tells a folder made under other inputs (`STALE`: it will be moved aside and re-run). Nothing is written, nothing is locked: it
is safe to run while the experiment runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from exp3.config import ConfigError, ExperimentConfig, SESSION_SUFFIXES, load_config
from exp3.grid import SessionStatus, grid_status, read_plan
from exp3.runlock import root_is_live
from exp3.sessions import Session

STATE_SYMBOLS: dict[str, str] = {"done": "done", "failed": "FAILED", "stale": "STALE", "running": "running",
                                 "partial": "partial", "pending": "pending"}


def _format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def discover_grid(root: Path) -> tuple[ExperimentConfig | None, list[Session]]:
    """The config the flow wrote into `root` (if any) and the sessions to show."""
    resolved = root / "config_resolved.yaml"
    if resolved.is_file():
        config = load_config(resolved)
        return config, [Session(m, s) for m in config.models for s in config.sessions]
    sessions = []
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        if any(child.name.startswith(f"{model_dir.name}__") for child in model_dir.iterdir()):
            sessions += [Session(model_dir.name, suffix) for suffix in SESSION_SUFFIXES]
    return None, sessions


def format_matrix(rows: list[SessionStatus]) -> str:
    """A fixed-width table: session, state, epochs, elapsed, ETA, error."""
    header = f"{'session':<40} {'state':<8} {'epochs':>7} {'elapsed':>8} {'ETA':>8}  error"
    lines = [header, "-" * len(header)]
    for row in rows:
        epochs = f"{row.epochs_done}/{row.epochs_total if row.epochs_total is not None else '?'}"
        lines.append(f"{row.session:<40} {STATE_SYMBOLS[row.state]:<8} {epochs:>7} "
                     f"{_format_seconds(row.elapsed_s):>8} {_format_seconds(row.eta_s):>8}  {row.error or ''}")
    counts = {state: sum(r.state == state for r in rows) for state in STATE_SYMBOLS}
    lines.append(" ".join(f"{state}={count}" for state, count in counts.items() if count))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m exp3.status", description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("runs/exp3"))
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        print(f"error: output root {str(args.root)!r} does not exist: pass --root of a run", file=sys.stderr)
        return 2
    try:
        config, sessions = discover_grid(args.root)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    live = root_is_live(args.root)
    if config is not None:
        rows = grid_status(config, args.root, sessions, live, read_plan(args.root))
    else:
        from exp3.grid import session_status
        from exp3.session import session_dir

        rows = [session_status(session_dir(args.root, s), live) for s in sessions]
    print(f"{args.root} ({'a run holds this root' if live else 'no live run'})")
    print(format_matrix(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
