"""How an exported model's file says what it is, and the check of that against its graph.

``imagewise export`` writes the model's ``ModelSpec`` (``imagewise.edge.spec``) into the file
(ONNX ``metadata_props``; the TorchScript extra file) with a few facts about the file itself
(``imagewise_version``, ``quantization``, ``quantization_settings``, ``test_time_augmentation``);
``ModelSpec.from_metadata`` reads and validates it, and ``check_graph`` holds it against the
graph's own inputs and outputs.

Edge layer (numpy only): an ONNX file is read without PyTorch.
"""

from __future__ import annotations

from typing import Any

from imagewise.edge.spec import (
    JSON_KEYS,
    LAYOUT_NHWC,
    LAYOUT_NORMALIZED,
    LAYOUT_RAW,
    ModelSpec,
    broken_metadata,
)

INT8_QUANTIZATION = "int8 static QDQ (ONNX Runtime), uint8 activations, int8 weights"

__all__ = ["INT8_QUANTIZATION", "JSON_KEYS", "LAYOUT_NORMALIZED", "LAYOUT_RAW", "check_graph"]


def check_graph(
    spec: ModelSpec,
    inputs: list[tuple[str, str, list[Any]]],
    outputs: dict[str, list[Any]],
    source: str,
) -> None:
    """The metadata against the graph itself: the input's element type and layout, its
    channels and size, and the outputs' width against the class names. Dimensions the graph
    leaves open (named, such as the batch) are not checked.

    Args:
        spec: the file's spec (``ModelSpec.from_metadata``).
        inputs: (name, element type, shape) of each graph input, as ONNX Runtime gives them
            (``tensor(float)``, ``[ 'batch', 3, 28, 28 ]``).
        outputs: output name -> shape.
        source: the file, for the message.

    Raises:
        UserError: in one line naming what disagrees.
    """
    if len(inputs) != 1:
        raise broken_metadata(
            source, "input_layout", f"says one input, the graph has {len(inputs)}"
        )
    _, kind, shape = inputs[0]
    raw = spec.input.layout == LAYOUT_RAW
    channels_last = raw or spec.input.layout == LAYOUT_NHWC
    want_kind = "tensor(uint8)" if raw else "tensor(float)"
    if kind != want_kind:
        raise broken_metadata(source, "input_layout", f"says {want_kind}, the graph takes {kind}")
    size, channels = spec.input.img_size, spec.input.channels
    want = [None, size, size, channels] if channels_last else [None, channels, size, size]
    if len(shape) != 4 or any(
        isinstance(have, int) and w is not None and have != w
        for have, w in zip(shape, want, strict=True)
    ):
        layout = "NHWC" if channels_last else "NCHW"
        raise broken_metadata(
            source, "img_size/channels",
            f"describe a {layout} input of {want[1:]} but the graph's input is {shape}",
        )  # fmt: skip
    for name in ("logits", "probabilities"):
        if name not in outputs:
            raise broken_metadata(
                source, "outputs", f"lack '{name}' (the graph has {sorted(outputs)})"
            )
        width = outputs[name][-1] if outputs[name] else None
        if isinstance(width, int) and width != len(spec.classes):
            raise broken_metadata(
                source, "classes",
                f"names {len(spec.classes)} classes but the graph answers {width}",
            )  # fmt: skip
    counts = (spec.conformal or {}).get("class_counts")
    if counts is not None and len(counts) != len(spec.classes):
        raise broken_metadata(
            source, "conformal", f"counts {len(counts)} classes; the file has {len(spec.classes)}"
        )
