"""The classical baseline: HOG features (scikit-image) and a linear SVM (scikit-learn).

``HogSVM`` is an ``nn.Module`` so that evaluation, prediction, comparison and the safetensors
weights treat it like any deep model: ``forward`` computes the HOG descriptor of each image on
the CPU with ``skimage.feature.hog``, standardizes it, and applies a linear layer holding the
SVM's ``coef_`` / ``intercept_``; the logits are the SVM decision values. Everything prediction
needs is a buffer or a parameter (HOG settings, feature mean and scale, weights), nothing is
pickled. The SVM is fitted in one pass by ``fit_hog_svm`` (the registry entry's ``fitter``), not
by gradient descent; gradients through the HOG step are not meaningful.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from imagewise.errors import UserError
from imagewise.models.registry import Batches, register_model, size_error

log = logging.getLogger("imagewise")

# skimage's block normalizations, in the order their index is stored in the weights.
BLOCK_NORMS = ("L1", "L1-sqrt", "L2", "L2-Hys")


@dataclass(frozen=True)
class HogSettings:
    """HOG parameters: orientation bins, square cells and blocks, block normalization."""

    orientations: int
    pixels_per_cell: int
    cells_per_block: int
    block_norm: str = "L1-sqrt"

    def feature_dim(self, img_size: int) -> int:
        """Length of the HOG descriptor of one ``img_size``² image (0 when it is too small)."""
        blocks = max(0, img_size // self.pixels_per_cell - self.cells_per_block + 1)
        return blocks * blocks * self.cells_per_block**2 * self.orientations

    def as_tensor(self) -> torch.Tensor:
        """The settings as an int64 buffer, so that they travel in the safetensors weights."""
        norm = BLOCK_NORMS.index(self.block_norm)
        return torch.tensor([self.orientations, self.pixels_per_cell, self.cells_per_block, norm])

    @classmethod
    def from_tensor(cls, t: torch.Tensor) -> HogSettings:
        o, ppc, cpb, norm = (int(v) for v in t.tolist())
        return cls(o, ppc, cpb, BLOCK_NORMS[norm])


def hog_settings(img_size: int) -> HogSettings:
    """The HOG settings used at ``img_size``: 9 bins, 2x2-cell blocks, a grid fixed by the size.

    Small images get 7 cells across (4 px cells at 28 px: 1,296 features, the best of the
    settings measured on Fashion-MNIST); from 112 px on, 14 cells across (16 px cells at
    224 px: 6,084 features), fine enough for photos and still a few GB for 60k images.
    """
    cells = 7 if img_size < 112 else 14
    return HogSettings(orientations=9, pixels_per_cell=max(4, img_size // cells), cells_per_block=2)


def hog_features(images: np.ndarray, settings: HogSettings) -> np.ndarray:
    """HOG descriptors of a float batch (N, C, H, W) -> (N, D) float32, one skimage call each.

    Colour images are reduced to the mean of their channels first. skimage's ``channel_axis``
    (per pixel, the channel with the strongest gradient) was as accurate on colourized
    Fashion-MNIST and slower (BENCHMARKS.md, "HOG + linear SVM").

    Args:
        images: float array (N, C, H, W), normalized or not: gradients ignore the mean, and the
            block normalization the scale.
        settings: the HOG parameters.
    """
    from skimage.feature import hog

    kwargs = {
        "orientations": settings.orientations,
        "pixels_per_cell": (settings.pixels_per_cell,) * 2,
        "cells_per_block": (settings.cells_per_block,) * 2,
        "block_norm": settings.block_norm,
    }
    gray = images[:, 0] if images.shape[1] == 1 else images.mean(axis=1)
    out = np.empty((len(gray), settings.feature_dim(images.shape[-1])), dtype=np.float32)
    for i, img in enumerate(gray):
        out[i] = hog(img, **kwargs)
    return out


class HogSVM(nn.Module):
    """HOG descriptor -> standardization -> linear SVM, with the timm-style interface.

    ``forward_features`` returns the standardized HOG features (N, num_features); there is no
    spatial feature map, so its registry entry declares ``gradcam=False`` (and ``fit="one_pass"``,
    ``onnx_export=False``).
    """

    default_loss = "cross_entropy"  # of the decision values: what calibration and metrics use
    gradcam_layer = ""

    def __init__(self, num_classes: int, in_chans: int, img_size: int) -> None:
        super().__init__()
        settings = hog_settings(img_size)
        dim = settings.feature_dim(img_size)
        if dim < 1:
            raise size_error("hog_svm", img_size)
        self.in_chans, self.img_size = in_chans, img_size
        self.register_buffer("hog_config", settings.as_tensor())
        # An unfitted model standardizes nothing and scores zero; fit_hog_svm fills these.
        self.register_buffer("feature_mean", torch.zeros(dim))
        self.register_buffer("feature_scale", torch.ones(dim))
        self.num_features = self.head_hidden_size = dim
        self.reset_classifier(num_classes)

    @property
    def hog_settings(self) -> HogSettings:
        """The HOG parameters the weights were fitted with (read from the buffer)."""
        return HogSettings.from_tensor(self.hog_config)

    def hog(self, x: torch.Tensor) -> torch.Tensor:
        """Raw HOG descriptors (N, num_features) of a float batch, on the model's device."""
        images = x.detach().float().contiguous().cpu().numpy()
        return torch.from_numpy(hog_features(images, self.hog_settings)).to(self.fc.weight.device)

    def standardize(self, features: torch.Tensor) -> torch.Tensor:
        """Apply the training-set standardization to raw HOG descriptors."""
        return (features - self.feature_mean) / self.feature_scale

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the standardized HOG features, shape (N, num_features)."""
        return self.standardize(self.hog(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Map features to SVM decision values, or return them as they are when ``pre_logits``."""
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the SVM decision values (N, num_classes) of a normalized batch (N, C, H, W)."""
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        """Return the linear layer holding the SVM."""
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the SVM with a zero one for ``num_classes`` classes (fit it again)."""
        ref = self.feature_mean
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes, device=ref.device)
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)


