"""Multi-label evaluation: scores at the run's per-label thresholds, the figures
``metrics.json`` keeps for a multi-label run, and precision-recall curves (the report's
section: ``multilabel_report``).

An image carries any number of the K labels (targets (N, K) of 0/1) and the model gives each
label its own probability (sigmoid over the run's temperature); a label is predicted when its
probability reaches the label's threshold (``probability >= threshold``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from imagewise.errors import UserError
from imagewise.evaluate.scores import AveragedF1, LabelScores, MultilabelScores, Scores
from imagewise.figures import new_figure, save_figure

ECE_BINS = 15


def _check_shapes(probs: np.ndarray, targets: np.ndarray, thresholds: np.ndarray, k: int) -> None:
    if probs.ndim != 2 or probs.shape != targets.shape or probs.shape[1] != k:
        raise UserError(
            f"multi-label scores need probabilities and targets of shape (images, {k} labels), "
            f"not {probs.shape} and {targets.shape}"
        )
    if thresholds.shape != (k,):
        raise UserError(
            f"multi-label scores need {k} thresholds, one per label, not {len(thresholds)}"
        )
    if not len(probs):
        raise UserError("multi-label scores need at least one image")


def binary_calibration_error(probs: np.ndarray, targets: np.ndarray, bins: int = ECE_BINS) -> float:
    """One label's calibration error: over equal-width bins of its probability, the gap
    between the mean probability and the share of images carrying the label, weighted by the
    bin's share of the images (bin i holds (i/bins, (i+1)/bins]; a probability of 0 the first).

    Written here rather than taken from scikit-learn: ``calibration_curve`` returns the
    non-empty bins' means without their counts, and ``runtime.calibration``'s ECE measures a
    softmax's top-1 confidence, not one sigmoid output.

    Example:
        >>> round(binary_calibration_error(np.array([0.9, 0.9]), np.array([1, 0])), 2)
        0.4
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    if not len(p):
        return float("nan")
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, p, side="left") - 1, 0, bins - 1)
    error = 0.0
    for i in range(bins):
        members = index == i
        if members.any():
            error += members.mean() * abs(p[members].mean() - y[members].mean())
    return float(error)


def score_multilabel(
    probs: np.ndarray,
    targets: np.ndarray,
    thresholds: np.ndarray | list[float] | tuple[float, ...],
    classes: list[str],
) -> MultilabelScores:
    """Score multi-label predictions: a label is predicted where its probability reaches its
    threshold.

    Args:
        probs: float (N, K) probabilities, one per image and label.
        targets: (N, K) of 0/1, the labels each image carries (a row of zeros: no label).
        thresholds: K thresholds, one per label (e.g. the run's, fitted on validation).
        classes: the K label names.

    Returns:
        mAP (mean over the labels with at least one positive image of scikit-learn's average
        precision), micro and macro precision / recall / F1, the F1s at a plain 0.5,
        exact-match accuracy, Hamming loss, how many images have no true and no predicted
        label, and per label: support, predicted, precision, recall, F1, AP, ECE, threshold.

    Example:
        >>> s = score_multilabel(probs, targets, [0.5] * 3, ["cat", "dog", "car"])  # doctest: +SKIP
        >>> print(s.summary())  # doctest: +SKIP
    """
    from sklearn.metrics import (
        accuracy_score,
        average_precision_score,
        f1_score,
        hamming_loss,
        precision_recall_fscore_support,
    )

    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(targets).astype(np.int64)
    t = np.asarray(thresholds, dtype=np.float64)
    _check_shapes(probs, y, t, len(classes))
    pred = (probs >= t).astype(np.int64)
    p, r, f, support = precision_recall_fscore_support(y, pred, average=None, zero_division=0)
    averaged = {
        avg: Scores(
            *map(float, precision_recall_fscore_support(y, pred, average=avg, zero_division=0)[:3])
        )
        for avg in ("micro", "macro")
    }
    half = (probs >= 0.5).astype(np.int64)
    per_label = {}
    for k, name in enumerate(classes):
        ap = float(average_precision_score(y[:, k], probs[:, k])) if support[k] else None
        per_label[name] = LabelScores(
            precision=float(p[k]),
            recall=float(r[k]),
            f1=float(f[k]),
            support=int(support[k]),
            predicted=int(pred[:, k].sum()),
            ap=ap,
            ece=binary_calibration_error(probs[:, k], y[:, k]),
            threshold=float(t[k]),
        )
    aps = [s.ap for s in per_label.values() if s.ap is not None]
    return MultilabelScores(
        images=len(y),
        map=float(np.mean(aps)) if aps else 0.0,
        micro=averaged["micro"],
        macro=averaged["macro"],
        f1_at_half=AveragedF1(
            micro=float(f1_score(y, half, average="micro", zero_division=0)),
            macro=float(f1_score(y, half, average="macro", zero_division=0)),
        ),
        subset_accuracy=float(accuracy_score(y, pred)),
        hamming_loss=float(hamming_loss(y, pred)),
        no_true_label=int((y.sum(axis=1) == 0).sum()),
        no_predicted_label=int((pred.sum(axis=1) == 0).sum()),
        per_label=per_label,
        ece_bins=ECE_BINS,
    )


