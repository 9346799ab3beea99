"""A run folder's network: rebuilt from its metadata and loaded with its saved weights.

Training (to calibrate its best weights) and prediction (``imagewise.load``) both need it, so it
lives below them both.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from imagewise.data.transforms import Preprocessing
from imagewise.runtime.checkpoint import load_weights
from imagewise.runtime.runs import RunFolder


def load_network(folder: RunFolder, meta: dict[str, Any]) -> nn.Module:
    """The run's model with its best weights, in eval mode and channels-last, on the CPU."""
    from imagewise.models import create_model

    pre = Preprocessing(**meta["preprocessing"])
    spec = meta["model"]
    model = create_model(
        spec["name"],
        num_classes=spec["num_classes"],
        in_chans=pre.channels,
        img_size=pre.img_size,
        pretrained=False,
        **spec.get("kwargs", {}),
    )
    load_weights(model, folder.weights)
    return model.to(memory_format=torch.channels_last).eval()


def run_tta(folder: RunFolder, meta: dict[str, Any]) -> object:
    """The run's test-time augmentation entry (``meta.json``, else its config's ``tta``)."""
    if "tta" in meta:
        return meta["tta"]
    if not folder.config.is_file():  # runs written before meta.json carried it
        return False
    from imagewise.config import load_config_file

    return load_config_file(folder.config).train.tta  # then, true meant the mirror alone
