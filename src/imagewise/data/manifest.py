"""The labels manifests that label-less tools write, in the form ``train`` reads (a CSV
manifest): ``label serve`` and ``label auto`` write them, ``train --unlabelled`` its
``pseudo_labels.csv``; ``train --add-labels`` reads them (``data/extra.py``).

Columns: ``path,label[,split],labelled_by[,probability]``:

- ``path``: relative to the manifest's folder when the image lies under it (the pair can move
  together), else absolute.
- ``labelled_by``: ``person`` (``label serve``) or ``machine`` (``label auto`` and
  pseudo-labels, with the calibrated ``probability`` of the label it gave).

Only labelled images are rows (``train`` refuses an empty label); skipped, "none of these" and
dropped images are kept out. ``train`` keeps the extra columns as slice columns
(``evaluate --slice-by labelled_by``). Every write replaces the whole file atomically, so a
reader or a kill mid-write sees the old manifest or the new one, never half of one.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from imagewise.errors import UserError
from imagewise.io import atomic_write_text
from imagewise.names import TEXT_ERRORS, CsvWriter

PERSON = "person"
MACHINE = "machine"


def manifest_path(image: str | Path, out: str | Path) -> str:
    """How the manifest at ``out`` names ``image``: relative to the manifest's folder when the
    image lies under it, else absolute (``/`` separators either way).

    Example:
        >>> manifest_path("/data/pool/a.png", "/data/labels.csv")
        'pool/a.png'
    """
    image_abs = Path(os.path.abspath(image))
    folder = Path(os.path.abspath(out)).parent
    try:
        return image_abs.relative_to(folder).as_posix()
    except ValueError:
        return image_abs.as_posix()


def resolve_manifest_path(row_path: str, manifest: str | Path) -> Path:
    """The file a manifest row names (relative rows are under the manifest's folder)."""
    path = Path(row_path)
    return path if path.is_absolute() else Path(os.path.abspath(manifest)).parent / path


def read_rows(path: str | Path, what: str) -> tuple[list[dict[str, str]], list[str]]:
    """The rows of a CSV file (dicts keyed by its header) and its column names.

    Args:
        path: the file (a manifest, a queue).
        what: how a message names it, e.g. ``the queue 'q.csv'``.

    Raises:
        UserError: one line, ``cannot read WHAT: why``.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig", errors=TEXT_ERRORS) as f:
            reader = csv.DictReader(f)
            rows = list(reader)
    except (OSError, csv.Error) as exc:
        raise UserError(f"cannot read {what}: {exc}") from exc
    return rows, list(reader.fieldnames or [])


def write_manifest(
    out: str | Path,
    rows: Iterable[Mapping[str, object]],
    columns: Sequence[str] = ("path", "label", "labelled_by"),
) -> Path:
    """Write ``rows`` (dicts with at least ``columns``' keys; missing ones written empty) as a
    CSV manifest, atomically.

    Args:
        out: the manifest file.
        rows: one mapping per labelled image; ``path`` as ``manifest_path`` gives it.
        columns: the header, ``path`` and ``label`` first.
    """
    if tuple(columns[:2]) != ("path", "label"):
        raise ValueError(f"a manifest's first columns are path,label, not {columns[:2]}")
    buf = io.StringIO()
    writer = CsvWriter(buf)
    writer.writerow(list(columns))
    for row in rows:
        writer.writerow([_text(row.get(c, "")) for c in columns])
    return atomic_write_text(out, buf.getvalue())


def _text(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6f}"
    return "" if value is None else str(value)
