"""How an exported model's file says what it is: the metadata keys ``imagewise export`` writes
(ONNX ``metadata_props``; the TorchScript extra file) and the reader that types them.

Edge layer (numpy only): an ONNX file is read without PyTorch. ``imagewise.predict.file_meta``
re-exports these names and adds the TorchScript part.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

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
# absent from float files and older ones; "unknown": a fitted --min-confidence auto (edge.unknown)
OPTIONAL_JSON_KEYS = ("quantization_settings", "unknown")


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


@dataclass
class InputFormat:
    """What an exported model expects of its input (the fields of ``data.Preprocessing``), with
    the normalization in numpy: ``(pixels / 255 - mean) / std`` in float32, as PyTorch does it."""

    img_size: int
    channels: int
    mean: list[float]
    std: list[float]
    interpolation: str = "bilinear"

    @classmethod
    def of(cls, values: Mapping[str, Any]) -> InputFormat:
        """The input format recorded in a parsed metadata map (``parse_metadata``)."""
        return cls(
            img_size=int(values["img_size"]),
            channels=int(values["channels"]),
            mean=[float(v) for v in values["mean"]],
            std=[float(v) for v in values["std"]],
            interpolation=values.get("interpolation", "bilinear"),
        )

    def normalize(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, C, H, W) at the model's size -> standardized float32 (N, C, H, W)."""
        mean = np.asarray(self.mean, np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(self.std, np.float32).reshape(1, -1, 1, 1)
        x = images.astype(np.float32) / np.float32(255.0)
        x -= mean
        x /= std
        return x
