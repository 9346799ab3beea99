"""Automatic annotation (issue 31): precision and coverage of ``imagewise label auto`` on
Fashion-MNIST images whose labels it never saw.

For each size of labelled set (``--labelled``, default 1,000 and 10,000 images drawn at random
from the Fashion-MNIST training split, saved as PNG with a manifest), a run is trained with the
default settings (which adapt the epochs and batch to the data size; the validation split is
carved from the labelled images, as ``train`` does), then ``label auto`` labels a pool of 5,000
other training images (saved without their labels) at each ``--target`` precision. Its machine
labels are scored against the true labels: precision (right / labelled) and coverage (labelled
/ pool). The threshold is fitted on the run's own validation split, so with 1,000 labelled
images it rests on 100 validation images.

    .venv/bin/python benchmarks/label_auto.py --work /tmp/label_auto
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

import imagewise
from imagewise.data.builtin import FASHION_CLASSES, find_fashion_mnist
from imagewise.data.idx import read_idx

POOL = 5000


def build(root: Path, labelled: int, seed: int) -> tuple[Path, Path, dict[str, str]]:
    """PNG files: ``labelled`` images with a manifest, and a pool of ``POOL`` others; returns
    the manifest, the pool folder and the pool's true labels by file name."""
    folder = find_fashion_mnist()
    assert folder is not None, "Fashion-MNIST is not on this machine (dataset-fashion-mnist)"
    x = read_idx(next(folder.glob("train-images*")))
    y = read_idx(next(folder.glob("train-labels*"))).astype(int)
    order = np.random.default_rng(seed).permutation(len(x))
    train_idx, pool_idx = order[:labelled], order[labelled : labelled + POOL]
    images, pool = root / "images", root / f"pool-{labelled}-{seed}"
    images.mkdir(parents=True, exist_ok=True)
    pool.mkdir(exist_ok=True)
    classes = [c.replace("/", "-") for c in FASHION_CLASSES]
    lines = ["path,label"]
    for i in train_idx:
        name = images / f"{i:05d}.png"
        if not name.exists():
            Image.fromarray(x[i]).save(name)
        lines.append(f"images/{name.name},{classes[y[i]]}")
    manifest = root / f"labelled-{labelled}-{seed}.csv"
    manifest.write_text("\n".join(lines) + "\n")
    truth = {}
    for i in pool_idx:
        name = pool / f"{i:05d}.png"
        if not name.exists():
            Image.fromarray(x[i]).save(name)
        truth[name.name] = classes[y[i]]
    return manifest, pool, truth


def measure(work: Path, labelled: int, targets: list[float], seed: int) -> list[dict[str, Any]]:
    manifest, pool, truth = build(work, labelled, seed)
    run = work / f"run-{labelled}-{seed}"
    start = time.perf_counter()
    if not (run / "model.safetensors").is_file():
        imagewise.train(str(manifest), run, show_progress=False, seed=seed)
    train_s = time.perf_counter() - start
    rows = []
    for target in targets:
        start = time.perf_counter()
        auto = imagewise.label_auto(run, pool, target_precision=target)
        right = [
            truth[Path(p).name] == label for p, label in zip(auto.paths, auto.labels, strict=True)
        ]
        kept = auto.kept
        row = {
            "labelled": labelled,
            "seed": seed,
            "target": target,
            "threshold": auto.fit.min_confidence,
            "val_precision": auto.fit.precision,
            "val_images": auto.fit.validation_images,
            "precision": float(np.mean(np.array(right)[kept])) if kept.any() else None,
            "coverage": auto.coverage,
            "machine_labels": int(kept.sum()),
            "pool_accuracy": float(np.mean(right)),
            "train_s": round(train_s, 1),
            "auto_s": round(time.perf_counter() - start, 1),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/label_auto"))
    parser.add_argument("--labelled", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--targets", type=float, nargs="+", default=[0.95, 0.98, 0.99])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--json", type=Path, help="write every row here")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    rows = [
        row
        for n in args.labelled
        for seed in args.seeds
        for row in measure(args.work, n, args.targets, seed)
    ]
    print("\n| labelled | target | threshold | precision | coverage | pool accuracy |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        precision = "-" if r["precision"] is None else f"{100 * r['precision']:.2f}%"
        print(
            f"| {r['labelled']} (seed {r['seed']}) | {r['target']} | {r['threshold']:.4f} | "
            f"{precision} | {100 * r['coverage']:.1f}% | {100 * r['pool_accuracy']:.2f}% |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
