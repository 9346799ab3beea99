"""What the labelling page asks about: the classes, the images, and the book that keeps the
answers (``open_session``).

Images come from a queue written by ``imagewise label next`` (its ``guess`` and
``probability`` pre-fill the answer), from a folder or glob (guessed by ``--run`` when given,
one image at a time as it is handed out), or, in review mode, from the likely label errors of
``imagewise data check --json`` (the audit's suggestion pre-filled).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from imagewise.data.manifest import manifest_path, read_rows
from imagewise.errors import UserError
from imagewise.label.books import QueueBook, ReviewBook
from imagewise.label.session import LEASE_S, Item, LabelSession
from imagewise.names import TEXT_ERRORS

log = logging.getLogger("imagewise")

DEFAULT_OUT = "labels.csv"  # label mode, in the current folder
DEFAULT_REVIEW_OUT = "reviewed.csv"  # review mode


def open_session(
    data: str | Path,
    pool: str | Path | None = None,
    *,
    queue: str | Path | None = None,
    run: str | Path | None = None,
    out: str | Path | None = None,
    review: str | Path | None = None,
    lease_s: float = LEASE_S,
) -> LabelSession:
    """The labelling page's session: classes from ``data``, images from a queue, a pool or the
    audit's findings, answers kept in ``out`` (and ``OUT.state.json``).

    Args:
        data: the dataset whose class names a label may take (a class folder tree or a CSV
            manifest); in review mode, the dataset the findings were made on.
        pool: a folder (searched recursively) or glob of images to label.
        queue: a queue CSV from ``imagewise label next`` (instead of ``pool``).
        run: a run folder: guesses for a pool's images (and the page's retrain button).
        out: the manifest to write (default ``labels.csv``; review: ``reviewed.csv``).
        review: a ``data check --json`` report: review its likely label errors.
        lease_s: seconds a browser tab holds an image it has not answered.

    Raises:
        UserError: a missing or unreadable input, no classes, or a bad combination.
    """
    from imagewise.io import check_output_file, refuse_overwriting

    _check_sources(pool, queue, review)
    if review is not None and run is not None:
        raise UserError(
            "--review takes no --run; train on the reviewed manifest: imagewise train OUT"
        )
    out = Path(out or (DEFAULT_REVIEW_OUT if review else DEFAULT_OUT))
    check_output_file(out, "--out")
    inputs = [p for p in (data, pool, queue, review) if p is not None and Path(p).exists()]
    refuse_overwriting(out, inputs, "--out")
    dataset = _dataset(data)
    classes = list(dataset.classes)
    if review is not None:
        items, rows = review_items(review, dataset, out)
        return LabelSession(ReviewBook(out, rows), classes, items, lease_s)
    items = queue_items(queue, classes, out) if queue is not None else pool_items(pool, out)
    guesser = None
    if run is not None and queue is None:
        guesser = run_guesser(run, classes)
    return LabelSession(QueueBook(out), classes, items, lease_s, guesser)


def _check_sources(
    pool: str | Path | None, queue: str | Path | None, review: str | Path | None
) -> None:
    if review is not None and (pool is not None or queue is not None):
        raise UserError("--review asks about the audit's findings; give no queue or folder")
    if pool is not None and queue is not None:
        raise UserError("give a folder of images or --queue, not both")
    if pool is None and queue is None and review is None:
        raise UserError(
            "nothing to label: give a folder of images, --queue QUEUE.csv (from imagewise "
            "label next) or --review FINDINGS.json (from imagewise data check --json)"
        )
    for flag, path in (("--queue", queue), ("--review", review)):
        if path is not None and not Path(path).is_file():
            raise UserError(f"{flag} '{path}' does not exist or is not a file")


def _dataset(data: str | Path) -> Any:
    """The dataset, single-label, with at least two classes; its splits as given (none
    carved, as ``data check`` reads it: ``train`` carves its own from a review's output)."""
    from imagewise.data.sources import resolve_source

    dataset = resolve_source(str(data), val_fraction=0.0, test_fraction=0.0)
    if dataset.multilabel:
        raise UserError(f"'{data}' is multi-label; the labelling page gives one class per image")
    if len(dataset.classes) < 2:
        raise UserError(f"'{data}' has {len(dataset.classes)} class; labelling needs two or more")
    return dataset


def _item(index: int, path: str | Path, out: Path, **fields: Any) -> Item:
    absolute = os.path.abspath(path)
    return Item(str(index), absolute, manifest_path(absolute, out), **fields)


def pool_items(pool: str | Path | None, out: Path) -> list[Item]:
    """The images of a folder (searched recursively) or glob, in order."""
    from imagewise.predict.inputs import expand_inputs

    return [_item(i, path, out) for i, path in enumerate(expand_inputs([str(pool)]))]


def _queue_file(path: str, queue: Path) -> Path:
    """A queue row's image: absolute, else as from the current folder (``label next`` wrote
    the paths it was given), else from the queue's folder."""
    given = Path(path).expanduser()
    if given.is_absolute() or given.exists():
        return given
    return queue.parent / given


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


def queue_items(queue: str | Path, classes: list[str], out: Path) -> list[Item]:
    """The images of a queue CSV (``path`` column; ``guess``, ``probability`` and ``reason``
    when present), in its order; missing files are left out with a warning."""
    queue = Path(queue)
    rows, header = read_rows(queue, f"the queue '{queue}'")
    if "path" not in header:
        raise UserError(f"the queue '{queue}' has no path column; write it with label next")
    items: list[Item] = []
    missing: list[str] = []
    seen: set[str] = set()
    for row in rows:
        file = _queue_file(row.get("path") or "", queue)
        if not row.get("path") or not file.is_file():
            missing.append(row.get("path") or "(empty)")
            continue
        if os.path.abspath(file) in seen:
            continue
        seen.add(os.path.abspath(file))
        guess = row.get("guess") or ""
        items.append(
            _item(
                len(items), file, out,
                guess=guess if guess in classes else "",
                probability=_float(row.get("probability")) if guess in classes else None,
                reason=row.get("reason") or "",
            )
        )  # fmt: skip
    if missing:
        log.warning("left out %d queue image(s) not found, e.g. %s", len(missing), missing[0])
    if not items:
        raise UserError(f"none of the queue's {len(rows)} images exists; is '{queue}' current?")
    return items


def review_items(
    findings: str | Path, dataset: Any, out: Path
) -> tuple[list[Item], list[tuple[str, str, str]]]:
    """The likely label errors of a ``data check --json`` report that lie in ``dataset``, and
    the dataset's rows (absolute path, label, split) the corrected manifest is made of."""
    from imagewise.data.sources import SPLITS

    rows = []
    for split in SPLITS:
        part = dataset.split(split)
        if part.paths is None:
            raise UserError(f"'{dataset.source}' is held in memory; review needs image files")
        for path, label in zip(part.paths, part.labels.tolist(), strict=True):
            rows.append((os.path.abspath(path), dataset.classes[label], split))
    issues, checked = _label_issues(findings)
    known = {path for path, _, _ in rows}
    bases = _finding_bases(Path(findings), checked, dataset.source)
    items: list[Item] = []
    for entry in issues:
        path = _finding_file(str(entry.get("path", "")), bases, known)
        if path is None or entry.get("given") not in dataset.classes:
            continue
        suggested = entry.get("suggested")
        items.append(
            _item(
                len(items), path, out,
                guess=suggested if suggested in dataset.classes else "",
                probability=_float(str(entry.get("suggested_probability", ""))),
                given=entry["given"],
                split=str(entry.get("split", "")),
                reason=_doubt(entry),
            )
        )  # fmt: skip
    if not items:
        raise UserError(
            f"none of the {len(issues)} likely label errors in '{findings}' is an image of "
            f"'{dataset.source}'; review the dataset the check was run on"
        )
    return items, rows


def _doubt(entry: dict[str, Any]) -> str:
    """Why the image is asked about, in the check's words."""
    given = _float(str(entry.get("given_probability", "")))
    belief = "" if given is None else f" (it gives that label {given:.2g})"
    return f"the label check doubts '{entry['given']}'{belief}"


def _folder_of(source: str) -> Path:
    """The folder a dataset's relative paths hang from: itself, or a manifest's folder."""
    path = Path(source)
    return path.parent if path.suffix.lower() == ".csv" else path


def _finding_bases(findings: Path, checked: str, source: str) -> list[tuple[Path, Path]]:
    """Where a finding's relative path may start: (prefix it has, folder it means now)."""
    here = Path(".")
    return [
        (here, here),  # the current folder (the check names images as it was given them)
        (_folder_of(checked), _folder_of(source)),  # the dataset, checked from elsewhere
        (here, findings.parent),  # beside the report
    ]


def _finding_file(path: str, bases: list[tuple[Path, Path]], known: set[str]) -> str | None:
    """A finding's image among the dataset's (``known``, absolute), or None."""
    for prefix, folder in bases:
        try:
            inside = Path(path).relative_to(prefix) if str(prefix) != "." else Path(path)
        except ValueError:
            continue
        candidate = os.path.abspath(folder / inside)
        if candidate in known:
            return candidate
    return None


def _label_issues(findings: str | Path) -> tuple[list[dict[str, Any]], str]:
    """The report's likely label errors and the dataset it checked (as it was named)."""
    try:
        report = json.loads(Path(findings).read_text(encoding="utf-8", errors=TEXT_ERRORS))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the findings '{findings}': {exc}") from exc
    issues = report.get("label_issues") if isinstance(report, dict) else None
    if not isinstance(issues, list):
        raise UserError(
            f"'{findings}' has no label_issues list; write it with imagewise data check DATA "
            "--json FINDINGS.json"
        )
    if not issues:
        raise UserError(f"'{findings}' lists no likely label errors; nothing to review")
    return [e for e in issues if isinstance(e, dict)], str(report.get("source", ""))


def run_guesser(run: str | Path, classes: list[str]) -> Callable[[Item], None]:
    """A function that fills an item's guess and calibrated probability from the run's
    classifier (an image it cannot read gets no guess)."""
    import torch

    from imagewise.predict.predictor import load_run

    clf = load_run(run, device="cpu")
    if not set(clf.classes) & set(classes):
        raise UserError(f"the run '{run}' knows none of the dataset's classes")

    def guess(item: Item) -> None:
        try:
            image = torch.from_numpy(clf.read(item.path))[None]
        except UserError:
            item.guess, item.probability = "", None
            return
        with torch.no_grad():
            probs = clf.image_probabilities(image)[0]
        top = int(probs.argmax())
        name = clf.classes[top]
        item.guess = name if name in classes else ""
        item.probability = float(probs[top]) if item.guess else None

    return guess
