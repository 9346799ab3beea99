"""Conformal prediction sets (issue 29): coverage and set size on a run's test split.

Thresholds are fitted on the run's validation split (what ``imagewise predict --coverage``
fits, ``RUN/conformal.json``), then the sets of the test images are measured: empirical
coverage (the share of sets holding the true class), mean set size and the smallest per-class
coverage, at 0.90 and 0.95, marginal and class-conditional (``--coverage-per-class``), for each
score (``imagewise.edge.conformal``: LAC, APS and RAPS, plain and randomized by the pixel hash)
against the naive sets: the top classes until their probabilities sum to the target.

    nice .venv/bin/python benchmarks/conformal_coverage.py /work/runs/fm-fast
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import imagewise
from imagewise.edge.conformal import PredictionSets, fit_conformal, tie_breakers
from imagewise.predict.unknown import _decoded_chunks
from imagewise.runtime.run_data import run_split

COVERAGES = (0.90, 0.95)
METHODS = (  # (name, score, randomized)
    ("LAC", "lac", False),
    ("APS, not randomized", "aps", False),
    ("APS randomized", "aps", True),
    ("RAPS, not randomized", "raps", False),
    ("RAPS randomized (default)", "raps", True),
)


def split_scores(model, run: Path, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Probabilities, labels and tie-breakers of the run's ``name`` split."""
    part = run_split(run, model.classes, (name,), None, "measure conformal sets on")
    probs, labels, u = [], [], []
    for images, y in _decoded_chunks(model, part):
        probs.append(model.scores(images)[1])
        labels.append(y)
        u.append(tie_breakers(images))
    return np.concatenate(probs), np.concatenate(labels), np.concatenate(u)


def naive_sets(probs: np.ndarray, coverage: float) -> np.ndarray:
    """The top classes until their probabilities sum to ``coverage`` (booleans (N, classes))."""
    order = np.argsort(-probs, axis=1, kind="stable")
    cum = np.cumsum(np.take_along_axis(probs, order, axis=1), axis=1)
    kept = np.concatenate([np.ones((len(probs), 1), bool), cum[:, :-1] < coverage], axis=1)
    member = np.zeros_like(kept)
    np.put_along_axis(member, order, kept, axis=1)
    return member


def measured(member: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    hit = member[np.arange(len(labels)), labels]
    per_class = [hit[labels == k].mean() for k in range(member.shape[1])]
    return {
        "coverage": round(float(hit.mean()), 4),
        "mean_set_size": round(float(member.sum(1).mean()), 3),
        "min_class_coverage": round(float(min(per_class)), 4),
        "empty_sets": round(float((member.sum(1) == 0).mean()), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args()
    start = time.perf_counter()
    model = imagewise.load(args.run)
    val = split_scores(model, args.run, "val")
    test = split_scores(model, args.run, "test")
    print(f"{len(val[1])} calibration (val), {len(test[1])} test images; "
          f"test accuracy {np.mean(test[0].argmax(1) == test[1]):.4f}")  # fmt: skip
    rows = []
    for c in COVERAGES:
        rows.append({"method": "naive (top classes to sum c)", "target": c, "kind": "marginal",
                     **measured(naive_sets(test[0], c), test[1])})  # fmt: skip
        for name, score, randomized in METHODS:
            fit = fit_conformal(val[0], val[1], val[2], score, randomized, coverages=[c])
            for per_class, non_empty in ((False, False), (True, False), (False, True)):
                sets = PredictionSets(fit, c, per_class, non_empty)
                u = test[2] if randomized else None
                member = _members(sets, test[0], u)
                kind = "per class" if per_class else "marginal"
                label = name + (", non-empty" if non_empty else "")
                rows.append({"method": label, "target": c, "kind": kind,
                             **measured(member, test[1])})  # fmt: skip
    print(
        f"{'target':>6}  {'kind':<9}  {'method':<40} {'coverage':>8} {'size':>6} {'min class':>9} "
        f"{'empty':>6}"
    )
    for r in rows:
        print(f"{r['target']:>6}  {r['kind']:<9}  {r['method']:<40} {r['coverage']:>8.4f} "
              f"{r['mean_set_size']:>6.3f} {r['min_class_coverage']:>9.4f} "
              f"{r['empty_sets']:>6.4f}")  # fmt: skip
    print(f"({time.perf_counter() - start:.0f} s)")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


def _members(sets: PredictionSets, probs: np.ndarray, u: np.ndarray | None) -> np.ndarray:
    """The sets of precomputed tie-breakers (the images' hashes were taken once)."""
    from imagewise.edge.conformal import class_scores

    fit = sets.fit
    return sets.from_scores(class_scores(probs, fit.score, u, fit.penalty, fit.k_reg), probs)


if __name__ == "__main__":
    main()
