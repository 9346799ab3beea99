"""Multi-label answers without PyTorch: per-label thresholds fitted on validation, label sets.

A multi-label model gives each class its own probability (a sigmoid over the temperature); an
image carries every class whose probability reaches that class's threshold. The thresholds are
fitted per label on the validation split, for the best F1 of that label or for the lowest
threshold that reaches a target precision, and travel in the model's spec
(``imagewise.edge.spec.ModelSpec.thresholds``), so every runtime answers the same sets.

Written here rather than taken from scikit-learn (``precision_recall_curve``): the edge layer
runs without scikit-learn, and one sort per label gives every candidate threshold's counts.
"""

from __future__ import annotations

import numpy as np

DEFAULT_THRESHOLD = 0.5


def _sweep(probs: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every distinct threshold of one label (its probabilities, high to low) with the true and
    false positives an image gets at or above it."""
    order = np.argsort(-probs, kind="stable")
    p, t = probs[order], truth[order].astype(np.int64)
    last = np.r_[np.flatnonzero(np.diff(p) != 0), len(p) - 1]  # the last index of each value
    tp = np.cumsum(t)[last]
    fp = (last + 1) - tp
    return p[last], tp, fp


def fit_label_threshold(
    probs: np.ndarray, truth: np.ndarray, target_precision: float | None = None
) -> float:
    """One label's threshold: the cut that gives the best F1 on these images (ties: the higher
    cut), or with ``target_precision`` the lowest cut whose precision reaches it (the most
    recall at that precision). A label without positives keeps ``DEFAULT_THRESHOLD``; one that
    no cut brings to the target precision gets a threshold above its highest probability, so
    it is not answered rather than wrongly.

    The threshold lies midway between the last probability the cut keeps and the next lower
    one, not on a probability: a runtime computing in float32 (ONNX, a phone) then answers the
    validation images as the fit did, where a threshold equal to an image's probability could
    flip that image by a rounding."""
    probs, truth = np.asarray(probs, np.float64), np.asarray(truth) > 0
    positives = int(truth.sum())
    if positives == 0 or len(probs) == 0:
        return DEFAULT_THRESHOLD
    cut, tp, fp = _sweep(probs, truth)
    precision = tp / (tp + fp)
    if target_precision is not None:
        ok = np.flatnonzero(precision >= target_precision)
        if not len(ok):
            return float((cut[0] + 1.0) / 2)
        return _between(cut, int(ok[-1]))
    f1 = 2 * tp / (tp + fp + positives)
    best = int(np.argmax(f1))  # the first maximum: the highest threshold among equals
    return _between(cut, best)


def _between(cut: np.ndarray, i: int) -> float:
    """Midway between distinct probability ``cut[i]`` (kept) and the next lower one (not kept;
    0 below the lowest)."""
    lower = cut[i + 1] if i + 1 < len(cut) else 0.0
    return float((cut[i] + lower) / 2)


def fit_thresholds(
    probs: np.ndarray, targets: np.ndarray, target_precision: float | None = None
) -> np.ndarray:
    """Per-label thresholds (K,) from probabilities and 0/1 targets (N, K); see
    ``fit_label_threshold``."""
    probs, targets = np.asarray(probs), np.asarray(targets)
    return np.array(
        [
            fit_label_threshold(probs[:, k], targets[:, k], target_precision)
            for k in range(probs.shape[1])
        ]
    )


def predicted_labels(probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """0/1 (N, K): each class whose probability reaches its threshold."""
    return (np.asarray(probs) >= np.asarray(thresholds)[None, :]).astype(np.uint8)


def label_sets(probs: np.ndarray, thresholds: np.ndarray) -> list[list[int]]:
    """Each image's labels as class indices, most probable first (possibly none)."""
    chosen = predicted_labels(probs, thresholds)
    out = []
    for row, on in zip(np.asarray(probs), chosen, strict=True):
        idx = np.flatnonzero(on)
        out.append(idx[np.argsort(-row[idx], kind="stable")].tolist())
    return out


def decision_confidence(probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """How sure each image's label set is: its least sure label decision, the probability of a
    label given (it reaches its threshold) or ``1 -`` the probability of one not given.

    This is what ``--min-confidence`` compares with for a multi-label model: an answer is
    ``unknown`` when some label is undecided at that confidence, so an image the model is sure
    has no label (every probability low) is answered (no label), not ``unknown``; the
    highest probability alone would confuse the two.

    Example:
        >>> decision_confidence(np.array([[0.9, 0.3, 0.05]]), np.array([0.5, 0.2, 0.5]))
        array([0.3])
    """
    probs = np.asarray(probs, dtype=np.float64)
    given = predicted_labels(probs, thresholds).astype(bool)
    return np.where(given, probs, 1.0 - probs).min(axis=1, initial=1.0)
