"""The model's forward-and-loss as one object, so the loop does not know which loss it runs."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from imagewise.errors import UserError
from imagewise.train.compile import unwrap

LOSSES = ("cross_entropy", "mse", "margin", "bce", "asl")
# What a multi-label run can train with: a sigmoid per class (binary cross-entropy, asymmetric
# loss), or capsule lengths (the margin loss is defined per class).
MULTILABEL_LOSSES = ("bce", "asl", "margin")
# Asymmetric loss (Ridnik et al. 2021, "Asymmetric Loss For Multi-Label Classification"): the
# paper's defaults. Absent labels are down-weighted by p^4 and shifted by 0.05, present ones not.
ASL_GAMMA_NEG, ASL_GAMMA_POS, ASL_CLIP = 4.0, 0.0, 0.05


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


def asymmetric_loss(
    logits: torch.Tensor, target: torch.Tensor, pos_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Asymmetric loss (ASL, Ridnik et al. 2021) on logits and 0/1 (or soft) targets, averaged
    over images and labels like ``binary_cross_entropy_with_logits``; ``pos_weight`` scales
    the present labels' term as there. Written here: timm's ``AsymmetricLossMultiLabel``
    sums over the batch and takes no per-label weight."""
    p = torch.sigmoid(logits)
    p_neg = (p - ASL_CLIP).clamp(min=0) if ASL_CLIP > 0 else p  # probability shifting
    log_pos = F.logsigmoid(logits)
    log_neg = torch.log((1 - p_neg).clamp(min=1e-8))
    pos = target * (1 - p).pow(ASL_GAMMA_POS) * log_pos
    if pos_weight is not None:
        pos = pos * pos_weight
    neg = (1 - target) * p_neg.pow(ASL_GAMMA_NEG) * log_neg
    return -(pos + neg).mean()


def label_weights(labels: np.ndarray) -> torch.Tensor:
    """``--class-weight auto`` for multi-label rows (N, K): each label's present term weighs
    its absent images / present images (BCE's ``pos_weight``), so a rare label counts as much
    as its absence; a label never present weighs 1."""
    labels = np.asarray(labels, dtype=np.float64)
    pos = labels.sum(axis=0)
    neg = len(labels) - pos
    weights = np.where(pos > 0, neg / np.maximum(pos, 1), 1.0)
    return torch.tensor(np.maximum(weights, 1e-3), dtype=torch.float32)


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """``--class-weight auto``: each class weighs images / (classes x its count), as
    scikit-learn's ``class_weight="balanced"``; a class absent from training weighs 1.
    Multi-label rows get ``label_weights``."""
    if np.ndim(labels) == 2:
        return label_weights(labels)
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    present = counts > 0
    weights = np.ones(num_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return torch.tensor(weights, dtype=torch.float32)


class ClassificationTask(nn.Module):
    """Wraps a classifier with its loss: ``task(images, targets) -> (loss, logits)``.

    Targets are class indices, or class probabilities (N, C) when MixUp / CutMix made them soft;
    for a multi-label task 0/1 per class (N, C), soft after mixing.

    Args:
        model: any module mapping images to (N, num_classes) scores.
        loss: ``cross_entropy`` (with label smoothing), ``mse`` (on softmax probabilities) or
            ``margin`` (CapsNet); ``auto`` takes the model's ``default_loss``.
        num_classes: number of classes.
        label_smoothing: cross-entropy label smoothing (single-label only).
        multilabel: any number of labels per image: ``bce`` (the default), ``asl`` or
            ``margin``; ``class_weight`` is then BCE's per-label ``pos_weight``.
    """

    def __init__(
        self, model: nn.Module, loss: str, num_classes: int, label_smoothing: float = 0.0,
        multilabel: bool = False,
    ) -> None:  # fmt: skip
        super().__init__()
        if loss == "auto":  # look through DistributedDataParallel and compile wrappers
            loss = getattr(unwrap(model), "default_loss", "cross_entropy")
            if multilabel and loss not in MULTILABEL_LOSSES:
                loss = "bce"
        if loss not in LOSSES:
            raise UserError(f"unknown loss '{loss}'; choose one of auto, {', '.join(LOSSES)}")
        if multilabel and loss not in MULTILABEL_LOSSES:
            raise UserError(
                f"--loss {loss} gives one class per image; a multi-label run trains with "
                f"{', '.join(MULTILABEL_LOSSES)} (auto: bce)"
            )
        if not multilabel and loss in ("bce", "asl"):
            raise UserError(
                f"--loss {loss} is for multi-label data (several labels per image); this data "
                "has one class per image: use auto, cross_entropy, mse or margin"
            )
        self.model, self.loss_name, self.multilabel = model, loss, multilabel
        self.num_classes = num_classes
        self.label_smoothing = 0.0 if multilabel else label_smoothing
        # --class-weight auto (class_weights): per-class loss weights, in training and validation
        self.class_weight: torch.Tensor | None = None

    def _soft(self, target: torch.Tensor) -> torch.Tensor:
        if target.ndim == 2:
            return target.float()
        return F.one_hot(target, self.num_classes).float()

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, w = logits.float(), self.class_weight
        if self.multilabel:
            target = target.float()
            w = None if w is None else w.to(logits.device)
            if self.loss_name == "bce":
                return F.binary_cross_entropy_with_logits(logits, target, pos_weight=w)
            if self.loss_name == "asl":
                return asymmetric_loss(logits, target, w)
            return margin_loss(logits, target, None if w is None else (target * w).sum(1) + 1)
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
