"""The model's forward-and-loss as one object, so the loop does not know which loss it runs."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from imagewise.errors import UserError
from imagewise.train.compile import unwrap

LOSSES = ("cross_entropy", "mse", "margin")


def margin_loss(
    lengths: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """CapsNet margin loss (Sabour et al. 2017) on capsule lengths; ``target`` is one-hot/soft;
    ``weight`` (per image) makes it a weighted mean."""
    present = F.relu(0.9 - lengths).pow(2)
    absent = F.relu(lengths - 0.1).pow(2)
    return _mean((target * present + 0.5 * (1 - target) * absent).sum(dim=1), weight)


def _mean(values: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    return values.mean() if weight is None else (values * weight).sum() / weight.sum()


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """``--class-weight auto``: each class weighs images / (classes x its count), as
    scikit-learn's ``class_weight="balanced"``; a class absent from training weighs 1."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    present = counts > 0
    weights = np.ones(num_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return torch.tensor(weights, dtype=torch.float32)


class ClassificationTask(nn.Module):
    """Wraps a classifier with its loss: ``task(images, targets) -> (loss, logits)``.

    Targets are class indices, or class probabilities (N, C) when MixUp / CutMix made them soft.

    Args:
        model: any module mapping images to (N, num_classes) scores.
        loss: ``cross_entropy`` (with label smoothing), ``mse`` (on softmax probabilities) or
            ``margin`` (CapsNet); ``auto`` takes the model's ``default_loss``.
        num_classes: number of classes.
        label_smoothing: cross-entropy label smoothing.
    """

    def __init__(
        self, model: nn.Module, loss: str, num_classes: int, label_smoothing: float = 0.0
    ) -> None:
        super().__init__()
        if loss == "auto":  # look through DistributedDataParallel and compile wrappers
            loss = getattr(unwrap(model), "default_loss", "cross_entropy")
        if loss not in LOSSES:
            raise UserError(f"unknown loss '{loss}'; choose one of auto, {', '.join(LOSSES)}")
        self.model, self.loss_name = model, loss
        self.num_classes, self.label_smoothing = num_classes, label_smoothing
        # --class-weight auto (class_weights): per-class loss weights, in training and validation
        self.class_weight: torch.Tensor | None = None

    def _soft(self, target: torch.Tensor) -> torch.Tensor:
        if target.ndim == 2:
            return target.float()
        return F.one_hot(target, self.num_classes).float()

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, w = logits.float(), self.class_weight
        if self.loss_name == "cross_entropy":
            return F.cross_entropy(logits, target, weight=w, label_smoothing=self.label_smoothing)
        soft = self._soft(target)
        per_image = None if w is None else soft @ w.to(soft.device)
        if self.loss_name == "mse":
            return _mean((logits.softmax(dim=1) - soft).pow(2).mean(dim=1), per_image)
        return margin_loss(logits, soft, per_image)

    def forward(
        self, images: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(images)
        return self.loss(logits, target), logits
