"""Multi-label: 2x2 mosaics of Fashion-MNIST, imagewise vs a plain Keras sigmoid CNN.

Each image is 56x56 grayscale: four 28x28 tiles, each a random Fashion-MNIST image or, with
probability ``--blank``, black. Its labels are the set of garment classes present (0 to 4
distinct labels; an all-blank mosaic has none). Train and val mosaics are built only from
Fashion-MNIST training images (val from a held-out tenth of them, so no tile image is shared
with train), test mosaics only from the 10,000 official test images. The PNG files and a
CSV manifest ``path,labels,split`` (``Shirt|Sneaker``; empty for none) go under ``--work``.

Then, one after the other in this invocation on the same machine:
imagewise (``task="multilabel"``, its default model for this data unless ``--model``) and a
Keras CNN with sigmoid outputs and binary cross-entropy (Adam 1e-3, batch 64, the tutorial's
settings) trained on the same train images for the same number of epochs imagewise ran.
Keras runs in a separate Python that has TensorFlow (``--keras-python``): TensorFlow is never
imported into the process that trains with PyTorch. Keras hands back its test (and val)
probabilities, so every metric comes from the same scikit-learn code here: mAP (mean over
labels of average precision), micro/macro F1 and per-label F1, imagewise at its fitted
per-label thresholds and at 0.5, Keras at 0.5 (as its users decide) and at thresholds fitted
on the val mosaics with imagewise's own ``fit_thresholds`` (for fairness). Prints a Markdown
block for BENCHMARKS.md.

    .venv/bin/python benchmarks/multilabel_mosaics.py --epochs 8
    .venv/bin/python benchmarks/multilabel_mosaics.py --train 2000 --test 500 --epochs 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

TILE = 28
KERAS_PYTHON = Path.home() / ".cache/imagewise/tflite-converter/bin/python"
KERAS_MODEL = "Conv32-Pool-Conv64-Pool-Conv128-Pool-Dense128-Dropout0.5-Dense(K, sigmoid)"


def build_mosaics(
    images: np.ndarray, labels: np.ndarray, count: int, num_classes: int, blank: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """``count`` 2x2 mosaics of ``images`` (uint8, N x 28 x 28 or N x 1 x 28 x 28).

    Returns the mosaics (uint8, count x 56 x 56), their targets (uint8, count x num_classes, 1
    for each class present in a tile) and the index into ``images`` of each tile (count x 4,
    row-major, -1 for a blank tile).
    """
    images = images.reshape(-1, TILE, TILE)
    tiles = rng.integers(0, len(images), size=(count, 4))
    tiles[rng.random((count, 4)) < blank] = -1
    mosaics = np.zeros((count, 2 * TILE, 2 * TILE), np.uint8)
    targets = np.zeros((count, num_classes), np.uint8)
    for k in range(4):
        r, c = divmod(k, 2)
        used = tiles[:, k] >= 0
        mosaics[used, r * TILE : (r + 1) * TILE, c * TILE : (c + 1) * TILE] = images[tiles[used, k]]
        targets[np.flatnonzero(used), labels[tiles[used, k]]] = 1
    return mosaics, targets, tiles


def write_dataset(
    work: Path, train: int = 12000, test: int = 3000, val: int = 1200, blank: float = 0.35,
    seed: int = 0, data: Any = None,
) -> Path:  # fmt: skip
    """Mosaic PNGs plus ``manifest.csv`` and ``arrays.npz`` (the same pixels and targets per
    split) under ``work/mosaics-...``; written once per setting, returns the manifest.

    Args:
        data: an ``ImageData`` with ``train`` / ``test`` splits of decoded images (default:
            Fashion-MNIST with no validation carve-out); a tenth of its training images, a
            seeded draw, are kept for the val mosaics.
    """
    from PIL import Image

    folder = work / f"mosaics-{train}-{val}-{test}-b{blank:g}-s{seed}"
    manifest = folder / "manifest.csv"
    if manifest.is_file() and (folder / "arrays.npz").is_file():
        return manifest
    if data is None:
        from imagewise.data.sources import resolve_source

        data = resolve_source("fashion-mnist", val_fraction=0.0)
    rng = np.random.default_rng(seed)
    pool_images, pool_labels = np.asarray(data.train.images), np.asarray(data.train.labels)
    order = rng.permutation(len(pool_labels))
    held = order[: len(order) // 10]  # the val mosaics' own tile images
    pools = {
        "train": (pool_images[order[len(held) :]], pool_labels[order[len(held) :]], train),
        "val": (pool_images[held], pool_labels[held], val),
        "test": (np.asarray(data.test.images), np.asarray(data.test.labels), test),
    }
    lines, arrays = ["path,labels,split"], {}
    for split, (images, labels, count) in pools.items():
        if not count:
            continue
        x, y, _ = build_mosaics(images, labels, count, len(data.classes), blank, rng)
        (folder / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            path = folder / split / f"{i:05d}.png"
            Image.fromarray(x[i]).save(path)
            names = "|".join(data.classes[k] for k in np.flatnonzero(y[i]))
            lines.append(f"{path},{names},{split}")
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x, y
    np.savez(folder / "arrays.npz", classes=np.array(data.classes), **arrays)
    manifest.write_text("\n".join(lines) + "\n")  # last: its presence means "complete"
    return manifest


class EpochClock:
    """imagewise hook: the training seconds of each epoch (validation not counted)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_epoch_end(self, state: Any) -> None:
        self.seconds.append(state.history[-1]["epoch_seconds"])


