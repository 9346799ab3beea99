"""How an exported model's file says what it is: the metadata keys ``imagewise export`` writes
and ``imagewise.load`` reads back (ONNX ``metadata_props``; the TorchScript extra file).

The keys and their reader are torch-free and live in the edge layer
(``imagewise.edge.metadata``, re-exported here); this module adds the TorchScript file and the
``Preprocessing`` of a file, so that loading a model file needs nothing from the export stage;
``imagewise.export.metadata`` builds the same map from a run's metadata.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imagewise.data.transforms import Preprocessing
from imagewise.edge.metadata import (
    INT8_QUANTIZATION,
    JSON_KEYS,
    LAYOUT_NORMALIZED,
    LAYOUT_RAW,
    OPTIONAL_JSON_KEYS,
    TEXT_KEYS,
    InputFormat,
    parse_metadata,
)

EXTRA_FILE = "imagewise.json"  # the TorchScript extra file holding the same map

__all__ = [
    "EXTRA_FILE",
    "INT8_QUANTIZATION",
    "JSON_KEYS",
    "LAYOUT_NORMALIZED",
    "LAYOUT_RAW",
    "OPTIONAL_JSON_KEYS",
    "TEXT_KEYS",
    "load_torchscript",
    "parse_metadata",
    "preprocessing_of",
]


def preprocessing_of(values: Mapping[str, Any]) -> Preprocessing:
    """The ``Preprocessing`` an exported model was trained with."""
    return Preprocessing(**dataclasses.asdict(InputFormat.of(values)))


def load_torchscript(path: str | Path, device: torch.device) -> tuple[nn.Module, dict[str, str]]:
    """The traced module and its metadata map."""
    extra = {EXTRA_FILE: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    props = json.loads(extra[EXTRA_FILE]) if extra[EXTRA_FILE] else {}
    return module, props
