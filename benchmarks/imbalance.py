"""Imbalanced classes (issue 19): Fashion-MNIST with five classes cut to 5% of their training
images, trained plainly, with ``--class-weight auto`` and with ``--sampler balanced``; macro F1
and accuracy on the full (balanced) test split, and the recall of the cut classes.

    .venv/bin/python benchmarks/imbalance.py [--seeds 0 1 2] [--epochs 6]

The dataset is written as an MNIST-format IDX folder under runs/imbalance/ (git-ignored):
classes 0-4 keep their 6,000 training images, classes 5-9 keep 300 (20x imbalance). Every run
picks its best epoch by validation macro F1 (the default above 3x imbalance).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
from transfer_study import NAMES, fashion_mnist, write_idx

import imagewise

ROOT = Path("runs/imbalance")
CUT, KEEP = [5, 6, 7, 8, 9], 0.05
SETTINGS = {
    "plain": {},
    "class-weight auto": {"class_weight": "auto"},
    "sampler balanced": {"sampler": "balanced"},
}


def make_dataset(seed: int = 0) -> Path:
    folder = ROOT / "data"
    if (folder / "classes.txt").is_file():
        return folder
    data, rng = fashion_mnist(), np.random.default_rng(seed)
    x, y = data["train"]
    keep = [
        rng.choice(idx, int(len(idx) * KEEP), replace=False) if c in CUT else idx
        for c in range(10)
        for idx in [np.flatnonzero(y == c)]
    ]
    idx = np.sort(np.concatenate(keep))
    write_idx(folder, "train", x[idx], y[idx])
    write_idx(folder, "t10k", *data["test"])
    (folder / "classes.txt").write_text("\n".join(NAMES))
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--model", default="resnet9p_tiny")
    args = parser.parse_args()
    data = make_dataset()
    results: dict[str, list[dict[str, float]]] = {}
    for seed in args.seeds:
        for name, options in SETTINGS.items():
            out = ROOT / f"{name.replace(' ', '-')}-s{seed}"
            if not (out / "model.safetensors").is_file():
                imagewise.train(str(data), out, model=args.model, epochs=args.epochs, seed=seed,
                                show_progress=False, **options)  # fmt: skip
            m = imagewise.evaluate(out, write=False, report=False).metrics
            cut_recall = statistics.mean(m["per_class"][NAMES[c]]["recall"] for c in CUT)
            row = {"macro_f1": m["macro"]["f1"], "accuracy": m["accuracy"], "cut": cut_recall}
            results.setdefault(name, []).append(row)
            print(
                f"seed {seed} {name:<18} macro F1 {row['macro_f1']:.4f}  accuracy "
                f"{row['accuracy']:.2%}  recall of the cut classes {cut_recall:.2%}",
                flush=True,
            )
    print(f"\n{'setting':<18} {'macro F1':>9} {'accuracy':>9} {'cut-class recall':>17}")
    for name, rows in results.items():
        mean = {k: statistics.mean(r[k] for r in rows) for k in rows[0]}
        print(f"{name:<18} {mean['macro_f1']:>9.4f} {mean['accuracy']:>9.2%} {mean['cut']:>17.2%}")
    (ROOT / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
