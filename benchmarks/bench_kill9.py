"""kill -9 of the flow at random moments, then resume: the smoke's crash safety, measured.

    python benchmarks/bench_kill9.py --root /tmp/kill9 --kills 4 --seed 0

Runs `python flows/exp3.py --smoke --set output_root=ROOT` and kills the flow's main process with
SIGKILL at a seeded random moment (uniform in [--min-s, --max-s] after its start), `--kills` times,
each time starting the same command again on the same root; then runs it once more to the end.
After every kill it waits 3 s and lists the exp3 processes still alive for that root (a session,
a DataLoader worker, the flow): there must be none (the orphaned ephemeral Prefect server, which
the next start ends, is counted apart). At the end: every session DONE, and each session's training
attempts (headers in its train.log): a session whose training had finished before a kill is never
trained again; an interrupted one resumes from its own last.pt or starts again.

Prints one JSON object (also written to ROOT/../kill9_<seed>.json).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def processes_of(root: Path) -> dict[str, list[int]]:
    """Live processes whose environment names `root` (set by the flow at start), by kind."""
    import psutil

    found: dict[str, list[int]] = {"exp3": [], "prefect_server": []}
    for process in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if process.pid == os.getpid() or not any(str(root) in value for value in process.environ().values()):
                continue
            command = " ".join(process.info["cmdline"] or ())  # the flow, a session, its workers; else the server
            found["exp3" if "exp3" in command else "prefect_server"].append(process.pid)
    return found


def train_attempts(root: Path) -> dict[str, int]:
    """Session name -> number of training starts recorded in its train.log."""
    return {log.parent.parent.name: log.read_text(errors="replace").count("==== exp3 train")
            for log in sorted(root.glob("*/*/logs/train.log"))}


def done_sessions(root: Path) -> list[str]:
    return sorted(marker.parent.name for marker in root.glob("*/*/DONE"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="a fresh output root (must not exist)")
    parser.add_argument("--kills", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-s", type=float, default=15.0)
    parser.add_argument("--max-s", type=float, default=120.0)
    args = parser.parse_args()
    root = args.root.absolute()
    if root.exists():
        print(f"error: {root} exists: pass a fresh --root (nothing is deleted)", file=sys.stderr)
        return 2
    rng = random.Random(args.seed)
    command = [sys.executable, str(REPO / "flows" / "exp3.py"), "--smoke", "--set", f"output_root={root}"]
    log = root.parent / f"kill9_{args.seed}.log"
    log.parent.mkdir(parents=True, exist_ok=True)  # the log sits beside the root
    events = []
    start_all = time.time()
    with open(log, "ab") as out:
        for kill in range(args.kills):
            at = rng.uniform(args.min_s, args.max_s)
            started = time.time()
            process = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
            try:
                process.wait(timeout=at)
                events.append({"kill": kill, "at_s": round(at, 1), "ended_before_kill": True,
                               "returncode": process.returncode})
                continue
            except subprocess.TimeoutExpired:
                pass
            done_before = done_sessions(root)
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            time.sleep(3.0)
            alive = processes_of(root)
            events.append({"kill": kill, "at_s": round(at, 1), "wall_s": round(time.time() - started, 1),
                           "done_at_kill": len(done_before), "alive_3s_after": alive["exp3"],
                           "prefect_servers_3s_after": alive["prefect_server"]})
            print(json.dumps(events[-1]), flush=True)
        started = time.time()
        final = subprocess.run(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    result = {
        "root": str(root), "seed": args.seed, "kills": events,
        "final_run": {"returncode": final.returncode, "wall_s": round(time.time() - started, 1)},
        "done": len(done_sessions(root)),
        "train_attempts": train_attempts(root),
        "survivors": sum(len(event.get("alive_3s_after", [])) for event in events),
        "total_wall_s": round(time.time() - start_all, 1),
        "log": str(log),
    }
    text = json.dumps(result, indent=2)
    print(text)
    (root.parent / f"kill9_{args.seed}.json").write_text(text + "\n")
    return 0 if final.returncode == 0 and result["survivors"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
