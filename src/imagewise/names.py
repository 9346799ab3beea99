"""File names as text: written so that they read back as the same file, shown so that people
can read them.

A Linux file name is bytes. Python gives a name that is not valid UTF-8 (``café`` written in
Latin-1) as a ``str`` holding surrogate escapes (``'caf\\udce9.png'``), which a strict UTF-8
writer refuses; and a name may hold a carriage return, which a CSV reader takes for a line end
unless the field is quoted. Here:

- text files are written and read with ``errors="surrogateescape"``: the name's own bytes;
- JSON keeps such a name as the ``\\udcXX`` escapes ``json.loads`` turns back into it;
- CSV rows go through :class:`CsvWriter`, which quotes a field holding ``\\r`` or ``\\n``;
- :func:`shown` is the name for people (tables, error lines): undecodable bytes as ``\\xe9``,
  control characters as ``\\r``, ``\\n``, ``\\x07``; :func:`valid_text` escapes only the bytes
  (a whole HTML page, where a control character is just white space).
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable
from typing import Any, TextIO

TEXT_ERRORS = "surrogateescape"  # the errors= for text files that hold file names

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_CONTROL = re.compile("[\x00-\x1f\x7f]")


def shown(name: str) -> str:
    """``name`` for people: bytes that are not UTF-8 as ``\\xNN``, control characters escaped.

    >>> shown("caf\\udce9\\r.png")
    'caf\\\\xe9\\\\r.png'
    """
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], valid_text(name))


def valid_text(text: str) -> str:
    """``text`` (a page, a message) with the undecodable bytes of names in it as ``\\xNN``:
    valid UTF-8 to write or print."""
    return text.encode("utf-8", TEXT_ERRORS).decode("utf-8", "backslashreplace")


def json_dumps(data: Any, indent: int | None = 2) -> str:
    """JSON with text as is (``ensure_ascii=False``), but a name's undecodable bytes as the
    ``\\udcXX`` escapes that ``json.loads`` reads back into the same name (the text stays
    valid UTF-8)."""
    text = json.dumps(data, indent=indent, ensure_ascii=False)
    return _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


class CsvWriter:
    """``csv.writer`` (``\\n`` line ends) that also quotes a field holding ``\\r``: Python
    before 3.13 leaves it bare, and a reader then splits the row there.

    Open the file with ``newline=""`` and ``errors="surrogateescape"``.
    """

    def __init__(self, f: TextIO) -> None:
        self._plain = csv.writer(f, lineterminator="\n")
        self._quoted = csv.writer(f, lineterminator="\n", quoting=csv.QUOTE_ALL)

    def writerow(self, row: Iterable[Any]) -> None:
        row = list(row)
        needs_quotes = any(isinstance(v, str) and ("\r" in v or "\n" in v) for v in row)
        (self._quoted if needs_quotes else self._plain).writerow(row)

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        for row in rows:
            self.writerow(row)
