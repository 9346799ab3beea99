"""The TorchScript side of an exported model's file: the traced module and the string map it
carries in an extra file, the same map an ONNX file keeps in ``metadata_props``.

The map is the model's ``ModelSpec`` (``imagewise.edge.spec``, torch-free), written by
``imagewise export`` and read back with ``ModelSpec.from_metadata``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

EXTRA_FILE = "imagewise.json"  # the TorchScript extra file holding the map

__all__ = ["EXTRA_FILE", "load_torchscript"]


def load_torchscript(path: str | Path, device: torch.device) -> tuple[nn.Module, dict[str, str]]:
    """The traced module and its metadata map."""
    extra = {EXTRA_FILE: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    props = json.loads(extra[EXTRA_FILE]) if extra[EXTRA_FILE] else {}
    return module, props
