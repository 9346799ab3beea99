"""Fitting the classical baseline (``hog_svm``): HOG features once, then a linear SVM, no epochs.

``fit_classical`` extracts the HOG descriptor of every training (and validation) image with
the evaluation preprocessing, fits ``StandardScaler`` + ``LinearSVC`` from scikit-learn and
copies the result into the model's buffers and linear layer. ``write_classical_run`` then fills
the run folder with the same files a deep run has (history.csv with one row, meta.json's
``training`` summary) except ``last.ckpt``: there is nothing to resume.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from torch import nn

from imagewise.data.pipeline import make_loader
from imagewise.data.sources import Split
from imagewise.data.transforms import Preprocessing
from imagewise.errors import UserError
from imagewise.runtime.checkpoint import save_weights
from imagewise.runtime.meta import RunMeta
from imagewise.runtime.runs import RunFolder

log = logging.getLogger("imagewise")

# Candidate SVM costs, chosen by validation accuracy. On Fashion-MNIST HOG features (54k
# images) validation accuracy peaked at C=0.003 (0.01 was 0.2 points lower), and liblinear's
# dual solver slows down as C grows: 0.003 took 80 s on 2 cores, 0.01 about 290 s.
C_VALUES = (0.0003, 0.001, 0.003)
DEFAULT_C = 0.003  # used when there is no validation split to choose with
SVM_TOLERANCE = 1e-3  # 1e-4 took 2-4x longer for the same accuracy to 0.1 point
SVM_MAX_ITER = 2000
# Below this many images, worker processes cost more to start than they save.
PARALLEL_MIN_IMAGES = 2000
# Each parallel LinearSVC fit holds about 6x the float32 features (a float64 copy plus
# liblinear's own problem); fit in parallel only while that fits in this budget.
FIT_MEMORY_BUDGET = 4 * 1024**3


def refuse_classical(name: str, world: int, resume: bool) -> None:
    """Raise the ``UserError`` for what a classical model cannot do: torchrun, ``--resume``."""
    if world > 1:
        raise UserError(
            f"model '{name}' is fitted in one process on the CPU; run it without torchrun"
        )
    if resume:
        raise UserError(resume_refusal(name))


def resume_refusal(name: str) -> str:
    """The message for ``--resume`` on a classical run: one fit, so no ``last.ckpt``."""
    return (
        f"model '{name}' is fitted in one pass and has no last.ckpt to resume; "
        "start a new run instead"
    )


def refuse_classical_resume(folder: RunFolder) -> None:
    """Raise ``resume_refusal`` when ``folder`` holds a classical run (it has no last.ckpt)."""
    if folder.meta.is_file() and (meta := folder.read_meta_file()).model.capabilities.fit == (
        "one_pass"
    ):
        raise UserError(resume_refusal(meta.model.name))


def _chunk_size(pre: Preprocessing, batch_size: int) -> int:
    """Images per HOG task: ``batch_size``, but at most ~16 MB of float pixels per chunk."""
    pixels = pre.channels * pre.img_size * pre.img_size
    return max(1, min(batch_size, (4 * 1024**2) // pixels))


def extract_features(
    model: nn.Module,
    split: Split,
    pre: Preprocessing,
    batch_size: int = 1024,
    workers: int = -1,
    jobs: int = -1,
) -> tuple[np.ndarray, np.ndarray]:
    """HOG descriptors (N, D) float32 and labels (N,) of a split, as ``model`` would see them.

    Images go through ``pre.normalize`` exactly as at evaluation (no augmentation), and each
    chunk through the model's ``hog_features`` in a pool of ``jobs`` processes (-1: all cores;
    one process for small splits). Results are written into one preallocated array.

    Args:
        model: a ``HogSVM`` (its ``hog_settings`` decide the descriptor).
        split: the images and labels.
        pre: the run's preprocessing.
        batch_size: images per chunk (capped at ~16 MB of pixels).
        workers: DataLoader workers for file splits that are not in memory.
        jobs: HOG processes.
    """
    from joblib import Parallel, delayed

    from imagewise.models.hog_svm import hog_features

    settings = model.hog_settings
    loader = make_loader(split, pre, _chunk_size(pre, batch_size), workers=workers)
    labels: list[np.ndarray] = []

    def chunks() -> Iterator[np.ndarray]:
        for images, y in loader:
            if len(y):
                labels.append(y.numpy())
                yield pre.normalize(images).numpy()

    out = np.empty((len(split), settings.feature_dim(pre.img_size)), dtype=np.float32)
    n_jobs = 1 if len(split) < PARALLEL_MIN_IMAGES else jobs
    done = 0
    # A generator keeps only a few chunks in flight, so memory holds the features, not pixels.
    tasks = (delayed(hog_features)(x, settings) for x in chunks())
    for feats in Parallel(n_jobs=n_jobs, return_as="generator")(tasks):
        out[done : done + len(feats)] = feats
        done += len(feats)
    y = np.concatenate(labels) if labels else np.empty(0, dtype=np.int64)
    return out[:done], y.astype(np.int64)


def _fit_jobs(features: np.ndarray, candidates: int) -> int:
    import joblib

    by_memory = int(FIT_MEMORY_BUDGET // max(1, 6 * features.nbytes))
    if len(features) < PARALLEL_MIN_IMAGES:
        return 1
    return max(1, min(candidates, joblib.cpu_count(), by_memory))


def _accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    return float((scores.argmax(1) == labels).mean()) if len(labels) else float("nan")


def _cross_entropy(scores: np.ndarray, labels: np.ndarray) -> float:
    """Cross-entropy of the decision values taken as logits (temperature 1)."""
    if not len(labels):
        return float("nan")
    logits = torch.from_numpy(np.ascontiguousarray(scores, dtype=np.float32))
    return float(torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels)))


def _decision(svm: Any, features: np.ndarray, num_classes: int) -> np.ndarray:
    """(N, num_classes) decision values; liblinear returns one column for two classes."""
    coef, intercept = _coef(svm, num_classes)
    return features @ coef.T + intercept


def _coef(svm: Any, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The SVM as a (num_classes, D) weight and (num_classes,) bias, binary case included.

    For two classes liblinear fits one hyperplane w (positive = class 1); the logits
    (-w/2, +w/2) give the same argmax and the same difference of scores.
    """
    coef = np.zeros((num_classes, svm.coef_.shape[1]), dtype=np.float32)
    bias = np.zeros(num_classes, dtype=np.float32)
    classes = svm.classes_.astype(np.int64)
    if len(classes) == 2 and svm.coef_.shape[0] == 1:
        coef[classes[1]], bias[classes[1]] = svm.coef_[0] / 2, svm.intercept_[0] / 2
        coef[classes[0]], bias[classes[0]] = -svm.coef_[0] / 2, -svm.intercept_[0] / 2
    else:
        # A class absent from the training split keeps zero weights and bias.
        coef[classes], bias[classes] = svm.coef_, svm.intercept_
    return coef, bias


