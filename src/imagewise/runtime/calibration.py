"""Calibration: do the probabilities mean what they say?

Expected calibration error (ECE) and the reliability diagram's bins are computed on the top-1
confidence with equal-width bins (Guo et al., 2017). Temperature scaling divides the logits by one
scalar T fitted on the validation split to minimize the negative log-likelihood; it never changes
which class wins. scikit-learn calibrates one-vs-rest (sigmoid / isotonic), which changes the
ranking and needs a fitted estimator, so the single-parameter fit lives here.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger("imagewise")

# T is searched in log space within these bounds; a fit that ends on a bound is reported.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0


def reliability_bins(
    probs: np.ndarray, labels: np.ndarray, n_bins: int = 15
) -> list[dict[str, float]]:
    """Equal-width bins of top-1 confidence: range, image count, mean confidence, accuracy."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Bin i holds (edges[i], edges[i+1]]; a confidence of exactly 0 goes to the first bin.
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    bins = []
    for i in range(n_bins):
        members = index == i
        count = int(members.sum())
        bins.append(
            {
                "lower": float(edges[i]),
                "upper": float(edges[i + 1]),
                "count": count,
                "confidence": float(confidence[members].mean()) if count else 0.0,
                "accuracy": float(correct[members].mean()) if count else 0.0,
            }
        )
    return bins


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """ECE: the image-weighted mean gap between confidence and accuracy over the bins.

    Example:
        >>> p = np.array([[0.9, 0.1], [0.9, 0.1]])
        >>> round(expected_calibration_error(p, np.array([0, 1])), 2)  # 90% sure, 50% right
        0.4
    """
    total = len(labels)
    if total == 0:
        return float("nan")
    bins = reliability_bins(probs, labels, n_bins)
    return float(sum(b["count"] / total * abs(b["accuracy"] - b["confidence"]) for b in bins))


def negative_log_likelihood(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0
) -> float:
    """Mean cross-entropy of ``softmax(logits / temperature)`` (float64); for multi-label
    rows (N, classes) of 0/1 the mean binary cross-entropy of each label's sigmoid."""
    scaled = logits.double() / temperature
    if labels.ndim == 2:
        return float(F.binary_cross_entropy_with_logits(scaled, labels.double()))
    return float(F.cross_entropy(scaled, labels.long()))


def binary_view(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Multi-label probabilities (N, K) and 0/1 rows as N*K yes / no answers ((N*K, 2) with
    [no, yes] probabilities, and 0/1 labels), so the top-1 bins and ECE apply to each label's
    answer: a label at 0.9 should be present 90% of the time."""
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    return np.stack([1 - p, p], axis=1), (np.asarray(labels).reshape(-1) > 0.5).astype(np.int64)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature T that minimizes the NLL of ``softmax(logits / T)`` on these labels.

    The NLL is convex in 1/T, so a bounded scalar search on log T finds the optimum.

    Args:
        logits: (N, classes) raw scores of held-out images.
        labels: (N,) class indices, or multi-label 0/1 rows (N, classes) (one temperature
            for every label's sigmoid).
    """
    from scipy.optimize import minimize_scalar

    if len(labels) == 0:
        return 1.0
    z = logits.double()

    def nll(log_t: float) -> float:
        return negative_log_likelihood(z, labels, float(np.exp(log_t)))

    lo, hi = np.log(MIN_TEMPERATURE), np.log(MAX_TEMPERATURE)
    found = minimize_scalar(nll, bounds=(lo, hi), method="bounded", options={"xatol": 1e-4})
    t = float(np.exp(found.x))
    if nll(found.x) > nll(0.0):  # never worse than leaving the model alone
        t = 1.0
    return t


def calibration_report(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float, n_bins: int = 15
) -> dict[str, Any]:
    """ECE, NLL and reliability bins before (T = 1) and after temperature scaling."""
    y = labels.numpy()
    out: dict[str, Any] = {"temperature": temperature, "bins": n_bins}
    for name, t in (("before", 1.0), ("after", temperature)):
        if labels.ndim == 2:  # each label's yes / no answer
            probs, y = binary_view(torch.sigmoid(logits.double() / t).numpy(), labels.numpy())
        else:
            probs = torch.softmax(logits.double() / t, dim=1).numpy()
        out[name] = {
            "ece": expected_calibration_error(probs, y, n_bins),
            "nll": negative_log_likelihood(logits, labels, t),
            "reliability": reliability_bins(probs, y, n_bins),
        }
    return out


def calibrate(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """Fit the temperature on validation logits; the summary that goes into ``meta.json``."""
    if len(labels) == 0:
        return {"temperature": 1.0, "fitted_on": None, "note": "no validation images"}
    right = (logits > 0) == (labels > 0.5) if labels.ndim == 2 else logits.argmax(1) == labels
    if bool(right.all()):
        # Every image right: the likelihood only grows as T shrinks, so any fit would end on
        # the lower bound and claim false certainty. There is nothing to fit.
        return {
            "temperature": 1.0,
            "fitted_on": None,
            "note": f"all {len(labels)} validation images classified right: nothing to fit",
        }
    t = fit_temperature(logits, labels)
    report = calibration_report(logits, labels, t)
    note = {}
    if not MIN_TEMPERATURE * 1.01 < t < MAX_TEMPERATURE * 0.99:
        note = {"note": f"the fit ended on the edge of the search range ({t:.3g})"}
        log.debug("temperature %.3g is at the edge of its search range", t)
    return {
        **note,
        "temperature": round(t, 6),
        "fitted_on": "val",
        "val_images": len(labels),
        "val_nll_before": round(report["before"]["nll"], 6),
        "val_nll_after": round(report["after"]["nll"], 6),
        "val_ece_before": round(report["before"]["ece"], 6),
        "val_ece_after": round(report["after"]["ece"], 6),
    }


__all__ = [
    "binary_view",
    "calibrate",
    "calibration_report",
    "expected_calibration_error",
    "fit_temperature",
    "negative_log_likelihood",
    "reliability_bins",
]