# ---------------------------------------------------------------- the one-pass fit


# Candidate SVM costs, chosen by validation accuracy. On Fashion-MNIST HOG features validation
# accuracy peaked at C=0.003, and liblinear's dual solver slows down as C grows (several times
# slower at 0.01; BENCHMARKS.md "HOG + linear SVM").
C_VALUES = (0.0003, 0.001, 0.003)
DEFAULT_C = 0.003  # used when there is no validation split to choose with
SVM_TOLERANCE = 1e-3  # a tighter one took longer for the same accuracy (BENCHMARKS.md)
SVM_MAX_ITER = 2000
# Below this many images, worker processes cost more to start than they save.
PARALLEL_MIN_IMAGES = 2000
# Each parallel LinearSVC fit holds about 6x the float32 features (a float64 copy plus
# liblinear's own problem); fit in parallel only while that fits in this budget.
FIT_MEMORY_BUDGET = 4 * 1024**3


def extract_features(
    model: nn.Module, batches: Batches, jobs: int = -1
) -> tuple[np.ndarray, np.ndarray]:
    """HOG descriptors (N, D) float32 and labels (N,) of preprocessed batches (multi-label
    data: 0/1 rows (N, K) uint8).

    Each chunk goes through ``hog_features`` in a pool of ``jobs`` processes (-1: all cores;
    one process for small splits); results are written into one preallocated array.

    Args:
        model: a ``HogSVM`` (its ``hog_settings`` decide the descriptor).
        batches: the split, preprocessed as at evaluation.
        jobs: HOG processes.
    """
    from joblib import Parallel, delayed

    settings = model.hog_settings
    labels: list[np.ndarray] = []

    def chunks() -> Iterator[np.ndarray]:
        for x, y in batches:
            labels.append(y)
            yield x

    out = np.empty((len(batches), settings.feature_dim(model.img_size)), dtype=np.float32)
    n_jobs = 1 if len(batches) < PARALLEL_MIN_IMAGES else jobs
    done = 0
    # A generator keeps only a few chunks in flight, so memory holds the features, not pixels.
    tasks = (delayed(hog_features)(x, settings) for x in chunks())
    for feats in Parallel(n_jobs=n_jobs, return_as="generator")(tasks):
        out[done : done + len(feats)] = feats
        done += len(feats)
    if not labels:
        return out[:done], np.empty(0, dtype=np.int64)
    y = np.concatenate(labels)
    # Multi-label rows (N, K) stay 0/1 per label.
    return out[:done], (y > 0.5).astype(np.uint8) if y.ndim == 2 else y.astype(np.int64)


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


