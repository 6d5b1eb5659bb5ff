"""Generate both Colab notebooks from one definition, so they never drift.

    python notebooks/build_notebooks.py            # rewrite notebooks/*.ipynb
    python notebooks/build_notebooks.py --check    # exit 1 if a committed notebook differs

The notebooks hold no logic of their own: they install exp3, keep the output root on the VM's
local disk and mirror the results to Google Drive (`mirror.path`: a new VM starts from it), run
`flows/exp3.py` exactly as the CLI does, and display `summary_metrics.csv` and the plots. Every
setting is in the first code cell.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent

NOTEBOOKS: dict[str, dict[str, str]] = {
    "experiment3_full.ipynb": {
        "title": "exp3: the full occlusion-robustness experiment (YOLOv8m + RT-DETR-l, 12 sessions)",
        "config": "configs/exp3.yaml",
        "output_root": "runs/exp3",
        "epochs": "None",
        "run_pilot": "True",
        "note": "Needs a GPU runtime (Runtime > Change runtime type > GPU). Hours per session on a T4. "
                "Run the pilot cell first: it tells you, in about an hour on a GPU, whether this run can detect a "
                "known effect.",
    },
    "experiment3_smoketest_1epoch.ipynb": {
        "title": "exp3 smoke test: the same pipeline, 12 sessions x 1 epoch on the embedded dataset",
        "config": "configs/smoke.yaml",
        "output_root": "runs/exp3-smoke",
        "epochs": "1",
        "run_pilot": "False",
        "note": "Runs on CPU or GPU in minutes; checks the wiring, not the science. Before a real run, set "
                "RUN_PILOT = True (or use the full notebook): the pilot checks the science.",
    },
}

CONFIG_CELL = '''# ---- Settings: the only cell to edit ----------------------------------------------------
import os

CONFIG = "{config}"                      # experiment config (see configs/)
DATA_YAML = None                         # your YOLO data.yaml (train/val/test); None = embedded synthetic dataset
OUTPUT_ROOT = os.environ.get("EXP3_NB_OUTPUT_ROOT", "{output_root}")  # Colab: under /content, mirrored to Drive
MODELS = os.environ.get("EXP3_NB_MODELS", "yolov8m rtdetr-l").split()   # any of the config's models
SESSIONS = os.environ.get("EXP3_NB_SESSIONS", "").split() or None       # None = all six sessions
EPOCHS = {epochs}                        # None = the config's epochs; an int overrides it for every model
USE_GPU = True                           # False = train on CPU; True = the config's train.device
USE_DRIVE = True                         # Colab: train on the VM's disk, mirror the results to Google Drive
MIRROR = os.environ.get("EXP3_NB_MIRROR")  # the mirror folder (mirror.path); on Colab with USE_DRIVE: on Drive
REPO_URL = None                          # Colab: git URL of your exp3 copy; None = already inside a checkout
EXTRA_SETTINGS = os.environ.get("EXP3_NB_SET", "").split()              # extra KEY=VALUE config overrides
RERUN_FAILED = False                     # True = run sessions that FAILED in an earlier run again (else skipped)
RUN_PILOT = {run_pilot}                      # run this before the overnight run: `flows/exp3.py --pilot` first
STATUS_EVERY_S = float(os.environ.get("EXP3_NB_STATUS_EVERY_S", 60))   # seconds between grid refreshes while a flow runs
'''

INSTALL_CELL = '''# ---- Install (Colab) or locate the checkout ----------------------------------------------
import subprocess
import sys
from pathlib import Path

IN_COLAB = "google.colab" in sys.modules  # Colab imports it before any cell runs
# the checkout: here (also when this cell runs again: it moved here), its parent, or ./exp3; cloned only if none
CHECKOUT = next((folder for folder in (Path.cwd(), Path.cwd().parent, Path("exp3"))
                 if (folder / "flows" / "exp3.py").exists()), None)
if CHECKOUT is None and IN_COLAB and REPO_URL:
    subprocess.run(["git", "clone", REPO_URL, "exp3"], check=True)
    CHECKOUT = Path("exp3")
if CHECKOUT is None:
    raise FileNotFoundError("no exp3 checkout found: set REPO_URL or start the notebook inside the repository")
os.chdir(CHECKOUT.resolve())
if IN_COLAB:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", "."], check=True)
if str(Path.cwd()) not in sys.path:  # the checkout's package, also right after a pip install in this kernel
    sys.path.insert(0, str(Path.cwd()))
from exp3.status import run_and_watch  # runs a flow and shows the grid while it trains

print("exp3 checkout:", Path.cwd())
'''

DRIVE_CELL = '''# ---- Colab: train on the VM's disk, mirror to Google Drive (a new VM resumes from the mirror) ----
# Prefect's database, locks and the training in progress need a local disk; Drive gets the done sessions, a
# checkpoint per running session every mirror.checkpoint_minutes (30) and the report.
if IN_COLAB and USE_DRIVE:
    from google.colab import drive

    drive.mount("/content/drive")
    local = Path("/content") / OUTPUT_ROOT  # an absolute OUTPUT_ROOT is kept as it is
    inside = local.relative_to("/content") if local.is_relative_to("/content") else Path(local.name)
    MIRROR = MIRROR or str(Path("/content/drive/MyDrive") / inside)
    OUTPUT_ROOT = str(local)
print("output root (local):", OUTPUT_ROOT)
if MIRROR:
    from exp3.session.mirror import describe

    print("Disconnected or a new VM? Run all cells again: the run starts from the mirror.")
    print(describe(MIRROR))
'''

PILOT_CELL = '''# ---- Pilot: run this before the overnight run (its own output root) ----------------------------
# The real pipeline, short (configs/pilot-gpu.yaml on a GPU: about an hour; configs/pilot.yaml on CPU: ~30 min).
# Its report's positive control says which metrics detect S2 (occluded training) > S1 on occluded images.
if RUN_PILOT:
    PILOT_ROOT = str(Path(OUTPUT_ROOT).parent / "exp3-pilot")
    pilot_log = Path(f"{PILOT_ROOT}.flow.log")
    pilot_mirror = ["--set", f"mirror.path={Path(MIRROR).parent / 'exp3-pilot'}"] if MIRROR else []
    code = run_and_watch([sys.executable, "flows/exp3.py", "--pilot", "--set", f"output_root={PILOT_ROOT}",
                          *pilot_mirror], PILOT_ROOT, pilot_log, interval_s=STATUS_EVERY_S)
    print("\\n".join(pilot_log.read_text(errors="replace").splitlines()[-5:]))
    if code not in (0, 1):  # refused or stopped: an earlier pilot's report.md is not this one's
        raise SystemExit(f"pilot exit code {code}: no report of this pilot; the log above says why ({pilot_log})")
    report = (Path(PILOT_ROOT) / "report.md").read_text() if (Path(PILOT_ROOT) / "report.md").exists() else ""
    section = report.split("## Positive control")[-1].split("\\n## ")[0] if report else "no report: see the log above"
    print("## Positive control" + section)
'''

RUN_CELL = '''# ---- Run the flow (crash-safe: after a disconnect, run this cell again) ---------------------
import torch

from exp3.config import load_config

# what this notebook sets (key -> value, the settings-cell variable it comes from): the cells below read those
own = {"output_root": (OUTPUT_ROOT, "OUTPUT_ROOT")}
if DATA_YAML:
    own |= {"dataset.kind": ("yaml", "DATA_YAML"), "dataset.data_yaml": (DATA_YAML, "DATA_YAML")}
if EPOCHS is not None:
    own |= {f"models.{model}.epochs": (EPOCHS, "EPOCHS") for model in MODELS}
if not USE_GPU:
    own["train.device"] = ("cpu", "USE_GPU")
elif load_config(CONFIG).train.device != "cpu" and not torch.cuda.is_available():  # else days on the CPU, unsaid
    raise SystemExit("USE_GPU = True, but this runtime has no GPU: Runtime > Change runtime type > a GPU, then run "
                     "all cells again (or set USE_GPU = False to train on the CPU)")
if MIRROR:
    own["mirror.path"] = (MIRROR, "MIRROR")
for setting in EXTRA_SETTINGS:
    if (key := setting.split("=", 1)[0].strip()) in own:  # the later --set would win, unseen by the cells below
        raise SystemExit(f"EXTRA_SETTINGS {setting!r}: this notebook sets {key} from {own[key][1]}; set "
                         f"{own[key][1]} in the settings cell instead")
command = [sys.executable, "flows/exp3.py", "--config", CONFIG, "--models", *MODELS,
           *(["--sessions", *SESSIONS] if SESSIONS else []), *(["--rerun-failed"] if RERUN_FAILED else []),
           *(arg for key, (value, _) in own.items() for arg in ("--set", f"{key}={value}")),
           *(arg for setting in EXTRA_SETTINGS for arg in ("--set", setting))]
print(" ".join(command))
flow_log = Path(f"{OUTPUT_ROOT}.flow.log")  # beside the output root; the table below refreshes while it runs
code = run_and_watch(command, OUTPUT_ROOT, flow_log, interval_s=STATUS_EVERY_S)
print("\\n".join(flow_log.read_text(errors="replace").splitlines()[-25:]))
print("flow exit code:", code, "(0 = every session done; 1 = some failed, see the table)")
if MIRROR:
    print(describe(MIRROR))
if code not in (0, 1):  # refused or stopped: the table and plots below would be an earlier run's
    raise SystemExit(f"flow exit code {code}: the cells below would show an earlier run's results; the log above "
                     f"says why ({flow_log})")
'''

STATUS_CELL = '''# ---- Where the grid stands (safe while a run is going) -------------------------------------
status = subprocess.run([sys.executable, "-m", "exp3.status", "--root", OUTPUT_ROOT], capture_output=True, text=True)
print(status.stdout + status.stderr)  # a status that cannot read the root says why on stderr
'''

TABLE_CELL = '''# ---- Summary table --------------------------------------------------------------------------
import pandas as pd

summary = pd.read_csv(Path(OUTPUT_ROOT) / "summary_metrics.csv")
summary[["model", "session", "split", "status", "map50", "map50_95", "ingredient_micro_f1",
         "ingredient_samples_f1", "detection_f1", "rF1_micro"]]
'''

PLOTS_CELL = '''# ---- Plots ------------------------------------------------------------------------------------
from IPython.display import Image, display

for png in sorted((Path(OUTPUT_ROOT) / "plots").glob("*.png")):
    print(png.name)
    display(Image(filename=str(png), width=900))
'''


def build(name: str) -> nbformat.NotebookNode:
    """One notebook from `NOTEBOOKS[name]`."""
    spec = NOTEBOOKS[name]
    cells = [
        nbformat.v4.new_markdown_cell(f"# {spec['title']}\n\n{spec['note']}\n\nEdit the settings cell, then run "
                                      "all cells. Generated by `notebooks/build_notebooks.py`: edit that, not this."),
        nbformat.v4.new_code_cell(CONFIG_CELL.format(**spec)),
        nbformat.v4.new_code_cell(INSTALL_CELL),
        nbformat.v4.new_code_cell(DRIVE_CELL),
        nbformat.v4.new_code_cell(PILOT_CELL),
        nbformat.v4.new_code_cell(RUN_CELL),
        nbformat.v4.new_code_cell(STATUS_CELL),
        nbformat.v4.new_code_cell(TABLE_CELL),
        nbformat.v4.new_code_cell(PLOTS_CELL),
    ]
    notebook = nbformat.v4.new_notebook(cells=cells)
    notebook.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                         "language_info": {"name": "python"}, "accelerator": "GPU", "colab": {"provenance": []}}
    for index, cell in enumerate(notebook.cells):
        cell["id"] = f"cell-{index}"
    return notebook


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a committed notebook is out of date")
    args = parser.parse_args(argv)
    stale = []
    for name in NOTEBOOKS:
        text = nbformat.writes(build(name)) + "\n"
        path = HERE / name
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
    if stale:
        print(f"error: out of date: {', '.join(stale)}: run python notebooks/build_notebooks.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
