"""Colab notebooks: generated from one script (no drift), and the smoke notebook runs headless."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"


def test_committed_notebooks_match_their_generator() -> None:
    result = subprocess.run([sys.executable, str(NOTEBOOKS / "build_notebooks.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_smoke_notebook_executes_headless(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    output_root, mirror = tmp_path / "nb-out", tmp_path / "drive" / "nb-out"  # in mirror mode, as on Colab
    monkeypatch.setenv("EXP3_NB_OUTPUT_ROOT", str(output_root))
    monkeypatch.setenv("EXP3_NB_MIRROR", str(mirror))
    monkeypatch.setenv("EXP3_NB_MODELS", "yolov8m")
    monkeypatch.setenv("EXP3_NB_SESSIONS", "S1_clean_train")
    monkeypatch.setenv("EXP3_NB_SET", "models.yolov8m.architecture=yolov8n.yaml")  # tiny, for CI time
    monkeypatch.setenv("EXP3_NB_STATUS_EVERY_S", "5")
    notebook = nbformat.read(NOTEBOOKS / "experiment3_smoketest_1epoch.ipynb", as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])]
    text = "".join(output.get("text", "") for output in outputs)
    assert "flow exit code: 0" in text
    boards = [o["data"]["text/plain"] for o in outputs if o.get("output_type") == "display_data"
              and "text/plain" in o.get("data", {}) and "the flow exited with code" in o["data"]["text/plain"]]
    assert len(boards) == 1, "the run cell shows one grid table, updated in place while the flow runs"
    assert "yolov8m__S1_clean_train" in boards[0] and "done" in boards[0]
    assert "the flow exited with code 0" in boards[0]
    assert (output_root / "yolov8m" / "yolov8m__S1_clean_train" / "DONE").is_file()
    assert "Run all cells again: the run starts from the mirror." in text
    assert f"mirror {mirror}: 0 sessions done" in text and f"mirror {mirror}: 1 sessions done" in text
    assert (mirror / "yolov8m" / "yolov8m__S1_clean_train" / "DONE").is_file() and (mirror / "report.md").is_file()
    tables = [o for o in outputs if o.get("output_type") == "execute_result" and "text/html" in o.get("data", {})]
    assert tables and "S1_clean_train" in tables[0]["data"]["text/html"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # the summary charts, shown inline


def test_the_install_cell_run_again_in_its_kernel_clones_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) \
        -> None:
    """Colab, "run all cells again" in a live kernel (README): the first run cloned the repository into ./exp3 and
    moved there; the second finds that checkout where it stands and clones nothing (a second clone went into the
    checkout's own exp3/ package folder and failed)."""
    notebook = nbformat.read(NOTEBOOKS / "experiment3_full.ipynb", as_version=4)
    cell = next(cell.source for cell in notebook.cells if cell.source.startswith("# ---- Install"))
    commands: list[list[str]] = []

    def run(command: list[str], check: bool) -> None:
        commands.append(command)
        if command[:2] == ["git", "clone"]:  # a checkout stand-in: what the cell looks for
            shutil.copytree(REPO / "flows", Path(command[-1]) / "flows")

    monkeypatch.setattr(subprocess, "run", run)
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(tmp_path)
    namespace = {"os": os, "REPO_URL": "https://example.org/exp3.git"}
    for _ in range(2):
        exec(cell, namespace)
    assert [command[:2] for command in commands].count(["git", "clone"]) == 1
    assert Path.cwd() == (tmp_path / "exp3").resolve() and len(commands) == 3  # one clone, two pip installs


def test_the_full_notebook_on_a_runtime_without_a_gpu_stops_before_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Colab CPU runtime with USE_GPU = True: configs/exp3.yaml's `device: null` let Ultralytics train the 640 px
    grid on the CPU, unsaid, for days. The run cell now stops first, saying the fix."""
    import torch

    notebook = nbformat.read(NOTEBOOKS / "experiment3_full.ipynb", as_version=4)
    settings, run_cell = (next(cell.source for cell in notebook.cells if cell.source.startswith(start))
                          for start in ("# ---- Settings", "# ---- Run the flow"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.chdir(REPO)
    started: list[object] = []
    namespace = {"sys": sys, "Path": Path, "run_and_watch": lambda *args, **kwargs: started.append(args)}
    exec(settings, namespace)
    with pytest.raises(SystemExit, match="USE_GPU = True, but this runtime has no GPU: Runtime > Change runtime type"):
        exec(run_cell, namespace)
    assert not started
    namespace["USE_GPU"] = False                                    # the CPU, on purpose: the run starts
    exec(run_cell.split("flow_log = ")[0], namespace)
    assert "train.device=cpu" in namespace["command"]


def _run_cell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, **settings: object) -> dict:
    """The smoke notebook's settings and run cells, `run_and_watch` standing in for the flow (it exits `code`)."""
    notebook = nbformat.read(NOTEBOOKS / "experiment3_smoketest_1epoch.ipynb", as_version=4)
    settings_cell, run_cell = (next(cell.source for cell in notebook.cells if cell.source.startswith(start))
                               for start in ("# ---- Settings", "# ---- Run the flow"))
    monkeypatch.chdir(REPO)

    def flow(command: list[str], root: str, log: Path, interval_s: float) -> int:
        log.write_text("error: dataset yaml 'my_data.yaml' does not exist\n")
        return code

    namespace = {"sys": sys, "Path": Path, "run_and_watch": flow}
    exec(settings_cell, namespace)
    namespace.update(OUTPUT_ROOT=str(tmp_path / "out"), MIRROR=None, **settings)
    exec(run_cell, namespace)
    return namespace


def test_a_refused_run_stops_before_the_cells_that_show_an_earlier_runs_results(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A run refused in one line (exit 2) went on to the table and plots cells, which showed the last run's
    summary_metrics.csv and charts as if they were this run's."""
    assert _run_cell(tmp_path, monkeypatch, 1)["code"] == 1  # some session failed: the table shows which
    with pytest.raises(SystemExit, match=r"flow exit code 2: the cells below would show an earlier run's results"):
        _run_cell(tmp_path, monkeypatch, 2)


@pytest.mark.parametrize(("setting", "variable"), [("output_root=/elsewhere", "OUTPUT_ROOT"),
                                                   ("models.yolov8m.epochs=7", "EPOCHS"),
                                                   ("train.device=0", "USE_GPU")])
def test_extra_settings_may_not_replace_what_the_notebook_sets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               setting: str, variable: str) -> None:
    """EXTRA_SETTINGS came after the notebook's own --set, so it won: the flow wrote another root, or trained other
    epochs, while the status, table and plots cells read OUTPUT_ROOT."""
    with pytest.raises(SystemExit, match=f"EXTRA_SETTINGS '{setting}': this notebook sets .* from {variable}; set "
                                         f"{variable} in the settings cell instead"):
        _run_cell(tmp_path, monkeypatch, 0, EXTRA_SETTINGS=[setting], MODELS=["yolov8m"], USE_GPU=False)
    kept = _run_cell(tmp_path, monkeypatch, 0, EXTRA_SETTINGS=["eval.conf=0.3"], MODELS=["yolov8m"], USE_GPU=False)
    assert kept["command"][-4:] == ["--set", "train.device=cpu", "--set", "eval.conf=0.3"]
    assert "--rerun-failed" not in kept["command"]  # a FAILED session stays skipped unless RERUN_FAILED is set
    assert "--rerun-failed" in _run_cell(tmp_path, monkeypatch, 0, RERUN_FAILED=True)["command"]


@pytest.mark.parametrize(("output_root", "local", "mirror"), [
    ("runs/exp3", "/content/runs/exp3", "/content/drive/MyDrive/runs/exp3"),
    ("/content/exp3", "/content/exp3", "/content/drive/MyDrive/exp3"),   # was: the mirror == the root, refused
    ("/data/exp3", "/data/exp3", "/content/drive/MyDrive/exp3"),
])
def test_the_drive_cell_keeps_the_root_local_and_mirrors_it_to_drive(monkeypatch: pytest.MonkeyPatch,
                                                                     output_root: str, local: str, mirror: str) -> None:
    notebook = nbformat.read(NOTEBOOKS / "experiment3_full.ipynb", as_version=4)
    cell = next(cell.source for cell in notebook.cells if cell.source.startswith("# ---- Colab"))
    colab = types.ModuleType("google.colab")
    colab.drive = types.SimpleNamespace(mount=lambda path: None)
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    namespace = {"Path": Path, "IN_COLAB": True, "USE_DRIVE": True, "OUTPUT_ROOT": output_root, "MIRROR": None}
    exec(cell.split("if MIRROR:")[0], namespace)
    assert (namespace["OUTPUT_ROOT"], namespace["MIRROR"]) == (local, mirror)
