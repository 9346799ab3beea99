"""An evaluation's figures as typed records: what ``eval/metrics.json`` holds.

``Metrics`` is written by ``imagewise.evaluate`` and read back by ``compare`` and the report;
its fields are declared once (``imagewise.edge.records``), so reading, writing and checking the
file come from them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from imagewise.edge.records import Record, entry


@dataclass
class Scores(Record):
    """Precision, recall and F1 (one class's, or an average over the classes)."""

    precision: float
    recall: float
    f1: float


@dataclass
class ClassScores(Scores):
    """One class's scores and how many test images it has."""

    support: int = 0


@dataclass
class Confusion(Record):
    """One off-diagonal cell of the confusion matrix."""

    true: str
    predicted: str
    count: int


@dataclass
class CalibrationScores(Record):
    """The probabilities' calibration on the evaluated images, before and after the run's
    temperature, and how many equal-width confidence bins the calibration error used."""

    temperature: float
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    bins: int = 15


@dataclass
class ConformalScores(Record):
    """The conformal prediction sets on the evaluated images (``evaluate(coverage=...)``): the
    share whose set holds the true class, overall and per class, and the mean set size."""

    coverage_target: float
    score: str
    per_class: bool
    coverage: float
    mean_set_size: float
    per_class_coverage: dict[str, float]
    calibration_images: int
    # the share of images whose set is empty (always 0 with non_empty: the top class kept)
    empty_sets: float = 0.0
    non_empty: bool = False


@dataclass
class Metrics(Record):
    """Accuracy, top-k accuracy, log loss, per-class and averaged scores, the confusion matrix
    (rows = true class), where the images came from, the most confused pairs and the
    calibration."""

    images: int
    accuracy: float
    top_k_accuracy: dict[str, float]
    log_loss: float
    per_class: dict[str, ClassScores]
    macro: Scores
    weighted: Scores
    confusion_matrix: list[list[int]]
    split: str = ""
    data: str = ""
    most_confused: list[Confusion] = entry(default_factory=list)
    calibration: CalibrationScores | None = entry(None, omit_none=True)
    conformal: ConformalScores | None = entry(None, omit_none=True)
    # the sha256 of the weights measured (files before it have none)
    weights_sha256: str | None = entry(None, omit_none=True)
    extra: dict[str, Any] = entry(default_factory=dict)

    def summary(self) -> str:
        """The figures as text: accuracy and averaged F1, top-k, a per-class table, the most
        confused pair and the calibration (what ``imagewise evaluate`` prints)."""
        lines = [
            f"{self.images} images ({self.split} of {self.data})",
            f"accuracy {self.accuracy:.2%}   macro F1 {self.macro.f1:.4f}   "
            f"weighted F1 {self.weighted.f1:.4f}",
            *(f"top-{k} accuracy {v:.2%}" for k, v in self.top_k_accuracy.items() if k != "1"),
            "",
            f"{'class':<20} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>8}",
        ]
        for name, c in self.per_class.items():
            lines.append(
                f"{name:<20} {c.precision:>9.3f} {c.recall:>7.3f} {c.f1:>7.3f} {c.support:>8d}"
            )
        if self.most_confused:
            w = self.most_confused[0]
            lines += ["", f"most confused: {w.true} -> {w.predicted} ({w.count} images)"]
        if (cal := self.calibration) is not None:
            lines.append(
                f"calibration: ECE {cal.ece_before:.4f} before, {cal.ece_after:.4f} after "
                f"temperature scaling (T = {cal.temperature:.3g})"
            )
        if (c := self.conformal) is not None:
            worst = min(self.conformal.per_class_coverage.items(), key=lambda kv: kv[1])
            lines.append(
                f"prediction sets at coverage {c.coverage_target:g} ({c.score}"
                f"{', per class' if c.per_class else ''}): coverage {c.coverage:.2%}, mean size "
                f"{c.mean_set_size:.2f}, empty {c.empty_sets:.1%}, lowest class {worst[0]} "
                f"{worst[1]:.2%}"
            )
            if self.split == "val":  # the thresholds were fitted on these very images
                lines.append(
                    "  (measured on the validation images the thresholds were fitted on: not a "
                    "test of the guarantee; evaluate the test split for that)"
                )
        return "\n".join(lines)