def fit_classical(
    model: nn.Module,
    train: Split,
    val: Split,
    pre: Preprocessing,
    *,
    seed: int = 0,
    workers: int = -1,
    c_values: Sequence[float] = C_VALUES,
) -> dict[str, Any]:
    """Fit a ``HogSVM`` in place: HOG features, ``StandardScaler``, then ``LinearSVC``.

    The SVM cost ``C`` is chosen among ``c_values`` by validation accuracy when the validation
    split has images (the candidates are fitted in parallel processes), else ``DEFAULT_C`` is
    used. The SVM is one-vs-rest with the squared hinge loss (scikit-learn's default), solved in
    the dual (``dual=True``: with HOG's ~1,300 dense features liblinear's primal solver was 3-4x
    slower on Fashion-MNIST), seeded with ``seed``. The fitted model is the one trained on the
    training split alone, so the validation split stays unseen for calibration.

    Args:
        model: a ``HogSVM``; its feature mean/scale buffers and ``fc`` layer are overwritten.
        train: training images and labels.
        val: validation images and labels (may be empty).
        pre: the preprocessing of the run (the same as at evaluation; no augmentation).
        seed: seed of liblinear's coordinate-descent order.
        workers: DataLoader workers for file splits that are not in memory.
        c_values: the candidate costs.

    Returns:
        ``C``, ``candidates`` (C -> validation accuracy), ``feature_dim``, ``train_accuracy``,
        ``train_loss``, ``val_accuracy``, ``val_loss`` (NaN without a validation split; losses
        are the cross-entropy of the decision values), ``feature_seconds``, ``fit_seconds``,
        ``train_seconds`` and the HOG settings.

    Example:
        >>> model = imagewise.create_model("hog_svm", num_classes=10, in_chans=1, img_size=28)
        >>> fit_classical(model, data.train, data.val, pre)["val_accuracy"]  # doctest: +SKIP
        0.89
    """
    from sklearn.preprocessing import StandardScaler

    start = time.perf_counter()
    x_train, y_train = extract_features(model, train, pre, workers=workers)
    x_val, y_val = extract_features(model, val, pre, workers=workers)
    feature_seconds = time.perf_counter() - start
    log.info(
        "HOG features: %d train / %d val images x %d in %.1fs",
        len(x_train), len(x_val), x_train.shape[1], feature_seconds,
    )  # fmt: skip
    if len(np.unique(y_train)) < 2:
        raise UserError("hog_svm needs training images of at least two classes")

    fit_start = time.perf_counter()
    scaler = StandardScaler(copy=False).fit(x_train)
    x_train = scaler.transform(x_train)  # in place: the features are the big array here
    if len(x_val):
        x_val = scaler.transform(x_val)
    num_classes = int(model.num_classes)
    candidates, svms, val_acc = _fit_candidates(
        x_train, y_train, x_val, y_val, num_classes, c_values, seed
    )
    best = int(np.nanargmax(val_acc)) if len(x_val) else 0  # ties: the largest C
    svm = svms[best]
    fit_seconds = time.perf_counter() - fit_start
    coef, bias = _coef(svm, num_classes)
    _set_weights(model, scaler, coef, bias)
    train_scores = x_train @ coef.T + bias
    val_scores = x_val @ coef.T + bias
    return {
        "C": candidates[best],
        "candidates": dict(zip(map(str, candidates), val_acc, strict=True)) if len(x_val) else {},
        "selected_by": "val_accuracy" if len(x_val) else "default C",
        "feature_dim": int(x_train.shape[1]),
        "hog": asdict(model.hog_settings),
        "svm_iterations": int(np.max(svm.n_iter_)),
        "train_images": len(y_train),
        "val_images": len(y_val),
        "train_accuracy": _accuracy(train_scores, y_train),
        "train_loss": _cross_entropy(train_scores, y_train),
        "val_accuracy": _accuracy(val_scores, y_val),
        "val_loss": _cross_entropy(val_scores, y_val),
        "feature_seconds": round(feature_seconds, 3),
        "fit_seconds": round(fit_seconds, 3),
        "train_seconds": round(time.perf_counter() - start, 3),
    }


