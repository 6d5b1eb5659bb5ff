"""The mirror's figures (BENCHMARKS.md, issue 36), each printed and written to `<out>/<what>.json`:

    python benchmarks/bench_mirror.py overhead OUT   smoke without / with a mirror, back to back (idle machine)
    python benchmarks/bench_mirror.py readonly OUT   smoke with its mirror on a bind mount made read-only once the
                                                     first session is DONE there (root: mount --bind)
    python benchmarks/bench_mirror.py pilot OUT      the CPU pilot with a mirror: bytes written to it, what it holds
    python benchmarks/bench_mirror.py sizes OUT      checkpoint sizes of yolov8m / rtdetr-l (in training, with the
                                                     optimizer; final, stripped): the projection's inputs

OUT must not exist (nothing is overwritten).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FLOW = [sys.executable, str(REPO / "flows" / "exp3.py")]


def _flow(args: list[str], log: Path) -> tuple[int, float, str]:
    start = time.perf_counter()
    with open(log, "w") as handle:
        code = subprocess.run([*FLOW, *args], stdout=handle, stderr=subprocess.STDOUT, cwd=REPO).returncode
    return code, round(time.perf_counter() - start, 1), log.read_text(errors="replace")


def _done(root: Path) -> int:
    return len(list(root.glob("*/*__*/DONE")))


def _written_mb(text: str) -> float | None:
    found = re.findall(r"\(([0-9.]+) MB written by this run\)", text)
    return float(found[-1]) if found else None


def _size(folder: Path) -> int:
    return sum(file.stat().st_size for file in folder.rglob("*") if file.is_file())


def overhead(out: Path) -> dict:
    plain_code, plain, _ = _flow(["--smoke", "--set", f"output_root={out / 'plain'}"], out / "plain.log")
    mirror = out / "mirror"
    code, wall, text = _flow(["--smoke", "--set", f"output_root={out / 'local'}", "--set", f"mirror.path={mirror}"],
                             out / "mirrored.log")
    return {"plain_s": plain, "plain_rc": plain_code, "mirrored_s": wall, "mirrored_rc": code,
            "ratio": round(wall / plain, 3), "done_local": _done(out / "local"), "done_mirror": _done(mirror),
            "mirror_mb_written": _written_mb(text), "mirror_bytes": _size(mirror)}


def readonly(out: Path) -> dict:
    disk, mirror = out / "mirror-disk", out / "mirror"
    disk.mkdir()
    mirror.mkdir()
    subprocess.run(["mount", "--bind", str(disk), str(mirror)], check=True)
    try:
        start = time.perf_counter()
        log = out / "flow.log"
        with open(log, "w") as handle:
            process = subprocess.Popen([*FLOW, "--smoke", "--set", f"output_root={out / 'local'}", "--set",
                                        f"mirror.path={mirror}"], stdout=handle, stderr=subprocess.STDOUT, cwd=REPO)
            while _done(mirror) == 0 and process.poll() is None:
                time.sleep(0.2)
            subprocess.run(["mount", "-o", "remount,ro,bind", str(mirror)], check=True)
            read_only_at = round(time.perf_counter() - start, 1)
            code = process.wait()
    finally:
        subprocess.run(["umount", str(mirror)], check=False)
    text = log.read_text(errors="replace")
    warnings = [line.split("WARNING exp3 mirror: ", 1)[1] for line in text.splitlines()
                if "WARNING exp3 mirror: " in line]
    return {"rc": code, "wall_s": round(time.perf_counter() - start, 1), "read_only_after_s": read_only_at,
            "done_local": _done(out / "local"), "done_on_mirror_before": _done(disk),
            "warning_lines": len(warnings), "distinct_warnings": len(set(warnings)), "warnings": sorted(set(warnings))}


def pilot(out: Path) -> dict:
    mirror = out / "mirror"
    code, wall, text = _flow(["--pilot", "--set", f"output_root={out / 'local'}", "--set", f"mirror.path={mirror}"],
                             out / "pilot.log")
    sessions = {folder.name: _size(folder) for folder in sorted(mirror.glob("*/*__*"))}
    return {"rc": code, "wall_s": wall, "done_mirror": _done(mirror), "mirror_mb_written": _written_mb(text),
            "mirror_bytes": _size(mirror), "session_bytes": sessions,
            "best_pt_bytes": {p.parents[2].name: p.stat().st_size for p in mirror.glob("*/*__*/train/weights/best.pt")},
            "report_bytes": _size(mirror) - sum(sessions.values())}


SIZES = r"""
import json, sys
from pathlib import Path
from ultralytics import RTDETR, YOLO
data, project, out = sys.argv[1], Path(sys.argv[2]), {}
for name, cls, yaml in (("yolov8m", YOLO, "yolov8m.yaml"), ("rtdetr-l", RTDETR, "rtdetr-l.yaml")):
    model, seen = cls(yaml), {}
    model.add_callback("on_model_save", lambda t: seen.setdefault("in_training", t.last.stat().st_size))
    model.train(data=data, epochs=2, imgsz=64, batch=4, device="cpu", workers=0, project=str(project), name=name,
                exist_ok=True, plots=False, verbose=False)
    out[name] = {"in_training_last_pt": seen["in_training"], "final_best_pt": (project / name / "weights" / "best.pt").stat().st_size}
print(json.dumps(out))
"""


def sizes(out: Path) -> dict:
    data = out / "data"
    subprocess.run([sys.executable, "-m", "exp3.dataset", "synth", "--out", str(data), "--preset", "smoke"],
                   check=True, cwd=REPO, capture_output=True)
    result = subprocess.run([sys.executable, "-c", SIZES, str(data / "data.yaml"), str(out / "runs")],
                            capture_output=True, text=True, cwd=out)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> int:
    commands = {"overhead": overhead, "readonly": readonly, "pilot": pilot, "sizes": sizes}
    if len(argv) != 2 or argv[0] not in commands:
        print(f"usage: python benchmarks/bench_mirror.py {{{','.join(commands)}}} OUT", file=sys.stderr)
        return 2
    out = Path(argv[1]).absolute() / argv[0]
    if out.exists():
        print(f"error: {out} exists: pass a new folder (nothing there is overwritten)", file=sys.stderr)
        return 2
    out.mkdir(parents=True)
    figures = commands[argv[0]](out)
    (out / f"{argv[0]}.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