def run_imagewise(
    manifest: Path, out: Path, epochs: int, model: str | None, classes: list[str],
    **extra: Any,
) -> dict[str, Any]:  # fmt: skip
    """Train the multi-label run, then its calibrated probabilities on the test mosaics, with
    the columns (and thresholds) in the order of ``classes``: the run orders class names as it
    reads them from the manifest (sorted), not in Fashion-MNIST's order."""
    import shutil

    import torch

    import imagewise

    shutil.rmtree(out, ignore_errors=True)  # a rerun replaces the earlier run
    clock, load = EpochClock(), _load()
    options: dict[str, Any] = {"task": "multilabel", "epochs": epochs, **extra}
    if model:
        options["model"] = model
    result = imagewise.train(str(manifest), out, hooks=[clock], show_progress=False, **options)
    clf = imagewise.load(out)
    paths = [
        line.split(",")[0] for line in manifest.read_text().splitlines() if line.endswith(",test")
    ]
    logits = np.concatenate(
        [clf.logits(clf.preprocess(paths[i : i + 256])).numpy() for i in range(0, len(paths), 256)]
    )
    column = [clf.classes.index(name) for name in classes]
    return {
        "model": result.model,
        "params": sum(p.numel() for p in clf.model.parameters()),
        "epochs": result.epochs,
        "best_epoch": result.best_epoch,
        "epoch_seconds": clock.seconds,
        "probs": np.asarray(clf.spec.probabilities(logits))[:, column],
        "thresholds": clf.spec.label_thresholds()[column],
        "temperature": result.temperature,
        "torch": torch.__version__,
        "load": (load, _load()),
    }


