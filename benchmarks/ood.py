"""Out-of-distribution scores and "unknown" answers (issue 21) on a Fashion-MNIST run.

In-distribution: the 10,000 Fashion-MNIST test images. Out-of-distribution: scikit-learn's
1,797 digits (8x8, 0..16, scaled to 0..255 uint8 and resized to the model's 28x28 by imagewise's
own resize, as ``imagewise predict`` would read them). AUROC (``sklearn.metrics.roc_auc_score``,
out-of-distribution as the positive class) of:

- max-softmax (``1 - max calibrated probability``), the baseline;
- energy (``-T logsumexp(logits / T)``) at T = 1 and at the run's temperature;
- kNN: cosine distance to the k-th nearest of up to 20,000 training embeddings (L2-normalized
  penultimate features, the run's ``knn_reference.npz``), for several k;
- energy from the exported ONNX file (no PyTorch), when the run has one.

Also the false-positive rate at 95% true-positive rate (FPR95: the share of digits kept when
95% of Fashion-MNIST is kept), a bootstrap interval of kNN minus energy, and what each score
costs next to the model's own forward pass (median ms per batch of 64).

Then ``--min-confidence auto`` for precision 0.95: the threshold, precision and coverage on the
validation split it was fitted on, and the same on the test split.

    .venv/bin/python benchmarks/ood.py --run runs/fm-fast
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score

import imagewise
from imagewise.data.sources import resolve_source
from imagewise.edge.unknown import KnnReference, energy_score, max_softmax_score
from imagewise.predict.unknown import (
    REFERENCE_FILE,
    knn_reference,
    penultimate,
    resolve_ood,
    run_min_confidence,
)

KS = (1, 5, 10, 20, 50, 200)


def digits_images(model: Any) -> np.ndarray:
    """scikit-learn's digits as uint8 (N, C, size, size), read as ``imagewise predict`` reads a
    PIL image (``ImageModel.read``: mode, then imagewise's resize)."""
    pixels = np.round(load_digits().images * (255 / 16)).astype(np.uint8)
    return np.stack([model.read(Image.fromarray(p, "L")) for p in pixels])


def scores_of(model: Any, images: np.ndarray, batch: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Logits and calibrated probabilities of uint8 images, batch by batch."""
    parts = [model.scores(images[i : i + batch]) for i in range(0, len(images), batch)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """AUROC of telling ``outside`` (positive) from ``inside`` by the score (higher: outside)."""
    y = np.r_[np.zeros(len(inside)), np.ones(len(outside))]
    return float(roc_auc_score(y, np.r_[inside, outside]))


def fpr95(inside: np.ndarray, outside: np.ndarray) -> float:
    """The share of ``outside`` scoring below the score that keeps 95% of ``inside``."""
    return float((outside <= np.quantile(inside, 0.95)).mean())


def knn_scores(
    model: Any, reference: KnnReference, fm: np.ndarray, digits: np.ndarray
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """The k-th neighbour distances of both sets for each k in ``KS``."""
    embed = penultimate(model)
    inside = np.concatenate([embed(fm[i : i + 512]) for i in range(0, len(fm), 512)])
    outside = embed(digits)
    out = {}
    for k in KS:
        ref = KnnReference(reference.embeddings, k, reference.weights_sha256, reference.images)
        out[k] = (ref.score(inside), ref.score(outside))
    return out


def bootstrap_difference(
    a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], rounds: int = 200
) -> list[float]:
    """The 95% bootstrap interval of AUROC(a) - AUROC(b) over resampled images (paired)."""
    rng = np.random.default_rng(0)
    n_in, n_out = len(a[0]), len(a[1])
    diffs = []
    for _ in range(rounds):
        i, o = rng.integers(0, n_in, n_in), rng.integers(0, n_out, n_out)
        diffs.append(auroc(a[0][i], a[1][o]) - auroc(b[0][i], b[1][o]))
    return [round(float(v), 4) for v in np.quantile(diffs, [0.025, 0.975])]


def scorer_cost(model: Any, images: np.ndarray, scorers: dict[str, Any]) -> dict[str, float]:
    """Median milliseconds per batch of 64 of the model's scores and of each scorer on top,
    timed in turn on the same batches (a busy machine slows all of them alike)."""
    times: dict[str, list[float]] = {"model": [], **{name: [] for name in scorers}}
    for start in range(0, len(images) - 63, 64):
        batch = images[start : start + 64]
        t0 = time.perf_counter()
        logits, _ = model.scores(batch)
        times["model"].append(time.perf_counter() - t0)
        for name, scorer in scorers.items():
            t0 = time.perf_counter()
            scorer(batch, logits)
            times[name].append(time.perf_counter() - t0)
    return {name: round(1000 * float(np.median(t)), 2) for name, t in times.items()}


def threshold_on_test(threshold: float, probs: np.ndarray, labels: np.ndarray) -> dict:
    """Precision and coverage of the answers kept at ``threshold`` on labelled images."""
    kept = probs.max(axis=1) >= threshold
    right = probs.argmax(axis=1) == labels
    return {
        "precision": float(right[kept].mean()) if kept.any() else float("nan"),
        "coverage": float(kept.mean()),
        "accuracy_all": float(right.mean()),
        "images": len(labels),
    }


def onnx_energy(run: Path, fm: np.ndarray, digits: np.ndarray) -> dict | None:
    """Energy AUROC through the exported ONNX file (``imagewise.edge.onnx``), if there is one."""
    files = [run / "export" / name for name in ("model.onnx", "model.int8.onnx")]
    path = next((f for f in files if f.is_file()), None)
    if path is None:
        return None
    from imagewise.edge.onnx import load_model

    model = load_model(path)
    inside, outside = scores_of(model, fm)[0], scores_of(model, digits)[0]
    return {"file": str(path), "energy": auroc(energy_score(inside), energy_score(outside))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/fm-fast")
    ap.add_argument("--target-precision", type=float, default=0.95)
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args()
    run = Path(args.run)
    model = imagewise.load(run)
    test = resolve_source("fashion-mnist").test  # in memory, 28x28 gray: the model's input
    fm, labels = test.images.numpy(), np.asarray(test.labels)
    digits = digits_images(model)
    t0 = time.perf_counter()
    fm_logits, fm_probs = scores_of(model, fm)
    dg_logits, dg_probs = scores_of(model, digits)
    score_s = time.perf_counter() - t0
    temperature = float(model.temperature)
    energy = energy_score(fm_logits), energy_score(dg_logits)
    msp = max_softmax_score(fm_probs), max_softmax_score(dg_probs)
    results: dict[str, Any] = {
        "run": str(run),
        "model": model.name,
        "machine": platform.processor() or platform.machine(),
        "in_distribution": f"fashion-mnist test ({len(fm)})",
        "out_of_distribution": f"sklearn digits ({len(digits)}) resized to {fm.shape[-1]}px",
        "test_accuracy": float((fm_probs.argmax(1) == labels).mean()),
        "auroc": {
            "max_softmax": auroc(*msp),
            "energy_T1": auroc(*energy),
            f"energy_T{temperature:.3g}": auroc(
                energy_score(fm_logits, temperature), energy_score(dg_logits, temperature)
            ),
        },
        "seconds": {"logits_11797_images": round(score_s, 2)},
    }
    had_reference = (run / REFERENCE_FILE).exists()
    t0 = time.perf_counter()
    reference = knn_reference(model, run)
    assert reference is not None
    results["seconds"]["knn_reference"] = round(time.perf_counter() - t0, 1)
    results["knn_reference_images"] = [len(reference.embeddings), reference.images]
    knn = knn_scores(model, reference, fm, digits)
    results["auroc"]["knn"] = {k: auroc(*v) for k, v in knn.items()}
    results["fpr95"] = {
        "max_softmax": fpr95(*msp),
        "energy_T1": fpr95(*energy),
        **{f"knn_k{k}": fpr95(*knn[k]) for k in (1, reference.k)},
    }
    results["percentiles"] = {
        name: {
            "fashion_mnist_50_95_99": np.percentile(a, [50, 95, 99]).round(4).tolist(),
            "digits_5_50": np.percentile(b, [5, 50]).round(4).tolist(),
        }
        for name, (a, b) in {"energy_T1": energy, f"knn_k{reference.k}": knn[reference.k]}.items()
    }
    results["knn_default_k"] = reference.k
    results["auroc_knn_minus_energy_95ci"] = bootstrap_difference(knn[reference.k], energy)
    results["ms_per_batch_of_64"] = scorer_cost(
        model,
        fm[:2048],
        {"energy": resolve_ood(model, run, "energy"), "knn": resolve_ood(model, run, "knn")},
    )
    results["auroc"]["onnx"] = onnx_energy(run, fm, digits)
    t0 = time.perf_counter()
    fit = run_min_confidence(model, run, args.target_precision)
    results["seconds"]["min_confidence_fit"] = round(time.perf_counter() - t0, 1)
    results["min_confidence"] = {
        "validation": fit.to_json(),
        "test": threshold_on_test(fit.min_confidence, fm_probs, labels),
        "digits_answered": float((dg_probs.max(1) >= fit.min_confidence).mean()),
    }
    if not had_reference:  # leave the run's default (--ood auto) as it was
        (run / REFERENCE_FILE).unlink()
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
