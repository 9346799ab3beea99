"""Plots a person looks at: confusion matrices, accuracy against latency (matplotlib, Agg).

The training curves are drawn by training itself (``imagewise.train.curves``)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from imagewise.figures import new_figure, save_figure


def plot_confusion(
    matrix: np.ndarray, classes: list[str], path: str | Path, normalize: bool = False
) -> Path:
    """A confusion matrix heat map, rows = true class, columns = predicted class."""
    n = len(classes)
    size = min(4 + 0.45 * n, 24)
    fig = new_figure(size + 1, size)
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
    return save_figure(fig, path)


def plot_reliability(calibration: dict, path: str | Path) -> Path:
    """Reliability diagrams before and after temperature scaling, with their ECE.

    ``calibration`` is ``imagewise.runtime.calibration.calibration_report(...)``.
    """
    fig = new_figure(10, 4.2)
    t = calibration["temperature"]
    for i, (key, title) in enumerate((("before", "before (T = 1)"), ("after", f"T = {t:.3g}"))):
        part = calibration[key]
        ax = fig.add_subplot(1, 2, i + 1)
        bins = part["reliability"]
        centers = [(b["lower"] + b["upper"]) / 2 for b in bins]
        width = bins[0]["upper"] - bins[0]["lower"]
        used = [b["count"] > 0 for b in bins]
        acc = [b["accuracy"] if u else 0 for b, u in zip(bins, used, strict=True)]
        conf = [b["confidence"] if u else c for b, u, c in zip(bins, used, centers, strict=True)]
        ax.bar(centers, acc, width=width * 0.95, color="#4c72b0", label="accuracy")
        gaps = [a - c if u else 0 for a, c, u in zip(acc, conf, used, strict=True)]
        ax.bar(centers, gaps, bottom=conf, width=width * 0.95, color="#dd8452", alpha=0.55,
               label="gap to confidence")  # fmt: skip
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (top-1 probability)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{title}: ECE {part['ece']:.4f}, NLL {part['nll']:.4f}")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    return save_figure(fig, path)


def _two_and_five(value: float, _pos: int) -> str:
    """A log axis's minor tick label: ``0.2``, ``5``, ``20``, ... and nothing for the others."""
    leading = round(value / 10 ** math.floor(math.log10(value))) if value > 0 else 0
    return f"{value:g}" if leading in (2, 5) else ""


def plot_accuracy_latency(rows: list[dict], path: str | Path) -> Path:
    """Scatter of test accuracy vs latency per image (batch 1), one labelled point per run."""
    fig = new_figure(7, 4.5)
    from matplotlib.ticker import FormatStrFormatter, FuncFormatter

    ax = fig.add_subplot(1, 1, 1)
    for r in rows:
        x, y = r["latency_ms_batch1"], 100 * r["accuracy"]
        ax.scatter([x], [y], s=60)
        ax.annotate(r["name"], (x, y), textcoords="offset points", xytext=(6, 4), fontsize=9)
    ax.set_xscale("log")
    ax.margins(x=0.15)  # room for the labels of the points at the edges
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    # label the 2x and 5x minor ticks only: every one of them overlaps its neighbours
    ax.xaxis.set_minor_formatter(FuncFormatter(_two_and_five))
    ax.set_xlabel("latency per image, batch 1, CPU (ms, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3, which="both")
    ax.set_title("accuracy vs latency")
    return save_figure(fig, path)
