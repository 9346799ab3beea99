"""How an exported model's file says what it is: the metadata keys ``imagewise export`` writes
(ONNX ``metadata_props``; the TorchScript extra file) and the reader that types them.

Edge layer (numpy only): an ONNX file is read without PyTorch. ``imagewise.predict.file_meta``
re-exports these names and adds the TorchScript part.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from imagewise.edge.images import RESAMPLING
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


# Bounds a file's metadata must keep (the run folder's meta.json has the same): a size outside
# them is a damaged or hostile file, not a model (img_size 100000 made predict allocate 9.8 GB).
IMG_SIZE_RANGE = (8, 1024)
MAX_CLASSES = 100_000
INTERPOLATIONS = tuple(RESAMPLING)


def parse_metadata(props: Mapping[str, str], source: str) -> dict[str, Any]:
    """The string map of an exported model -> typed, validated values.

    Raises:
        UserError: in one line naming the key: the metadata is missing, is not JSON, or holds
            a value no model can have (a size out of range, a mean of other length than the
            channels, a std of zero, ...). Whether it fits the graph is ``check_graph``'s.
    """
    missing = [k for k in (*JSON_KEYS, "input_layout") if k not in props]
    if missing:
        raise UserError(
            f"'{source}' has no imagewise metadata ({', '.join(missing)} missing); "
            "give a model written by 'imagewise export RUN'"
        )
    values: dict[str, Any] = {k: props[k] for k in TEXT_KEYS if k in props}
    for key in (*JSON_KEYS, *(k for k in OPTIONAL_JSON_KEYS if k in props)):
        try:
            values[key] = json.loads(props[key])
        except (ValueError, RecursionError):
            raise _bad(source, key, "is not valid JSON") from None
    if values["input_layout"] not in (LAYOUT_NORMALIZED, LAYOUT_RAW):
        raise UserError(f"'{source}' has an unknown input layout '{values['input_layout']}'")
    _validate(values, source)
    return values


def _bad(source: str, key: str, why: str) -> UserError:
    return UserError(
        f"'{source}' has broken metadata: {key} {why}; re-export it with 'imagewise export RUN'"
    )


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _validate(v: dict[str, Any], source: str) -> None:
    """Each value's type and range (see ``parse_metadata``)."""
    classes = v["classes"]
    if not isinstance(classes, list) or not classes or len(classes) > MAX_CLASSES:
        raise _bad(source, "classes", f"must be a list of 1 to {MAX_CLASSES:,} names")
    if not all(isinstance(c, str) for c in classes):
        raise _bad(source, "classes", "must hold names (text)")
    low, high = IMG_SIZE_RANGE
    size = v["img_size"]
    if not isinstance(size, int) or isinstance(size, bool) or not low <= size <= high:
        raise _bad(source, "img_size", f"is {size!r}; it must be a whole number {low}-{high}")
    if v["channels"] not in (1, 3) or isinstance(v["channels"], bool):
        raise _bad(source, "channels", f"is {v['channels']!r}; it must be 1 or 3")
    for key in ("mean", "std"):
        values = v[key]
        if not isinstance(values, list) or len(values) != v["channels"]:
            raise _bad(source, key, f"must hold {v['channels']} number(s), one per channel")
        if not all(_number(x) for x in values):
            raise _bad(source, key, "must hold finite numbers")
    if not all(x > 0 for x in v["std"]):
        raise _bad(source, "std", "must be above 0")
    if not _number(v["temperature"]) or v["temperature"] <= 0:
        raise _bad(source, "temperature", f"is {v['temperature']!r}; it must be above 0")
    if v.get("interpolation", "bilinear") not in INTERPOLATIONS:
        raise _bad(source, "interpolation", f"must be one of {', '.join(INTERPOLATIONS)}")


def check_graph(
    values: Mapping[str, Any],
    inputs: list[tuple[str, str, list[Any]]],
    outputs: dict[str, list[Any]],
    source: str,
) -> None:
    """The metadata against the graph itself: the input's element type and layout, its
    channels and size, and the outputs' width against the class names. Dimensions the graph
    leaves open (named, such as the batch) are not checked.

    Args:
        values: ``parse_metadata``'s result.
        inputs: (name, element type, shape) of each graph input, as ONNX Runtime gives them
            (``tensor(float)``, ``[ 'batch', 3, 28, 28 ]``).
        outputs: output name -> shape.
        source: the file, for the message.

    Raises:
        UserError: in one line naming what disagrees.
    """
    if len(inputs) != 1:
        raise _bad(source, "input_layout", f"says one input, the graph has {len(inputs)}")
    _, kind, shape = inputs[0]
    raw = values["input_layout"] == LAYOUT_RAW
    want_kind = "tensor(uint8)" if raw else "tensor(float)"
    if kind != want_kind:
        raise _bad(source, "input_layout", f"says {want_kind}, the graph takes {kind}")
    size, channels = values["img_size"], values["channels"]
    want = [None, size, size, channels] if raw else [None, channels, size, size]
    if len(shape) != 4 or any(
        isinstance(have, int) and w is not None and have != w
        for have, w in zip(shape, want, strict=True)
    ):
        layout = "NHWC" if raw else "NCHW"
        raise _bad(
            source, "img_size/channels",
            f"describe a {layout} input of {want[1:]} but the graph's input is {shape}",
        )  # fmt: skip
    for name in ("logits", "probabilities"):
        if name not in outputs:
            raise _bad(source, "outputs", f"lack '{name}' (the graph has {sorted(outputs)})")
        width = outputs[name][-1] if outputs[name] else None
        if isinstance(width, int) and width != len(values["classes"]):
            raise _bad(
                source, "classes",
                f"names {len(values['classes'])} classes but the graph answers {width}",
            )  # fmt: skip


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
