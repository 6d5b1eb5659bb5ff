"""The session vocabulary: one module (exp3/sessions.py) owns it, and its tables agree with each other."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

from exp3.sessions import (
    MASKING_SITE_OF_SESSION,
    MASKING_SITES,
    REFERENCES,
    SESSION_LABELS,
    SESSION_ORDER,
    SESSION_SUFFIXES,
    TRAIN_IMAGES_OF_SESSION,
)

REPO = Path(__file__).resolve().parents[1]
OWNER = "exp3/sessions.py"
VOCABULARY = ("SESSION_SUFFIXES", "MASKING_SITES", "SESSION_LABELS", "SESSION_ORDER", "REFERENCES",
              "MASKING_SITE_OF_SESSION", "TRAIN_IMAGES_OF_SESSION")


def _python_files(*folders: str) -> list[Path]:
    return sorted(path for folder in folders for path in (REPO / folder).rglob("*.py")
                  if "__pycache__" not in path.parts)


def _assigned_names(tree: ast.Module) -> set[str]:
    """Names bound by a module-level assignment (plain, annotated or augmented)."""
    names: set[str] = set()
    for node in tree.body:
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = list(node.targets)
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            targets = [node.target]
        for target in targets:
            for leaf in ast.walk(target):
                if isinstance(leaf, ast.Name):
                    names.add(leaf.id)
    return names


def test_labels_order_sites_and_references_cover_the_suffixes_in_order() -> None:
    assert SESSION_SUFFIXES == ("S1_clean_train", "S2_occ_train", "S3_mask_backbone_early",
                                "S4_mask_backbone_late", "S5_mask_neck", "S6_mask_head")
    assert list(SESSION_LABELS) == list(SESSION_SUFFIXES)
    assert SESSION_ORDER == [SESSION_LABELS[suffix] for suffix in SESSION_SUFFIXES]
    assert len(set(SESSION_ORDER)) == len(SESSION_ORDER)
    assert [label.split()[0] for label in SESSION_ORDER] == [f"S{index}" for index in range(1, 7)]
    assert list(MASKING_SITE_OF_SESSION) == list(SESSION_SUFFIXES)
    assert list(TRAIN_IMAGES_OF_SESSION) == list(SESSION_SUFFIXES)
    masked = [site for site in MASKING_SITE_OF_SESSION.values() if site is not None]
    assert tuple(masked) == MASKING_SITES  # S3..S6 map onto the sites one to one, in network order
    assert [suffix for suffix, images in TRAIN_IMAGES_OF_SESSION.items() if images == "occluded"] == ["S2_occ_train"]
    assert REFERENCES == SESSION_SUFFIXES[:2]
    assert all(MASKING_SITE_OF_SESSION[reference] is None for reference in REFERENCES)


def test_the_vocabulary_is_defined_in_exp3_sessions_only() -> None:
    owners: dict[str, list[str]] = {}
    for path in _python_files("exp3", "flows", "benchmarks", "notebooks"):
        for name in _assigned_names(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if name in VOCABULARY:
                owners.setdefault(name, []).append(path.relative_to(REPO).as_posix())
    assert owners == {name: [OWNER] for name in VOCABULARY}


def test_everyone_imports_the_vocabulary_from_exp3_sessions() -> None:
    """No re-export: `from exp3.config import SESSION_SUFFIXES` (or plots / comparisons) is used nowhere,
    top-level or inside a function, nor read as an attribute of another module."""
    wrong: list[str] = []
    for path in _python_files("exp3", "flows", "tests", "benchmarks", "notebooks"):
        where = path.relative_to(REPO).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.module != "exp3.sessions":
                wrong += [f"{where}:{node.lineno} from {node.module} import {alias.name}"
                          for alias in node.names if alias.name in VOCABULARY]
            elif (isinstance(node, ast.Attribute) and node.attr in VOCABULARY
                  and not (isinstance(node.value, ast.Name) and node.value.id == "sessions")):
                wrong.append(f"{where}:{node.lineno} .{node.attr}")
    for notebook in sorted((REPO / "notebooks").glob("*.ipynb")):
        for cell in json.loads(notebook.read_text(encoding="utf-8"))["cells"]:
            source = "".join(cell.get("source", []))
            wrong += [f"{notebook.name}: {line.strip()}" for line in source.splitlines()
                      if "import" in line and "exp3.sessions" not in line
                      and any(name in line for name in VOCABULARY)]
    assert not wrong, f"import these from exp3.sessions: {wrong}"


def test_exp3_sessions_imports_nothing_from_exp3() -> None:
    """exp3.config imports the vocabulary for its validators, so exp3.sessions must not import exp3.config
    (nor anything heavy): importing it loads no other exp3 module."""
    code = ("import sys, exp3.sessions; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('exp3', 'pydantic', 'pandas', 'altair')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}).stdout.strip()
    assert loaded == str(["exp3", "exp3.sessions"])
