"""How an exported model's file says what it is: the metadata keys ``imagewise export`` writes
and ``imagewise.load`` reads back (ONNX ``metadata_props``; the TorchScript extra file).

The reader lives here, with prediction, so that loading a model file needs nothing from the
export stage; ``imagewise.export.metadata`` builds the same map from a run's metadata.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imagewise.data.transforms import Preprocessing
from imagewise.errors import UserError

# The input the graph takes: the model's usual normalized batch, or raw pixels normalized inside.
LAYOUT_NORMALIZED = "NCHW float32 normalized"
LAYOUT_RAW = "NHWC uint8"
INT8_QUANTIZATION = "int8 static QDQ (ONNX Runtime), uint8 activations, int8 weights"

JSON_KEYS = ("classes", "img_size", "channels", "mean", "std", "temperature")
TEXT_KEYS = (
    "interpolation", "model", "imagewise_version", "input_layout", "quantization",
    "test_time_augmentation",
)  # fmt: skip
OPTIONAL_JSON_KEYS = ("quantization_settings",)  # absent from float files and older ones
EXTRA_FILE = "imagewise.json"  # the TorchScript extra file holding the same map


def parse_metadata(props: Mapping[str, str], source: str) -> dict[str, Any]:
    """The string map of an exported model -> typed values; a clear error when it is missing."""
    missing = [k for k in (*JSON_KEYS, "input_layout") if k not in props]
    if missing:
        raise UserError(
            f"'{source}' has no imagewise metadata ({', '.join(missing)} missing); "
            "give a model written by 'imagewise export RUN'"
        )
    values: dict[str, Any] = {k: props[k] for k in TEXT_KEYS if k in props}
    values.update({k: json.loads(props[k]) for k in JSON_KEYS})
    values.update({k: json.loads(props[k]) for k in OPTIONAL_JSON_KEYS if k in props})
    if values["input_layout"] not in (LAYOUT_NORMALIZED, LAYOUT_RAW):
        raise UserError(f"'{source}' has an unknown input layout '{values['input_layout']}'")
    return values


def preprocessing_of(values: Mapping[str, Any]) -> Preprocessing:
    """The ``Preprocessing`` an exported model was trained with."""
    return Preprocessing(
        img_size=int(values["img_size"]),
        channels=int(values["channels"]),
        mean=list(values["mean"]),
        std=list(values["std"]),
        interpolation=values.get("interpolation", "bilinear"),
    )


def load_torchscript(path: str | Path, device: torch.device) -> tuple[nn.Module, dict[str, str]]:
    """The traced module and its metadata map."""
    extra = {EXTRA_FILE: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    props = json.loads(extra[EXTRA_FILE]) if extra[EXTRA_FILE] else {}
    return module, props
