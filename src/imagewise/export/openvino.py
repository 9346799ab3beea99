"""ONNX -> OpenVINO IR (``model.xml`` + ``model.bin``), for Intel CPUs, GPUs and NPUs.

The IR is converted from the job's ONNX graph (``ExportJob.onnx_file``) by OpenVINO's ONNX
front end, not from the PyTorch module by its PyTorch front end: the ONNX graph is the one the
``onnx`` format is verified with and is written once per export for every format that reads
it; OpenVINO's PyTorch front end traces the module with TorchScript (``torch.jit.trace``),
which PyTorch is retiring; and INT8 needs the ONNX graph anyway (below), so all three
precisions take the same road.

    float32  the float graph, weights stored as float32
    float16  the float graph, weights stored as float16 (``save_model(compress_to_fp16=True)``);
             OpenVINO's CPU plugin widens them to float32 when it compiles the model
    int8     the INT8 QDQ graph (``imagewise.export.quantize``: static, calibrated on training
             images, 7-bit weights), which OpenVINO's low-precision transformations run with
             int8 kernels; its quantization is the ONNX INT8 file's, so the two agree

NNCF, OpenVINO's own post-training quantizer, would quantize the float IR directly, but it is
a package of its own with a long dependency list (pandas, scikit-learn, pymoo, ...) and gives
nothing the QDQ graph does not: OpenVINO reads QDQ as its own FakeQuantize nodes.

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
