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
from typing import Any

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
        from imagewise.runtime.inference import predict_loader

        parts = state.parts  # set by imagewise.train: model, ema, preprocessing, ...
        net, pre = parts.evaluated, parts.preprocessing
        # measured as `imagewise evaluate` would: same batches, precision and TTA
        loader = zip(self.images.split(1000), self.labels.split(1000), strict=True)
        logits, labels = predict_loader(net, loader, pre, torch.device("cpu"), tta=state.tta)
        correct = int((logits.argmax(1) == labels).sum())
        net.train()
        self.points.append((state.train_seconds, correct / len(self.labels)))
        print(f"  epoch {state.epoch}: {state.train_seconds:.0f}s  test {self.points[-1][1]:.2%}",
              flush=True)  # fmt: skip


def run(recipe: str, keep: Path | None, overrides: dict[str, Any]) -> list[tuple[float, float]]:
    import imagewise
    from imagewise.runtime.device import keep_freed_memory

    keep_freed_memory()  # as the imagewise command does for its process
    hook = TestAccuracy()
    with tempfile.TemporaryDirectory() as tmp:
        out = (keep or Path(tmp)) / recipe
        imagewise.train("fashion-mnist", out, recipe=recipe, hooks=[hook], show_progress=False,
                        **overrides)  # fmt: skip
    return hook.points


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``epochs=40 model=resnet9_slim`` -> {"epochs": 40, "model": "resnet9_slim"}."""
    import yaml

    out = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        out[key.replace("-", "_")] = yaml.safe_load(value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", default=["fast", "default"])
    parser.add_argument("--plot", default="time_to_accuracy.png")
    parser.add_argument("--keep", type=Path, help="keep the run folders here (KEEP/RECIPE)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="change a recipe's setting, e.g. --set epochs=40")  # fmt: skip
    parser.add_argument("--budget", type=float, nargs="+", default=[],
                        help="also report the best test accuracy within these seconds")  # fmt: skip
    args = parser.parse_args()
    overrides = parse_overrides(args.set)
    curves = {}
    for recipe in args.recipes:
        print(f"recipe {recipe}", flush=True)
        curves[recipe] = run(recipe, args.keep, overrides)
    print("\n| recipe | " + " | ".join(f"to {t:.0%}" for t in THRESHOLDS) + " | final |")
    print("|---|" + "---|" * (len(THRESHOLDS) + 1))
    for recipe, points in curves.items():
        cells = []
        for t in THRESHOLDS:
            hit = next((s for s, acc in points if acc >= t), None)
            cells.append(f"{hit:.0f} s" if hit is not None else "not reached")
        final_s, final_acc = points[-1]
        print(f"| {recipe} | " + " | ".join(cells) + f" | {final_acc:.2%} at {final_s:.0f} s |")
    for budget in args.budget:
        for recipe, points in curves.items():
            within = [acc for s, acc in points if s <= budget]
            best = f"{max(within):.2%}" if within else "no epoch finished"
            print(f"best test accuracy of {recipe} within {budget:.0f} s: {best}")

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
