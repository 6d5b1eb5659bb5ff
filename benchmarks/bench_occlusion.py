"""Occlusion-suite build throughput vs the I/O floor (decode + re-encode copy), 640x640 JPEG inputs.

    .venv/bin/python benchmarks/bench_occlusion.py [--images 200] [--repeats 3] [--workers 2] [--format png]
    .venv/bin/python benchmarks/bench_occlusion.py --severities [--repeats 3]     # the K severity suites

Both sides use the same images, output format, encoder settings, worker count and process-pool
start method (`exp3.parallel.process_pool_context()`):
- suite: `build_occlusion_suite` end to end (scan + hash, test_clean copies, occlusion, encode,
  manifest, flush to disk, rename), into a fresh output directory each repeat;
- floor: a process pool that reads each image, decodes it and writes it re-encoded.
With `--severities`: the suite side is `build_severity_suites` with the default levels (K suites,
one scan), the floor K decode + re-encode passes (a severity suite writes occluded copies only);
per-level time = total / K.
Repeats are interleaved (floor, suite, floor, suite, ...); reported as JSON: median wall time (the
target), best-of wall time, the per-pair ratios, and CPU time of the process and its workers, which
stays meaningful when other jobs share the cores (compare `load_average_1min` with `cpu_count`
before trusting wall time).
Target: suite_time / floor_time <= 1.35. Scratch data lives in benchmarks/.scratch/ (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import forkserver
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exp3.config import OcclusionConfig  # noqa: E402
from exp3.dataset.synth import build_synthetic_dataset  # noqa: E402
from exp3.occlusion.codec import decode_image, encode_image  # noqa: E402
from exp3.occlusion.suites import build_occlusion_suite, build_severity_suites  # noqa: E402
from exp3.parallel import process_pool_context  # noqa: E402

SCRATCH = Path(__file__).resolve().parent / ".scratch" / "bench_occlusion"
SIZE = 640


def make_dataset(root: Path, count: int) -> Path:
    """`count` test images of exp3's embedded ingredient dataset (640x640 JPEG, 1-8 boxes each)."""
    return build_synthetic_dataset(root / f"synth-{count}", preset="full", seed=0,
                                   counts={"train": 1, "val": 1, "test": count}, workers=2)


def _copy_one(job: tuple[str, str, str]) -> int:
    source, target, output_format = job
    encoded = encode_image(decode_image(Path(source).read_bytes(), source), output_format)
    Path(target).write_bytes(encoded)
    return len(encoded)


def _cpu_seconds() -> float:
    """CPU seconds (user + sys) of this process, its reaped children and the forkserver's reaped children.

    Pool workers under forkserver are the server's children, so their CPU time lands in the
    server's cutime/cstime (Linux /proc) once the pool has shut down.
    """
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    total = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
    server_pid = getattr(forkserver._forkserver, "_forkserver_pid", None)
    stat = Path(f"/proc/{server_pid}/stat")
    if server_pid is not None and stat.exists():
        fields = stat.read_text().rsplit(")", 1)[1].split()  # fields[0] is field 3 (state)
        total += (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")  # cutime, cstime
    return total


def run_floor(data_yaml: Path, out: Path, output_format: str, workers: int) -> tuple[float, float]:
    """(wall s, CPU s) to decode + re-encode every test image into `out` with a pool of `workers`."""
    sources = sorted((data_yaml.parent / "images" / "test").glob("*.jpg"))
    out.mkdir(parents=True)
    jobs = [(str(p), str(out / f"{p.stem}.{output_format}"), output_format) for p in sources]
    start, cpu = time.perf_counter(), _cpu_seconds()
    with ProcessPoolExecutor(max_workers=workers, mp_context=process_pool_context()) as pool:  # the suite's pool kind
        list(pool.map(_copy_one, jobs, chunksize=max(1, len(jobs) // (workers * 8))))
    return time.perf_counter() - start, _cpu_seconds() - cpu


def run_suite(data_yaml: Path, out: Path, config: OcclusionConfig, workers: int,
              severities: bool = False) -> tuple[float, float]:
    """(wall s, CPU s) for a full `build_occlusion_suite` (or `build_severity_suites`) into the empty `out`."""
    out.mkdir(parents=True)
    start, cpu = time.perf_counter(), _cpu_seconds()
    if severities:
        build_severity_suites(data_yaml, out, config, workers=workers)
    else:
        build_occlusion_suite(data_yaml, out, config, workers=workers)
    return time.perf_counter() - start, _cpu_seconds() - cpu


def run_floors(data_yaml: Path, out: Path, output_format: str, workers: int, passes: int) -> tuple[float, float]:
    """`run_floor` `passes` times (one per severity level); summed (wall s, CPU s)."""
    runs = [run_floor(data_yaml, out / f"pass{index}", output_format, workers) for index in range(passes)]
    return sum(run[0] for run in runs), sum(run[1] for run in runs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--format", choices=["png", "jpg"], default="png")
    parser.add_argument("--severities", action="store_true", help="time the default severity suites instead")
    args = parser.parse_args(argv)
    data_yaml = make_dataset(SCRATCH / "dataset", args.images)
    config = OcclusionConfig(output_format=args.format)
    levels = len(config.severities) if args.severities else 1
    context = process_pool_context()
    if context.get_start_method() == "forkserver":
        forkserver.ensure_running()  # started once, outside the timed runs, for both sides
    floor_runs, suite_runs = [], []
    for repeat in range(args.repeats):
        runs = SCRATCH / "runs"
        shutil.rmtree(runs, ignore_errors=True)
        floor_runs.append(run_floors(data_yaml, runs / f"floor{repeat}", args.format, args.workers, levels))
        suite_runs.append(run_suite(data_yaml, runs / f"suite{repeat}", config, args.workers, args.severities))
        shutil.rmtree(runs, ignore_errors=True)
    wall_ratios = [suite[0] / floor[0] for floor, suite in zip(floor_runs, suite_runs)]
    floor, suite = statistics.median(r[0] for r in floor_runs), statistics.median(r[0] for r in suite_runs)
    floor_cpu, suite_cpu = statistics.median(r[1] for r in floor_runs), statistics.median(r[1] for r in suite_runs)
    result = {
        "images": args.images,
        "size": f"{SIZE}x{SIZE}",
        "output_format": args.format,
        "workers": args.workers,
        "pool_start_method": context.get_start_method(),
        "repeats": args.repeats,
        "suites": "severity" if args.severities else "fixed",
        "levels": levels,
        "suite_wall_s_per_level": round(suite / levels, 3),
        "floor_wall_s": [round(r[0], 3) for r in floor_runs],
        "suite_wall_s": [round(r[0], 3) for r in suite_runs],
        "floor_images_per_s": round(levels * args.images / floor, 2),
        "suite_images_per_s": round(levels * args.images / suite, 2),
        "ratio_suite_over_floor": round(suite / floor, 3),
        "ratio_best_of": round(min(r[0] for r in suite_runs) / min(r[0] for r in floor_runs), 3),
        "ratio_per_pair": [round(r, 3) for r in wall_ratios],
        "floor_cpu_s": [round(r[1], 3) for r in floor_runs],
        "suite_cpu_s": [round(r[1], 3) for r in suite_runs],
        "cpu_ratio_suite_over_floor": round(suite_cpu / floor_cpu, 3),
        "target_ratio": 1.35,
        "load_average_1min": round(os.getloadavg()[0], 2),
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
