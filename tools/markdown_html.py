"""A small Markdown to HTML converter for the user manual shipped inside the plugin.

It knows what docs/*.md use: headings (with GitHub's anchors, so ``page.md#anchor`` links keep
working), paragraphs, bullet and numbered lists (nested, with code blocks inside items),
fenced code blocks, tables, block quotes, inline code, links, bold and italics. Links to the
other shipped pages point to their HTML; links to files the plugin does not ship (the
repository's front page, developer pages, source files) become plain text. No dependency:
QGIS's Python must not need one more package to read its help.
"""

from __future__ import annotations

import html
import re

LIST_ITEM = re.compile(r"( *)([-*]|\d+\.) +")
HEADING = re.compile(r"(#{1,6}) +(.*?) *#*$")
FENCE = re.compile(r" *(```|~~~)")
TABLE_RULE = re.compile(r" *\|? *:?-{3,}:? *(\| *:?-{3,}:? *)*\|? *$")
INLINE = re.compile(r"`([^`]+)`|\[((?:[^\[\]`]|`[^`]*`)*)\]\(([^)\s]+)\)")
STYLE = ("body{font-family:sans-serif;max-width:60em;margin:1em auto;padding:0 1em;"
         "line-height:1.45}code,pre{font-family:monospace;background:#f4f4f4}"
         "pre{padding:.6em;overflow-x:auto}table{border-collapse:collapse}"
         "td,th{border:1px solid #ccc;padding:.3em .5em;vertical-align:top}"
         "blockquote{border-left:3px solid #ccc;margin-left:0;padding-left:1em;color:#444}")


def slug(heading_markdown: str) -> str:
    """GitHub's anchor of a heading: its text (inline code kept, markup dropped) in lower
    case, without punctuation, spaces as hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading_markdown).replace("`", "")
    text = re.sub(r"[*_]", "", text)
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def inline(text: str, link) -> str:
    """Inline Markdown of one block as HTML; ``link(target)`` gives a link's new target, or
    None to keep only its text."""
    kept = []

    def keep(fragment: str) -> str:
        kept.append(fragment)
        return f"\x00{len(kept) - 1}\x00"

    def replace(match):
        if match.group(1) is not None:
            return keep(f"<code>{html.escape(match.group(1))}</code>")
        label, target = inline(match.group(2), link), link(match.group(3))
        if target is None:
            return keep(label)
        return keep(f'<a href="{html.escape(target)}">{label}</a>')

    text = html.escape(INLINE.sub(replace, text), quote=False)
    text = re.sub(r"\*\*(?=\S)(.+?)(?<=\S)\*\*", r"<strong>\1</strong>", text)
    text = re.sub(r"(?<![\w*])\*(?=[^\s*])(.+?)(?<=[^\s*])\*(?![\w*])", r"<em>\1</em>", text)
    return re.sub("\x00(\\d+)\x00", lambda m: kept[int(m.group(1))], text)


def indent_of(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def starts_block(line: str) -> bool:
    return bool(HEADING.match(line) or FENCE.match(line) or LIST_ITEM.match(line)
                or line.lstrip().startswith(("|", ">")))


def blocks(lines: list[str], link) -> list[str]:
    """The HTML of a run of Markdown lines, block by block."""
    out, i = [], 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif FENCE.match(line):
            i = _code_block(lines, i, out)
        elif HEADING.match(line):
            level, text = HEADING.match(line).groups()
            out.append(f'<h{len(level)} id="{slug(text)}">{inline(text, link)}</h{len(level)}>')
            i += 1
        elif line.lstrip().startswith("|") and i + 1 < len(lines) \
                and TABLE_RULE.match(lines[i + 1]):
            i = _table(lines, i, out, link)
        elif LIST_ITEM.match(line):
            i = _list(lines, i, out, link)
        elif line.lstrip().startswith(">"):
            quoted = []
            while i < len(lines) and lines[i].lstrip().startswith(">"):
                quoted.append(re.sub(r"^ *> ?", "", lines[i]))
                i += 1
            out.append("<blockquote>" + "\n".join(blocks(quoted, link)) + "</blockquote>")
        else:
            paragraph = [line.strip()]
            i += 1
            while i < len(lines) and lines[i].strip() and not starts_block(lines[i]):
                paragraph.append(lines[i].strip())
                i += 1
            out.append(f"<p>{inline(' '.join(paragraph), link)}</p>")
    return out


def _code_block(lines: list[str], i: int, out: list[str]) -> int:
    indent, fence = indent_of(lines[i]), FENCE.match(lines[i]).group(1)
    code, i = [], i + 1
    while i < len(lines) and not lines[i].strip().startswith(fence):
        code.append(lines[i][min(indent, indent_of(lines[i])):])
        i += 1
    out.append("<pre><code>" + html.escape("\n".join(code)) + "</code></pre>")
    return i + 1


def _cells(line: str) -> list[str]:
    """A table row's cells; a | inside inline code (``a|b``) does not split a cell."""
    parts = re.split(r"(`[^`]*`)", line.strip().strip("|"))
    cells = [""]
    for number, part in enumerate(parts):
        pieces = [part] if number % 2 else part.replace("\\|", "\x01").split("|")
        cells[-1] += pieces[0]
        cells += pieces[1:]
    return [cell.replace("\x01", "|").strip() for cell in cells]