def fit_hog_svm(
    model: nn.Module,
    train: Batches,
    val: Batches,
    *,
    seed: int = 0,
    c_values: Sequence[float] = C_VALUES,
) -> dict[str, Any]:
    """Fit a ``HogSVM`` in place: HOG features, ``StandardScaler``, then ``LinearSVC`` (the
    registry's one-pass ``fitter`` of ``hog_svm``; ``imagewise.train.classical.fit_one_pass``
    hands it the splits).

    Multi-label data (0/1 rows) gets one binary ``LinearSVC`` per label instead, its cost chosen
    by validation mAP (``_fit_multilabel``); the decision values are the labels' logits, whose
    sigmoids calibration and the per-label thresholds then fit.

    The SVM cost ``C`` is chosen among ``c_values`` by validation accuracy when the validation
    split has images (the candidates are fitted in parallel processes), else ``DEFAULT_C`` is
    used. The SVM is one-vs-rest with the squared hinge loss (scikit-learn's default), solved in
    the dual (``dual=True``: with HOG's ~1,300 dense features liblinear's primal solver was
    several times slower on Fashion-MNIST; BENCHMARKS.md), seeded with ``seed``. The fitted
    model is the one trained on the training split alone, so the validation split stays unseen
    for calibration.

    Args:
        model: a ``HogSVM``; its feature mean/scale buffers and ``fc`` layer are overwritten.
        train: the training images, preprocessed as at evaluation (no augmentation).
        val: the validation images (may be empty).
        seed: seed of liblinear's coordinate-descent order.
        c_values: the candidate costs.

    Returns:
        ``C``, ``candidates`` (C -> validation accuracy), ``feature_dim``, ``train_accuracy``,
        ``train_loss``, ``val_accuracy``, ``val_loss`` (NaN without a validation split; losses
        are the cross-entropy of the decision values), ``feature_seconds``, ``fit_seconds``,
        ``train_seconds`` and the HOG settings.

    Example:
        >>> model = imagewise.create_model("hog_svm", num_classes=10, in_chans=1, img_size=28)
        >>> fit_one_pass("hog_svm", model, data.train, data.val, pre)  # doctest: +SKIP
        0.89
    """

    start = time.perf_counter()
    x_train, y_train = extract_features(model, train)
    x_val, y_val = extract_features(model, val)
    feature_seconds = time.perf_counter() - start
    log.info(
        "HOG features: %d train / %d val images x %d in %.1fs",
        len(x_train), len(x_val), x_train.shape[1], feature_seconds,
    )  # fmt: skip
    if y_train.ndim == 2:
        return _fit_multilabel(model, (x_train, y_train), (x_val, y_val), start, seed, c_values)
    if len(np.unique(y_train)) < 2:
        raise UserError("hog_svm needs training images of at least two classes")
    summary = _fit_single(model, (x_train, y_train), (x_val, y_val), seed, c_values)
    summary["feature_seconds"] = round(feature_seconds, 3)
    summary["train_seconds"] = round(time.perf_counter() - start, 3)
    log.info(
        "fitted hog_svm: C %g, %d features, train accuracy %.4f, val accuracy %.4f, %.1fs",
        summary["C"], summary["feature_dim"], summary["train_accuracy"],
        summary["val_accuracy"], summary["train_seconds"],
    )  # fmt: skip
    return summary


