"""The run folder's ``curves.png``: loss and accuracy per epoch (redrawn by the run writer
as training goes, at most every ``CURVES_EVERY_S``, and at the end)."""

from __future__ import annotations

from pathlib import Path

from imagewise.figures import new_figure, save_figure


def plot_curves(history: list[dict[str, float]], path: str | Path) -> Path:
    """Loss and accuracy per epoch, training and validation, side by side; a multi-label
    run's accuracy is per label (at probability 0.5), with the validation mAP beside it."""
    fig = new_figure(10, 4)
    epochs = [row["epoch"] for row in history]
    multilabel = any("val_map" in r for r in history)
    accuracy = "label accuracy" if multilabel else "accuracy"
    for i, (metric, label) in enumerate((("loss", "loss"), ("accuracy", accuracy))):
        ax = fig.add_subplot(1, 2, i + 1)
        ax.plot(epochs, [r[f"train_{metric}"] for r in history], "o-", label="train")
        ax.plot(epochs, [r[f"val_{metric}"] for r in history], "o-", label="validation")
        if metric == "accuracy" and multilabel:
            ax.plot(epochs, [r.get("val_map") for r in history], "s--", label="validation mAP")
            label = f"{accuracy} / mAP"
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    return save_figure(fig, path)
