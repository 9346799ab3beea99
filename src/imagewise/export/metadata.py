"""What an exported model carries besides its graph: enough to use it without the run folder.

ONNX files keep it in ``metadata_props`` (string keys and values), TorchScript files in an
extra file ``imagewise.json`` holding the same string map. It is the run's ``ModelSpec``
(``imagewise.edge.spec.ModelSpec.to_metadata``: numbers and lists as JSON, names as plain
strings, so any ONNX consumer can read them) and a few facts about the file::

    classes  ["T-shirt/top", ...]      img_size  28      channels  1     crop_pct  1.0
    mean     [0.2851]                  std       [0.353]  interpolation  bilinear
    temperature  1.07                  model  resnet9_tiny   model_format  imagewise-model/1
    capabilities  {"fit": "gradient", "onnx_export": true, "gradcam": true}
    input_layout  NCHW float32 normalized | NHWC uint8      quantization  none | int8 ...
    imagewise_version  0.1.0
    test_time_augmentation  none | mirror mean (in the graph) | mean of 10 views: mirror, ...
    quantization_settings  INT8 files only: {"weight_bits": 7, "reduce_range": true, ...,
                           "safe_on": "every CPU: ..."}  (``Int8Settings.describe()``)
    unknown  runs with a fitted --min-confidence auto only: {"target_precision": 0.95,
             "min_confidence": 0.61, "precision": 0.95, "coverage": 0.96, ...}
    drift    the run's drift reference (``imagewise.predict.drift.fitted_drift``): {"format":
             "imagewise-drift/1", "ood_threshold": -6.1, "ood_above": 300, ...}
    conformal  the run's --coverage thresholds (RUN/conformal.json; fitted at export when
               absent): {"score": "raps", "randomized": true, "thresholds": {"0.9": 0.87,
               ...}, "class_thresholds": {"0.9": [...], ...}, "class_counts": [...], ...}
    model_card  runs with a card only: the text of RUN/MODEL_CARD.md (``imagewise card``)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from imagewise.edge.metadata import INT8_QUANTIZATION
from imagewise.edge.spec import LAYOUT_NORMALIZED, LAYOUT_RAW, ModelSpec


def file_spec(
    spec: ModelSpec,
    raw_input: bool,
    unknown: Mapping[str, Any] | None = None,
    drift: Mapping[str, Any] | None = None,
    conformal: Mapping[str, Any] | None = None,
) -> ModelSpec:
    """The spec an exported file carries: the run's, with the file's input layout, its fitted
    ``unknown`` threshold (``imagewise.predict.unknown.fitted_unknown``), its drift reference
    (``imagewise.predict.drift.fitted_drift``), its conformal thresholds
    (``imagewise.predict.conformal.fitted_conformal``), and no test-time views left to apply (the
    graph averages them)."""
    layout = LAYOUT_RAW if raw_input else LAYOUT_NORMALIZED
    return replace(
        spec,
        input=replace(spec.input, layout=layout),
        tta={},
        unknown=None if unknown is None else dict(unknown),
        drift=None if drift is None else dict(drift),
        conformal=None if conformal is None else dict(conformal),
    )


def build_metadata(
    spec: ModelSpec,
    tta: Mapping[str, Any],
    int8: bool,
    quantization: Mapping[str, Any] | None = None,
    model_card: str | None = None,
) -> dict[str, str]:
    """The string map written into an exported model: its spec (``file_spec``) and what a
    user of the file needs to know about it.

    ``tta``: the run's test-time views (already averaged inside the graph; recorded so the file
    says so). ``quantization`` (INT8: ``Int8Settings.describe()``) says how the weights were made
    and on which CPUs they compute exactly, so a file met later still tells whether it suits a
    machine. ``model_card``: the run's MODEL_CARD.md, so the file keeps its evidence with it.
    """
    from imagewise.runtime.tta import describe
    from imagewise.version import __version__

    values = spec.to_metadata()
    values.update(
        imagewise_version=__version__,
        quantization=INT8_QUANTIZATION if int8 else "none",
        test_time_augmentation=describe(dict(tta)),
    )
    if int8 and quantization is not None:
        values["quantization"] = _describe_int8(quantization)
        values["quantization_settings"] = json.dumps(dict(quantization), ensure_ascii=False)
    if model_card is not None:
        values["model_card"] = model_card
    return values


def _describe_int8(settings: Mapping[str, Any]) -> str:
    """One line: 'int8 static QDQ (ONNX Runtime), uint8 activations, int8 7-bit per-channel ...'."""
    per = "per-channel" if settings.get("per_channel") else "per-tensor"
    bits = settings.get("weight_bits", 8)
    reduced = " (reduce_range)" if settings.get("reduce_range") else ""
    return f"{INT8_QUANTIZATION} {bits}-bit {per}{reduced}; safe on {settings.get('safe_on')}"
