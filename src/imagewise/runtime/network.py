"""A run folder's network: rebuilt from its metadata and loaded with its saved weights.

Training (to calibrate its best weights) and prediction (``imagewise.load``) both need it, so it
lives below them both.
"""

from __future__ import annotations

import torch
from torch import nn

from imagewise.runtime.checkpoint import load_weights
from imagewise.runtime.meta import RunMeta
from imagewise.runtime.runs import RunFolder


def load_network(folder: RunFolder, meta: RunMeta) -> nn.Module:
    """The run's model with its best weights, in eval mode and channels-last, on the CPU."""
    from imagewise.models import create_model

    spec, pre = meta.model, meta.preprocessing
    model = create_model(
        spec.name,
        num_classes=spec.num_classes,
        in_chans=pre.channels,
        img_size=pre.img_size,
        pretrained=False,
        **spec.kwargs,
    )
    load_weights(model, folder.weights)
    return model.to(memory_format=torch.channels_last).eval()
