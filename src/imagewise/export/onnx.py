"""PyTorch -> ONNX: the model plus its temperature softmax, optionally its normalization.

The graph has one input ``input`` with a dynamic batch axis and two outputs: ``logits`` and
``probabilities`` (``softmax(logits / temperature)``), so a consumer needs nothing but the file.
With ``raw_input`` the input is uint8 NHWC pixels already at the model's size (what image
libraries hand over), and the cast, ``/ 255``, ``(x - mean) / std`` and the transpose to NCHW
happen inside the graph, with the same arithmetic as ``InputContract.normalize``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from torch import nn

from imagewise.edge.spec import MULTILABEL, InputContract
from imagewise.export.graph import ExportModule, example_input
from imagewise.runtime.logs import quiet_loggers

if TYPE_CHECKING:
    from pathlib import Path

    import onnx

    from imagewise.export.targets import ExportJob

log = logging.getLogger("imagewise")

OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAMES = ("logits", "probabilities")


def to_onnx(
    model: nn.Module,
    pre: InputContract,
    temperature: float,
    raw_input: bool,
    metadata: Mapping[str, str],
) -> onnx.ModelProto:
    """Export ``model`` (eval mode, CPU) to an ONNX model with ``metadata`` in metadata_props.

    The torch.export-based ("dynamo") exporter is tried first: it is the default since torch 2.9
    (the TorchScript-based one is deprecated), it captures every built-in model at every size
    (the old one cannot export LeNet-5's adaptive pooling at 32 px) and it folds BatchNorm into
    the convolution it follows (a batch norm after a pool, as in resnet9p_*, stays its own op).
    Its graphs are read by ONNX Runtime and OpenCV's dnn module alike. A model it cannot
    capture (data-dependent Python control flow in some timm models) falls back to the
    TorchScript-based exporter.
    """
    import onnx

    module = ExportModule(
        model.to(memory_format=torch.contiguous_format), pre, temperature, raw_input,
        multilabel=metadata.get("task") == MULTILABEL,
    )  # fmt: skip
    module = module.eval()
    x = example_input(pre, raw_input)
    try:
        proto = _dynamo_export(module, x)
    except Exception as exc:  # the exporter raises many types; the fallback decides
        log.info("torch.export could not capture the model (%s); using the TorchScript exporter",
                 str(exc).splitlines()[0][:200])  # fmt: skip
        proto = _torchscript_export(module, x)
    onnx.checker.check_model(proto)
    proto.producer_name = "imagewise"
    set_metadata(proto, metadata)
    return proto


def set_metadata(proto: onnx.ModelProto, metadata: Mapping[str, str]) -> None:
    """Replace the model's metadata_props with ``metadata``."""
    del proto.metadata_props[:]
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)


def _dynamo_export(module: nn.Module, x: torch.Tensor) -> onnx.ModelProto:
    batch = torch.export.Dim("batch", min=1)
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
        quiet_loggers("onnxscript", "onnx_ir", "torch.onnx"),
    ):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module, (x,), None, dynamo=True, verbose=False, opset_version=OPSET,
            input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
            dynamic_shapes=({0: batch},), external_data=False,
        )  # fmt: skip
    assert program is not None
    return program.model_proto


def _torchscript_export(module: nn.Module, x: torch.Tensor) -> onnx.ModelProto:
    import onnx

    buf = io.BytesIO()
    axes = {name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (x,), buf, dynamo=False, opset_version=OPSET, do_constant_folding=True,
            input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES), dynamic_axes=axes,
        )  # fmt: skip
    return onnx.load_from_string(buf.getvalue())


def write(job: ExportJob, path: Path) -> None:
    """The ``onnx`` format's writer: the job's graph at ``path`` in its precision."""
    write_graph(job, path, job.precision)


def write_graph(job: ExportJob, path: Path, precision: str = "float32") -> None:
    """The float graph at ``path``, or its INT8 version calibrated on training images (static
    QDQ, 7-bit weights: exact on every CPU; ``imagewise.export.quantize``)."""
    import onnx

    pre, reference = job.reference.preprocessing, job.reference
    log.info("exporting %s to ONNX (opset %d)", job.metadata["model"], OPSET)
    proto = to_onnx(job.module, pre, reference.temperature, job.raw_input, job.metadata)
    if precision != "int8":
        onnx.save(proto, str(path))
        return
    from imagewise.export.quantize import PORTABLE, quantize_int8

    fp32 = path.with_name(f"{path.stem}.float.onnx")
    onnx.save(proto, str(fp32))
    batches = job.calibration_batches()
    log.info("quantizing to INT8 (7-bit weights: exact on every CPU), calibrated on %d "
             "training images", sum(len(b) for b in batches))  # fmt: skip
    quantize_int8(fp32, path, batches, INPUT_NAME, PORTABLE)
    fp32.unlink()
    quantized = onnx.load(str(path))
    set_metadata(quantized, job.metadata)  # the quantizer does not promise to carry it over
    onnx.save(quantized, str(path))