def run_keras(arrays: Path, out: Path, epochs: int, python: Path) -> dict[str, Any]:
    """The Keras peer in its own Python (``--keras-worker``); its probabilities come back."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = [str(python), __file__, "--keras-worker", str(arrays), str(out), "--epochs", str(epochs)]
    env, load = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, _load()
    with open(out / "stderr.txt", "w") as log:  # TensorFlow's start-up noise
        done = subprocess.run(cmd, env=env, stderr=log)
    if done.returncode:
        sys.exit(f"the Keras worker failed; see {out / 'stderr.txt'}")
    info = json.loads((out / "keras.json").read_text()) | {"load": (load, _load())}
    info["probs"] = np.load(out / "test_probs.npy")
    info["val_probs"] = np.load(out / "val_probs.npy")
    return info


def keras_worker(arrays: Path, out: Path, epochs: int) -> None:
    """Runs under the TensorFlow Python: train, time each epoch, save probabilities."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    out.mkdir(parents=True, exist_ok=True)
    data = np.load(arrays)
    x, y = data["x_train"][..., None].astype("float32") / 255.0, data["y_train"]
    model = keras.Sequential(
        [
            keras.Input(shape=x.shape[1:]),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(64, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(128, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(y.shape[1], activation="sigmoid"),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
    seconds = []
    for _ in range(epochs):
        start = time.perf_counter()
        model.fit(x, y, batch_size=64, epochs=1, verbose=0, shuffle=True)
        seconds.append(time.perf_counter() - start)
    for split in ("test", "val"):
        xs = data[f"x_{split}"][..., None].astype("float32") / 255.0
        np.save(out / f"{split}_probs.npy", model.predict(xs, batch_size=500, verbose=0))
    info = {
        "model": KERAS_MODEL,
        "params": int(model.count_params()),
        "epochs": epochs,
        "epoch_seconds": seconds,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }
    (out / "keras.json").write_text(json.dumps(info))


def scores(targets: np.ndarray, probs: np.ndarray, thresholds: np.ndarray | float) -> dict:
    """mAP (threshold-free), micro/macro F1 and per-label F1 at ``thresholds``."""
    from sklearn.metrics import average_precision_score, f1_score

    decided = (probs >= thresholds).astype(np.uint8)
    ap = [average_precision_score(targets[:, k], probs[:, k]) for k in range(targets.shape[1])]
    return {
        "mAP": float(np.mean(ap)),
        "micro": float(f1_score(targets, decided, average="micro", zero_division=0)),
        "macro": float(f1_score(targets, decided, average="macro", zero_division=0)),
        "per_label": f1_score(targets, decided, average=None, zero_division=0).tolist(),
        "exact": float((decided == targets).all(axis=1).mean()),  # subset accuracy
    }


def markdown(
    args: argparse.Namespace, data: Any, iw: dict, ke: dict, rows: dict, asl: dict | None = None
) -> str:
    """The block for BENCHMARKS.md."""
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
         if ln.startswith("model name")), platform.processor(),
    )  # fmt: skip
    y = data["y_train"]
    counts = np.bincount(y.sum(1), minlength=5)
    runs = {"iw": iw, "ke": ke, **({"asl": asl} if asl else {})}
    per_epoch = {n: statistics.median(r["epoch_seconds"]) for n, r in runs.items()}
    lines = [
        "### Multi-label: 2x2 Fashion-MNIST mosaics, imagewise vs Keras (sigmoid + BCE)",
        "",
        f"`.venv/bin/python {' '.join(shlex.quote(a) for a in sys.argv)}` (repository root)",
        "",
        f"Machine: {cpu}, {os.cpu_count()} cores (shared), {date.today()}; torch {iw['torch']}, "
        f"TensorFlow {ke['tensorflow']} / Keras {ke['keras']} (Keras in its own process, run "
        "after imagewise in the same invocation on the same machine).",
        "",
        f"Data: 56x56 grayscale mosaics of four Fashion-MNIST tiles, each blank with probability "
        f"{args.blank:g}; {len(y):,} train / {len(data['y_val']):,} val / "
        f"{len(data['y_test']):,} test mosaics (train and val tiles from disjoint parts of the "
        "official training set, test tiles from the official test set). Distinct labels per "
        "train image (0/1/2/3/4): " + " / ".join(f"{c / len(y):.1%}" for c in counts) + ".",
        "",
        f"Models: imagewise `{iw['model']}` ({iw['params'] / 1e6:.2f}M parameters, its defaults, "
        f"kept epoch {iw['best_epoch']} of {iw['epochs']}, temperature {iw['temperature']:.2f}); "
        f"Keras {ke['model']} ({ke['params'] / 1e6:.2f}M parameters, Adam 1e-3, batch 64, "
        f"last epoch), {ke['epochs']} epochs each, on the same train mosaics.",
        "",
        "| | thresholds | test mAP | micro F1 | macro F1 | exact set | train s/epoch (median) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, (how, r, who) in rows.items():
        lines.append(
            f"| {name} | {how} | {r['mAP']:.4f} | {r['micro']:.4f} | {r['macro']:.4f} | "
            f"{r['exact']:.2%} | {per_epoch[who]:.1f} |"
        )
    lines += ["", "Per-label F1 on the test mosaics:", ""]
    names = list(rows)
    lines += ["| class | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for k, cls in enumerate(data["classes"]):
        cells = " | ".join(f"{rows[n][1]['per_label'][k]:.3f}" for n in names)
        lines.append(f"| {cls} | {cells} |")
    lines += [
        "",
        f"Training seconds per epoch: imagewise {_seconds(iw)}; Keras {_seconds(ke)}"
        + (f"; imagewise ASL {_seconds(asl)}" if asl else "")
        + ". "
        "imagewise's exclude its validation pass; Keras runs none. The machine was shared "
        "with other jobs: the fastest epoch is the fairer speed. All metrics by the same "
        "scikit-learn code.",
    ]
    return "\n".join(lines)


def _load() -> float:
    """The 1-minute load average: how busy the shared machine was."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def _seconds(run: dict) -> str:
    fastest, (start, end) = min(run["epoch_seconds"]), run["load"]
    each = ", ".join(f"{s:.1f}" for s in run["epoch_seconds"])
    return f"{each} (fastest {fastest:.1f}; load average {start:.1f} at start, {end:.1f} at end)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/multilabel_mosaics"))
    parser.add_argument("--train", type=int, default=12000, help="train mosaics")
    parser.add_argument("--val", type=int, default=0, help="val mosaics (0: a tenth of --train)")
    parser.add_argument("--test", type=int, default=3000, help="test mosaics")
    parser.add_argument("--blank", type=float, default=0.35, help="chance a tile is blank")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--model", default=None, help="imagewise model (default: its own choice)")
    parser.add_argument("--keras-python", type=Path, default=KERAS_PYTHON)
    parser.add_argument(
        "--asl", action="store_true", help="also train imagewise with --loss asl (its fitted "
        "thresholds against 0.5, where the asymmetric loss moves the best cut)",
    )  # fmt: skip
    parser.add_argument("--markdown", type=Path, default=None, help="also write the block here")
    parser.add_argument("--keras-worker", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.keras_worker:
        keras_worker(*args.keras_worker, args.epochs)
        return
    from imagewise.edge.multilabel import fit_thresholds
    from imagewise.runtime.device import keep_freed_memory

    keep_freed_memory()  # as the CLI does
    val = args.val or args.train // 10
    manifest = write_dataset(args.work, args.train, args.test, val, args.blank, args.seed)
    data = np.load(manifest.parent / "arrays.npz")
    print(f"dataset: {manifest}", flush=True)
    classes = [str(name) for name in data["classes"]]
    iw = run_imagewise(manifest, args.work / "run-imagewise", args.epochs, args.model, classes)
    print(f"imagewise: {iw['epochs']} epochs, {iw['epoch_seconds']}", flush=True)
    ke = run_keras(
        manifest.parent / "arrays.npz", args.work / "keras", iw["epochs"], args.keras_python
    )
    print(f"keras: {ke['epochs']} epochs, {ke['epoch_seconds']}", flush=True)
    asl = None
    if args.asl:
        asl = run_imagewise(
            manifest, args.work / "run-imagewise-asl", args.epochs, args.model, classes,
            loss="asl",
        )  # fmt: skip
        print(f"imagewise asl: {asl['epochs']} epochs, {asl['epoch_seconds']}", flush=True)
    y = data["y_test"]
    rows = {
        "imagewise": ("fitted per label (val)", scores(y, iw["probs"], iw["thresholds"]), "iw"),
        "imagewise @0.5": ("0.5", scores(y, iw["probs"], 0.5), "iw"),
        "Keras": ("0.5", scores(y, ke["probs"], 0.5), "ke"),
        "Keras + fitted": (
            "fitted per label (val)",
            scores(y, ke["probs"], fit_thresholds(ke["val_probs"], data["y_val"])),
            "ke",
        ),
    }
    if asl is not None:
        rows["imagewise ASL"] = (
            "fitted per label (val)",
            scores(y, asl["probs"], asl["thresholds"]),
            "asl",
        )
        rows["imagewise ASL @0.5"] = ("0.5", scores(y, asl["probs"], 0.5), "asl")
    block = markdown(args, data, iw, ke, rows, asl)
    print("\n" + block)
    if args.markdown:
        args.markdown.write_text(block + "\n")


if __name__ == "__main__":
    main()