def _fit_candidates(
    x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
    num_classes: int, c_values: Sequence[float], seed: int,
) -> tuple[list[float], list[Any], list[float]]:  # fmt: skip
    """One ``LinearSVC`` per candidate C (``DEFAULT_C`` alone without validation images),
    fitted in parallel processes; their validation accuracies."""
    from joblib import Parallel, delayed
    from sklearn.svm import LinearSVC

    # Largest C first: the slowest fit starts at once and the others share the other cores.
    candidates = sorted(c_values, reverse=True) if len(x_val) else [DEFAULT_C]
    svms = [
        LinearSVC(C=c, dual=True, tol=SVM_TOLERANCE, max_iter=SVM_MAX_ITER, random_state=seed)
        for c in candidates
    ]
    jobs = _fit_jobs(x_train, len(svms))
    svms = Parallel(n_jobs=jobs)(delayed(svm.fit)(x_train, y_train) for svm in svms)
    val_acc = [_accuracy(_decision(s, x_val, num_classes), y_val) for s in svms]
    return candidates, svms, val_acc


def _set_weights(model: nn.Module, scaler: Any, coef: np.ndarray, bias: np.ndarray) -> None:
    """The fitted standardization and hyperplanes into the ``HogSVM``'s buffers and layer."""
    with torch.no_grad():
        model.feature_mean.copy_(torch.from_numpy(scaler.mean_.astype(np.float32)))
        model.feature_scale.copy_(torch.from_numpy(scaler.scale_.astype(np.float32)))
        model.fc.weight.copy_(torch.from_numpy(coef))
        model.fc.bias.copy_(torch.from_numpy(bias))


def write_classical_run(
    folder: RunFolder, meta: RunMeta, model: nn.Module, fit: dict[str, Any]
) -> None:
    """Write the weights, a one-row history.csv and meta.json's ``training`` summary.

    The history row has the columns a deep run writes; ``lr`` is NaN (there is no learning
    rate) and the losses are the cross-entropy of the SVM decision values.

    Args:
        folder: the run folder (already holding config.yaml).
        meta: the run's metadata from ``build_meta``; its ``training`` entry is filled in.
        model: the fitted model.
        fit: the summary returned by ``fit_classical``.
    """
    save_weights(model, folder.weights)
    seconds = fit["train_seconds"]
    row = {
        "epoch": 1,
        "lr": float("nan"),
        "train_loss": fit["train_loss"],
        "train_accuracy": fit["train_accuracy"],
        "val_loss": fit["val_loss"],
        "val_accuracy": fit["val_accuracy"],
        "epoch_seconds": seconds,
        "images_per_second": fit["train_images"] / max(seconds, 1e-9),
    }
    folder.write_history([row])
    has_val = fit["val_images"] > 0
    meta.training = {
        "epochs_run": 1,
        "epochs_planned": 1,
        "best_epoch": 1,
        "best_val_accuracy": fit["val_accuracy"] if has_val else None,
        "selected_by": "val_accuracy" if has_val else "train_loss",
        "train_seconds": seconds,
        "stop_reason": "classical fit",
        "classical": {k: v for k, v in fit.items() if not _is_nan(v)},
    }
    folder.write_meta(meta)
    log.info(
        "fitted %s: C %g, %d features, train accuracy %.4f, val accuracy %.4f, %.1fs",
        meta.model.name, fit["C"], fit["feature_dim"], fit["train_accuracy"],
        fit["val_accuracy"], seconds,
    )  # fmt: skip


def _is_nan(value: Any) -> bool:
    # meta.json is strict JSON: no NaN.
    return isinstance(value, float) and math.isnan(value)
