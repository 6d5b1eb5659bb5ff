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


def test_cited_numbered_sections_exist() -> None:
    """`docs/references.md section 3`, `docs/masking.md sections 6-7`: each number is a `## N.` heading there."""
    cited = {(path.relative_to(REPO), doc, number) for path in _text_files()
             for doc, first, last in re.findall(r"docs/([\w-]+)\.md,? sections? (\d+)(?:-(\d+))?",
                                                path.read_text(errors="replace"))
             for number in (first, last) if number}
    headings = {doc: set(re.findall(r"^## (\d+)\. ", (REPO / "docs" / f"{doc}.md").read_text(), flags=re.M))
                for doc in {doc for _, doc, _ in cited}}
    assert {"references", "masking"} <= set(headings)
    assert not {(path, doc, number) for path, doc, number in cited if number not in headings[doc]}


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
