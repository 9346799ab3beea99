"""Classification metrics, computed with scikit-learn from labels and probabilities."""

from __future__ import annotations

from typing import Any

import numpy as np


def classification_metrics(
    labels: np.ndarray, probs: np.ndarray, classes: list[str], top_k: tuple[int, ...] = (1, 3, 5)
) -> dict[str, Any]:
    """Accuracy, top-k accuracy, per-class precision / recall / F1 / support, macro and weighted
    averages, and the confusion matrix (rows = true class) of predictions ``probs.argmax(1)``."""
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        log_loss,
        precision_recall_fscore_support,
        top_k_accuracy_score,
    )

    n_classes = len(classes)
    label_ids = np.arange(n_classes)
    pred = probs.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, pred, labels=label_ids, zero_division=0
    )
    out: dict[str, Any] = {
        "images": len(labels),
        "accuracy": float(accuracy_score(labels, pred)),
        "top_k_accuracy": {},
        "log_loss": float(log_loss(labels, np.clip(probs, 1e-12, 1), labels=label_ids)),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(classes)
        },
    }
    for k in top_k:
        if k == 1:
            out["top_k_accuracy"]["1"] = out["accuracy"]
        elif k < n_classes:  # sklearn treats 2 classes as binary and refuses k > 1 there
            score = top_k_accuracy_score(labels, probs, k=k, labels=label_ids)
            out["top_k_accuracy"][str(k)] = float(score)
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(
            labels, pred, labels=label_ids, average=average, zero_division=0
        )
        out[average] = {"precision": float(p), "recall": float(r), "f1": float(f)}
    out["confusion_matrix"] = confusion_matrix(labels, pred, labels=label_ids).tolist()
    return out


def most_confused(matrix: np.ndarray, classes: list[str], n: int = 10) -> list[dict[str, Any]]:
    """The off-diagonal cells with the most images: (true, predicted, count), largest first."""
    m = np.array(matrix, dtype=np.int64)
    np.fill_diagonal(m, 0)
    order = np.argsort(m, axis=None)[::-1][:n]
    pairs = []
    for flat in order:
        i, j = divmod(int(flat), m.shape[1])
        if m[i, j] == 0:
            break
        pairs.append({"true": classes[i], "predicted": classes[j], "count": int(m[i, j])})
    return pairs