def _fit_single(
    model: nn.Module, train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
    seed: int, c_values: Sequence[float],
) -> dict[str, Any]:  # fmt: skip
    """``fit_hog_svm`` for one class per image: scale, fit the candidate costs, keep the best
    by validation accuracy, write it into ``model``; the summary without the timings."""
    from sklearn.preprocessing import StandardScaler

    (x_train, y_train), (x_val, y_val) = train, val
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
    return {
        "C": candidates[best],
        "candidates": dict(zip(map(str, candidates), val_acc, strict=True)) if len(x_val) else {},
        "selected_by": "val_accuracy" if len(x_val) else "default C",
        "feature_dim": int(x_train.shape[1]),
        "hog": asdict(model.hog_settings),
        "svm_iterations": int(np.max(svm.n_iter_)),
        **_scores((x_train, y_train), (x_val, y_val), coef, bias),
        "feature_seconds": 0.0,  # the caller's
        "fit_seconds": round(fit_seconds, 3),
        "train_seconds": 0.0,
    }


def _scores(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    coef: np.ndarray,
    bias: np.ndarray,
) -> dict[str, Any]:
    """Image counts, accuracy and loss (cross-entropy of the decision values) of each split."""
    out: dict[str, Any] = {
        f"{name}_images": len(y) for name, (_, y) in (("train", train), ("val", val))
    }
    for name, (x, y) in (("train", train), ("val", val)):
        scores = x @ coef.T + bias
        out[f"{name}_accuracy"] = _accuracy(scores, y)
        out[f"{name}_loss"] = _cross_entropy(scores, y)
    return out


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


def _mean_average_precision(scores: np.ndarray, truth: np.ndarray) -> float:
    """Mean over the labels with a positive image of scikit-learn's average precision."""
    from sklearn.metrics import average_precision_score

    present = np.flatnonzero(truth.any(axis=0)) if len(truth) else []
    if not len(present):
        return float("nan")
    return float(np.mean([average_precision_score(truth[:, k], scores[:, k]) for k in present]))


def _label_svm(x: np.ndarray, y: np.ndarray, c: float, seed: int) -> tuple[np.ndarray, float]:
    """One label's hyperplane (D,) and bias. A label that every training image has, or none
    has, gets no hyperplane: a constant decision value of +1 / -1 (the SVM's margin)."""
    from sklearn.svm import LinearSVC

    if y.min() == y.max():
        return np.zeros(x.shape[1], dtype=np.float32), 1.0 if y[0] else -1.0
    svm = LinearSVC(C=c, dual=True, tol=SVM_TOLERANCE, max_iter=SVM_MAX_ITER, random_state=seed)
    svm.fit(x, y)
    return svm.coef_[0].astype(np.float32), float(svm.intercept_[0])


def _multilabel_scores(
    splits: dict[str, tuple[np.ndarray, np.ndarray]], coef: np.ndarray, bias: np.ndarray
) -> dict[str, Any]:
    """Per split: images; accuracy (per label, at decision value 0), loss (binary
    cross-entropy of the decision values as logits) and mAP."""
    out: dict[str, Any] = {f"{name}_images": len(y) for name, (_, y) in splits.items()}
    for name, (x, y) in splits.items():
        if not len(y):
            out.update({f"{name}_accuracy": float("nan"), f"{name}_loss": float("nan"),
                        f"{name}_map": float("nan")})  # fmt: skip
            continue
        scores = x @ coef.T + bias
        logits = torch.from_numpy(np.ascontiguousarray(scores, dtype=np.float32))
        target = torch.from_numpy(y.astype(np.float32))
        out[f"{name}_accuracy"] = float(((scores > 0) == (y > 0)).mean())
        out[f"{name}_loss"] = float(
            torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
        )
        out[f"{name}_map"] = _mean_average_precision(scores, y > 0)
    return out


