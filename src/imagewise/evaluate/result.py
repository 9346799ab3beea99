"""``Evaluation``: what ``imagewise.evaluate`` returns, metrics plus what error analysis needs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imagewise.evaluate.scores import Metrics

if TYPE_CHECKING:
    from imagewise.evaluate.robustness import Robustness
    from imagewise.evaluate.slices import Slices


@dataclass
class Evaluation:
    """The result of ``imagewise.evaluate``: metrics plus what error analysis needs."""

    metrics: Metrics
    classes: list[str]
    labels: np.ndarray
    probabilities: np.ndarray
    sources: list[str] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)
    logits: np.ndarray | None = field(default=None, repr=False)
    calibration: dict[str, Any] = field(default_factory=dict, repr=False)
    images: Any = field(default=None, repr=False)  # the evaluated Split, for galleries
    # evaluate(coverage=...): each image's conformal set (bool, N x classes), else None
    prediction_sets: np.ndarray | None = field(default=None, repr=False)
    robustness: Robustness | None = field(default=None, repr=False)  # evaluate(robustness=)
    slices: Slices | None = field(default=None, repr=False)  # evaluate(slice_by=)
    # a multi-label run's thresholds, one per label (labels and probabilities are then N x K)
    thresholds: np.ndarray | None = field(default=None, repr=False)

    @property
    def multilabel(self) -> bool:
        return self.thresholds is not None

    @property
    def predictions(self) -> np.ndarray:
        """Each image's predicted class; a multi-label run's: 0/1 per label (N x K)."""
        if self.thresholds is not None:
            return (self.probabilities >= self.thresholds).astype(np.uint8)
        return self.probabilities.argmax(axis=1)

    @property
    def ece(self) -> float:
        """Expected calibration error of the (temperature-scaled) probabilities."""
        assert self.metrics.calibration is not None
        return float(self.metrics.calibration.ece_after)

    @property
    def accuracy(self) -> float:
        return float(self.metrics.accuracy)

    @property
    def confusion_matrix(self) -> np.ndarray:
        return np.array(self.metrics.confusion_matrix)

    def summary(self) -> str:
        """The metrics' summary (``Metrics.summary``) and the files written."""
        lines = [self.metrics.summary()]
        lines += [part.summary() for part in (self.slices, self.robustness) if part is not None]
        lines.append(f"wrote {', '.join(str(p) for p in self.files.values())}")
        if "report" in self.files:
            lines.append(f"report: {self.files['report']}")
        return "\n".join(lines)

    def top_losses(self, n: int = 16) -> list[dict[str, Any]]:
        """The ``n`` images with the highest loss: source, true and predicted class, confidence.

        A multi-label run's: the loss is the mean binary cross-entropy over the labels, true and
        predicted are the label sets joined by ``|`` and the confidence is the probability of
        the predicted set (the labels taken as independent)."""
        if self.thresholds is not None:
            return self._multilabel_top_losses(n)
        p_true = self.probabilities[np.arange(len(self.labels)), self.labels]
        losses = -np.log(np.clip(p_true, 1e-12, 1))
        order = np.argsort(losses)[::-1][:n]
        pred = self.probabilities.argmax(1)
        return [
            {
                "index": int(i),
                "source": self.sources[i] if self.sources else str(i),
                "true": self.classes[self.labels[i]],
                "predicted": self.classes[pred[i]],
                "confidence": float(self.probabilities[i, pred[i]]),
                "loss": float(losses[i]),
            }
            for i in order
        ]

    def _multilabel_top_losses(self, n: int) -> list[dict[str, Any]]:
        p = np.clip(self.probabilities.astype(np.float64), 1e-12, 1 - 1e-12)
        y = self.labels.astype(bool)
        losses = -np.where(y, np.log(p), np.log(1 - p)).mean(axis=1)
        pred = self.predictions.astype(bool)
        chance = np.where(pred, p, 1 - p).prod(axis=1)

        def names(row: np.ndarray) -> str:
            return "|".join(self.classes[k] for k in np.flatnonzero(row))

        return [
            {
                "index": int(i),
                "source": self.sources[i] if self.sources else str(i),
                "true": names(y[i]),
                "predicted": names(pred[i]),
                "confidence": float(chance[i]),
                "loss": float(losses[i]),
            }
            for i in np.argsort(losses)[::-1][:n]
        ]
