"""The card's sections as Markdown (MODEL_CARD.md, with the Hugging Face header) and as one
self-contained HTML page in the evaluation report's style (model_card.html)."""

from __future__ import annotations

import html
import re
from collections.abc import Sequence

from imagewise.card.content import Section, Table


def _cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _md_table(table: Table) -> list[str]:
    lines = [
        "| " + " | ".join(_cell(h) for h in table.headers) + " |",
        "|" + "|".join("---" for _ in table.headers) + "|",
    ]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in table.rows]
    return [*lines, ""]


def _md_section(section: Section) -> list[str]:
    lines = [f"## {section.title}", ""]
    if section.missing:
        return [*lines, *(f"{note}\n" for note in section.notes), f"_{section.missing}_", ""]
    lines += [f"- **{label}**: {value}" for label, value in section.facts]
    if section.facts:
        lines.append("")
    for table in section.tables:
        lines += _md_table(table)
    lines += [*(f"{note}\n" for note in section.notes)]
    sources = ", ".join(f"`{s}`" if "." in s else s for s in section.sources)
    return [*lines, f"Source: {sources}", ""]


def render_markdown(header: str, title: str, intro: str, sections: Sequence[Section]) -> str:
    """MODEL_CARD.md: the YAML header between ``---`` lines, the title, then each section."""
    lines = ["---", header, "---", "", f"# {title}", "", intro, ""]
    for section in sections:
        lines += _md_section(section)
    return "\n".join(lines).rstrip("\n") + "\n"


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


# A cell that is a number: 1,234  0.0421  95.83%  2.5e-07 ("-" stands for one not measured).
_NUMBER = re.compile(r"-|[-+]?[\d,]*\.?\d+(e[-+]?\d+)?%?")

# The report's CSS right-aligns every column but the first: text columns are left-aligned here.
_CSS = ".text{text-align:left}"


def _text_columns(table: Table) -> list[bool]:
    """Whether each column holds text (any cell not a number): it is then left-aligned."""
    return [
        any(not _NUMBER.fullmatch(row[i]) for row in table.rows if i < len(row))
        for i in range(len(table.headers))
    ]


def _html_table(table: Table) -> str:
    text = _text_columns(table)

    def cell(tag: str, i: int, value: str) -> str:
        attribute = ' class="text"' if text[i] else ""
        return f"<{tag}{attribute}>{_esc(value)}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(table.headers))
    body = "".join(
        "<tr>" + "".join(cell("td", i, c) for i, c in enumerate(row)) + "</tr>"
        for row in table.rows
    )
    return f'<table id="{table.id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _html_section(section: Section) -> str:
    head = f'<section id="{section.id}"><h2>{_esc(section.title)}</h2>'
    if section.missing:
        notes = "".join(f"<p>{_esc(note)}</p>" for note in section.notes)
        return f'{head}{notes}<p class="muted missing">{_esc(section.missing)}</p></section>'
    facts = "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in section.facts)
    parts = [f'<dl class="meta">{facts}</dl>' if facts else ""]
    parts += [_html_table(t) for t in section.tables]
    parts += [f"<p>{_esc(note)}</p>" for note in section.notes]
    sources = ", ".join(section.sources)
    parts.append(f'<p class="muted source">Source: <span class="src">{_esc(sources)}</span></p>')
    return head + "".join(parts) + "</section>"


def render_page(
    header: str,
    title: str,
    intro: str,
    cards: Sequence[tuple[str, str]],
    sections: Sequence[Section],
) -> str:
    """model_card.html: the summary figures as cards, each section, the Hugging Face header."""
    from imagewise.evaluate.report import CSS  # one look for the report and the card

    card_html = "".join(
        f'<div class="card"><b>{_esc(v)}</b><span>{_esc(k)}</span></div>' for k, v in cards
    )
    summary = (
        f'<section id="summary"><h2>Summary</h2><div class="cards">{card_html}</div></section>'
    )
    nav = "".join(f'<a href="#{s.id}">{_esc(s.title.lower())}</a>' for s in sections)
    yaml_block = (
        f'<section id="hub-header"><h2>Hugging Face header</h2><pre>{_esc(header)}</pre></section>'
    )
    body = summary + "".join(_html_section(s) for s in sections) + yaml_block
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_esc(title)}</title><style>{CSS}{_CSS}</style></head><body>"
        f"<header><h1>{_esc(title)}</h1><p>{_esc(intro)}</p></header>"
        f"<nav>{nav}</nav><main>{body}</main></body></html>"
    )
