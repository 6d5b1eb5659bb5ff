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


POINTER = re.compile(r'(docs/[\w-]+\.md|README(?:\.md)?),?\s+(?:section\s+)?"(\w[^"]*)"')
"""A pointer to a documented rule: `docs/report.md, "Gap closed"`, `README, "Crash safety"`."""


def _anchors(doc: Path) -> list[str]:
    """What a pointer may name in `doc`: a heading, or a paragraph's bold lead (`**Crash safety.** ...`)."""
    text = doc.read_text(encoding="utf-8")
    return re.findall(r"^#+ (.+)$", text, flags=re.M) + re.findall(r"\*\*([^*]+)\*\*", text)


def test_cited_doc_sections_exist() -> None:
    """Docstrings point to the docs that own a rule instead of repeating it: each named section must exist."""
    anchors: dict[str, list[str]] = {}
    cited, missing = 0, []
    for path in _text_files():
        if path.name == "BENCHMARKS.md":  # a record of past sessions, not pointers to follow
            continue
        for doc, section in POINTER.findall(path.read_text(encoding="utf-8", errors="replace")):
            target = "README.md" if doc.startswith("README") else doc
            section = re.sub(r"\s*\n\s*#?\s*", " ", section)  # a pointer wrapped over lines (or comment lines)
            names = anchors.setdefault(target, _anchors(REPO / target))
            cited += 1
            if not any(section in name for name in names):
                missing.append(f"{path.relative_to(REPO)}: {doc}, {section!r}")
    assert cited > 20 and not missing, f"name a heading or bold lead that exists: {missing}"
