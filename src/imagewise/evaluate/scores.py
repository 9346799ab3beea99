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
class LabelScores(Scores):
    """One label's figures in a multi-label evaluation: how many images carry it (support) and
    how many were predicted to (``predicted``), precision / recall / F1 at its threshold, its
    average precision (null when no image carries it), the calibration error of its
    probability and the threshold used."""

    support: int = 0
    predicted: int = 0
    ap: float | None = None
    ece: float = 0.0
    threshold: float = 0.5


@dataclass
class AveragedF1(Record):
    """Micro and macro F1 over the labels."""

    micro: float
    macro: float


@dataclass
class MultilabelScores(Record):
    """A multi-label evaluation (``metrics.json``'s ``multilabel``): mAP, micro and macro
    scores at the run's thresholds (and F1 at a plain 0.5 for comparison), exact-match
    (subset) accuracy, Hamming loss, images with no label (true or predicted), per label."""

    images: int
    map: float  # macro mean of the labels' average precision, over labels with a positive
    micro: Scores
    macro: Scores
    f1_at_half: AveragedF1
    subset_accuracy: float
    hamming_loss: float
    no_true_label: int
    no_predicted_label: int
    per_label: dict[str, LabelScores]
    ece_bins: int = 15

    def worst(self, n: int = 3) -> list[tuple[str, LabelScores]]:
        """The ``n`` labels with the lowest F1 (ties: the one with more images first)."""
        return sorted(self.per_label.items(), key=lambda kv: (kv[1].f1, -kv[1].support))[:n]

    def summary(self) -> str:
        """A few lines for ``imagewise evaluate``: mAP, micro / macro F1 (and at 0.5), subset
        accuracy, Hamming loss, images with no label, the three labels with the lowest F1."""
        half = self.f1_at_half
        lines = [
            f"{self.images} images, {len(self.per_label)} labels (multi-label)",
            f"mAP {self.map:.4f}   micro F1 {self.micro.f1:.4f}   macro F1 {self.macro.f1:.4f}"
            f"   (at threshold 0.5: micro {half.micro:.4f}, macro {half.macro:.4f})",
            f"subset accuracy {self.subset_accuracy:.2%}   Hamming loss {self.hamming_loss:.4f}"
            f"   no true label {self.no_true_label}   no predicted label "
            f"{self.no_predicted_label}",
            "lowest F1: "
            + ", ".join(
                f"{name} {s.f1:.3f} (P {s.precision:.3f} R {s.recall:.3f}, {s.support} images)"
                for name, s in self.worst(3)
            ),
        ]
        return "\n".join(lines)


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
    # a multi-label run's figures (``accuracy`` is then the exact-match accuracy, the confusion
    # matrix empty); single-label files have none
    multilabel: MultilabelScores | None = entry(None, omit_none=True)
    extra: dict[str, Any] = entry(default_factory=dict)

    def summary(self) -> str:
        """The figures as text: accuracy and averaged F1, top-k, a per-class table, the most
        confused pair and the calibration (what ``imagewise evaluate`` prints); a multi-label
        run's: ``MultilabelScores.summary`` and the calibration."""
        if self.multilabel is not None:
            return self._multilabel_summary(self.multilabel)
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

    def _multilabel_summary(self, scores: MultilabelScores) -> str:
        lines = [f"evaluated on the {self.split} images of {self.data}", scores.summary()]
        if (cal := self.calibration) is not None:
            lines.append(
                f"calibration: mean per-label ECE {cal.ece_before:.4f} before, "
                f"{cal.ece_after:.4f} after temperature scaling (T = {cal.temperature:.3g})"
            )
        return "\n".join(lines)
