"""The docs stand alone: every file that src/, docs/, examples/, benchmarks/ or the README cites
exists in the repository, and nothing cites the design notes or issues kept outside it."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted([ROOT / "README.md", ROOT / "CHANGELOG.md", *(ROOT / "docs").glob("*.md"),
                  *(ROOT / "src").rglob("*.py"), *(ROOT / "examples").rglob("*.md"), *(ROOT / "examples").rglob("*.py"),
                  *(ROOT / "benchmarks").glob("*.py")])
# a path-like citation: a known top-level folder or a bare doc/module file name
CITATION = re.compile(r"(?<![\w/.-])((?:docs|src|tests|benchmarks|examples|\.ci)/[\w./-]+\.(?:md|py|sh|toml)|"
                      r"[A-Z][A-Za-z_]*\.md)\b")
OUTSIDE = re.compile(r"DESIGN\.md|\b[Ii]ssue #?\d+\b")


# docs/extending.md tells the reader to create these: instructions, not citations
TO_CREATE = {"src/gradguard/defenses/clip_gaussian.py"}


def _cited(text: str) -> set[str]:
    return {m.group(1) for m in CITATION.finditer(text)} - TO_CREATE


def _exists(citation: str, source: Path) -> bool:
    candidates = [ROOT / citation, source.parent / citation, ROOT / "src" / "gradguard" / citation]
    return any(c.exists() for c in candidates)


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_cited_file_exists(source):
    text = source.read_text()
    missing = sorted(c for c in _cited(text) if not _exists(c, source))
    assert not missing, f"{source.relative_to(ROOT)} cites files the repository does not contain: {missing}"
    outside = sorted({m.group(0) for m in OUTSIDE.finditer(text)})
    assert not outside, f"{source.relative_to(ROOT)} cites material outside the repository: {outside}"


def test_the_citation_check_finds_a_missing_file(tmp_path):
    assert _cited("see docs/nowhere.md and DESIGN.md, or docs/design.md") == {"docs/nowhere.md", "DESIGN.md",
                                                                              "docs/design.md"}
    assert not _exists("docs/nowhere.md", tmp_path / "x.md") and _exists("docs/design.md", tmp_path / "x.md")
