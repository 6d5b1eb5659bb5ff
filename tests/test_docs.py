"""The repository is self-contained: what the code cites lives in docs/, not in files outside it."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SKIPPED_DIRS = {".git", ".venv", "venv", ".venv-ci", "runs", "data", "datasets", "__pycache__", ".pytest_cache",
                "build", "dist", ".scratch"}
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".sh", ".ipynb", ".txt", ".cfg"}
OUTSIDE_NOTES = ("RESEARCH" + ".md", ".." + "/shared")  # split so this file does not match itself


def _text_files() -> list[Path]:
    return [path for path in REPO.rglob("*") if path.is_file() and path.suffix in TEXT_SUFFIXES
            and not SKIPPED_DIRS.intersection(path.relative_to(REPO).parts)]


def test_nothing_cites_notes_outside_the_repository() -> None:
    hits = [f"{path.relative_to(REPO)}: {note}" for path in _text_files()
            for note in OUTSIDE_NOTES if note in path.read_text(encoding="utf-8", errors="replace")]
    assert not hits, f"cite docs/references.md instead: {hits}"


def test_cited_reference_sections_exist() -> None:
    headings = set(re.findall(r"^## (\d+)\. ", (REPO / "docs" / "references.md").read_text(), flags=re.M))
    cited = {(path.relative_to(REPO), number) for path in _text_files()
             for number in re.findall(r"docs/references\.md section (\d+)", path.read_text(errors="replace"))}
    assert cited and not {(path, number) for path, number in cited if number not in headings}
