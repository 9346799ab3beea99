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
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

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


def build_metadata(
    run_meta: Mapping[str, Any],
    raw_input: bool,
    int8: bool,
    quantization: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """The string map written into an exported model, from the run's ``meta.json``.

    ``quantization`` (INT8: ``Int8Settings.describe()``) says how the weights were made and on
    which CPUs they compute exactly, so a file met later still tells whether it suits a machine.
    """
    import imagewise
    from imagewise.models.tta import describe, tta_views  # the graph already averages the views

    pre = run_meta["preprocessing"]
    values: dict[str, Any] = {
        "classes": list(run_meta["classes"]),
        "img_size": int(pre["img_size"]),
        "channels": int(pre["channels"]),
        "mean": [float(v) for v in pre["mean"]],
        "std": [float(v) for v in pre["std"]],
        "temperature": float(run_meta.get("temperature", 1.0)),
        "interpolation": pre.get("interpolation", "bilinear"),
        "model": run_meta["model"]["name"],
        "imagewise_version": imagewise.__version__,
        "input_layout": LAYOUT_RAW if raw_input else LAYOUT_NORMALIZED,
        "quantization": INT8_QUANTIZATION if int8 else "none",
        "test_time_augmentation": describe(tta_views(run_meta.get("tta"))),
    }
    if int8 and quantization is not None:
        values["quantization"] = _describe_int8(quantization)
        values["quantization_settings"] = dict(quantization)
    json_keys = (*JSON_KEYS, *OPTIONAL_JSON_KEYS)
    return {
        k: json.dumps(v, ensure_ascii=False) if k in json_keys else v for k, v in values.items()
    }


def _describe_int8(settings: Mapping[str, Any]) -> str:
    """One line: 'int8 static QDQ (ONNX Runtime), uint8 activations, int8 7-bit per-channel ...'."""
    per = "per-channel" if settings.get("per_channel") else "per-tensor"
    bits = settings.get("weight_bits", 8)
    reduced = " (reduce_range)" if settings.get("reduce_range") else ""
    return f"{INT8_QUANTIZATION} {bits}-bit {per}{reduced}; safe on {settings.get('safe_on')}"


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
