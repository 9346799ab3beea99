"""ONNX -> OpenVINO IR (``model.xml`` + ``model.bin``), for Intel CPUs, GPUs and NPUs.

The IR is converted from the job's ONNX graph (``ExportJob.onnx_file``) by OpenVINO's ONNX
front end, not from the PyTorch module by its PyTorch front end: the ONNX graph is the one the
``onnx`` format is verified with, its inputs and outputs already carry their names and dynamic
batch, and INT8 needs it anyway (below), so all three precisions take the same road. The
PyTorch front end saves no time: it traces with TorchScript (which PyTorch is retiring) or
``torch.export``, which took 6.6 s and 12.6 s for resnet9_tiny where the ONNX export plus its
conversion took 8.3 + 1.2 s, and its outputs are named after the traced ops.

    float32  the float graph, weights stored as float32
    float16  the float graph, weights stored as float16 (``save_model(compress_to_fp16=True)``);
             OpenVINO's CPU plugin computes in float32 on the rounded weights
    int8     the INT8 QDQ graph (``imagewise.export.quantize``: static, calibrated on training
             images, 7-bit weights), which OpenVINO reads as its own FakeQuantize nodes and runs
             with int8 kernels; its quantization is the ONNX INT8 file's (on the test run's 72
             images: the same top-1 answers, probabilities within 0.003 of each other)

NNCF, OpenVINO's own post-training quantizer, would quantize the float IR directly, but it is
a second package and a second quantizer whose settings would need their own check (its 8-bit
weights saturate the int16 pair sums of CPUs without VNNI unless its overflow fix applies);
the QDQ graph's 7-bit weights are already exact on every CPU.

The batch dimension stays dynamic. The file carries the job's metadata (classes, input contract,
temperature, ...) in its ``rt_info`` under ``imagewise`` (``<rt_info><imagewise><classes
value="..."/>``), which ``read_metadata`` reads back without PyTorch.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from imagewise.edge.openvino import RT_INFO_SECTION

if TYPE_CHECKING:
    from pathlib import Path

    import openvino as ov

    from imagewise.export.targets import ExportJob

log = logging.getLogger("imagewise")


def write(job: ExportJob, path: Path) -> None:
    """The ``openvino`` format's writer: the job's ONNX graph as IR at ``path`` (``.xml``, with
    its ``.bin`` beside it), in the job's precision, with the job's metadata in its rt_info."""
    import openvino as ov

    source = job.onnx_file("int8" if job.int8 else "float32")
    log.info("converting the ONNX graph to OpenVINO IR (%s)", job.precision)
    model = ov.convert_model(source)
    set_metadata(model, job.metadata)
    ov.save_model(model, path, compress_to_fp16=job.precision == "float16")


def set_metadata(model: ov.Model, metadata: Mapping[str, str]) -> None:
    """Every key of ``metadata`` into the OpenVINO model's rt_info, as ``imagewise/<key>``."""
    for key, value in metadata.items():
        model.set_rt_info(value, [RT_INFO_SECTION, key])


__all__ = ["set_metadata", "write"]
