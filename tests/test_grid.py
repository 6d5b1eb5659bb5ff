"""Grid selection, seeds and cache keys (no training)."""

from __future__ import annotations

from pathlib import Path

import pytest

from exp3 import SCHEMA_VERSION
from exp3.config import ExperimentConfig, load_config
from exp3.identity import session_inputs
from exp3.session.plan import select_sessions
from exp3.sessions import Session, parse_session
from exp3.train.training import masking_spec_for, training_overrides

REPO = Path(__file__).resolve().parents[1]


def test_grid_order_and_selection() -> None:
    config = ExperimentConfig()
    names = [s.name for s in select_sessions(config, None, None)]
    assert len(names) == 12 and names[0] == "yolov8m__S1_clean_train" and names[-1] == "rtdetr-l__S6_mask_head"
    picked = select_sessions(config, ["rtdetr-l"], ["S3_mask_backbone_early", "rtdetr-l__S1_clean_train"])
    assert [s.name for s in picked] == ["rtdetr-l__S1_clean_train", "rtdetr-l__S3_mask_backbone_early"]
    with pytest.raises(ValueError, match="configured models are yolov8m, rtdetr-l"):
        select_sessions(config, ["yolo9"], None)
    with pytest.raises(ValueError, match="--models leaves out: add yolov8m to --models or drop"):
        select_sessions(config, ["rtdetr-l"], ["yolov8m__S1_clean_train"])  # was: silently rtdetr-l's S1
    with pytest.raises(ValueError, match="unknown model 'yolo9'"):
        select_sessions(config, None, ["yolo9__S1_clean_train"])
    for models, sessions, name in (([], None, "models"), (None, [], "sessions")):  # the UI's empty list ran all 12
        with pytest.raises(ValueError, match=f"{name} is an empty list: name at least one, or leave {name} unset"):
            select_sessions(config, models, sessions)


def test_a_bare_suffix_selects_every_model_and_a_prefixed_name_only_its_model() -> None:
    config = ExperimentConfig()
    bare = select_sessions(config, None, ["S1_clean_train"])
    assert [s.name for s in bare] == ["yolov8m__S1_clean_train", "rtdetr-l__S1_clean_train"]
    assert [s.name for s in select_sessions(config, None, ["yolov8m__S1_clean_train"])] == ["yolov8m__S1_clean_train"]
    mixed = select_sessions(config, None, ["rtdetr-l__S2_occ_train", "S1_clean_train"])
    assert [s.name for s in mixed] == ["yolov8m__S1_clean_train", "rtdetr-l__S1_clean_train",
                                       "rtdetr-l__S2_occ_train"]
    seeded = load_config(None, ["seeds=[0, 1, 2]"])
    picked = select_sessions(seeded, None, ["yolov8m__S3_mask_backbone_early__seed1", "S1_clean_train"])
    assert [s.name for s in picked] == ["yolov8m__S1_clean_train", "yolov8m__S1_clean_train__seed1",
                                        "yolov8m__S1_clean_train__seed2", "yolov8m__S3_mask_backbone_early__seed1",
                                        "rtdetr-l__S1_clean_train", "rtdetr-l__S1_clean_train__seed1",
                                        "rtdetr-l__S1_clean_train__seed2"]
    assert select_sessions(seeded, None, ["yolov8m__S1_clean_train__seed0"]) == [Session("yolov8m", "S1_clean_train")]
    with pytest.raises(ValueError, match=r"seed 7, not in the config's seeds \[0, 1, 2\]"):
        select_sessions(seeded, None, ["S1_clean_train__seed7"])


def test_several_seeds_expand_the_grid_and_name_folders() -> None:
    config = load_config(REPO / "configs" / "smoke.yaml", ["seeds=[0, 1, 2]"])
    grid = select_sessions(config, ["yolov8m"], ["S3_mask_backbone_early"])
    assert [s.name for s in grid] == ["yolov8m__S3_mask_backbone_early", "yolov8m__S3_mask_backbone_early__seed1",
                                      "yolov8m__S3_mask_backbone_early__seed2"]  # seed 0's: those of seeds: [0]
    assert parse_session(grid[1].name, ["yolov8m"]) == grid[1]
    assert training_overrides(config, "yolov8m", grid[0].training_seed).get("seed") is None
    assert training_overrides(config, "yolov8m", grid[2].training_seed)["seed"] == 2
    assert masking_spec_for(config, grid[1])["seed"] == config.masking.seed + 1
    keys = {session_inputs(config, s, "fp", "occ-x", None).key for s in grid}
    assert len(keys) == 3
    one_seed = load_config(REPO / "configs" / "smoke.yaml")
    single = select_sessions(one_seed, ["yolov8m"], ["S1_clean_train"])
    assert single == [Session("yolov8m", "S1_clean_train")] and single[0].name == "yolov8m__S1_clean_train"
    # seeds added to a finished one-seed grid: seed 0's sessions keep their key, nothing trains again
    assert session_inputs(config, grid[0], "fp", "occ-x", None).key == session_inputs(
        one_seed, select_sessions(one_seed, ["yolov8m"], ["S3_mask_backbone_early"])[0], "fp", "occ-x", None).key
    other = select_sessions(load_config(None, ["seeds=[5]"]), ["yolov8m"], ["S1_clean_train"])
    assert [s.name for s in other] == ["yolov8m__S1_clean_train__seed5"] and other[0].training_seed == 5


