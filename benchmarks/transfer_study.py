"""Transfer study on Fashion-MNIST (issue 18): does a network trained on other classes help
when only 20 or 100 labelled images per class are at hand?

Source: classes 0-4 (T-shirt, Trouser, Pullover, Dress, Coat), the full training set (30,000
images). Target: classes 5-9 (Sandal, Shirt, Sneaker, Bag, Ankle boot) with N labelled images
per class drawn with the seed, tested on the full target test split (5,000 images). Four
ways to train on the target, each with the same epochs and otherwise imagewise's defaults:

  scratch      --model resnet9p_tiny
  probe        --init-from SOURCE --freeze backbone        (cached features)
  finetune     --init-from SOURCE
  progressive  --init-from SOURCE --freeze backbone --unfreeze-at K

Then a linear probe on the full target training set (30,000 images), cached vs uncached (the
frozen backbone run every epoch), no augmentation for either: seconds per epoch and accuracy;
and the ceiling: the network trained from scratch on all 30,000 target images.

    .venv/bin/python benchmarks/transfer_study.py [--seeds 0 1 2] [--per-class 20 100]

Data sets are written as MNIST-format IDX folders under runs/transfer-study/ (git-ignored),
the source run is trained once and reused.
"""

from __future__ import annotations

import argparse
import json
import statistics
import struct
import time
from pathlib import Path

import numpy as np

import imagewise
from imagewise.data import builtin
from imagewise.data.idx import find_idx_pairs, read_idx
from imagewise.runtime.runs import RunFolder

ROOT = Path("runs/transfer-study")
NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
         "Bag", "Ankle boot"]  # fmt: skip


def fashion_mnist() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    folder = builtin.find_fashion_mnist()
    assert folder is not None, "install the Debian package dataset-fashion-mnist"
    pairs = find_idx_pairs(Path(folder))
    return {k: (read_idx(pairs[k][0]), read_idx(pairs[k][1]).astype(np.int64)) for k in pairs}


def write_idx(folder: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    n, h, w = images.shape
    (folder / f"{split}-images-idx3-ubyte").write_bytes(
        struct.pack(">4B3i", 0, 0, 0x08, 3, n, h, w) + images.astype(np.uint8).tobytes()
    )
    (folder / f"{split}-labels-idx1-ubyte").write_bytes(
        struct.pack(">4Bi", 0, 0, 0x08, 1, n) + labels.astype(np.uint8).tobytes()
    )


def subset(data, classes: list[int], folder: Path, per_class: int | None, seed: int) -> Path:
    """IDX folder with ``classes`` renumbered 0.., ``per_class`` train images each (all when
    None) and the whole test split of those classes."""
    if (folder / "classes.txt").is_file():
        return folder
    rng = np.random.default_rng(seed)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x, y = data[split]
        keep = []
        for c in classes:
            idx = np.flatnonzero(y == c)
            if split == "train" and per_class is not None:
                idx = rng.choice(idx, per_class, replace=False)
            keep.append(idx)
        idx = np.sort(np.concatenate(keep))
        write_idx(folder, prefix, x[idx], np.searchsorted(classes, y[idx]))
    (folder / "classes.txt").write_text("\n".join(NAMES[c] for c in classes))
    return folder


def accuracy(run: Path) -> float:
    return float(imagewise.evaluate(run, write=False, report=False).accuracy)


def train(data: Path, out: Path, **options) -> tuple[Path, float]:
    if not (out / "model.safetensors").is_file():
        imagewise.train(str(data), out, show_progress=False, **options)
    return out, accuracy(out)


def study(data, seeds: list[int], sizes: list[int], epochs: int, source: Path) -> dict:
    unfreeze = epochs // 3 + 1
    methods = {
        "scratch": {"model": "resnet9p_tiny"},
        "probe": {"init_from": str(source), "freeze": "backbone"},
        "finetune": {"init_from": str(source)},
        "progressive": {"init_from": str(source), "freeze": "backbone", "unfreeze_at": unfreeze},
    }
    results: dict = {}
    for n in sizes:
        for seed in seeds:
            target = subset(data, [5, 6, 7, 8, 9], ROOT / f"target-{n}-s{seed}", n, seed)
            for name, opts in methods.items():
                out = ROOT / f"{name}-{n}-s{seed}"
                _, acc = train(target, out, epochs=epochs, seed=seed, **opts)
                results.setdefault(n, {}).setdefault(name, []).append(acc)
                print(f"{n:>4}/class seed {seed} {name:<12} {acc:.2%}", flush=True)
    return results


def cached_vs_uncached(data, source: Path, epochs: int) -> dict:
    target = subset(data, [5, 6, 7, 8, 9], ROOT / "target-all", None, 0)
    rows = {}
    for cache in ("on", "off"):  # same seed, no augmentation: the same training
        out = ROOT / f"probe-all-cache-{cache}"
        start = time.perf_counter()
        _, acc = train(target, out, init_from=str(source), freeze="backbone", epochs=epochs,
                       augment="none", cache_features=cache, seed=0)  # fmt: skip
        wall = time.perf_counter() - start
        history = RunFolder.of(out).read_history()
        per_epoch = statistics.median(float(h["epoch_seconds"]) for h in history)
        rows[cache] = {"accuracy": acc, "median_epoch_seconds": per_epoch, "wall_seconds": wall}
        print(f"linear probe, cache {cache}: {per_epoch:.3f} s/epoch, test {acc:.2%}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--per-class", type=int, nargs="+", default=[20, 100])
    parser.add_argument("--epochs", type=int, default=30, help="target epochs, every method")
    parser.add_argument("--source-epochs", type=int, default=8)
    parser.add_argument("--skip-study", action="store_true")
    args = parser.parse_args()
    data = fashion_mnist()
    src_data = subset(data, [0, 1, 2, 3, 4], ROOT / "source-data", None, 0)
    source, src_acc = train(src_data, ROOT / "source", model="resnet9p_tiny",
                            epochs=args.source_epochs, seed=0)  # fmt: skip
    print(f"source: resnet9p_tiny on classes 0-4, test {src_acc:.2%}", flush=True)
    out = {"source_accuracy": src_acc}
    if not args.skip_study:
        results = study(data, args.seeds, args.per_class, args.epochs, source)
        print(f"\n{'per class':>9} {'method':<12} {'mean':>7} {'spread (min-max)':>18}")
        for n, by_method in results.items():
            for name, accs in by_method.items():
                spread = f"{min(accs):.2%}-{max(accs):.2%}"
                print(f"{n:>9} {name:<12} {statistics.mean(accs):>7.2%} {spread:>18}")
        out["study"] = results
    out["cached"] = cached_vs_uncached(data, source, epochs=3)
    # The ceiling: the same network trained from scratch on every target training image.
    target_all = subset(data, [5, 6, 7, 8, 9], ROOT / "target-all", None, 0)
    _, ceiling = train(target_all, ROOT / "ceiling", model="resnet9p_tiny",
                       epochs=args.source_epochs, seed=0)  # fmt: skip
    print(f"ceiling: resnet9p_tiny on all 30,000 target images, test {ceiling:.2%}", flush=True)
    out["ceiling_accuracy"] = ceiling
    (ROOT / "results.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
