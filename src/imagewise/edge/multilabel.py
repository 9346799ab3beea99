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
    """One label's threshold: the probability that gives the best F1 on these images (ties: the
    higher threshold), or with ``target_precision`` the lowest threshold whose precision reaches
    it (the most recall at that precision). A label without positives keeps
    ``DEFAULT_THRESHOLD``; one that no threshold brings to the target precision gets a
    threshold just above its highest probability, so it is not answered rather than wrongly."""
    probs, truth = np.asarray(probs, np.float64), np.asarray(truth) > 0
    positives = int(truth.sum())
    if positives == 0 or len(probs) == 0:
        return DEFAULT_THRESHOLD
    cut, tp, fp = _sweep(probs, truth)
    precision = tp / (tp + fp)
    if target_precision is not None:
        ok = np.flatnonzero(precision >= target_precision)
        if not len(ok):
            return float(min(1.0, np.nextafter(cut[0], np.inf)))
        return float(cut[ok[-1]])
    f1 = 2 * tp / (tp + fp + positives)
    best = int(np.argmax(f1))  # the first maximum: the highest threshold among equals
    return float(cut[best])


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
