"""Every `docs/reference.md §N` that code, configs and docs cite names a section of that page."""
import re

import pytest

CITING = ["src", "tests", "configs", "workflow", "benchmarks", "slurm", "README.md"]
PAGE = "docs/reference.md"
SUFFIXES = {".py", ".json", ".yaml", ".yml", ".smk", ".md", ".sh", ".txt"}


def _citing_files(repo_root):
    for entry in CITING:
        path = repo_root / entry
        candidates = [path] if path.is_file() else sorted(path.rglob("*")) if path.is_dir() else []
        yield from (c for c in candidates if c.is_file() and c.suffix in SUFFIXES and "__pycache__" not in c.parts)


@pytest.fixture(scope="module")
def citations(repo_root):
    found = []
    for path in _citing_files(repo_root):
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for match in re.finditer(r"(\S*)reference\.md(?: §(\d+)(?:-(\d+))?)?", line):
                found.append((f"{path.relative_to(repo_root)}:{number}", match.group(1), match.groups()[1:]))
    return found


def test_the_page_numbers_its_sections_with_anchors(repo_root):
    text = (repo_root / PAGE).read_text()
    headings = [int(n) for n in re.findall(r"^## §(\d+) ", text, flags=re.M)]
    anchors = [int(n) for n in re.findall(r'^<a id="s(\d+)"></a>\n## §\1 ', text, flags=re.M)]
    assert headings == anchors == list(range(1, len(headings) + 1))


def test_every_citation_points_at_the_page_in_the_repository(citations):
    assert citations, "no citations found: the scan is broken"
    elsewhere = [where for where, prefix, _ in citations if not prefix.endswith("docs/")]
    assert not elsewhere, f"cite docs/reference.md, not a file outside the repository: {elsewhere}"


def test_every_cited_section_exists(repo_root, citations):
    text = (repo_root / PAGE).read_text()
    sections = {int(n) for n in re.findall(r"^## §(\d+) ", text, flags=re.M)}
    missing = [(where, first, last) for where, _, (first, last) in citations if first
               for n in range(int(first), int(last or first) + 1) if n not in sections]
    assert not missing, f"citations of sections docs/reference.md does not have: {missing}"
