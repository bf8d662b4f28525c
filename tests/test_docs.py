"""The documentation holds together: every relative link of README.md and docs/*.md reaches a
file, every #anchor a heading of it (GitHub's rule for heading anchors), the front page stays
a front page, and no page sends users to files outside the repository."""

import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md"] + sorted(os.path.relpath(p, ROOT)
                               for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def prose(path: str) -> list[str]:
    """The page's lines outside code blocks, inline code removed."""
    lines, code = [], False
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        for line in f:
            if line.startswith("```"):
                code = not code
            elif not code:
                lines.append(re.sub(r"`[^`]*`", "", line))
    return lines


def anchors(path: str) -> set[str]:
    return {slug(m.group(1)) for line in prose(path)
            if (m := re.match(r"#{1,6} (.*)", line))}


@pytest.mark.parametrize("page", PAGES)
def test_relative_links_reach_a_file_and_a_heading(page):
    broken = []
    for target in LINK.findall("".join(prose(page))):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto
        file, _, anchor = target.partition("#")
        path = os.path.normpath(os.path.join(os.path.dirname(page), file)) if file else page
        if not os.path.exists(os.path.join(ROOT, path)):
            broken.append(f"{target}: no file {path}")
        elif anchor and path.endswith(".md") and anchor not in anchors(path):
            broken.append(f"{target}: no heading #{anchor} in {path}")
    assert not broken, broken


def test_the_readme_is_a_front_page_with_the_two_commands():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    assert len(text.splitlines()) < 250
    assert "make demo" in text and "make test" in text


@pytest.mark.parametrize("page", PAGES)
def test_no_page_points_outside_the_repository(page):
    with open(os.path.join(ROOT, page), encoding="utf-8") as f:
        text = f.read()
    assert not re.search(r"\.\./shared|DESIGN\.md|ENVIRONMENT\.md", text)


PLACEHOLDER = re.compile(r"^\s*([A-Z][A-Z_]{3,}|TODO|TBD|XXX)\s*$|\b(TODO|TBD|FIXME)\b")


@pytest.mark.parametrize("page", PAGES + ["CHANGELOG.md"])
def test_no_placeholder_is_left_for_a_measurement(page):
    """A figure left to fill in ('TIMES', 'BENCH_TABLE', 'TODO') reads as a finished page."""
    left = [line.strip() for line in prose(page) if PLACEHOLDER.search(line)]
    assert not left, f"{page}: placeholders left: {left}"
