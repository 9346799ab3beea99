"""Metrics per slice of the data: ``evaluate(..., slice_by="site")``.

A CSV manifest's extra columns (``site``, ``camera``, ``device``, ...) name groups of images; a
model that is good on average can fail one site. Per value of the column: image count,
accuracy, expected calibration error and, when the evaluation has conformal prediction sets,
their coverage. ``eval/slices.json`` (format ``imagewise-slices/1``) lists the slices worst
first: those with enough images to judge (``min_images``), then the small ones, each group by
accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imagewise.errors import UserError
from imagewise.runtime.calibration import expected_calibration_error

FORMAT = "imagewise-slices/1"
MIN_IMAGES = 30  # below this a slice's accuracy is too noisy to judge (+-9 points at 80%)

_KINDS = {"builtin": "a built-in dataset", "folder": "a folder of images", "idx": "IDX files"}


@dataclass
class SliceScore:
    """One value of the column: its images and how the model does on them."""

    value: str
    images: int
    accuracy: float
    ece: float
    coverage: float | None = None
    too_small: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "images": self.images,
            "accuracy": self.accuracy,
            "ece": self.ece,
            "coverage": self.coverage,
            "too_small": self.too_small,
        }


@dataclass
class Slices:
    """The slices of one column, worst first (see the module's docstring)."""

    column: str
    slices: list[SliceScore]
    min_images: int = MIN_IMAGES
    where: dict[str, str] = field(default_factory=dict)  # data, split
    weights_sha256: str = ""

    @property
    def warnings(self) -> list[str]:
        small = [s for s in self.slices if s.too_small]
        if not small:
            return []
        names = ", ".join(f"{s.value or '(empty)'} ({s.images})" for s in small[:5])
        more = f" and {len(small) - 5} more" if len(small) > 5 else ""
        return [
            f"{len(small)} slice(s) of '{self.column}' have fewer than {self.min_images} images, "
            f"too few to judge: {names}{more}"
        ]

    def to_json(self) -> dict[str, Any]:
        """What ``eval/slices.json`` holds."""
        return {
            "format": FORMAT,
            "weights_sha256": self.weights_sha256,
            "column": self.column,
            **self.where,
            "images": sum(s.images for s in self.slices),
            "min_images": self.min_images,
            "slices": [s.to_json() for s in self.slices],
            "warnings": self.warnings,
        }

    def summary(self) -> str:
        """The slices as a console table, worst first, and the warnings."""
        has_coverage = any(s.coverage is not None for s in self.slices)
        head = f"{'':2}{self.column:<20} {'images':>7} {'accuracy':>9} {'ECE':>7}"
        lines = [f"slices by '{self.column}' (worst first):", head + ("  coverage" * has_coverage)]
        for s in self.slices:
            row = f"  {s.value or '(empty)':<20} {s.images:>7} {s.accuracy:>9.2%} {s.ece:>7.4f}"
            if has_coverage:
                row += f" {s.coverage:>9.2%}" if s.coverage is not None else f" {'':>9}"
            lines.append(row + ("  (too few to judge)" if s.too_small else ""))
        return "\n".join(lines + [f"warning: {w}" for w in self.warnings])


def slice_metrics(
    column: str,
    values: list[str],
    labels: np.ndarray,
    probabilities: np.ndarray,
    prediction_sets: np.ndarray | None = None,
    min_images: int = MIN_IMAGES,
) -> Slices:
    """Accuracy, ECE and (with ``prediction_sets``, bool N x classes) coverage per value.

    Example:
        >>> p = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
        >>> s = slice_metrics("site", ["a", "a", "b"], np.array([0, 0, 0]), p, min_images=1)
        >>> [(x.value, x.images, x.accuracy) for x in s.slices]
        [('a', 2, 0.5), ('b', 1, 1.0)]
    """
    values_array = np.asarray(values, dtype=object)
    correct = probabilities.argmax(1) == labels
    scores = []
    for value in sorted(set(values)):
        members = values_array == value
        coverage = None
        if prediction_sets is not None:
            coverage = float(prediction_sets[members, labels[members]].mean())
        scores.append(
            SliceScore(
                value, int(members.sum()), float(correct[members].mean()),
                float(expected_calibration_error(probabilities[members], labels[members])),
                coverage, int(members.sum()) < min_images,
            )
        )  # fmt: skip
    scores.sort(key=lambda s: (s.too_small, s.accuracy, -s.images, s.value))
    return Slices(column, scores, min_images)


def slice_column(split: Any, column: str, source: str, kind: str) -> list[str]:
    """The values of ``column`` for each image of ``split``, or one line saying what is wrong."""
    if kind != "csv":
        what = _KINDS.get(kind, kind)
        raise UserError(
            f"--slice-by needs a CSV manifest with extra columns (path,label,site,...); "
            f"'{source}' is {what}"
        )
    columns = split.columns or {}
    if column not in columns:
        if not columns:
            raise UserError(
                f"CSV manifest '{source}' has no columns besides path,label,split to slice by; "
                "add one (site, camera, device, ...)"
            )
        raise UserError(
            f"CSV manifest '{source}' has no column '{column}'; its columns to slice by are: "
            f"{', '.join(columns)}"
        )
    return list(columns[column])


def write_slices(path: Path, result: Slices) -> Path:
    """Write ``result`` as ``eval/slices.json`` (atomically)."""
    from imagewise.io import atomic_write_json

    return atomic_write_json(path, result.to_json())


__all__ = ["MIN_IMAGES", "SliceScore", "Slices", "slice_column", "slice_metrics", "write_slices"]
