"""What a session starts from: its data and its weights (docs/layout.md). A session trusts the data the flow handed it
only while `prepared_is_current` and `prepared_mismatch` find nothing wrong, else prepares it itself (each step
idempotent and verified: preparing again costs a check, not a rebuild)."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from exp3.config import ExperimentConfig
from exp3.dataset.audit import AuditedData, audit_once
from exp3.dataset.synth import build_synthetic_dataset
from exp3.fileio import read_json, sha256_file
from exp3.occlusion.identity import evaluation_plan, suite_parameters, train_set_parameters
from exp3.occlusion.suites import build_occluded_train_set, build_occlusion_suite, build_severity_suites
from exp3.schema import PreparedData, SeveritySuite
from exp3.session.mirror import copied_from, local_dataset, on_mirror_storage
from exp3.train.weights import ResolvedWeights, resolve_weights


def resolve_model_weights(config: ExperimentConfig, model_name: str) -> ResolvedWeights:
    """The weights `model_name` starts from, or `WeightsError` (exp3/train/weights.py)."""
    model = config.models[model_name]
    return resolve_weights(model_name, model.architecture, model.weights, download=config.download_weights)


def dataset_yaml(config: ExperimentConfig, output_root: Path, build: bool = True) -> Path:
    """The data.yaml to use: the embedded synthetic dataset (generated on first use; `build=False`: its path,
    which may not exist yet) or the user's (copied to `output_root/data/` first when it sits on the mirror's
    storage, `exp3.session.mirror.local_dataset`; `build=False`: the user's own, of the same fingerprint)."""
    if config.dataset.kind == "yaml":
        assert config.dataset.data_yaml is not None  # guaranteed by DatasetConfig's validator
        data_yaml = Path(config.dataset.data_yaml).absolute()
        if build and config.mirror.path is not None and data_yaml.is_file() and \
                on_mirror_storage(data_yaml, Path(config.mirror.path).absolute()):
            return local_dataset(data_yaml, output_root / "data")  # its content, on this disk (fingerprint checked)
        return data_yaml
    target = output_root / "data" / f"synthetic-{config.dataset.preset}-seed{config.dataset.synthetic_seed}"
    if not build:
        return (target / "data.yaml").absolute()
    return build_synthetic_dataset(target, preset=config.dataset.preset, seed=config.dataset.synthetic_seed,
                                   workers=2)


def prepare_data(config: ExperimentConfig, output_root: Path, audited: AuditedData | None = None) -> PreparedData:
    """Dataset, its audit, fixed occlusion suite, severity suites and S2's occluded train set.

    `audited`: the flow's audit of this config's dataset (`exp3.dataset.audit.audit_once`), used as is: the
    dataset is not hashed again. Without it (a session run by hand) the dataset is audited here.
    Raises `DatasetError` if the dataset fails the audit (before anything is built from it).
    """
    if audited is None:
        audited = audit_once(dataset_yaml(config, output_root), output_root / "audits")
    data_yaml = Path(audited.data_yaml)
    suite = build_occlusion_suite(data_yaml, output_root / "suites", config.occlusion, workers=2)
    severity_dirs = build_severity_suites(data_yaml, output_root / "suites", config.occlusion, workers=2)
    s2_yaml = build_occluded_train_set(data_yaml, output_root / "suites", config.occlusion, workers=2)
    plan = evaluation_plan(config.occlusion).items()  # levels 1..K in order, as build_severity_suites returns them
    severity = tuple(SeveritySuite(level=level, split=split, coverage=config.occlusion.severities[level - 1],
                                   spec_key=spec_key, suite_dir=str(path), suite_id=path.name,
                                   manifest_sha256=sha256_file(path / "manifest.json"))
                     for level, ((split, spec_key), path) in enumerate(zip(plan, severity_dirs), 1))
    return PreparedData(
        data_yaml=str(data_yaml),
        dataset_fingerprint=audited.fingerprint,  # computed by the audit: no second pass over the files
        suite_dir=str(suite),
        suite_id=suite.name,
        suite_manifest_sha256=sha256_file(suite / "manifest.json"),
        s2_data_yaml=str(s2_yaml),
        s2_manifest_sha256=sha256_file(s2_yaml.parent / "manifest.json"),
        severity_suites=severity,
    )


def prepared_from_json(text: str) -> PreparedData:
    """`--prepared` JSON (what the flow prepared) -> PreparedData; ValueError naming the fix if it is not one."""
    try:
        return PreparedData.model_validate_json(text)
    except ValidationError as error:
        reason = f"{type(error).__name__}: {error}".splitlines()[0]
        raise ValueError(f"--prepared is not a PreparedData JSON object ({reason}): "
                         "leave it out and the session prepares its own data") from None


def prepared_is_current(prepared: PreparedData) -> bool:
    """True if the files `prepared` names are still there and every manifest (fixed suite, S2 set, severity suites)
    still hashes as recorded: a cheap check, no pass over the dataset or the suites."""
    manifests = [(Path(prepared.suite_dir), prepared.suite_manifest_sha256),
                 (Path(prepared.s2_data_yaml).parent, prepared.s2_manifest_sha256),
                 *((Path(suite.suite_dir), suite.manifest_sha256) for suite in prepared.severity_suites)]
    return (Path(prepared.data_yaml).is_file() and Path(prepared.s2_data_yaml).is_file()
            and all((folder / "manifest.json").is_file() and sha256_file(folder / "manifest.json") == sha256
                    for folder, sha256 in manifests))


def prepared_mismatch(prepared: PreparedData, config: ExperimentConfig, output_root: Path) -> str | None:
    """Why `prepared` (data handed to a session) is not what `config` asks for, or None if it is: its data.yaml
    must be the config's dataset under `output_root` (or `local_dataset`'s copy of it), the fixed suite's and S2
    set's occlusion parameters (from their manifests) and the severity levels' spec keys the config's. A session
    never trains or evaluates a config on another config's dataset or suites."""
    held, wanted = Path(prepared.data_yaml).absolute(), dataset_yaml(config, output_root, build=False).absolute()
    if held.parent.parent == (output_root / "data").absolute():  # a local copy of a user dataset: the one it copied
        held = copied_from(held) or held
    if held != wanted:
        return f"it was prepared for the dataset {held}, not the config's {wanted}"
    manifests = {"fixed suite": (Path(prepared.suite_dir) / "manifest.json", suite_parameters(config.occlusion)),
                 "S2 train set": (Path(prepared.s2_data_yaml).parent / "manifest.json",
                                  train_set_parameters(config.occlusion))}
    for name, (manifest, wanted) in manifests.items():
        if not isinstance(record := read_json(manifest), dict):
            return f"its {name} manifest {manifest} is unreadable"
        if record.get("parameters") != wanted:
            return f"its {name} was built with other occlusion parameters than the config's"
    plan = evaluation_plan(config.occlusion)
    if {suite.split: suite.spec_key for suite in prepared.severity_suites} != plan:
        return f"its severity suites are not the config's levels ({', '.join(plan) or 'none'})"
    return None

