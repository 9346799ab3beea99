"""The module every exported file computes: (raw pixels ->) normalized batch -> (logits,
probabilities), whatever the format (ONNX, TorchScript-free formats, OpenVINO, LiteRT, ...)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from imagewise.edge.spec import InputContract


class ExportModule(nn.Module):
    """The network as exported: (raw pixels ->) normalized batch -> (logits, probabilities):
    the softmax over the temperature, or a multi-label model's sigmoid per class."""

    def __init__(
        self, model: nn.Module, pre: InputContract, temperature: float, raw_input: bool,
        multilabel: bool = False,
    ) -> None:  # fmt: skip
        super().__init__()
        self.model, self.raw_input, self.temperature = model, raw_input, float(temperature)
        self.multilabel = multilabel
        self.register_buffer("mean", torch.tensor(pre.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(pre.std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.raw_input:
            x = (x.permute(0, 3, 1, 2).to(torch.float32) / 255.0 - self.mean) / self.std
        logits = self.model(x)
        if self.multilabel:
            return logits, torch.sigmoid(logits / self.temperature)
        return logits, torch.softmax(logits / self.temperature, dim=1)


def example_input(pre: InputContract, raw_input: bool, batch: int = 2) -> torch.Tensor:
    """A batch of the graph's input; batch 2, so the exporter does not specialize on 1."""
    s, c = pre.img_size, pre.channels
    if raw_input:
        return torch.randint(0, 256, (batch, s, s, c), dtype=torch.uint8)
    return torch.randn(batch, c, s, s)


def graph_batches(
    pre: InputContract, images: np.ndarray, raw_input: bool, size: int = 32
) -> list[np.ndarray]:
    """uint8 images (N, C, H, W) in the graph's input layout (normalized NCHW floats, or uint8
    NHWC for raw input), in batches of ``size``: what INT8 calibration feeds the graph."""
    from imagewise.data.transforms import normalize

    batches = []
    for chunk in torch.from_numpy(images).split(size):
        x = chunk.permute(0, 2, 3, 1).contiguous() if raw_input else normalize(pre, chunk)
        batches.append(x.numpy())
    return batches
