"""Self-training with pseudo-labels (issue 31): few labels plus an unlabelled pool, against the
same few labels alone and against the pool labelled by hand.

Fashion-MNIST as files: ``--labelled`` training images (stratified, seeded) with labels, 1,000
validation and the 10,000 test images in a CSV manifest; ``--pool`` other training images in a
folder without labels. Three runs with the same model, settings and seed:

- ``few``: the labelled images alone. It is the teacher of the next run, which trains it in
  ``self/teacher`` exactly so: the teacher's numbers are this row's.
- ``self``: ``imagewise.train(manifest, unlabelled=POOL, pseudo_precision=P)``: the teacher's
  pool answers at or above the confidence reaching precision P on validation, added.
- ``oracle``: the pool with its true labels (``add_labels``), the most the pool can give.

Each is scored on the test split with ``imagewise.evaluate``; for ``self``, the share of the
pool labelled and the accuracy of those labels against the truth. A finished run folder is
reused (the oracle across ``--precision`` values; ``self`` is ``WORK/self-P``).

    .venv/bin/python benchmarks/pseudo_labels.py --work /tmp/pseudo --labelled 500 --pool 10000
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
from foundation import machine  # benchmarks/foundation.py: cores and CPU model
from PIL import Image

import imagewise
from imagewise.data.sources import resolve_source, stratified_split


def write_images(folder: Path, images: np.ndarray, names: list[str]) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for image, name in zip(images, names, strict=True):
        path = folder / name
        if not path.exists():
            Image.fromarray(image[0]).save(path)
        paths.append(str(path))
    return paths


def make_data(work: Path, labelled: int, pool: int, seed: int) -> tuple[Path, Path, dict]:
    """The manifest (labelled train, val, test), the pool folder and the pool's true labels."""
    data = resolve_source("fashion-mnist", 0.0, 0.0)
    classes = data.classes
    train_x, train_y = data.train.images.numpy(), data.train.labels
    test_x, test_y = data.test.images.numpy(), data.test.labels
    rest, few, val = stratified_split(train_y, [labelled / len(train_y), 1000 / len(train_y)], seed)
    pool_index = np.random.default_rng(seed).permutation(rest)[:pool]
    rows = []
    for split, index, x, y in (
        ("train", few, train_x, train_y),
        ("val", val, train_x, train_y),
        ("test", np.arange(len(test_y)), test_x, test_y),
    ):
        prefix = "test" if split == "test" else "train"
        names = [f"{prefix}-{i:05d}.png" for i in index]
        paths = write_images(work / "images" / split, x[index], names)
        rows += [(p, classes[y[i]], split) for p, i in zip(paths, index, strict=True)]
    manifest = work / "labelled.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split"])
        writer.writerows(rows)
    names = [f"train-{i:05d}.png" for i in pool_index]
    paths = write_images(work / "pool", train_x[pool_index], names)
    truth = {p: classes[train_y[i]] for p, i in zip(paths, pool_index, strict=True)}
    return manifest, work / "pool", truth


def oracle_manifest(work: Path, truth: dict[str, str]) -> Path:
    path = work / "pool_truth.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "labelled_by"])
        writer.writerows((p, label, "person") for p, label in truth.items())
    return path


def finished(run: Path) -> bool:
    """A run that trained to its end (calibration is the last thing written); reused."""
    meta = run / "meta.json"
    return meta.is_file() and json.loads(meta.read_text()).get("calibration") is not None


def test_accuracy(run: Path) -> float:
    return float(imagewise.evaluate(run, split="test", write=False, report=False).metrics.accuracy)


def pseudo_quality(run: Path, truth: dict[str, str]) -> dict:
    record = json.loads((run / "meta.json").read_text())["pseudo_labels"]
    with open(run / "pseudo_labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    right = sum(truth[str(Path(r["path"]).resolve())] == r["label"] for r in rows)
    return {**record, "pseudo_label_accuracy": right / len(rows) if rows else float("nan")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/pseudo"))
    p.add_argument("--labelled", type=int, default=500)
    p.add_argument("--pool", type=int, default=10000)
    p.add_argument("--precision", type=float, default=0.95)
    p.add_argument("--model", default="tutorial_cnn")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    manifest, pool, truth = make_data(args.work, args.labelled, args.pool, args.seed)
    settings = {"model": args.model, "epochs": args.epochs, "seed": args.seed,
                "device": args.device}  # fmt: skip
    out: dict = {"machine": machine(), "settings": vars(args) | {"work": str(args.work)}}
    started = time.perf_counter()
    self_run = args.work / f"self-{args.precision:g}"
    if not finished(self_run):
        imagewise.train(
            str(manifest), self_run, unlabelled=pool, pseudo_precision=args.precision,
            show_progress=False, **settings,
        )  # fmt: skip
        out["self_seconds"] = time.perf_counter() - started
    started = time.perf_counter()
    oracle = args.work / "oracle"
    if not finished(oracle):
        imagewise.train(
            str(manifest), oracle, add_labels=[str(oracle_manifest(args.work, truth))],
            show_progress=False, **settings,
        )  # fmt: skip
        out["oracle_seconds"] = time.perf_counter() - started
    out["test_accuracy"] = {
        "few (the teacher)": test_accuracy(self_run / "teacher"),
        "self-trained": test_accuracy(self_run),
        "oracle": test_accuracy(oracle),
    }
    out["pseudo_labels"] = pseudo_quality(self_run, truth)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