def _table(lines: list[str], i: int, out: list[str], link) -> int:
    head = "".join(f"<th>{inline(cell, link)}</th>" for cell in _cells(lines[i]))
    rows, i = [], i + 2
    while i < len(lines) and lines[i].lstrip().startswith("|"):
        rows.append("<tr>" + "".join(f"<td>{inline(cell, link)}</td>"
                                     for cell in _cells(lines[i])) + "</tr>")
        i += 1
    out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")
    return i


def _list(lines: list[str], i: int, out: list[str], link) -> int:
    """A list and its items; an item holds every following line indented deeper than its
    marker, blank lines included when the next line is still indented."""
    indent = indent_of(lines[i])
    ordered = LIST_ITEM.match(lines[i]).group(2)[0].isdigit()
    items = []
    while i < len(lines):
        match = LIST_ITEM.match(lines[i])
        if not match or indent_of(lines[i]) != indent:
            break
        content = match.end()
        item, i = [" " * content + lines[i][content:]], i + 1
        while i < len(lines):
            following = next((x for x in lines[i:] if x.strip()), "")
            if lines[i].strip() and indent_of(lines[i]) > indent:
                item.append(lines[i])
            elif not lines[i].strip() and following and indent_of(following) > indent:
                item.append("")
            elif lines[i].strip() and not starts_block(lines[i]) and item[-1].strip():
                item.append(" " * content + lines[i].strip())  # a lazy continuation line
            else:
                break
            i += 1
        body = blocks([x[min(content, indent_of(x)):] for x in item], link)
        if len(body) == 1 and body[0].startswith("<p>"):
            body = [body[0][3:-4]]  # a one-paragraph item stays tight
        items.append("<li>" + "\n".join(body) + "</li>")
        while i < len(lines) and not lines[i].strip() and i + 1 < len(lines) \
                and LIST_ITEM.match(lines[i + 1]) and indent_of(lines[i + 1]) == indent:
            i += 1  # a blank line between items
    tag = "ol" if ordered else "ul"
    out.append(f"<{tag}>" + "\n".join(items) + f"</{tag}>")
    return i


def page(markdown: str, link, index: str | None = None) -> str:
    """A whole HTML page; ``index``: the target of a link back to the manual's index."""
    lines = markdown.splitlines()
    title = next((HEADING.match(x).group(2) for x in lines if HEADING.match(x)), "Help")
    title = re.sub(r"[`*]", "", title)
    back = f'<p><a href="{html.escape(index)}">The manual\'s index</a></p>' if index else ""
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>"
            f"{html.escape(title)}</title><style>{STYLE}</style></head><body>\n{back}\n"
            + "\n".join(blocks(lines, link)) + "\n</body></html>\n")
