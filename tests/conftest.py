"""Shared fixtures: offline Ultralytics settings in a temp dir and one tiny real dataset."""

from __future__ import annotations

import atexit
import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from exp3.train.offline import apply_offline_environment

# Before any test imports ultralytics: no network, settings and fonts in a throw-away dir.
_OFFLINE_ROOT = Path(tempfile.mkdtemp(prefix="exp3-tests-"))
atexit.register(shutil.rmtree, _OFFLINE_ROOT, ignore_errors=True)  # one per test process: gone when it ends
apply_offline_environment(_OFFLINE_ROOT)


SLOWEST_FIRST: tuple[str, ...] = ("test_flow.py", "test_session.py", "test_metrics.py", "test_training.py",
                                  "test_notebooks.py", "test_severity.py")
"""Test files by their share of the suite's time on 2 cores, longest first (sums of `pytest --durations=60`,
BENCHMARKS.md "Test time"; test_session or test_metrics, whichever asks first, trains the instrument)."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slowest files first, the rest in their order: pytest-xdist hands each worker a whole file at a time, in
    collection order (`--no-loadscope-reorder`); its default, the files with most tests first, started the longest,
    test_flow.py (~760 s), 15th, and one worker was busy with it long after the other had finished."""
    rank = {name: place for place, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # a stable sort: ties keep collection order


def records_to_json(records: Sequence[Any]) -> list[dict[str, Any]]:
    """`ImageRecord`s as a predictions file's "images" (the inverse of `exp3.evaluate.metrics.records_from_json`):
    plain lists and numbers, `width`/`height` only when known. Tests import it: `from conftest import ...`."""
    from exp3.evaluate.metrics import JSON_OPTIONAL_KEYS, JSON_REQUIRED_KEYS

    return [{"image_id": record.image_id, **{key: getattr(record, key).tolist() for key in JSON_REQUIRED_KEYS[1:]},
             **{key: int(getattr(record, key)) for key in JSON_OPTIONAL_KEYS if getattr(record, key) is not None}}
            for record in records]


@pytest.fixture(scope="session", autouse=True)
def charts_are_validated() -> Iterator[None]:
    """The report saves its charts without Altair's schema validation (2-3 s of a pilot report's ~20 s); every
    chart a test's report draws is validated against the Vega-Lite schema here instead, before it is saved."""
    from exp3.report import plots  # reason: the report's Altair, loaded once per test process, after the settings

    save = plots.save_chart

    def validated_save(chart, path):  # type: ignore[no-untyped-def]
        chart.to_dict()  # Altair validates by default and raises on a chart the schema does not allow
        return save(chart, path)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(plots, "save_chart", validated_save)
        yield


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The environment of a flow process that runs against one Prefect API server per test process (PREFECT_API_URL,
    as a deployment on a work pool runs): it skips the temporary server a plain `python flows/exp3.py` starts for its
    own database at <root>/.prefect (20-45 s of a tiny test flow's wall on 2 cores, migrations included). Tests of
    that database, of a kill -9 in its server's life and of the notebooks keep their own."""
    from prefect.server.api.server import SubprocessASGIServer

    from exp3.grid.flowenv import PREFECT_SETTINGS

    with pytest.MonkeyPatch.context() as patch:  # the server's database in the test run's temp dir, its settings
        for name, value in {**PREFECT_SETTINGS, "PREFECT_HOME": str(tmp_path_factory.mktemp("prefect-api"))}.items():
            patch.setenv(name, value)
        server = SubprocessASGIServer()
        server.start(timeout=int(PREFECT_SETTINGS["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"]))
    try:
        yield {**os.environ, "PREFECT_API_URL": server.api_url}
    finally:
        server.stop()


@pytest.fixture(scope="session")
def tiny_data_yaml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke preset at 96 px: 8 train / 4 val / 4 test images, built once per test session."""
    from exp3.dataset.synth import build_synthetic_dataset

    out = tmp_path_factory.mktemp("tiny-data") / "synthetic"
    return build_synthetic_dataset(out, preset="smoke", seed=0, counts={"train": 8, "val": 4, "test": 4},
                                   image_size=96)


@pytest.fixture()
def writable_data_yaml(tiny_data_yaml: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny dataset that a test may damage; returns its data.yaml."""
    import yaml

    root = tmp_path / "data-copy"
    shutil.copytree(tiny_data_yaml.parent, root)
    spec = yaml.safe_load(tiny_data_yaml.read_text())
    spec["path"] = str(root)
    (root / "data.yaml").write_text(yaml.safe_dump(spec))
    return root / "data.yaml"


@pytest.fixture(scope="session")
def tiny_yolo_checkpoint(tiny_data_yaml: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`last.pt` of yolov8n.yaml trained 1 epoch at imgsz 64 on the tiny dataset (plain Ultralytics)."""
    from ultralytics import YOLO

    project = tmp_path_factory.mktemp("tiny-train")
    YOLO("yolov8n.yaml").train(data=str(tiny_data_yaml), epochs=1, imgsz=64, batch=4, device="cpu", amp=False,
                               workers=0, plots=False, project=str(project), name="run", exist_ok=True,
                               verbose=False)
    return project / "run" / "weights" / "last.pt"


# The trained test instrument: a model that clearly detects, so metric code is checked against
# independent implementations on non-zero predictions. It must stay far from these bars on any
# supported torch / Ultralytics release; `check_instrument` refuses a model below them.
INSTRUMENT_MIN_MAP50 = 0.5
INSTRUMENT_MIN_INGREDIENTS = 20
INSTRUMENT_TRAIN_IMAGES = 384


def built_once(tmp_path_factory: pytest.TempPathFactory, worker_id: str, name: str,
               build: Callable[[Path], Path]) -> Path:
    """`build(folder)` run once per test run, not once per pytest-xdist worker: the first worker to ask builds it
    under the run's shared temp dir while holding a lock; the others wait on the lock and take its result."""
    base = tmp_path_factory.getbasetemp()
    shared = base if worker_id == "master" else base.parent  # workers' basetemps are popen-gw<N> of one run's dir
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        built = shared / f"{name}.built"
        if not built.is_file():  # a worker whose build failed left no record: the next one builds afresh
            built.write_text(str(build(Path(tempfile.mkdtemp(prefix=f"{name}-", dir=shared)))))
        return Path(built.read_text())


@pytest.fixture(scope="session")
def trained_data_yaml(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """The smoke preset at 96 px with INSTRUMENT_TRAIN_IMAGES train / 16 val / 16 test images (one per test run)."""
    from exp3.dataset.synth import build_synthetic_dataset

    return built_once(tmp_path_factory, worker_id, "trained-data", lambda out: build_synthetic_dataset(
        out / "synthetic", preset="smoke", seed=0, counts={"train": INSTRUMENT_TRAIN_IMAGES, "val": 16, "test": 16},
        image_size=96))


def _instrument_quality(checkpoint: Path, data_yaml: Path, project: Path) -> tuple[float, int]:
    """(test mAP50 by plain `val`, ingredients listed by plain `predict` at conf 0.25 over the test images)."""
    from ultralytics import YOLO

    map50 = float(YOLO(str(checkpoint)).val(data=str(data_yaml), split="test", device="cpu", plots=False,
                                             verbose=False, project=str(project), name="quality").box.map50)
    files = sorted((data_yaml.parent / "images" / "test").glob("*.jpg"))
    results = YOLO(str(checkpoint)).predict([str(f) for f in files], conf=0.25, device="cpu", verbose=False)
    return map50, sum(len(set(result.boxes.cls.tolist())) for result in results)


@pytest.fixture(scope="session")
def check_instrument():
    """Fails the requesting test with one line when a checkpoint is below the instrument's bars."""
    def check(checkpoint: Path, data_yaml: Path, project: Path) -> None:
        map50, ingredients = _instrument_quality(checkpoint, data_yaml, project)
        if map50 < INSTRUMENT_MIN_MAP50 or ingredients < INSTRUMENT_MIN_INGREDIENTS:
            pytest.fail(f"test instrument undertrained: mAP50 {map50:.2f}, {ingredients} ingredients at 0.25 "
                        f"(needs >= {INSTRUMENT_MIN_MAP50} and >= {INSTRUMENT_MIN_INGREDIENTS}) — not a metric bug; "
                        "retune trained_yolo_checkpoint in tests/conftest.py", pytrace=False)
    return check


@pytest.fixture(scope="session")
def trained_yolo_checkpoint(trained_data_yaml: Path, tmp_path_factory: pytest.TempPathFactory, worker_id: str,
                            check_instrument) -> Path:
    """`last.pt` of yolov8n.yaml trained from scratch to clear detection (a test instrument, not an exp3 session).

    Why these args (Ultralytics defaults otherwise): `nbs=8` equal to the batch, so the optimizer
    steps every batch instead of accumulating 8 batches to the nominal 64 (the default gave 8x fewer
    steps and a model that barely detected); AdamW at a fixed lr0 instead of `auto`'s choice; no
    mosaic, scale, translate or colour jitter, since the instrument's train and test images come from
    the same generator and augmentation only slows convergence here; more images rather than more
    epochs (384 images x 12 epochs: test mAP50 0.66 and 53 ingredients at 0.25, measured; 20 epochs gave
    0.70 in 1.4x the time beside the same other work, 256 images x 10 epochs 0.53). Quality is checked before any test uses it
    (`check_instrument`). Trained once per test run (`built_once`): the test processes share it.
    """
    from ultralytics import YOLO

    def train(project: Path) -> Path:
        YOLO("yolov8n.yaml").train(data=str(trained_data_yaml), epochs=12, imgsz=96, batch=8, nbs=8,
                                   device="cpu", amp=False, workers=0, plots=False, project=str(project), name="run",
                                   exist_ok=True, verbose=False, val=False, optimizer="AdamW", lr0=0.002,
                                   warmup_epochs=1, mosaic=0.0, scale=0.0, translate=0.0, hsv_h=0.0, hsv_s=0.0,
                                   hsv_v=0.0)
        checkpoint = project / "run" / "weights" / "last.pt"
        check_instrument(checkpoint, trained_data_yaml, project)
        return checkpoint

    return built_once(tmp_path_factory, worker_id, "trained", train)


@pytest.fixture(scope="session")
def trained_evaluation(trained_yolo_checkpoint: Path, trained_data_yaml: Path,
                       tmp_path_factory: pytest.TempPathFactory):
    """`exp3.evaluate.evaluation.evaluate_split` of the trained checkpoint on its test split (predict-equivalent records)."""
    from exp3.evaluate.evaluation import evaluate_split, load_evaluation_model

    root = tmp_path_factory.mktemp("eval-trained")
    return evaluate_split(load_evaluation_model(trained_yolo_checkpoint, "detect"), trained_data_yaml, output_root=root,
                          save_dir=root / "test", device="cpu")


@pytest.fixture()
def one_model_config(tmp_path: Path) -> Path:
    """A smoke config of one model (yolov8n from its yaml, 1 epoch, no severity levels), output under
    `tmp_path / "out"`."""
    import yaml

    repo = Path(__file__).resolve().parents[1]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "base": str(repo / "configs" / "smoke.yaml"), "output_root": str(tmp_path / "out"),
        "models": {"yolov8m": None, "rtdetr-l": None, "yolov8n": {"architecture": "yolov8n.yaml", "epochs": 1}},
        "occlusion": {"severities": []}}))
    return path
