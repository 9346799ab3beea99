"""Rows labelled after the dataset was made, added to its splits before decoding.

Issue 31's tools write their labels as a CSV manifest, ``path,label[,split],labelled_by
[,probability]`` (``label serve``: ``person``; ``label auto`` and ``train --unlabelled``:
``machine``). ``train --add-labels FILE`` (``data.add_labels``, kept in the run's config so
evaluate and ``--resume`` see the same data) adds them to the dataset with
:func:`add_label_files`; :func:`resolve_data` is the dataset a run's config describes.

The rules, in order:

- A class is matched by name onto the dataset's classes; a name it does not have is one line
  naming the manifest's line. Rows go to their ``split`` (train when not given).
- An image already in the dataset (the same resolved path) is never added twice. A person's
  label (any ``labelled_by`` but ``machine``) replaces the dataset's label where the image is,
  in its own split: a later label corrects an earlier one. A machine's label never overrides
  a label the dataset or a person gave; it is dropped.
- Between added rows of the same image the later one wins (the later file, the later line),
  except that a machine's label again never overrides a person's.
- Where a split holds decoded images (the built-ins ``digits`` and ``fashion-mnist``), an added
  file is decoded at that split's own size and channel count; an unreadable one is skipped
  (or refused with ``strict``) like any other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from imagewise.config import DataConfig
from imagewise.data.manifest import MACHINE, PERSON
from imagewise.data.pipeline import _decode_all
from imagewise.data.sources import SPLITS, ImageData, Split, _read_manifest, resolve_source
from imagewise.errors import UserError


@dataclass(frozen=True)
class LabelRow:
    """One labelled image to add: its resolved path, class name, split, who labelled it and
    where the row came from (``'labels.csv' line 3``, for messages)."""

    path: str
    label: str
    split: str = "train"
    labelled_by: str = PERSON  # MACHINE: a model's label; anything else is a person's
    where: str = ""

    @property
    def by_machine(self) -> bool:
        return self.labelled_by == MACHINE


def read_label_rows(manifest: str | Path) -> list[LabelRow]:
    """The rows of a labels manifest (``path,label[,split],labelled_by[,probability]``), paths
    resolved against the manifest's folder.

    Raises:
        UserError: the file cannot be read, has no ``label`` column, or a line has an empty
            path or label or an unknown split.
    """
    path = Path(manifest).expanduser()
    if not path.is_file():
        raise UserError(f"labels manifest '{manifest}' does not exist; check --add-labels")
    rows, header = _read_manifest(path)
    if "label" not in header:
        raise UserError(f"labels manifest '{path}' needs a label column (path,label,...)")
    out = []
    for line, row in enumerate(rows, start=2):
        where = f"labels manifest '{path}' line {line}"
        rel, label = _value(row, "path"), _value(row, "label")
        if not rel or not label:
            raise UserError(f"{where}: path and label must not be empty")
        split = _value(row, "split").lower() or "train"
        if split not in SPLITS:
            raise UserError(f"{where}: unknown split '{split}'; use train, val or test")
        file = Path(rel).expanduser()
        file = file if file.is_absolute() else path.parent / file
        by = _value(row, "labelled_by") or "person"
        out.append(LabelRow(str(file.resolve()), label, split, by, where))
    return out


def _value(row: Mapping[str, str | None], column: str) -> str:
    """A manifest cell, stripped ("" when the row has no such column)."""
    value = row.get(column)
    return value.strip() if isinstance(value, str) else ""


def add_labelled(
    data: ImageData, rows: Sequence[LabelRow], strict: bool = False
) -> tuple[ImageData, int]:
    """``data`` with ``rows`` added to (or relabelling images in) their splits, by the rules of
    this module; ``data`` itself is not changed.

    Args:
        data: a dataset from ``resolve_source``, not yet decoded by ``prepare``.
        rows: the labelled images, in order (a later row of the same image wins).
        strict: refuse an unreadable added file instead of skipping it (decoded splits only).

    Returns:
        The new dataset and the number of images added (relabelled ones not counted).

    Raises:
        UserError: multi-label data, or a row's class is not one of the dataset's.
    """
    if not rows:
        return data, 0
    if data.multilabel:
        raise UserError(
            f"{rows[0].where}: added labels are one class per image, and '{data.source}' is "
            "multi-label; add the rows to its manifest instead"
        )
    index = {name: i for i, name in enumerate(data.classes)}
    for row in rows:
        if row.label not in index:
            known = ", ".join(data.classes[:10]) + (", ..." if len(data.classes) > 10 else "")
            raise UserError(
                f"{row.where}: class '{row.label}' is not one of the dataset's classes "
                f"({known}); fix the label or the manifest"
            )
    kept = _last_label_per_image(rows)
    splits = {name: data.split(name) for name in SPLITS}
    kept, splits = _relabel_known(kept, splits, index)
    skipped = list(data.skipped)
    added = 0
    for name in SPLITS:
        new = [r for r in kept if r.split == name]
        if new:
            splits[name], bad = _append(splits[name], new, index, strict)
            skipped.extend(bad)
            added += len(new) - len(bad)
    result = replace(data, train=splits["train"], val=splits["val"], test=splits["test"])
    return replace(result, skipped=skipped), added


def _last_label_per_image(rows: Sequence[LabelRow]) -> list[LabelRow]:
    """One row per image: the last one, unless that is a machine's over a person's."""
    chosen: dict[str, LabelRow] = {}
    for row in rows:
        before = chosen.get(row.path)
        if before is not None and row.by_machine and not before.by_machine:
            continue
        chosen.pop(row.path, None)  # the later row's place, so the order follows the files
        chosen[row.path] = row
    return list(chosen.values())


def _relabel_known(
    rows: list[LabelRow], splits: dict[str, Split], index: dict[str, int]
) -> tuple[list[LabelRow], dict[str, Split]]:
    """Rows of images the dataset already holds: a person's relabels the image where it is, a
    machine's is dropped. Returns the rows still to add, and the splits."""
    where = {
        str(Path(p).resolve()): (name, i)
        for name, split in splits.items()
        for i, p in enumerate(split.paths or [])
    }
    if not where:
        return rows, splits
    labels = {name: np.array(split.labels, copy=True) for name, split in splits.items()}
    new = []
    for row in rows:
        if row.path not in where:
            new.append(row)
        elif not row.by_machine:
            name, i = where[row.path]
            labels[name][i] = index[row.label]
    return new, {name: replace(split, labels=labels[name]) for name, split in splits.items()}


