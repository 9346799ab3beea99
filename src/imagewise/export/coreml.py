"""PyTorch -> Core ML (``model.mlpackage``), an ML Program for iOS 15 / macOS 12 and later.

The job's graph is captured with ``torch.export`` (batch 1 to ``MAX_BATCH``) and converted by
coremltools into an ML Program computing in float32 or float16 (``compute_precision``; the
input and outputs stay float32). Its input ``input`` is the normalized NCHW float tensor every
other imagewise file takes, not an ``ImageType``: Core ML's image input applies one scale to
all channels (``x * scale + bias``), which cannot express a per-channel std such as
ImageNet's (0.229, 0.224, 0.225), so an app normalizes as the metadata says (mean, std,
size, interpolation, crop), exactly as for the ONNX file. Its outputs are ``logits`` and
``probabilities`` (softmax of the logits over the temperature). The model's metadata map goes
into ``user_defined_metadata``, which Xcode shows and ``MLModel.modelDescription`` reads.

Core ML runs on Apple systems only, so nothing here runs the model: the written package is
read back (``coremltools.utils.load_spec``) and its input, outputs and metadata are checked
against what was asked for; the line saying so is left in ``check.txt`` beside the model, and
the exporter records it in parity.json with the runtime "not run on this OS".
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from imagewise.export.targets import ExportJob

log = logging.getLogger("imagewise")

INPUT_NAME = "input"
OUTPUT_NAMES = ("logits", "probabilities")
MAX_BATCH = 64  # the batch axis' range, 1 to this
CHECK_FILE = "check.txt"  # the one-line summary of what was checked, beside the model
TOOL_KEYS = "com.github.apple.coremltools."  # metadata coremltools adds of its own


@contextlib.contextmanager
def _quiet_coremltools() -> Iterator[None]:
    """coremltools warns on Linux that Core ML's framework is absent and that this torch is
    newer than it was tested with, and draws progress bars: kept out of the export's output
    (but for --debug)."""
    logger = logging.getLogger("coremltools")
    level = logger.level
    if not logging.getLogger("imagewise").isEnabledFor(logging.DEBUG):
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def write(job: ExportJob, path: Path) -> None:
    """The ``coreml`` format's writer: the job's graph as an ML Program package at ``path``
    (float32 or float16), its metadata inside, checked as ``check_package`` says."""
    job.module.to(memory_format=torch.contiguous_format)
    pre = job.reference.preprocessing
    shape = (pre.channels, pre.img_size, pre.img_size)
    log.info("converting %s to Core ML (%s)", job.metadata["model"], job.precision)
    model = to_mlmodel(job.graph, job.example_input(), shape, job.precision, job.metadata)
    with _quiet_coremltools():
        model.save(str(path))
    checked = check_package(path, shape, job.precision, job.metadata)
    (path.parent / CHECK_FILE).write_text(checked)


def to_mlmodel(
    graph: torch.nn.Module,
    example: torch.Tensor,
    shape: tuple[int, int, int],
    precision: str,
    metadata: Mapping[str, str],
) -> Any:
    """The Core ML model (``coremltools.models.MLModel``) of ``graph`` (eval mode, CPU).

    Args:
        graph: the normalized NCHW input -> (logits, probabilities).
        example: a batch of the input (batch 2, so the batch axis is not specialized to 1).
        shape: the input's (channels, height, width).
        precision: ``float32`` or ``float16`` arithmetic.
        metadata: the string map the model carries.
    """
    with _quiet_coremltools():
        import coremltools as ct

        batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
        with torch.no_grad():
            program = torch.export.export(graph, (example,), dynamic_shapes=({0: batch},))
        program = program.run_decompositions({})  # coremltools converts the ATen dialect
        compute = {"float32": ct.precision.FLOAT32, "float16": ct.precision.FLOAT16}[precision]
        model = ct.convert(
            program,
            inputs=[ct.TensorType(INPUT_NAME, shape=(ct.RangeDim(1, MAX_BATCH, 1), *shape))],
            outputs=[ct.TensorType(name) for name in OUTPUT_NAMES],
            convert_to="mlprogram",
            compute_precision=compute,
            minimum_deployment_target=ct.target.iOS15,
        )
    _describe(model, metadata)
    return model


def _describe(model: Any, metadata: Mapping[str, str]) -> None:
    """What Xcode shows of the model: its metadata map, a description, its input and outputs."""
    model.user_defined_metadata.update(metadata)
    model.author = f"imagewise {metadata.get('imagewise_version', '')}".strip()
    model.short_description = (
        f"{metadata.get('model', 'image')} classifier of {metadata.get('img_size')} px images "
        f"into {metadata.get('classes')}; exported by imagewise"
    )
    model.input_description[INPUT_NAME] = (
        f"images (N, C, H, W), float32, (pixels / 255 - mean) / std with mean "
        f"{metadata.get('mean')} and std {metadata.get('std')} (the metadata's input contract)"
    )
    model.output_description["logits"] = "the network's logits (N, classes)"
    model.output_description["probabilities"] = (
        f"softmax(logits / temperature), temperature {metadata.get('temperature')}"
    )


def check_package(
    path: Path, shape: tuple[int, int, int], precision: str, metadata: Mapping[str, str]
) -> str:
    """The written package read back: an ML Program whose input is ``input`` (1 to
    ``MAX_BATCH``, ``shape``) in float32, whose outputs are ``logits`` and ``probabilities`` and
    whose metadata equals ``metadata`` (besides coremltools' own keys). Returns the line that
    says what was checked.

    Raises:
        RuntimeError: the package is not what the conversion was asked for.
    """
    with _quiet_coremltools():
        import coremltools as ct

        spec = ct.utils.load_spec(str(path))
    found = _description(spec)
    wanted = {
        "type": "mlProgram",
        "input": (INPUT_NAME, "FLOAT32", [(1, MAX_BATCH), *((d, d) for d in shape)]),
        "outputs": list(OUTPUT_NAMES),
        "metadata": dict(metadata),
    }
    wrong = [key for key, value in wanted.items() if found[key] != value]
    if wrong:
        differ = {key: found[key] for key in wrong}
        raise RuntimeError(f"the Core ML package '{path}' is not what was converted: {differ}")
    c, h, w = shape
    return (
        f"spec checked: ML Program (spec version {spec.specificationVersion}, "
        f"{precision} compute), input '{INPUT_NAME}' float32 (1-{MAX_BATCH}, {c}, {h}, {w}), "
        f"outputs {', '.join(OUTPUT_NAMES)}, {len(metadata)} metadata keys equal to the export's"
    )


def _description(spec: Any) -> dict[str, Any]:
    """What ``check_package`` compares, read from a Core ML spec."""
    (first, *others) = spec.description.input
    array = first.type.multiArrayType
    dtype = type(array).ArrayDataType.Name(array.dataType)
    ranges = [(r.lowerBound, r.upperBound) for r in array.shapeRange.sizeRanges]
    user = spec.description.metadata.userDefined
    metadata = {k: v for k, v in user.items() if not k.startswith(TOOL_KEYS)}
    return {
        "type": spec.WhichOneof("Type"),
        "input": (first.name, dtype, ranges) if not others else None,
        "outputs": [o.name for o in spec.description.output],
        "metadata": metadata,
    }
