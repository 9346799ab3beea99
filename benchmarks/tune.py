"""Hyperparameter search (issue 20): TPE against random search on a 10,000-image Fashion-MNIST
training subset, the compute the median pruner saved, and each trial's overhead against an epoch.

    .venv/bin/python benchmarks/tune.py [--seeds 0 1 2] [--trials 20] [--epochs 3]

Every study searches the default space (learning rate, weight decay, batch size, label
smoothing, augmentation, optimizer) for LeNet-5 with ``--subset 10000`` (stratified), validates
on held-out training images (``val_fraction`` 0.05: 3,000 images) and prunes with the median
pruner; the best trial's run is then measured on the official 10,000-image test split. Studies
live under runs/tune-bench/ (git-ignored): a rerun continues them and re-measures nothing done.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import statistics
import time
from pathlib import Path

import imagewise

ROOT = Path("runs/tune-bench")


def study(sampler: str, seed: int, args: argparse.Namespace) -> dict[str, object]:
    out = ROOT / f"{sampler}-seed{seed}"
    start = time.perf_counter()
    result = imagewise.tune(
        "fashion-mnist", out, trials=args.trials, sampler=sampler, pruner="median",
        subset=args.subset, model=args.model, epochs=args.epochs, seed=seed, val_fraction=0.05,
    )  # fmt: skip
    wall = time.perf_counter() - start
    test = float("nan")
    if result.best_run is not None:
        test = imagewise.evaluate(result.best_run, split="test", report=False).accuracy
    with (out / "trials.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["state"] in ("complete", "pruned")]
    setup = [float(r["setup_seconds"]) for r in rows if r["setup_seconds"]]
    epoch = [float(r["epoch_seconds"]) for r in rows if r["epoch_seconds"]]
    return {
        "sampler": sampler, "seed": seed, "best_val": result.best_value, "test": test,
        "complete": result.complete, "pruned": result.pruned,
        "epochs_run": result.epochs_run, "epochs_planned": result.epochs_planned,
        "setup_first": setup[0] if setup else None,
        "setup_median": statistics.median(setup[1:]) if len(setup) > 1 else None,
        "epoch_median": statistics.median(epoch) if epoch else None,
        "wall_seconds": wall, "best_params": result.best_params,
    }  # fmt: skip


def rest_of_trial(out: Path) -> float:
    """Median seconds of a trial spent outside its training epochs: setup, validation after
    every epoch, the run folder's files (curves.png each epoch, checkpoints), calibration."""
    with (out / "trials.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["state"] in ("complete", "pruned")]
    return statistics.median(
        float(r["seconds"]) - int(r["epochs"]) * float(r["epoch_seconds"]) for r in rows
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--samplers", nargs="+", default=["tpe", "random"])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--subset", type=int, default=10_000)
    parser.add_argument("--model", default="lenet5")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ROOT.mkdir(parents=True, exist_ok=True)
    results_path = ROOT / "results.json"
    done = json.loads(results_path.read_text()) if results_path.is_file() else []
    for seed in args.seeds:  # seed outermost: a partial run still compares the samplers
        for sampler in args.samplers:
            if any(r["sampler"] == sampler and r["seed"] == seed for r in done):
                continue
            done.append(study(sampler, seed, args))
            results_path.write_text(json.dumps(done, indent=2))
    print(
        "| sampler | seed | best val acc | test acc (best trial) | complete / pruned | "
        "epochs run / planned | setup s (1st, median) | epoch s | rest s/trial | wall s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in sorted(done, key=lambda r: (r["sampler"], r["seed"])):
        rest = rest_of_trial(ROOT / f"{r['sampler']}-seed{r['seed']}")
        print(f"| {r['sampler']} | {r['seed']} | {r['best_val']:.4f} | {r['test']:.4f} | "
              f"{r['complete']} / {r['pruned']} | {r['epochs_run']} / {r['epochs_planned']} | "
              f"{r['setup_first']:.1f}, {r['setup_median']:.2f} | {r['epoch_median']:.2f} | "
              f"{rest:.1f} | {r['wall_seconds']:.0f} |")  # fmt: skip
    for sampler in args.samplers:
        mine = [r for r in done if r["sampler"] == sampler]
        if mine:
            print(f"{sampler}: mean best val {statistics.mean(r['best_val'] for r in mine):.4f}, "
                  f"mean test {statistics.mean(r['test'] for r in mine):.4f} over "
                  f"{len(mine)} seed(s)")  # fmt: skip


if __name__ == "__main__":
    main()
