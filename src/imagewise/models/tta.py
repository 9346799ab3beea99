"""Test-time augmentation as a module, so every consumer of a model runs the same arithmetic.

A run trained with ``tta: true`` answers with the mean of the logits of each image and of its
mirror image. Wrapping the network (rather than looping in each caller) means ``evaluate``,
``predict``, ``serve`` and the exported ONNX / TorchScript graphs all compute exactly this.
"""

from __future__ import annotations

import torch
from torch import nn


class MirrorMean(nn.Module):
    """``(model(x) + model(flip(x))) / 2`` with the flip along the width axis (NCHW)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.model(x) + self.model(torch.flip(x, dims=[3]))) / 2


def with_tta(model: nn.Module, tta: bool) -> nn.Module:
    """``model`` as it answers at inference: wrapped in ``MirrorMean`` when ``tta`` is on."""
    # in the model's own mode: a fresh wrapper would start in training mode, and whoever
    # saves and restores the wrapper's mode (FLOP counting does) would put the model in it
    return MirrorMean(model).train(model.training) if tta else model
