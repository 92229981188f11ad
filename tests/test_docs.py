"""The documentation the code cites exists: every ``docs/theory.md section N(.M)`` names a heading.

Code, tests, benchmarks and docs cite the theory document by section number
(``docs/theory.md section 3``, ``theory.md section 2.3``, ``theory.md §2.3``,
``theory.md sections 1.5 and 2.2``).  These tests read docs/theory.md's
headings (``## 3. Title``, ``### 3.2 Title``) and check that every such
citation resolves, that the numbering is well formed, and that no file still
cites the project's planning notes outside the repository.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
THEORY = ROOT / "docs" / "theory.md"

# a citation: "theory.md", then optionally "section(s)" or "§", then numbers joined by , / and
_NUMBER = r"\d+(?:\.\d+)?"
_CITATION = re.compile(
    rf"theory\.md[\s#*]+(?:sections?\s+|§\s*)?({_NUMBER}(?:\s*(?:,\s*and|,|and)\s*{_NUMBER})*)",
    re.IGNORECASE,
)
_HEADING = re.compile(r"^(#{2,3})\s+(\d+(?:\.\d+)?)\.?\s+\S")

# top-level sections whose meaning the code's citations rely on
SECTION_TOPICS = {
    "1": "weight matrices",
    "2": "marchenko-pastur",
    "3": "heavy-tailed",
    "4": "hessian",
    "5": "weightwatcher",
    "6": "estimators",
}

# written in two pieces so that this file does not cite them itself
STALE = ("THEORY" + ".md", ".." + "/shared")


def cited_files() -> list[Path]:
    """Every file whose citations are checked."""
    files = [ROOT / "README.md"]
    for folder in ("src", "tests", "bench"):
        files += sorted((ROOT / folder).rglob("*.py"))
    files += sorted((ROOT / "data").glob("*.py"))
    files += sorted((ROOT / "docs").glob("*.md"))
    this = Path(__file__).resolve()  # its examples are not citations
    return [f for f in files if f.is_file() and f.resolve() != this]


def headings(text: str) -> dict[str, tuple[int, str]]:
    """Section number -> (heading level, heading line) of a theory document."""
    found: dict[str, tuple[int, str]] = {}
    in_code = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        match = None if in_code else _HEADING.match(line)
        if match:
            found[match.group(2)] = (len(match.group(1)), line)
    return found


def citations(text: str) -> list[str]:
    """The section numbers a text cites (``theory.md section 3.2`` -> ``"3.2"``)."""
    numbers = []
    for match in _CITATION.finditer(text):
        numbers += re.findall(_NUMBER, match.group(1))
    return numbers


def unresolved(texts: dict[str, str], sections: dict[str, tuple[int, str]]) -> list[str]:
    """``name: theory.md section N`` for every citation in ``texts`` with no such heading."""
    return [
        f"{name}: theory.md section {number}"
        for name, text in texts.items()
        for number in citations(text)
        if number not in sections
    ]


def read_all() -> dict[str, str]:
    return {str(f.relative_to(ROOT)): f.read_text(encoding="utf-8") for f in cited_files()}


def test_every_citation_names_a_heading_of_the_theory_document():
    sections = headings(THEORY.read_text(encoding="utf-8"))
    texts = read_all()
    assert sum(len(citations(t)) for t in texts.values()) >= 10  # the check is not vacuous
    assert unresolved(texts, sections) == []


def test_a_removed_heading_is_reported():
    """Without its heading, a citation of section 3.2 no longer resolves."""
    text = THEORY.read_text(encoding="utf-8")
    assert "3.2" in headings(text)
    cut = "\n".join(line for line in text.splitlines() if not line.startswith("### 3.2 "))
    texts = {"example.py": "# see docs/theory.md section 3.2 and theory.md §3.1"}
    assert unresolved(texts, headings(text)) == []
    assert unresolved(texts, headings(cut)) == ["example.py: theory.md section 3.2"]


def test_citation_forms():
    text = (
        "docs/theory.md section 3; theory.md section 2.3, theory.md §4.9,\n"
        "theory.md sections 1.5, 2.2 and 3.8; docs/theory.md\n    # section 6.1; theory.md 3"
    )
    assert citations(text) == ["3", "2.3", "4.9", "1.5", "2.2", "3.8", "6.1", "3"]
    assert citations("[theory.md](theory.md) and docs/theory.md; Granziol") == []


def test_headings_are_numbered_one_level_under_the_other():
    sections = headings(THEORY.read_text(encoding="utf-8"))
    top = [n for n, (level, _) in sections.items() if level == 2]
    assert top == [str(i) for i in range(1, len(top) + 1)]
    for number, (level, line) in sections.items():
        if level == 2:
            assert line.startswith(f"## {number}. "), line
        else:
            parent, _ = number.split(".")
            assert level == 3 and parent in top and line.startswith(f"### {number} "), line
    for number, topic in SECTION_TOPICS.items():
        assert topic in sections[number][1].lower(), (number, sections[number][1])


def test_no_file_cites_notes_outside_the_repository():
    """Citations name docs/theory.md, which ships with the code, not the planning notes."""
    offenders = [
        f"{name}: {stale}" for name, text in read_all().items() for stale in STALE if stale in text
    ]
    assert offenders == []
