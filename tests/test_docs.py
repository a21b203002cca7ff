"""The README is a short front door and every link in it and in docs/ leads somewhere.

A link that resolves here but not in a fresh clone (a file under results/ or .venv/) is as
broken as a typo, so a target must be a file git would commit. Anchors are checked against the
target page's headings, slugged as GitHub slugs them, and its explicit `<a id="...">` tags.
"""
from __future__ import annotations

import re
import subprocess
from collections import Counter
from pathlib import Path

import pytest

README_MAX_LINES = 250
REPO_ROOT = Path(__file__).resolve().parents[1]

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", flags=re.M | re.S)
CODE_SPAN = re.compile(r"`[^`\n]*`")
MARKDOWN_LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_LINK = re.compile(r"""(?:href|src)\s*=\s*["']([^"']+)["']""")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", flags=re.M)
EXPLICIT_ANCHOR = re.compile(r"""<a\s+(?:id|name)\s*=\s*["']([^"']+)["']""")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", flags=re.I)  # https:, mailto:, ...


def pages() -> list[Path]:
    return [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]


def prose(text: str) -> str:
    """The text outside fenced code blocks and code spans, where a link is a link."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def links(page: Path) -> list[str]:
    text = prose(page.read_text())
    return MARKDOWN_LINK.findall(text) + HTML_LINK.findall(text)


def github_slug(heading: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped (word characters, '-' and ' '
    kept), spaces turned into hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    found, seen = set(), Counter()
    for heading in HEADING.findall(text):
        slug = github_slug(heading)
        found.add(slug if not seen[slug] else f"{slug}-{seen[slug]}")
        seen[slug] += 1
    return found | set(EXPLICIT_ANCHOR.findall(text))


def committable(path: Path) -> bool:
    """Whether `path` (a file or a folder holding one) would be in a clone once committed. Outside a
    git checkout (an unpacked sdist) every existing file counts."""
    if not (REPO_ROOT / ".git").exists():
        return True
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "--",
                             str(path.relative_to(REPO_ROOT))],
                            cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    return bool(listed.strip())


def resolve(page: Path, target: str) -> tuple[Path, str]:
    path, _, anchor = target.partition("#")
    return ((page.parent / path).resolve() if path else page), anchor


def test_the_readme_fits_its_budget():
    lines = (REPO_ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail to docs/"


def test_the_readme_expands_dr_where_it_first_uses_it():
    text = prose((REPO_ROOT / "README.md").read_text())
    first = re.search(r"\bDR\b", text)
    assert first, "README.md never says DR"
    assert "DataCompDR" in text[:first.start()] and "dataset" in text[first.start():first.start() + 80], (
        "the README's first 'DR' should say it means DataCompDR, dataset reinforcement")


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_relative_link_resolves_to_a_committed_file_and_heading(page):
    broken = []
    for target in links(page):
        if EXTERNAL.match(target):
            continue
        path, anchor = resolve(page, target)
        if not path.is_relative_to(REPO_ROOT) or not path.exists():
            broken.append(f"{target}: no such file")
        elif not committable(path):
            broken.append(f"{target}: ignored by git, so not in a clone")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target}: no heading or anchor '#{anchor}' in {path.name}")
    assert not broken, f"{page.relative_to(REPO_ROOT)}: " + "; ".join(broken)


def test_every_docs_page_is_reachable_from_the_readme():
    reached, todo = set(), [REPO_ROOT / "README.md"]
    while todo:
        page = todo.pop()
        if page in reached:
            continue
        reached.add(page)
        for target in links(page):
            if EXTERNAL.match(target):
                continue
            path, _ = resolve(page, target)
            if path.suffix == ".md" and path.exists():
                todo.append(path)
    unreached = [str(p.relative_to(REPO_ROOT)) for p in pages() if p not in reached]
    assert not unreached, f"no chain of links from README.md reaches {unreached}"


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_pages_read_as_documentation_not_as_a_diary(page):
    diary = re.findall(r"\b(?:this|last|previous|earlier) (?:round|session)s?\b|\bthis time\b",
                       page.read_text(), flags=re.I)
    assert not diary, f"{page.relative_to(REPO_ROOT)} says {sorted(set(diary))}: say when or where instead"


def test_the_readmes_package_map_names_every_module_and_folder_of_the_package():
    """The map in the README is the package as it is: a module or folder added, renamed or moved
    shows here until the map says so."""
    package = REPO_ROOT / "src" / "mobileclip_repro"
    names = [path.name for path in package.glob("*.py") if not path.name.startswith("__")]
    names += [f"{path.name}/" for path in package.iterdir() if path.is_dir() and not path.name.startswith("__")]
    text = (REPO_ROOT / "README.md").read_text()
    block = text[text.index("\nsrc/mobileclip_repro/"):text.index("\nconfigs/")]
    missing = sorted(name for name in names if not re.search(rf"(?<![\w/]){re.escape(name)}", block))
    assert not missing, f"README.md's package map does not name {missing}"


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_no_page_leaves_a_detail_to_verify_later(page):
    left = re.findall(r"TODO verify[^\n]*", page.read_text())
    assert not left, f"{page.relative_to(REPO_ROOT)} still says {left}: check the code and say what it does"


def test_the_link_checker_catches_what_it_should(tmp_path):
    """The checker's own pieces on known input, so a passing suite means something."""
    assert github_slug("Preemption: exact resume, one writer, nothing deleted") == \
        "preemption-exact-resume-one-writer-nothing-deleted"
    assert github_slug("Sizing a run: `mobileclip-repro plan`") == "sizing-a-run-mobileclip-repro-plan"
    assert github_slug("Weights & Biases") == "weights--biases"
    assert github_slug("§9 MobileCLIP2 (Apple's v2 release, 2025)") == "9-mobileclip2-apples-v2-release-2025"
    page = tmp_path / "page.md"
    page.write_text("# Title\n## Twice\n## Twice\n<a id=\"s1\"></a>\n"
                    "[a](other.md#x) ![b](img.png) `[not](a-link.md)`\n```\n[nor](this.md)\n```\n"
                    "<img src=\"fig.png\"> [web](https://example.org)\n")
    assert sorted(links(page)) == ["fig.png", "https://example.org", "img.png", "other.md#x"]
    assert anchors(page) == {"title", "twice", "twice-1", "s1"}