def _append(
    split: Split, rows: list[LabelRow], index: dict[str, int], strict: bool
) -> tuple[Split, list[tuple[str, str]]]:
    """``split`` with ``rows`` appended: as decoded images at its own size and channels when
    it holds images, else as paths. Returns it and the files that could not be read."""
    paths = [r.path for r in rows]
    labels = np.array([index[r.label] for r in rows], dtype=np.int64)
    bad: list[tuple[str, str]] = []
    columns = (
        {k: [*v, *[""] * len(rows)] for k, v in split.columns.items()}
        if split.columns is not None
        else None
    )
    if split.images is None:
        if len(split) and split.paths is None:  # not reachable from resolve_source
            raise UserError("a split without images or paths cannot take added labels")
        return Split(
            np.concatenate([split.labels, labels]), None, [*(split.paths or []), *paths], columns
        ), bad
    # decoded as the split's images are stored (uint8, their channels and square size)
    channels, size = split.images.shape[1], split.images.shape[-1]
    images, ok, bad = _decode_all(paths, channels, size, strict, "decoding added labels")
    keep = np.flatnonzero(ok)
    if columns is not None:  # the added rows' empty cells, for the files read
        columns = {k: v[: len(split) + len(keep)] for k, v in columns.items()}
    return Split(
        np.concatenate([split.labels, labels[keep]]),
        torch.cat([split.images, images]),
        None,
        columns,
    ), bad


def add_label_files(
    data: ImageData, manifests: Sequence[str | Path], strict: bool = False
) -> ImageData:
    """``data`` with the rows of each labels manifest added, in order (``--add-labels``).

    Example:
        >>> data = add_label_files(resolve_source("digits"), ["labels.csv"])  # doctest: +SKIP
    """
    rows = [row for manifest in manifests for row in read_label_rows(manifest)]
    return add_labelled(data, rows, strict)[0]


def absolute_manifests(manifests: Sequence[str | Path], run: str | Path | None = None) -> list[str]:
    """``data.add_labels`` as absolute paths: the user's relative to the current folder (how a
    run's config stores them, as it stores the source), or, given a run folder, a stored
    relative one relative to it (``train --unlabelled``'s own ``pseudo_labels.csv``). A caller
    that copies a run's configuration into another run folder (``label retrain``) calls this
    with the run first."""
    base = Path(run) if run is not None else Path()
    return [str((base / Path(m).expanduser()).resolve()) for m in manifests]


def resolve_data(cfg: DataConfig, run: str | Path | None = None) -> ImageData:
    """The dataset a run's data settings describe, split and undecoded: ``resolve_source`` over
    ``cfg``, then the ``add_labels`` manifests added.

    Args:
        cfg: the run's data settings.
        run: its run folder: a relative manifest path is relative to it (the user's are stored
            absolute; ``train --unlabelled`` stores its own ``pseudo_labels.csv`` so, and the
            run folder can then move).
    """
    data = resolve_source(
        cfg.source, cfg.val_fraction, cfg.test_fraction, cfg.split_seed, cfg.task,
        cfg.label_separator,
    )  # fmt: skip
    if not cfg.add_labels:
        return data
    return add_label_files(data, absolute_manifests(cfg.add_labels, run), cfg.strict)
