"""Every relative link in README.md and docs/*.md points at a file that exists, and every
#anchor into a Markdown file names one of its headings (GitHub's heading ids)."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^(```|~~~)")
CODE_SPAN = re.compile(r"(`+).*?\1")
# [text](target) and ![alt](target); the text may itself hold `code` or an image.
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # http:, https:, mailto:, ...


def prose_lines(text: str) -> list[tuple[int, str]]:
    """Lines outside fenced code blocks, with code spans removed (links there are not links)."""
    lines, in_fence = [], False
    for number, line in enumerate(text.splitlines(), start=1):
        if FENCE.match(line.lstrip()):
            in_fence = not in_fence
            continue
        if not in_fence:
            lines.append((number, line))
    return lines


def links_in(text: str) -> list[tuple[int, str]]:
    """(line number, target) of every inline link or image outside code."""
    found = []
    for number, line in prose_lines(text):
        # A code span that is a link's text stays; any other one is an example, not a link.
        masked = CODE_SPAN.sub(lambda m: m.group(0) if m.start() and line[m.start() - 1] == "[" else "", line)
        found += [(number, match.group(1)) for match in INLINE_LINK.finditer(masked)]
    return found


def heading_ids(text: str) -> set[str]:
    """GitHub's ids: lower case, punctuation dropped, spaces to hyphens, -1, -2 ... for repeats."""
    ids: set[str] = set()
    for _, line in prose_lines(text):
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not heading:
            continue
        text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading.group(1)).lower()
        slug = re.sub(r"[^\w\- ]", "", text.replace("`", "")).replace(" ", "-")
        candidate, repeat = slug, 0
        while candidate in ids:
            repeat += 1
            candidate = f"{slug}-{repeat}"
        ids.add(candidate)
    return ids


RELATIVE_LINKS = [
    pytest.param(page, number, target, id=f"{page.relative_to(ROOT)}:{number}:{target}")
    for page in PAGES
    for number, target in links_in(page.read_text(encoding="utf-8"))
    if not EXTERNAL.match(target)
]


def test_the_readme_links_the_protocol_reference_and_every_docs_page():
    from_readme = {param.values[2] for param in RELATIVE_LINKS if param.values[0].name == "README.md"}
    docs_pages = {f"docs/{page.name}" for page in PAGES if page.parent.name == "docs"}
    assert "docs/PROTOCOL.md" in from_readme
    assert docs_pages - from_readme == set(), "docs pages the README does not link"


@pytest.mark.parametrize("page, line, target", RELATIVE_LINKS)
def test_relative_link_resolves(page: Path, line: int, target: str):
    path_part, _, anchor = target.partition("#")
    destination = (page.parent / unquote(path_part)).resolve() if path_part else page
    assert destination.exists(), f"{page.relative_to(ROOT)}:{line}: {target} -> no such file"
    assert destination.is_relative_to(ROOT), f"{page.relative_to(ROOT)}:{line}: {target} leaves the repository"
    if anchor and destination.suffix == ".md":
        assert anchor in heading_ids(destination.read_text(encoding="utf-8")), (
            f"{page.relative_to(ROOT)}:{line}: #{anchor} is not a heading of {destination.relative_to(ROOT)}")


def test_the_link_parser_finds_links_and_skips_code():
    text = ("see [a](docs/a.md#x) and ![img](har/p.png) and [`code`](../k.py)\n"
            "`[not](a-link.md)`\n```\n[in](fence.md)\n```\n[ext](https://example.org \"title\")\n")
    assert links_in(text) == [(1, "docs/a.md#x"), (1, "har/p.png"), (1, "../k.py"), (6, "https://example.org")]


def test_heading_ids_follow_github():
    text = "# The edge client: `fedproto-client`\n## 7. Scalars\n## Files\n## Files\n```\n# not a heading\n```\n"
    assert heading_ids(text) == {"the-edge-client-fedproto-client", "7-scalars", "files", "files-1"}
