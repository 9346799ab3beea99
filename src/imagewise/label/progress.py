"""``imagewise label retrain RUN LABELS``: train again with the labels given so far, and track
what the labels bought.

A retrain is the run's own configuration (``RUN/config.yaml``) with the labels manifest added
to its training split (``train --add-labels``): the validation split is the run's, so the
accuracies of successive retrains compare like with like. Each retrain appends one entry to
``LABELS.progress.json`` (beside the manifest; the labelling page shows it):
``{"labelled", "by_person", "by_machine", "val_accuracy", "run", "at"}``.

The estimated gain of the next batch extrapolates the entries' accuracy against the logarithm
of the number of labels (learning curves of this size are close to linear in log n; Figueroa et
al. 2012 fit inverse power laws, which need more points than a few retrains give).
"""

from __future__ import annotations

import logging
import math
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from imagewise.data.manifest import MACHINE, read_rows
from imagewise.errors import UserError
from imagewise.io import atomic_write_json, read_json

log = logging.getLogger("imagewise")

PROGRESS_SUFFIX = ".progress.json"
GAIN_POINTS = 4  # the latest retrains the log fit uses


def progress_file(labels: str | Path) -> Path:
    """Where a labels manifest's progress entries live: ``LABELS.progress.json``."""
    return Path(f"{os.path.abspath(labels)}{PROGRESS_SUFFIX}")


def read_progress(labels: str | Path) -> list[dict[str, Any]]:
    """The retrains recorded for a labels manifest, oldest first (none: an empty list)."""
    path = progress_file(labels)
    if not path.is_file():
        return []
    try:
        entries = read_json(path)
    except ValueError as exc:
        raise UserError(f"cannot read '{path}': {exc}") from exc
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []


def estimate_gain(entries: list[dict[str, Any]], batch: int) -> float | None:
    """Validation accuracy the next ``batch`` labels should add (a fraction), from the latest
    retrains' accuracy against log(labels); None with fewer than two distinct label counts.

    Example:
        >>> e = [{"labelled": 100, "val_accuracy": 0.70}, {"labelled": 200, "val_accuracy": 0.76}]
        >>> round(estimate_gain(e, 200), 4)
        0.06
    """
    points = [
        (math.log(e["labelled"] + _base(e)), float(e["val_accuracy"]))
        for e in entries[-GAIN_POINTS:]
        if e.get("labelled", 0) + _base(e) > 0 and e.get("val_accuracy") is not None
    ]
    if len({x for x, _ in points}) < 2:
        return None
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    slope = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)
    last = entries[-1]
    n = last["labelled"] + _base(last)
    return max(0.0, slope * math.log((n + batch) / n))


def _base(entry: dict[str, Any]) -> int:
    """The labelled images the run had before the manifest (its own training split)."""
    return int(entry.get("base_images", 0))


def describe(entries: list[dict[str, Any]], batch: int = 100) -> str:
    """Lines for the command line: labelled so far, accuracy after each retrain, the gain
    expected from the next ``batch`` labels."""
    if not entries:
        return "no retrain yet: imagewise label retrain RUN LABELS"
    lines = [
        f"  {e['labelled']:>6} labels ({e.get('by_machine', 0)} by machine): val accuracy "
        f"{100 * e['val_accuracy']:.2f}%  {e['run']}"
        for e in entries
    ]
    gain = estimate_gain(entries, batch)
    lines.append(
        f"expected from the next {batch} labels: +{100 * gain:.2f} points (log fit over the "
        f"last {min(len(entries), GAIN_POINTS)} retrains)"
        if gain is not None
        else "expected gain: needs two retrains with different label counts"
    )
    return "\n".join(["labels and validation accuracy after each retrain:", *lines])


def count_labels(labels: str | Path) -> tuple[int, int]:
    """Rows of a labels manifest and how many of them are machine labels."""
    rows, _ = read_rows(labels, f"labels manifest '{labels}'")
    rows = [r for r in rows if (r.get("label") or "").strip()]
    return len(rows), sum((r.get("labelled_by") or "").strip() == MACHINE for r in rows)


def retrain(
    run: str | Path,
    labels: str | Path,
    *,
    out: str | Path | None = None,
    show_progress: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """Train ``run``'s configuration again with the ``labels`` manifest added to its training
    split, and record the result in ``LABELS.progress.json``.

    Args:
        run: the run folder whose configuration (data, model, recipe, epochs) is reused.
        labels: a manifest written by ``label serve`` or ``label auto`` (``path,label,...``).
        out: the new run folder (default ``RUN-retrain``, ``RUN-retrain-2``, ...).
        show_progress: show the training progress bars.
        **options: settings over the run's, as ``imagewise.train`` takes them.

    Returns:
        The progress entry: ``labelled``, ``by_person``, ``by_machine``, ``val_accuracy``,
        ``base_images`` (the run's own training images), ``run``, ``at``.

    Example:
        >>> imagewise.label.retrain("runs/fm", "labels.csv")["val_accuracy"]  # doctest: +SKIP
        0.861
    """
    from imagewise.config import load_config_file
    from imagewise.data.extra import absolute_manifests
    from imagewise.runtime.runs import RunFolder, free_run_path
    from imagewise.train.run import train

    folder = RunFolder.of(run)
    if not folder.config.is_file():
        raise UserError(f"'{run}' is not a run folder (no config.yaml)")
    if not Path(labels).is_file():
        raise UserError(f"labels manifest '{labels}' not found")
    total, machine = count_labels(labels)
    if not total:
        raise UserError(f"'{labels}' holds no labels yet; label some images first")
    cfg = load_config_file(folder.config)
    # a self-trained run names its pseudo-labels relative to itself: absolute in the new run
    cfg.data.add_labels = absolute_manifests(cfg.data.add_labels, folder.path)
    wanted = os.path.abspath(labels)
    added = [p for p in (cfg.data.add_labels or []) if os.path.abspath(p) != wanted]
    cfg.data.add_labels = [*added, wanted]
    target = Path(out) if out else free_run_path(Path(f"{os.path.abspath(run)}-retrain"))
    result = train(config=cfg, out=target, show_progress=show_progress, **options)
    entry = {
        "labelled": total,
        "by_person": total - machine,
        "by_machine": machine,
        "val_accuracy": float(result.best_val_accuracy),
        "base_images": max(0, _training_images(target) - total),
        "run": str(target),
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    atomic_write_json(progress_file(labels), [*read_progress(labels), entry])
    return entry


def _training_images(run: Path) -> int:
    """How many training images a run was trained on (``meta.json``), 0 when unknown."""
    from imagewise.runtime.runs import RunFolder

    try:
        meta = RunFolder.of(run).read_meta()
    except (UserError, OSError, ValueError):
        return 0
    return int(meta.data.train_images or 0)
