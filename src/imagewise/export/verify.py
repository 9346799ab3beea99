"""Does the exported model answer like the PyTorch one? Measured on the run's own images.

The run's ``config.yaml`` says what data it was trained on and how it was split, so the
validation images (else test, else training) are re-opened exactly as evaluation does, decoded
at the model's size, and fed to both models. Calibration images for INT8 come from the training
split the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from imagewise.edge.spec import InputContract

if TYPE_CHECKING:
    from imagewise.edge.model import ImageModel
    from imagewise.predict.base import BaseClassifier

MIN_AGREEMENT = 0.999  # float exports: share of images whose top-1 class equals PyTorch's
MAX_INT8_ACCURACY_DROP = 0.01  # INT8, float16: accuracy lost against PyTorch (1 point)
VERIFY_IMAGES = 2000  # at most, a seeded sample of the split
CALIBRATION_IMAGES = 300


def run_images(
    run_dir: Path, pre: InputContract, classes: list[str], splits: tuple[str, ...], limit: int
) -> tuple[torch.Tensor, np.ndarray, str, str]:
    """Up to ``limit`` images of the first non-empty split among ``splits`` of the run's data.

    Returns uint8 images (N, C, img_size, img_size), labels in the run's class order, the
    split's name and the data source.
    """
    from imagewise.runtime.run_data import decode_split, run_split

    part = run_split(run_dir, classes, splits, limit, "check the export")
    images, labels = decode_split(part, classes, pre)
    return images, labels, part.name, part.source


def parity(
    reference: BaseClassifier,
    candidate: ImageModel,
    images: torch.Tensor,
    labels: np.ndarray,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Top-1 agreement, largest probability difference and both accuracies on ``images``.

    Args:
        reference: the PyTorch ``Classifier``.
        candidate: the exported model opened by its own runtime (any ``ImageModel``: ONNX
            Runtime, OpenVINO, LiteRT, ExecuTorch, TorchScript, the browser); both are fed the
            same uint8 images, the candidate through its ``scores``.
        images: uint8 (N, C, H, W) at the model's size.
        labels: the true classes (a multi-label model's 0/1 rows (N, K): its accuracy is the
            share of right label decisions).
    """
    ref, cand = [], []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        ref.append(reference.image_probabilities(chunk))
        cand.append(torch.from_numpy(np.asarray(candidate.scores(chunk.numpy())[1])))
    p_ref, p_cand = torch.cat(ref), torch.cat(cand).float()
    top_ref, top_cand = p_ref.argmax(1), p_cand.argmax(1)
    figures: dict[str, Any] = {
        "images": len(labels),
        "top1_agreement": float((top_ref == top_cand).float().mean()),
        "max_abs_probability_difference": float((p_ref - p_cand).abs().max()),
    }
    if reference.spec.multilabel:
        acc_ref, acc_cand = _label_accuracies(reference, p_ref, p_cand, labels, figures)
    else:
        y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        acc_ref = float((top_ref == y).float().mean())
        acc_cand = float((top_cand == y).float().mean())
    return {
        **figures,
        "accuracy_pytorch": acc_ref,
        "accuracy_exported": acc_cand,
        "accuracy_drop": acc_ref - acc_cand,
    }


def _label_accuracies(
    reference: BaseClassifier,
    p_ref: torch.Tensor,
    p_cand: torch.Tensor,
    labels: np.ndarray,
    figures: dict[str, Any],
) -> tuple[float, float]:
    """A multi-label model's accuracies: the share of right label decisions (labels (N, K)
    0/1, each class against its threshold). ``figures`` gains ``label_set_agreement``, the share
    of images answered the same label set: reported, not a gate, since a threshold is one
    validation image's probability and a difference of 1e-7 may move that image's set."""
    from imagewise.edge.multilabel import predicted_labels

    thresholds = reference.spec.label_thresholds()
    truth = np.asarray(labels) > 0
    on_ref = predicted_labels(p_ref.numpy(), thresholds) > 0
    on_cand = predicted_labels(p_cand.numpy(), thresholds) > 0
    figures["label_set_agreement"] = float((on_ref == on_cand).all(axis=1).mean())
    return float((on_ref == truth).mean()), float((on_cand == truth).mean())


RUNTIMES = {
    "onnx": "ONNX Runtime",
    "torchscript": "PyTorch (TorchScript)",
    "openvino": "OpenVINO",
    "tflite": "LiteRT",
    "executorch": "ExecuTorch",
    "web": "onnxruntime-web",
}


def runtime_name(fmt: str) -> str:
    """The runtime that ran a format's check, as parity.json names it."""
    return RUNTIMES.get(fmt, fmt)


def check_gates(figures: dict[str, Any], approximate: bool) -> str | None:
    """``None`` when the export passes; else the reason, in words. ``approximate`` (INT8,
    float16): at most ``MAX_INT8_ACCURACY_DROP`` of accuracy lost; float32: top-1 agreement of
    at least ``MIN_AGREEMENT``."""
    if approximate:
        drop = figures["accuracy_drop"]
        if drop > MAX_INT8_ACCURACY_DROP + 1e-9:
            return (
                f"accuracy {figures['accuracy_exported']:.2%} is {drop * 100:.2f} points "
                f"below PyTorch's {figures['accuracy_pytorch']:.2%} (allowed: "
                f"{MAX_INT8_ACCURACY_DROP * 100:g})"
            )
        return None
    agreement = figures["top1_agreement"]
    if agreement < MIN_AGREEMENT:
        return (
            f"top-1 agreement with PyTorch is {agreement:.2%}, below {MIN_AGREEMENT:.1%} "
            f"(largest probability difference {figures['max_abs_probability_difference']:.3g})"
        )
    return None
