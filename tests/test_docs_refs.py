"""The repository stands alone: no file points at the notes it was built from outside the
repository, and every ``docs/papers.md#anchor`` a file points at is a heading of that page.

The forbidden pointers are assembled from pieces so that this file does not hold them."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAPERS = ROOT / "docs" / "papers.md"

# Pointers at things a reader of the repository cannot open: the out-of-tree folder, its
# paper notes and the source texts of its seed folder.
OUTSIDE = ("shared" + "/", "PAPERS" + ".md", "seed" + " 004", "seeds" + "/0")
# A link to a section of docs/papers.md, from any folder ("docs/papers.md#x", "papers.md#x",
# "../docs/papers.md#x").
ANCHOR_REF = re.compile(r"papers\.md#([A-Za-z0-9_-]+)")
# Backticked UPPER_CASE names in docs/papers.md: the constants its tables describe.
CONSTANT = re.compile(r"`([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)`")


def tracked_files() -> list[Path]:
    """The files git tracks (a fresh clone's files); without git, every file but the
    virtual environment, caches and downloaded data."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
        return [ROOT / name for name in out.decode().split("\0") if name]
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", "data"}
        return [p for p in ROOT.rglob("*") if p.is_file() and not skip & set(p.relative_to(ROOT).parts)]


def text(path: Path) -> str | None:
    """The file's text, or None for a binary file (an image, a checkpoint)."""
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    if b"\0" in raw[:8192]:
        return None
    return raw.decode("utf-8", errors="replace")


def outside_pointers(content: str) -> list[tuple[int, str]]:
    """(line number, line) of every line naming something outside the repository."""
    return [(n, line.strip()) for n, line in enumerate(content.splitlines(), 1) if any(p in line for p in OUTSIDE)]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    kept = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return kept.replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """The anchors of a markdown page's headings (outside code blocks); a repeated heading
    gets -1, -2, ... as on GitHub."""
    found: set[str] = set()
    counts: dict[str, int] = {}
    fenced = False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        m = None if fenced else re.match(r"#{1,6}\s+(.*)", line)
        if m:
            base = slug(m.group(1))
            n = counts.get(base, 0)
            counts[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def test_no_file_points_outside_the_repository():
    offenders = [
        f"{path.relative_to(ROOT)}:{n}: {line[:120]}"
        for path in tracked_files()
        if (content := text(path)) is not None
        for n, line in outside_pointers(content)
    ]
    assert not offenders, "these lines point at files the repository does not hold; point at docs/papers.md instead:\n" + "\n".join(
        offenders
    )


def test_every_papers_anchor_referenced_exists():
    assert PAPERS.is_file(), "docs/papers.md is missing: it holds the papers' numbers the claims use"
    known = anchors(PAPERS.read_text())
    referenced = 0
    missing = []
    for path in tracked_files():
        content = None if path == Path(__file__).resolve() else text(path)  # this file's examples are made up
        if content is None:
            continue
        for n, line in enumerate(content.splitlines(), 1):
            for anchor in ANCHOR_REF.findall(line):
                referenced += 1
                if anchor not in known:
                    missing.append(f"{path.relative_to(ROOT)}:{n}: #{anchor}")
    assert referenced >= 20, f"only {referenced} links into docs/papers.md: the code's comments should point there"
    assert not missing, f"no such heading in docs/papers.md (anchors: {sorted(known)}):\n" + "\n".join(missing)


def test_every_constant_papers_md_describes_exists():
    """A constant renamed or removed in the code leaves its row in docs/papers.md stale."""
    names = set(CONSTANT.findall(PAPERS.read_text()))
    assert len(names) >= 40, f"docs/papers.md describes only {len(names)} constants"
    code = "\n".join(p.read_text() for folder in ("experiments", "nfstudy") for p in (ROOT / folder).rglob("*.py"))
    defined = set(re.findall(r"^\s*([A-Z][A-Z0-9_]*)\s*(?::[^=]*)?=", code, flags=re.M))
    assert not names - defined, f"docs/papers.md describes constants no module defines: {sorted(names - defined)}"


# -- the checks themselves fail where they should ---------------------------------------------


@pytest.mark.parametrize("line", [f"see ../{OUTSIDE[0]}{OUTSIDE[1]} section D", f"as {OUTSIDE[2]} did", f"({OUTSIDE[3]}04)"])
def test_an_outside_pointer_is_found(line):
    assert outside_pointers(f"fine\n{line}\n") == [(2, line)]
    assert outside_pointers("docs/papers.md#bjorck-fig-2 and a shared lock") == []


def test_anchors_follow_github_and_a_wrong_one_is_caught():
    page = "# Top\n## Bjorck: setup\n### Bjorck Fig. 2\n### NFNets Fig. 2a\n## Notes\n## Notes\n```\n# not a heading\n```\n"
    assert anchors(page) == {"top", "bjorck-setup", "bjorck-fig-2", "nfnets-fig-2a", "notes", "notes-1"}
    assert ANCHOR_REF.findall("(../docs/papers.md#bjorck-fig-3) and papers.md#no-such") == ["bjorck-fig-3", "no-such"]
    assert "no-such" not in anchors(page) and "not-a-heading" not in anchors(page)
