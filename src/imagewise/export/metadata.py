"""What an exported model carries besides its graph: enough to use it without the run folder.

ONNX files keep it in ``metadata_props`` (string keys and values), TorchScript files in an
extra file ``imagewise.json`` holding the same string map. Numbers and lists are JSON, names are
plain strings, so any ONNX consumer can read them::

    classes  ["T-shirt/top", ...]      img_size  28      channels  1
    mean     [0.2851]                  std       [0.353]  interpolation  bilinear
    temperature  1.07                  model  resnet9_tiny   imagewise_version  0.1.0
    input_layout  NCHW float32 normalized | NHWC uint8      quantization  none | int8 ...
    test_time_augmentation  none | mirror mean (in the graph) | mean of 10 views: mirror, ...
    quantization_settings  INT8 files only: {"weight_bits": 7, "reduce_range": true, ...,
                           "safe_on": "every CPU: ..."}  (``Int8Settings.describe()``)
    unknown  runs with a fitted --min-confidence auto only: {"target_precision": 0.95,
             "min_confidence": 0.61, "precision": 0.95, "coverage": 0.96, ...}
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from imagewise.data.transforms import Preprocessing
from imagewise.edge.unknown import METADATA_KEY
from imagewise.predict.file_meta import (
    INT8_QUANTIZATION,
    JSON_KEYS,
    LAYOUT_NORMALIZED,
    LAYOUT_RAW,
    OPTIONAL_JSON_KEYS,
)


def build_metadata(
    model: str,
    classes: Sequence[str],
    pre: Preprocessing,
    temperature: float,
    tta: Mapping[str, Any],
    raw_input: bool,
    int8: bool,
    quantization: Mapping[str, Any] | None = None,
    unknown: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """The string map written into an exported model: what a user of the file needs.

    ``tta``: the run's test-time views (already averaged inside the graph; recorded so the file
    says so). ``quantization`` (INT8: ``Int8Settings.describe()``) says how the weights were made
    and on which CPUs they compute exactly, so a file met later still tells whether it suits a
    machine. ``unknown``: the run's fitted ``--min-confidence auto`` threshold
    (``imagewise.predict.unknown.fitted_unknown``), so ``auto`` works on the file too.
    """
    from imagewise.runtime.tta import describe
    from imagewise.version import __version__

    values: dict[str, Any] = {
        "classes": list(classes),
        "img_size": int(pre.img_size),
        "channels": int(pre.channels),
        "mean": [float(v) for v in pre.mean],
        "std": [float(v) for v in pre.std],
        "temperature": float(temperature),
        "interpolation": pre.interpolation,
        "model": model,
        "imagewise_version": __version__,
        "input_layout": LAYOUT_RAW if raw_input else LAYOUT_NORMALIZED,
        "quantization": INT8_QUANTIZATION if int8 else "none",
        "test_time_augmentation": describe(dict(tta)),
    }
    if int8 and quantization is not None:
        values["quantization"] = _describe_int8(quantization)
        values["quantization_settings"] = dict(quantization)
    if unknown is not None:
        values[METADATA_KEY] = dict(unknown)
    json_keys = (*JSON_KEYS, *OPTIONAL_JSON_KEYS, METADATA_KEY)
    return {
        k: json.dumps(v, ensure_ascii=False) if k in json_keys else v for k, v in values.items()
    }


def _describe_int8(settings: Mapping[str, Any]) -> str:
    """One line: 'int8 static QDQ (ONNX Runtime), uint8 activations, int8 7-bit per-channel ...'."""
    per = "per-channel" if settings.get("per_channel") else "per-tensor"
    bits = settings.get("weight_bits", 8)
    reduced = " (reduce_range)" if settings.get("reduce_range") else ""
    return f"{INT8_QUANTIZATION} {bits}-bit {per}{reduced}; safe on {settings.get('safe_on')}"
