"""PyTorch -> ExecuTorch (``.pte``), delegated to XNNPACK: the CPU runtime of Android, iOS and
Linux devices.

The job's graph (normalized NCHW float batch -> ``logits``, ``probabilities``) is captured with
``torch.export`` with a dynamic batch axis of 1 to ``MAX_BATCH`` images, lowered with
``to_edge_transform_and_lower`` and the XNNPACK partitioner (convolutions, matrix products,
pooling, additions and the softmax run in XNNPACK's kernels; what XNNPACK lacks, such as
resnet9's global max pool once decomposed to ``amax``, in ExecuTorch's portable kernels), and
serialized with ``to_executorch``. ExecuTorch plans a method's memory for its largest input,
so the batch's upper bound sets what a device allocates (a phone answers one image at a time;
64 is for throughput); the runtime (``imagewise.edge.executorch``) splits larger batches.

INT8: PT2E static quantization with ExecuTorch's own ``XNNPACKQuantizer`` (int8 activations
with a zero point, int8 weights symmetric with one scale per output channel), calibrated on the
run's training images, then lowered to XNNPACK's integer kernels. The weights keep all 8 bits:
XNNPACK's x86 kernels sign-extend int8 to int16 before multiplying (or use VNNI), with no
saturating u8 x s8 pair sums, which is why ONNX Runtime's files need 7-bit weights
(``export.quantize``). The parity check measures it on the exporting CPU.

The metadata (the job's string map: classes, input contract, temperature, ...) lives in the
program itself: a constant method ``imagewise_metadata`` returns it as a uint8 tensor of its
UTF-8 JSON, which an app reads without running the network (``Module::execute(
"imagewise_metadata")`` in C++, ``module.execute(...)[0].toTensor()`` on Android, the Python
runtime here). A tensor rather than a string constant: every ExecuTorch runtime returns
tensors, and not all return strings (the torch-free executorch-numpy-runtime refuses them). No
sidecar file can then be lost on the way.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from imagewise.runtime.logs import quiet_loggers

if TYPE_CHECKING:
    from imagewise.export.targets import ExportJob

log = logging.getLogger("imagewise")

METADATA_METHOD = "imagewise_metadata"  # the constant method returning the metadata (JSON bytes)
MAX_BATCH = 64  # the dynamic batch axis' upper bound, for which ExecuTorch plans memory
INT8_QUANTIZATION = (
    "int8 static PT2E (ExecuTorch XNNPACKQuantizer), int8 activations, "
    "int8 weights symmetric per-channel"
)
INT8_SETTINGS = {
    "quantizer": "executorch XNNPACKQuantizer",
    "scheme": "static",
    "activation_type": "int8",
    "weight_type": "int8",
    "weight_bits": 8,
    "per_channel": True,
    "symmetric_weights": True,
    "safe_on": "every CPU: XNNPACK's int8 kernels have no saturating int16 pair sums",
}


def write(job: ExportJob, path: Path) -> None:
    """The ``executorch`` format's writer: the job's graph as a ``.pte`` at ``path`` (float32,
    or INT8 calibrated on the run's training images), its metadata inside."""
    if job.int8:
        job.metadata.update(
            quantization=INT8_QUANTIZATION, quantization_settings=json.dumps(INT8_SETTINGS)
        )
    # XNNPACK's layout pass expects NCHW weights; the run's network may be channels-last.
    job.module.to(memory_format=torch.contiguous_format)
    path.write_bytes(to_pte(job.graph, job.example_input(), job.metadata, _calibration(job)))


def _calibration(job: ExportJob) -> list[torch.Tensor] | None:
    if not job.int8:
        return None
    batches = job.calibration_batches()
    log.info("quantizing to INT8 for XNNPACK, calibrated on %d training images",
             sum(len(b) for b in batches))  # fmt: skip
    return [torch.from_numpy(b) for b in batches]


def to_pte(
    graph: torch.nn.Module,
    example: torch.Tensor,
    metadata: Mapping[str, str],
    calibration: list[torch.Tensor] | None = None,
) -> bytes:
    """The ``.pte`` program of ``graph`` (eval mode, CPU) delegated to XNNPACK, with
    ``metadata`` as the constant method ``imagewise_metadata``.

    Args:
        graph: input -> (logits, probabilities).
        example: a batch of the input (batch 2, so the batch axis is not specialized to 1).
        metadata: the string map the file carries.
        calibration: INT8: batches of the input to calibrate the activations' ranges on;
            None: float32.
    """
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with quiet_loggers("torch", "executorch"), torch.no_grad():
        program = _core_aten(torch.export.export(graph, (example,), dynamic_shapes=({0: batch},)))
        if calibration is not None:
            program = torch.export.export(
                _quantized(program, calibration), (example,), dynamic_shapes=({0: batch},)
            )
        with _batch_kept(program):
            edge = to_edge_transform_and_lower(
                program,
                partitioner=[XnnpackPartitioner()],
                constant_methods={METADATA_METHOD: metadata_tensor(metadata)},
            )
            return bytes(edge.to_executorch().buffer)


def metadata_tensor(metadata: Mapping[str, str]) -> torch.Tensor:
    """``metadata`` as the program carries it: the UTF-8 bytes of its JSON, a uint8 tensor."""
    text = json.dumps(dict(metadata), ensure_ascii=False).encode()
    return torch.frombuffer(bytearray(text), dtype=torch.uint8)


def _batch_kept(program: Any) -> Any:
    """A context in which lowering cannot narrow the batch axis' range.

    XNNPACK's layout pass re-runs each convolution on symbolic shapes, and PyTorch's
    convolution picks its eager backend there (NNPACK only from 16 images up), which records
    the guard ``batch < 16`` at the example's batch of 2: the range becomes 1-15 and ExecuTorch
    plans (and then refuses) every batch above 15. Guards are suppressed while lowering, so the
    range stays the declared 1-``MAX_BATCH``; the backend choice it stands for concerns eager
    PyTorch only.
    """
    for node in program.graph.nodes:
        value = node.meta.get("val")
        if node.op == "placeholder" and isinstance(value, torch.Tensor):
            for size in value.shape:
                if isinstance(size, torch.SymInt):
                    return size.node.shape_env.suppress_guards()
    return contextlib.nullcontext()


def _core_aten(program: Any) -> Any:
    """``program`` with the operators ExecuTorch has no kernel for decomposed by PyTorch's own
    decompositions: ``adaptive_max_pool2d`` (resnet9's global max pool) is not in the core
    ATen opset, and becomes ``amax`` over the spatial axes."""
    from torch._decomp import decomposition_table

    ops = [torch.ops.aten.adaptive_max_pool2d.default]
    return program.run_decompositions({op: decomposition_table[op] for op in ops})


def _quantized(program: Any, calibration: list[torch.Tensor]) -> torch.nn.Module:
    """PT2E: observers inserted by XNNPACK's quantizer, calibrated, converted to Q/DQ."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    config = get_symmetric_quantization_config(is_per_channel=True)  # static: is_dynamic False
    quantizer = XNNPACKQuantizer().set_global(config)
    prepared = prepare_pt2e(program.module(), quantizer)
    for batch in calibration:
        prepared(batch)
    return convert_pt2e(prepared)
