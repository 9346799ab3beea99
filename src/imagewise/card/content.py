"""The card's content, written once and rendered twice (Markdown, HTML): sections of facts and
tables, each naming the files its figures come from, or the one line saying what to run to get
them."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Table:
    """A table of already formatted cells; the first column names the row."""

    id: str
    headers: list[str]
    rows: list[list[str]]


@dataclass
class Section:
    """One part of the card.

    Attributes:
        id: the HTML anchor (``data``, ``evaluation``, ...).
        title: the heading.
        sources: the files its figures are read from (relative to the run folder), or who said
            it (the author's fields).
        facts: (label, value) pairs.
        tables: the section's tables.
        notes: sentences shown after the facts.
        missing: when the evidence is absent: what to run to get it (the section shows only this,
            after the notes).
    """

    id: str
    title: str
    sources: list[str] = field(default_factory=list)
    facts: list[tuple[str, str]] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    missing: str | None = None


def pct(value: float) -> str:
    """A fraction as a percentage with two decimals, as the evaluation report shows it."""
    return f"{100 * float(value):.2f}%"


def num(value: float, digits: int = 4) -> str:
    return f"{float(value):.{digits}f}"


def count(value: int) -> str:
    return f"{int(value):,}"