def _fit_multilabel(
    model: nn.Module,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    start: float,
    seed: int,
    c_values: Sequence[float],
) -> dict[str, Any]:
    """``fit_hog_svm`` for multi-label rows: standardized HOG features, then per label a binary
    ``LinearSVC`` (one-vs-rest), one set per candidate C; the set with the best validation mAP
    is kept (``DEFAULT_C`` without validation images)."""
    from joblib import Parallel, delayed
    from sklearn.preprocessing import StandardScaler

    (x_train, y_train), (x_val, y_val) = train, val
    num_classes = int(model.num_classes)
    if not len(y_val):
        y_val = np.zeros((0, num_classes), dtype=np.uint8)
    if not y_train.any():
        raise UserError("hog_svm needs training images with at least one label")
    fit_start = time.perf_counter()
    scaler = StandardScaler(copy=False).fit(x_train)
    x_train = scaler.transform(x_train)
    if len(x_val):
        x_val = scaler.transform(x_val)
    candidates = sorted(c_values, reverse=True) if len(x_val) else [DEFAULT_C]
    jobs = _fit_jobs(x_train, len(candidates) * num_classes)
    fits = Parallel(n_jobs=jobs)(
        delayed(_label_svm)(x_train, y_train[:, k], c, seed)
        for c in candidates
        for k in range(num_classes)
    )
    sets = []
    for i in range(len(candidates)):
        chosen = fits[i * num_classes : (i + 1) * num_classes]
        weights = np.stack([w for w, _ in chosen])
        sets.append((weights, np.array([b for _, b in chosen], dtype=np.float32)))
    val_map = [_mean_average_precision(x_val @ w.T + b, y_val > 0) for w, b in sets]
    best = int(np.nanargmax(val_map)) if len(x_val) and not np.isnan(val_map).all() else 0
    coef, bias = sets[best]
    _set_weights(model, scaler, coef, bias)
    fit_seconds = time.perf_counter() - fit_start
    summary = {
        "C": candidates[best],
        "candidates": dict(zip(map(str, candidates), val_map, strict=True)) if len(x_val) else {},
        "selected_by": "val_map" if len(x_val) else "default C",
        "feature_dim": int(x_train.shape[1]),
        "hog": asdict(model.hog_settings),
        "labels": num_classes,
        **_multilabel_scores({"train": (x_train, y_train), "val": (x_val, y_val)}, coef, bias),
        "feature_seconds": round(fit_start - start, 3),
        "fit_seconds": round(fit_seconds, 3),
        "train_seconds": round(time.perf_counter() - start, 3),
    }
    log.info(
        "fitted hog_svm (one SVM per label): C %g, %d features, train mAP %.4f, val mAP %.4f, "
        "%.1fs",
        summary["C"], summary["feature_dim"], summary["train_map"], summary["val_map"],
        summary["train_seconds"],
    )  # fmt: skip
    return summary


def _set_weights(model: nn.Module, scaler: Any, coef: np.ndarray, bias: np.ndarray) -> None:
    """The fitted standardization and hyperplanes into the ``HogSVM``'s buffers and layer."""
    with torch.no_grad():
        model.feature_mean.copy_(torch.from_numpy(scaler.mean_.astype(np.float32)))
        model.feature_scale.copy_(torch.from_numpy(scaler.scale_.astype(np.float32)))
        model.fc.weight.copy_(torch.from_numpy(coef))
        model.fc.bias.copy_(torch.from_numpy(bias))


@register_model(
    "hog_svm",
    family="classical",
    description="HOG + linear SVM (fitted in one pass; FLOPs count the SVM only)",
    fit="one_pass",  # by fit_hog_svm, not by the loop
    fitter=fit_hog_svm,
    onnx_export=False,  # HOG runs in scikit-image, outside the graph
    gradcam=False,  # no spatial feature map to weigh
)
def hog_svm(num_classes: int, in_chans: int, img_size: int, pretrained: bool = False) -> nn.Module:
    """Build the HOG + linear SVM baseline; ``imagewise train`` fits it with ``fit_hog_svm``."""
    return HogSVM(num_classes, in_chans, img_size)
