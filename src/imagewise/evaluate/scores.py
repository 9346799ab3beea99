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
    extra: dict[str, Any] = entry(default_factory=dict)
