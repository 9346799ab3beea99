"""Time to accuracy on Fashion-MNIST for each recipe: seconds of training to 93%, 94%, 95%.

Each recipe trains as ``imagewise train fashion-mnist --recipe NAME`` would; after every epoch
a hook measures the current weights (the EMA weights when the recipe keeps an EMA) on the
10,000 official test images. That measurement is timed outside the training clock and never
feeds back into training or model selection (which uses the validation split). Writes the
accuracy-vs-seconds curves as a PNG.

    .venv/bin/python benchmarks/time_to_accuracy.py --recipes fast default --plot tta.png
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

THRESHOLDS = (0.93, 0.94, 0.95)


class TestAccuracy:
    """Hook: test accuracy of the current weights after every epoch, with training seconds."""

    def __init__(self) -> None:
        from imagewise.data.sources import resolve_source

        test = resolve_source("fashion-mnist").test
        assert test.images is not None
        self.images, self.labels = test.images, torch.from_numpy(test.labels)
        self.points: list[tuple[float, float]] = []

    def on_epoch_end(self, state) -> None:
        extra = state.extra  # filled by imagewise.train: model, ema, preprocessing
        net = extra["ema"].module if extra["ema"] is not None else extra["model"]
        pre = extra["preprocessing"]
        net.eval()
        correct = 0
        with torch.no_grad():
            for i in range(0, len(self.labels), 1000):
                x = pre.normalize(self.images[i : i + 1000])
                x = x.contiguous(memory_format=torch.channels_last)
                correct += int((net(x).argmax(1) == self.labels[i : i + 1000]).sum())
        net.train()
        self.points.append((state.train_seconds, correct / len(self.labels)))
        print(f"  epoch {state.epoch}: {state.train_seconds:.0f}s  test {self.points[-1][1]:.2%}",
              flush=True)  # fmt: skip


def run(recipe: str) -> list[tuple[float, float]]:
    import imagewise

    hook = TestAccuracy()
    with tempfile.TemporaryDirectory() as tmp:
        imagewise.train("fashion-mnist", Path(tmp) / recipe, recipe=recipe, hooks=[hook],
                        show_progress=False)  # fmt: skip
    return hook.points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", default=["fast", "default"])
    parser.add_argument("--plot", default="time_to_accuracy.png")
    args = parser.parse_args()
    curves = {}
    for recipe in args.recipes:
        print(f"recipe {recipe}", flush=True)
        curves[recipe] = run(recipe)
    print("\n| recipe | " + " | ".join(f"to {t:.0%}" for t in THRESHOLDS) + " | final |")
    print("|---|" + "---|" * (len(THRESHOLDS) + 1))
    for recipe, points in curves.items():
        cells = []
        for t in THRESHOLDS:
            hit = next((s for s, acc in points if acc >= t), None)
            cells.append(f"{hit:.0f} s" if hit is not None else "not reached")
        final_s, final_acc = points[-1]
        print(f"| {recipe} | " + " | ".join(cells) + f" | {final_acc:.2%} at {final_s:.0f} s |")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for recipe, points in curves.items():
        ax.plot([s for s, _ in points], [a * 100 for _, a in points], "o-", label=recipe)
    for t in THRESHOLDS:
        ax.axhline(t * 100, color="grey", lw=0.6, ls="--")
    ax.set_xlabel("training seconds (2 CPU cores)")
    ax.set_ylabel("Fashion-MNIST test accuracy (%)")
    ax.set_ylim(85, 96)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.plot)
    print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
