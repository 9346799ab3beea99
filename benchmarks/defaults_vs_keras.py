"""Defaults that fit the data vs the plain Keras-tutorial settings, same model and epochs.

For each dataset and model, trains twice as a user would: with imagewise's defaults (nothing
set but the model, and the epochs when ``--epochs N`` is given) and with the settings of the
Keras tutorial (Adam 1e-3, batch 64, constant rate without warm-up, no augmentation, no label
smoothing) for the same number of epochs as the defaults ran. Prints a Markdown table of test
accuracy (mean over ``--seeds``; the split seed stays fixed so every run sees the same test
images).

Datasets: ``digits`` (scikit-learn, 1,797 images), ``fm5k`` (5,000 Fashion-MNIST training images,
a seeded draw, as PNG files in a CSV manifest under ``--work``, tested on the 10,000 official
test images) and ``fashion-mnist`` (all 60,000).

    .venv/bin/python benchmarks/defaults_vs_keras.py --datasets digits fm5k --seeds 0 1 2
    .venv/bin/python benchmarks/defaults_vs_keras.py --datasets fashion-mnist --models tutorial_cnn
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

KERAS = {
    "optimizer": "adam",
    "lr": 1e-3,
    "batch_size": 64,
    "schedule": "constant",
    "augment": "none",
    "label_smoothing": 0.0,
}


def fm_subset(work: Path, count: int = 5000) -> str:
    """A CSV manifest of the first ``count`` Fashion-MNIST training images (PNG files) plus the
    10,000 official test images; written once under ``work``."""
    import numpy as np
    from PIL import Image

    from imagewise.data.sources import resolve_source

    manifest = work / f"fm{count // 1000}k" / "manifest.csv"
    if manifest.is_file():
        return str(manifest)
    data = resolve_source("fashion-mnist")
    lines = ["path,label,split"]
    for split, n in (("train", count), ("test", None)):
        part = data.train if split == "train" else data.test
        images, labels = part.images.numpy(), np.asarray(part.labels)
        # a seeded random draw: the built-in's splits need not be in a random order
        keep = np.random.default_rng(0).permutation(len(labels))[:n] if n else range(len(labels))
        folder = manifest.parent / split
        folder.mkdir(parents=True, exist_ok=True)
        for i in keep:
            path = folder / f"{i:05d}.png"
            Image.fromarray(images[i, 0]).save(path)
            lines.append(f"{path},{data.classes[labels[i]]},{split}")
    manifest.write_text("\n".join(lines) + "\n")
    return str(manifest)


def run_once(source: str, out: Path, options: dict[str, Any]) -> dict[str, Any]:
    """Train into ``out`` and measure the test split; returns accuracy, epochs, seconds."""
    import imagewise
    from imagewise.config import load_config_file

    start = time.perf_counter()
    result = imagewise.train(source, out, show_progress=False, **options)
    wall = time.perf_counter() - start
    ev = imagewise.evaluate(out, write=False, report=False)
    cfg = load_config_file(out / "config.yaml")
    return {
        "accuracy": float(ev.accuracy),
        "epochs": result.epochs,
        "train_seconds": result.train_seconds,
        "wall": wall,
        "batch": cfg.train.batch_size,
        "augment": cfg.data.augment.preset,
    }


def compare(
    source: str, model: str, epochs: int | None, seeds: list[int], work: Path, keras: bool = True
) -> dict:
    """Defaults then Keras settings (same epochs as the defaults ran), for each seed."""
    rows: dict[str, list[dict[str, Any]]] = {"defaults": [], "keras": []}
    tag = Path(source).parent.name if source.endswith(".csv") else source
    for seed in seeds:
        base = {"model": model, "seed": seed}
        if epochs:
            base["epochs"] = epochs
        out = work / f"{tag}-{model}-e{epochs or 'auto'}-s{seed}"
        d = run_once(source, _fresh(out / "defaults"), base)
        rows["defaults"].append(d)
        print(f"  {tag} {model} seed {seed}: defaults {d}", flush=True)
        if keras:
            k = run_once(source, _fresh(out / "keras"), {**base, **KERAS, "epochs": d["epochs"]})
            rows["keras"].append(k)
            print(f"  {tag} {model} seed {seed}: keras {k}", flush=True)
    return rows


def _fresh(folder: Path) -> Path:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)  # a rerun replaces the earlier run
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["digits", "fm5k", "fashion-mnist"])
    parser.add_argument("--models", nargs="+", default=["tutorial_cnn", "resnet9p_tiny"])
    parser.add_argument("--epochs", type=int, default=0, help="0 = the defaults' own choice")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/defaults_vs_keras"))
    parser.add_argument("--no-keras", action="store_true", help="only the defaults' runs")
    args = parser.parse_args()
    from imagewise.runtime.device import keep_freed_memory

    keep_freed_memory()  # as the CLI does
    args.work.mkdir(parents=True, exist_ok=True)
    table = []
    for name in args.datasets:
        source = fm_subset(args.work) if name == "fm5k" else name
        for model in args.models:
            rows = compare(
                source, model, args.epochs or None, args.seeds, args.work, not args.no_keras
            )
            table.append((name, model, rows))
    print(
        "\n| dataset | model | epochs | defaults: batch, augment | defaults test acc | "
        "Keras settings test acc | difference | train s (defaults / Keras) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, model, rows in table:
        d, k = rows["defaults"], rows["keras"]
        da = statistics.mean(r["accuracy"] for r in d)
        ka = statistics.mean(r["accuracy"] for r in k) if k else float("nan")
        spread = f" (n={len(d)})" if len(d) > 1 else ""
        print(
            f"| {name} | {model} | {d[0]['epochs']} | {d[0]['batch']}, {d[0]['augment']} | "
            f"{da:.2%}{spread} | {ka:.2%} | {(da - ka) * 100:+.2f} | "
            f"{statistics.mean(r['train_seconds'] for r in d):.0f} / "
            f"{statistics.mean(r['train_seconds'] for r in k) if k else float('nan'):.0f} |"
        )


if __name__ == "__main__":
    main()