def test_cache_key_depends_on_what_the_session_depends_on() -> None:
    base = ExperimentConfig()
    s1, s2, s5 = Session("yolov8m", "S1_clean_train"), Session("yolov8m", "S2_occ_train"), Session("yolov8m", "S5_mask_neck")

    def key(config: ExperimentConfig, session: Session, fingerprint: str = "fp", suite: str = "occ-a",
            weights: str | None = None) -> str:
        return session_inputs(config, session, fingerprint, suite, weights).key

    masked = base.model_copy(update={"masking": base.masking.model_copy(update={"p_channels": 0.2})})
    assert key(masked, s5) != key(base, s5) and key(masked, s1) == key(base, s1)
    fraction = base.model_copy(update={"occlusion": base.occlusion.model_copy(update={"train_fraction": 0.9})})
    assert key(fraction, s2) != key(base, s2) and key(fraction, s1) == key(base, s1)
    policy = base.model_copy(update={"failure": base.failure.model_copy(update={"policy": "stop"})})
    assert key(policy, s1) == key(base, s1)
    epochs = load_config(None, ["models.yolov8m.epochs=5"])
    assert key(epochs, s1) != key(base, s1) and key(epochs, Session("rtdetr-l", "S1_clean_train")) == key(
        base, Session("rtdetr-l", "S1_clean_train"))
    assert key(base, s1, fingerprint="other") != key(base, s1) and key(base, s1, suite="occ-b") != key(base, s1)
    assert key(base, s1, weights="ab" * 32) != key(base, s1)  # other weights file: another experiment
    placed = load_config(None, ["train.device=cuda:0", "train.workers=2"])  # where it runs, not what it computes
    assert key(placed, s1) == key(base, s1)
    batch = load_config(None, ["train.batch=8"])
    assert key(batch, s1) != key(base, s1)
    here, moved = (load_config(None, ["dataset.kind=yaml", f"dataset.data_yaml={path}"])
                   for path in ("/data/food/data.yaml", "/content/drive/MyDrive/food/data.yaml"))
    assert key(here, s1) == key(moved, s1)  # where the data lie: what they hold is the fingerprint
    assert key(here, s1, fingerprint="other") != key(here, s1)
    # the format of the files it writes: a folder of format 1 (inputs without schema_version) is stale
    inputs = session_inputs(base, s1, "fp", "occ-a", None)
    assert inputs.schema_version == SCHEMA_VERSION and inputs.model_copy(update={"schema_version": 1}).key != inputs.key


def test_cache_key_holds_what_the_architecture_yaml_builds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An edited architecture yaml, or another yolov8m.yaml that Ultralytics finds first in the working directory,
    builds another network under the same name: its sessions get another key (before, S1 of a 3.0M-parameter network
    was compared with S2 of an 11.1M one under one model name)."""
    import yaml
    from ultralytics.nn.tasks import yaml_model_load

    s1 = Session("mine", "S1_clean_train")
    custom = tmp_path / "mine.yaml"
    custom.write_text(yaml.safe_dump({**yaml_model_load("yolov8n.yaml"), "yaml_file": None}))
    config = load_config(None, [f"models.mine.architecture={custom}", "models.mine.epochs=1"])
    first = session_inputs(config, s1, "fp", "occ-a", None).key
    assert session_inputs(config, s1, "fp", "occ-a", None).key == first          # same content: same key
    edited = yaml.safe_load(custom.read_text())
    for scale in edited["scales"].values():                                        # twice the width
        scale[1] *= 2
    custom.write_text(yaml.safe_dump(edited))
    assert session_inputs(config, s1, "fp", "occ-a", None).key != first
    base, v8m = ExperimentConfig(), Session("yolov8m", "S1_clean_train")
    shipped = session_inputs(base, v8m, "fp", "occ-a", None).key
    monkeypatch.chdir(tmp_path)
    found_first = yaml_model_load("yolov8m.yaml")
    found_first["scales"]["m"][1] = 0.25                                           # an "m" of yolov8n's width
    (tmp_path / "yolov8m.yaml").write_text(yaml.safe_dump(found_first))
    assert session_inputs(base, v8m, "fp", "occ-a", None).key != shipped


def test_the_plan_names_every_session_of_the_config_whatever_ran(tmp_path: Path) -> None:
    """Issue 35 item 1: a run narrowed by --models/--sessions still plans every session of its config, so a
    folder made under another config is stale to every reader (report, status), not done again."""
    from exp3.session.plan import UNPLANNED, planned_key, planned_keys, read_plan, write_plan

    config = ExperimentConfig(seeds=(0, 1))
    keys = planned_keys(config, "f" * 16, "suite", {"yolov8m": None, "rtdetr-l": "ab" * 32})
    assert len(keys) == 2 * 6 * 2 and "rtdetr-l__S6_mask_head__seed1" in keys
    assert keys["yolov8m__S3_mask_backbone_early__seed1"] == session_inputs(
        config, Session("yolov8m", "S3_mask_backbone_early", 1), "f" * 16, "suite", None).key
    without_rtdetr = planned_keys(config, "f" * 16, "suite", {"yolov8m": None})  # its weights cannot be had now
    assert set(without_rtdetr) == {name for name in keys if name.startswith("yolov8m__")}
    write_plan(tmp_path, without_rtdetr)
    plan = read_plan(tmp_path)
    assert planned_key(plan, "rtdetr-l__S1_clean_train") == UNPLANNED  # unplanned: checked, so stale
    assert planned_key(plan, "yolov8m__S1_clean_train") == keys["yolov8m__S1_clean_train"]
    assert planned_key({}, "yolov8m__S1_clean_train") is None  # no plan (sessions by hand): nothing to check
