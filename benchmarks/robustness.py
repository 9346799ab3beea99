"""Robustness and slices (issue 29): the figures of BENCHMARKS.md and the README's examples.

(a) ``--run RUN``: times ``robustness()`` alone (a stratified sample of the test split under
12 corruptions x 3 severities) after one plain evaluation, and prints the table worst first.
The full command the table comes from is ``imagewise evaluate RUN --robustness``.

(b) ``--sites WORK``: scikit-learn's digits saved as 32-pixel PNGs with a CSV manifest
``path,label,split,site``; the test images of ``scanner-b`` are saved at half the exposure (a
dim scanner), every 30th test image is ``field-kit`` (too few to judge). A LeNet-5 trained on
the manifest, then ``evaluate --slice-by site``: the dim site comes first.

    .venv/bin/python benchmarks/robustness.py --run runs/fm-fast
    .venv/bin/python benchmarks/robustness.py --sites /tmp/sites
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np


def time_robustness(run: str, images: int) -> None:
    import imagewise
    from imagewise.evaluate.robustness import robustness
    from imagewise.predict.predictor import load_run

    ev = imagewise.evaluate(run, write=False, report=False)
    clf = load_run(run)
    wall, cpu = time.perf_counter(), time.process_time()
    r = robustness(clf, ev.images, ev.probabilities, images)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(r.summary())
    for name in r.worst_first():
        accs = " / ".join(f"{100 * s.score.accuracy:.2f}%" for s in r.of(name))
        print(f"  {name:<15} {accs}   mean {100 * r.mean_accuracy(name):.2f}%")
    print(f"robustness(): {wall:.1f} s wall, {cpu:.1f} s CPU for {r.images} x {len(r.scores)}")


def write_sites(root: Path) -> Path:
    """The digits as PNGs and ``manifest.csv`` with a site column; returns the manifest."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(0)
    rows = []
    for i, (img, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        split = "test" if rng.random() < 0.3 else "train"
        site = ["scanner-a", "scanner-b", "scanner-c"][i % 3] if split == "test" else "scanner-a"
        site = "field-kit" if split == "test" and i % 30 == 0 else site
        pil = Image.fromarray((img * 255 / 16).astype(np.uint8)).resize((32, 32), Image.BILINEAR)
        if site == "scanner-b":
            pil = pil.point(lambda v: v // 2)  # a dim scanner: half the exposure
        path = root / "images" / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        pil.save(path)
        rows.append([f"images/{i:04d}.png", str(label), split, site])
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split", "site"])
        writer.writerows(rows)
    return manifest


def sites(work: Path) -> None:
    import imagewise

    manifest = write_sites(work / "sites")
    run = work / "sites-run"
    imagewise.train(str(manifest), run, model="lenet5", epochs=8, show_progress=False)
    ev = imagewise.evaluate(run, slice_by="site", gallery=8)
    assert ev.slices is not None
    print(ev.slices.summary())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", help="time robustness() on this run's test split")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--sites", type=Path, help="work folder for the slices example")
    args = parser.parse_args()
    if args.run:
        time_robustness(args.run, args.images)
    if args.sites:
        sites(args.sites)


if __name__ == "__main__":
    main()
