"""`python -m exp3.status --root runs/exp3 [--watch [--interval S]]`: the grid as a matrix, from the files on disk.

`--watch` prints the matrix again every S seconds (default 10; the screen is cleared on a
terminal) while a run holds the root, then prints it once more and exits 0 (Ctrl-C: exits 0).

The grid comes from `<root>/config_resolved.yaml` (written by the flow at start) when present,
else from the session folders found under the root; `<root>/plan.json` (the flow's cache keys)
tells a folder made under other inputs (`STALE`: it will be moved aside and re-run). Nothing is written, nothing is locked: it
is safe to run while the experiment runs.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from exp3.config import ConfigError, ExperimentConfig, load_config
from exp3.grid import SessionStatus, grid_status, read_plan
from exp3.runlock import RootLock
from exp3.sessions import SESSION_SUFFIXES, Session

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
    """A fixed-width table: session, state, epochs, elapsed, ETA, last val mAP50, error."""
    header = f"{'session':<40} {'state':<8} {'epochs':>7} {'elapsed':>8} {'ETA':>8} {'last val mAP50':>14}  error"
    lines = [header, "-" * len(header)]
    for row in rows:
        epochs = f"{row.epochs_done}/{row.epochs_total if row.epochs_total is not None else '?'}"
        val_map50 = "-" if row.last_val_map50 is None else f"{row.last_val_map50:.3f}"
        lines.append(f"{row.session:<40} {STATE_SYMBOLS[row.state]:<8} {epochs:>7} "
                     f"{_format_seconds(row.elapsed_s):>8} {_format_seconds(row.eta_s):>8} {val_map50:>14}  "
                     f"{row.error or ''}")
    counts = {state: sum(r.state == state for r in rows) for state in STATE_SYMBOLS}
    lines.append(" ".join(f"{state}={count}" for state, count in counts.items() if count))
    return "\n".join(lines)


def root_is_live(root: Path) -> bool:
    """True if a live run (this process included) holds `root`'s lock."""
    return RootLock(root).is_live()


def render(root: Path) -> tuple[str, bool]:
    """The status block of `root` (title line + matrix) and whether a run holds the root."""
    config, sessions = discover_grid(root)
    live = root_is_live(root)
    if config is not None:
        rows = grid_status(config, root, sessions, live, read_plan(root))
    else:
        from exp3.grid import session_status
        from exp3.layout import SessionPaths

        rows = [session_status(SessionPaths.of(root, s).folder, live) for s in sessions]
    title = f"{root} ({'a run holds this root' if live else 'no live run'})"
    return f"{title}\n{format_matrix(rows)}", live


CLEAR_SCREEN = "\033[2J\033[H"


def watch(root: Path, interval_s: float, clear: bool) -> None:
    """Print the block every `interval_s` while a run holds `root`; the last one after it ends."""
    while True:
        block, live = render(root)
        stamp = time.strftime("%H:%M:%S")
        print(f"{CLEAR_SCREEN if clear else ''}{block}\n"
              f"[{stamp}] {f'refreshing every {interval_s:g} s (Ctrl-C to stop)' if live else 'final'}\n", flush=True)
        if not live:
            return
        time.sleep(interval_s)


def _block_or_reason(root: Path) -> str:
    """The status block of `root`, or one line saying why there is none yet."""
    if not root.is_dir():
        return f"{root}: not created yet (the flow is starting)"
    try:
        return render(root)[0]
    except (ConfigError, OSError, ValueError) as error:  # a config being written, a folder being moved
        return f"{root}: status not readable right now ({type(error).__name__}: {error})".splitlines()[0]


def _notebook_display() -> Callable[[str], None] | None:
    """One output area that each call replaces (IPython's display handle), or None outside a notebook."""
    try:
        from IPython import get_ipython
        from IPython.display import Pretty, display
    except ImportError:
        return None
    if get_ipython() is None:
        return None
    handle = display(Pretty(""), display_id=True)
    return lambda text: handle.update(Pretty(text))


def run_and_watch(command: Sequence[str], root: str | Path, log_path: str | Path, interval_s: float = 30.0,
                  show: Callable[[str], None] | None = None) -> int:
    """Run `command` (a flow) with its output appended to `log_path`, show the grid of `root` every
    `interval_s` seconds while it runs and once more when it ends; return its exit code.

    `show` gets each block (with a time stamp); by default one notebook output updated in place,
    else print. Interrupting (Ctrl-C, the notebook's stop button) stops the flow, which is
    crash-safe: running it again resumes.
    """
    root, log_path = Path(root), Path(log_path)
    show = show or _notebook_display() or (lambda text: print(text, flush=True))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(list(command), stdout=log, stderr=subprocess.STDOUT)
        try:
            while True:
                show(f"{_block_or_reason(root)}\n[{time.strftime('%H:%M:%S')}] running; "
                     f"refreshing every {interval_s:g} s; log: {log_path}")
                try:
                    process.wait(timeout=interval_s)
                    break
                except subprocess.TimeoutExpired:
                    continue
        except KeyboardInterrupt:
            process.terminate()
            process.wait()
            raise
    show(f"{_block_or_reason(root)}\n[{time.strftime('%H:%M:%S')}] the flow exited with code "
         f"{process.returncode}; log: {log_path}")
    return process.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m exp3.status", description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("runs/exp3"))
    parser.add_argument("--watch", action="store_true", help="refresh until no run holds the root")
    parser.add_argument("--interval", type=float, default=10.0, metavar="S", help="seconds between refreshes")
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        print(f"error: output root {str(args.root)!r} does not exist: pass --root of a run", file=sys.stderr)
        return 2
    if args.interval <= 0:
        print(f"error: --interval must be positive, got {args.interval:g}", file=sys.stderr)
        return 2
    try:
        if args.watch:
            watch(args.root, args.interval, clear=sys.stdout.isatty())
        else:
            print(render(args.root)[0])
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
