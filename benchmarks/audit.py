"""Data audit (issue 19): how well ``imagewise data check`` finds planted problems, and how long
it takes on the whole of Fashion-MNIST.

(a) ``--planted``: the first 5,000 Fashion-MNIST training images saved as PNG in
``train/CLASS`` (4,000) and ``test/CLASS`` (1,000), then planted: 1% exact duplicates across
splits (a lossless re-save of a training image into test), 1% near duplicates (a third each
JPEG re-encoded at quality 75, shifted by one pixel, rescaled by 5% to 29x29; half into test),
2% flipped labels (the image filed under another class) and 0.5% corrupt files (zero bytes,
cut in half, or garbage). Recall and precision per kind; a flagged pair of two original
Fashion-MNIST images is a duplicate the dataset already holds, counted apart.

(b) ``--full``: ``imagewise.check_data("fashion-mnist")`` over the 70,000 images; exact and
near duplicates across train and test, and the wall time.

    .venv/bin/python benchmarks/audit.py --planted --work /tmp/audit_bench
    .venv/bin/python benchmarks/audit.py --full
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

import imagewise
from imagewise.data.builtin import FASHION_CLASSES, find_fashion_mnist
from imagewise.data.idx import read_idx

N, N_TEST = 5000, 1000


def _name(i: int) -> str:
    return f"{i:05d}.png"


def build(root: Path, seed: int = 0) -> dict[str, Any]:
    """Write the planted dataset under ``root``; return the truth."""
    folder = find_fashion_mnist()
    assert folder is not None, "Fashion-MNIST is not on this machine"
    x = read_idx(next(folder.glob("train-images*")))[:N]
    y = read_idx(next(folder.glob("train-labels*")))[:N].astype(int)
    classes = [c.replace("/", "-") for c in FASHION_CLASSES]
    rng = np.random.default_rng(seed)
    order = rng.permutation(N)
    n_exact, n_near, n_flip, n_bad = N // 100, N // 100, N // 50, N // 200
    exact_src, near_src, flips, bad = np.split(
        order[: n_exact + n_near + n_flip + n_bad],
        np.cumsum([n_exact, n_near, n_flip]),
    )
    split = np.where(np.isin(np.arange(N), rng.permutation(N)[:N_TEST]), "test", "train")
    label = y.copy()
    label[flips] = (y[flips] + rng.integers(1, 10, len(flips))) % 10
    paths = {}
    for i in range(N):
        path = root / split[i] / classes[label[i]] / _name(i)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(x[i]).save(path)
        paths[i] = str(path)
    truth: dict[str, Any] = {"exact": [], "near": [], "flips": [paths[i] for i in flips]}
    for i in exact_src:  # across splits: the copy goes to the split the image is not in
        other = "test" if split[i] == "train" else "train"
        copy = root / other / classes[label[i]] / f"dup_{_name(i)}"
        Image.fromarray(x[i]).save(copy, optimize=True)  # other bytes, same pixels
        truth["exact"].append(sorted([paths[i], str(copy)]))
    for k, i in enumerate(near_src):
        img = Image.fromarray(x[i])
        where = root / ("test" if k % 2 else split[i]) / classes[label[i]]
        if k % 3 == 0:
            copy = where / f"near_{i:05d}.jpg"
            img.save(copy, quality=75)
        elif k % 3 == 1:
            arr = x[i].copy()
            arr[:, 1:] = x[i][:, :-1]
            copy = where / f"near_{_name(i)}"
            Image.fromarray(arr).save(copy)
        else:
            copy = where / f"near_{_name(i)}"
            img.resize((29, 29), Image.Resampling.BILINEAR).save(copy)
        truth["near"].append(sorted([paths[i], str(copy)]))
    for k, i in enumerate(bad):
        data = Path(paths[i]).read_bytes()
        Path(paths[i]).write_bytes([b"", data[: len(data) // 2], b"\x89PNG garbage"][k % 3])
    truth["corrupt"] = [paths[i] for i in bad]
    truth["originals"] = sorted(paths.values())
    return truth


def _pr(found: int, flagged: int, planted: int) -> dict[str, Any]:
    return {
        "planted": planted,
        "flagged": flagged,
        "found": found,
        "recall": round(found / max(planted, 1), 4),
        "precision": round(found / max(flagged, 1), 4),
    }


def score(report: dict[str, Any], truth: dict[str, Any]) -> dict[str, Any]:
    """Recall and precision per kind; pairs of two original images counted apart."""
    originals = set(truth["originals"])
    corrupt = {e["path"] for e in report["unreadable"]}
    out = {
        "corrupt": _pr(len(corrupt & set(truth["corrupt"])), len(corrupt), len(truth["corrupt"]))
    }
    for kind, key in (("exact", "exact_duplicates"), ("near", "near_duplicates")):
        planted = {tuple(p) for p in truth[kind]}
        entries = [tuple(sorted(e["paths"])) for e in report[key]]
        pre = [e for e in entries if set(e) <= originals]
        hit = sum(any(set(p) <= set(e) for e in entries) for p in planted)
        out[kind] = _pr(hit, len(entries) - len(pre), len(planted))
        out[kind]["pre_existing"] = len(pre)
        out[kind]["pre_existing_cross_split"] = sum(
            e["cross_split"] for e in report[key] if set(e["paths"]) <= originals
        )
    flagged = {e["path"] for e in report["label_issues"]}
    out["labels"] = _pr(len(flagged & set(truth["flips"])), len(flagged), len(truth["flips"]))
    return out


def planted(work: Path) -> dict[str, Any]:
    root = work / "fm5000"
    shutil.rmtree(root, ignore_errors=True)
    truth = build(root)
    start = time.perf_counter()
    result = imagewise.check_data(
        str(root), json_path=work / "planted.json", html_path=work / "planted.html"
    )
    seconds = time.perf_counter() - start
    print(result.summary())
    scores = score(result.to_json(), truth)
    return {"seconds": round(seconds, 1), **scores}


def full(work: Path) -> dict[str, Any]:
    import os

    load = os.getloadavg()
    start = time.perf_counter()
    result = imagewise.check_data("fashion-mnist", json_path=work / "fashion.json")
    seconds = time.perf_counter() - start
    print(result.summary())
    exact, near = result["exact_duplicates"], result["near_duplicates"]
    return {
        "seconds": round(seconds, 1),
        "load_before": [round(v, 2) for v in load],
        "load_after": [round(v, 2) for v in os.getloadavg()],
        "exact_groups": len(exact),
        "exact_cross_split": sum(e["cross_split"] for e in exact),
        "exact_conflicting": sum(e["conflicting_labels"] for e in exact),
        "near_pairs": len(near),
        "near_cross_split": sum(e["cross_split"] for e in near),
        "near_conflicting": sum(e["conflicting_labels"] for e in near),
        "label_issues": len(result["label_issues"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--planted", action="store_true", help="(a) the planted 5,000")
    parser.add_argument("--full", action="store_true", help="(b) the full 70,000")
    parser.add_argument("--work", type=Path, default=Path("/tmp/audit_bench"))
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.work.mkdir(parents=True, exist_ok=True)
    if args.planted:
        print(json.dumps({"planted": planted(args.work)}, indent=2))
    if args.full:
        print(json.dumps({"full": full(args.work)}, indent=2))


if __name__ == "__main__":
    main()