def plot_pr_curves(
    probs: np.ndarray,
    targets: np.ndarray,
    classes: list[str],
    path: str | Path,
    thresholds: np.ndarray | list[float] | tuple[float, ...] | None = None,
) -> Path:
    """Each label's precision-recall curve in a panel of its own (with its AP and the share of
    images carrying it as the chance level), the label's threshold marked as a point.

    Args:
        probs: float (N, K) probabilities.
        targets: (N, K) of 0/1.
        classes: the K label names.
        path: the PNG to write.
        thresholds: K thresholds to mark (default: 0.5 for every label).
    """
    from sklearn.metrics import average_precision_score, precision_recall_curve

    probs, y = np.asarray(probs, dtype=np.float64), np.asarray(targets).astype(np.int64)
    k = len(classes)
    t = np.full(k, 0.5) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    _check_shapes(probs, y, t, k)
    cols = min(k, 4)
    rows = math.ceil(k / cols)
    fig = new_figure(2.9 * cols, 2.6 * rows)
    for i, name in enumerate(classes):
        ax = fig.add_subplot(rows, cols, i + 1)
        positives = int(y[:, i].sum())
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("recall", fontsize=8)
        ax.set_ylabel("precision", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if not positives:
            ax.set_title(f"{name}: no image carries it", fontsize=9)
            continue
        precision, recall, _ = precision_recall_curve(y[:, i], probs[:, i])
        ap = average_precision_score(y[:, i], probs[:, i])
        ax.step(recall, precision, where="post", color="#4c72b0", lw=1.4)
        ax.axhline(positives / len(y), color="k", ls="--", lw=0.8)  # a random ranking's precision
        chosen = probs[:, i] >= t[i]
        hits = int((chosen & (y[:, i] == 1)).sum())
        p_at = hits / chosen.sum() if chosen.any() else 0.0
        ax.plot(
            [hits / positives], [p_at], "o", color="#dd8452", ms=6, label=f"threshold {t[i]:.2f}"
        )
        ax.legend(loc="lower left", fontsize=7)
        ax.set_title(f"{name}: AP {ap:.3f}", fontsize=9)
    return save_figure(fig, path)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """The logistic function, without overflow for large negative inputs."""
    x = np.asarray(x, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -x))


def binary_cross_entropy(probs: np.ndarray, targets: np.ndarray) -> float:
    """Mean over images and labels of each label's log loss (the multi-label NLL)."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1 - 1e-12)
    y = np.asarray(targets, dtype=np.float64)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def multilabel_metric_values(
    logits: np.ndarray,
    targets: np.ndarray,
    temperature: float,
    thresholds: np.ndarray | list[float] | tuple[float, ...],
    classes: list[str],
) -> dict[str, Any]:
    """``metrics.json``'s values for a multi-label run, in the single-label file's shape:
    ``accuracy`` is the exact-match (subset) accuracy, ``log_loss`` the mean binary
    cross-entropy, ``per_class`` / ``macro`` / ``weighted`` the labels' scores at their
    thresholds, ``calibration`` the mean of the labels' calibration errors and the binary
    cross-entropy before and after the temperature; no confusion matrix or top-k (they need
    one label per image). ``multilabel`` holds ``score_multilabel``'s figures.

    Args:
        logits: float (N, K) raw scores.
        targets: (N, K) of 0/1.
        temperature: the run's; probabilities are ``sigmoid(logits / temperature)``.
        thresholds: the run's K thresholds.
        classes: the K label names.
    """
    from sklearn.metrics import precision_recall_fscore_support

    probs = sigmoid(np.asarray(logits, dtype=np.float64) / temperature)
    raw = sigmoid(logits)
    y = np.asarray(targets).astype(np.int64)
    scores = score_multilabel(probs, y, thresholds, classes)
    pred = (probs >= np.asarray(thresholds, dtype=np.float64)).astype(np.int64)
    weighted = precision_recall_fscore_support(y, pred, average="weighted", zero_division=0)
    k = range(len(classes))
    return {
        "images": scores.images,
        "accuracy": scores.subset_accuracy,
        "top_k_accuracy": {},
        "log_loss": binary_cross_entropy(probs, y),
        "per_class": {
            name: {
                **{f: getattr(s, f) for f in ("precision", "recall", "f1")},
                "support": s.support,
            }
            for name, s in scores.per_label.items()
        },
        "macro": scores.macro.to_json(),
        "weighted": dict(zip(("precision", "recall", "f1"), map(float, weighted[:3]), strict=True)),
        "confusion_matrix": [],
        "most_confused": [],
        "calibration": {
            "temperature": float(temperature),
            "ece_before": float(np.mean([binary_calibration_error(raw[:, i], y[:, i]) for i in k])),
            "ece_after": float(np.mean([s.ece for s in scores.per_label.values()])),
            "nll_before": binary_cross_entropy(raw, y),
            "nll_after": binary_cross_entropy(probs, y),
            "bins": ECE_BINS,
        },
        "multilabel": scores.to_json(),
    }


__all__ = [
    "MultilabelScores",
    "binary_calibration_error",
    "binary_cross_entropy",
    "multilabel_metric_values",
    "plot_pr_curves",
    "score_multilabel",
    "sigmoid",
]
