"""Pack exp3's runtime dependencies as wheels for a lent GPU machine that has torch but no registry.

    python benchmarks/gpu_wheels.py            # writes .whl1/, .whl2/, ... (each under --max-mb)

The machine's image already holds torch, torchvision, numpy, pandas, scipy, opencv, matplotlib and
pyyaml; everything else exp3 imports at run time (ultralytics, polars, prefect's stack, altair,
vl-convert) is resolved from this venv's installed distributions, extras that are installed
included (sqlalchemy[asyncio] needs greenlet), downloaded for CPython 3.12 manylinux x86-64 and
split into folders small enough for one transfer each. benchmarks/gpu_pilot.sh installs them.
Add the folders to .git/info/exclude (`/.whl*/`).
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from packaging.requirements import Requirement

ON_THE_IMAGE = {"torch", "torchvision", "triton", "numpy", "pandas", "scipy", "opencv-python",
                "opencv-python-headless", "pillow", "matplotlib", "contourpy", "fonttools", "kiwisolver",
                "cycler", "pyyaml", "psutil", "sympy", "networkx", "mpmath", "jinja2", "markupsafe",
                "requests", "urllib3", "certifi", "idna", "charset-normalizer", "filelock", "fsspec",
                "packaging", "setuptools", "python-dateutil"}
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28, 31, 34, 35)] + ["manylinux2014_x86_64",
                                                                                  "manylinux1_x86_64"]


def _name(text: str) -> str:
    return re.sub(r"[-_.]+", "-", text).lower()


def runtime_closure(root: str = "exp3") -> dict[str, str]:
    """name -> installed version of every distribution `root` needs at run time (installed extras too)."""
    found: dict[str, str] = {}
    stack = [root]
    while stack:
        try:
            dist = metadata.distribution(stack.pop())
        except metadata.PackageNotFoundError:
            continue
        name = _name(dist.metadata["Name"])
        if name in found:
            continue
        found[name] = dist.version
        for line in dist.requires or []:
            requirement = Requirement(line)
            if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
                extras = re.findall(r'extra == "([^"]+)"', str(requirement.marker))
                if not any(extra in {"asyncio"} for extra in extras):
                    continue
            if not _name(requirement.name).startswith(("nvidia-", "cuda-")):
                stack.append(requirement.name)
    found.pop(_name(root), None)
    return {name: version for name, version in found.items() if name not in ON_THE_IMAGE}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-mb", type=float, default=58.0, help="size of one folder (the transfer is 64 MiB "
                        "with the working tree)")
    parser.add_argument("--out", type=Path, default=Path("."), help="where the .whlN folders go")
    args = parser.parse_args(argv)
    pins = [f"{name}=={version}" for name, version in sorted(runtime_closure().items())]
    with tempfile.TemporaryDirectory() as scratch:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                   "--python-version", "3.12", "--implementation", "cp", "-d", scratch, *pins]
        for platform in PLATFORMS:
            command[5:5] = ["--platform", platform]
        subprocess.run(command, check=True)
        wheels = sorted(Path(scratch).glob("*.whl"), key=lambda path: -path.stat().st_size)
        folders: list[tuple[float, list[Path]]] = []
        for wheel in wheels:  # first fit, largest first
            size = wheel.stat().st_size / 2**20
            if size > args.max_mb:
                raise SystemExit(f"error: {wheel.name} alone is {size:.0f} MB, over --max-mb {args.max_mb}")
            for index, (used, members) in enumerate(folders):
                if used + size <= args.max_mb:
                    folders[index] = (used + size, [*members, wheel])
                    break
            else:
                folders.append((size, [wheel]))
        for index, (used, members) in enumerate(folders, start=1):
            target = args.out / f".whl{index}"
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            for wheel in members:
                shutil.move(str(wheel), target / wheel.name)
            print(f"{target}: {len(members)} wheels, {used:.1f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
