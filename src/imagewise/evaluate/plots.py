"""Plots a person looks at: training curves and confusion matrices (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from imagewise.io import atomic_write


def _figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt, plt.figure(figsize=(width, height), dpi=110)


def _save(plt, fig, path: str | Path) -> Path:
    fig.tight_layout()
    out = atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return out


def plot_curves(history: list[dict[str, float]], path: str | Path) -> Path:
    """Loss and accuracy per epoch, training and validation, side by side."""
    plt, fig = _figure(10, 4)
    epochs = [row["epoch"] for row in history]
    for i, (metric, label) in enumerate((("loss", "loss"), ("accuracy", "accuracy"))):
        ax = fig.add_subplot(1, 2, i + 1)
        ax.plot(epochs, [r[f"train_{metric}"] for r in history], "o-", label="train")
        ax.plot(epochs, [r[f"val_{metric}"] for r in history], "o-", label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(plt, fig, path)


def plot_confusion(
    matrix: np.ndarray, classes: list[str], path: str | Path, normalize: bool = False
) -> Path:
    """A confusion matrix heat map, rows = true class, columns = predicted class."""
    n = len(classes)
    size = min(4 + 0.45 * n, 24)
    plt, fig = _figure(size + 1, size)
    ax = fig.add_subplot(1, 1, 1)
    values = matrix.astype(float)
    if normalize:
        values = values / np.maximum(values.sum(axis=1, keepdims=True), 1)
    im = ax.imshow(values, cmap="Blues", vmin=0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ticks = np.arange(n)
    ax.set_xticks(ticks, labels=classes, rotation=45, ha="right")
    ax.set_yticks(ticks, labels=classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix" + (" (row-normalized)" if normalize else " (counts)"))
    if n <= 30:
        top = values.max() or 1
        for i in range(n):
            for j in range(n):
                text = f"{values[i, j]:.2f}" if normalize else str(int(values[i, j]))
                color = "white" if values[i, j] > top / 2 else "black"
                ax.text(j, i, text, ha="center", va="center", color=color, fontsize=7)
    return _save(plt, fig, path)
