"""Exported OpenVINO IR files (``model.xml`` + ``model.bin``) run by OpenVINO on the CPU,
without PyTorch.

``imagewise export RUN --format openvino`` writes the IR with the model's metadata in its
``rt_info`` (``imagewise.export.openvino``); ``OpenVinoModel`` reads it back into the model's
spec, checks it against the graph, compiles the model for the CPU and turns uint8 images into
scores. ``imagewise predict model.xml`` and ``imagewise serve model.xml`` open it through
``imagewise.edge.runtimes.load_model``.

The model is compiled for the CPU with three settings, each measured or needed:

- float32 arithmetic (``INFERENCE_PRECISION_HINT``): left to itself the CPU plugin computes in
  bfloat16 on CPUs that have it (AMX, AVX-512 BF16), which would give answers there other than
  the ones the export was checked with. A float16 IR stores its weights as float16 and computes
  in float32 the same way (its answers are float32 arithmetic on the rounded weights); an INT8
  IR runs its quantized layers with int8 kernels.
- one stream with every thread (``PERFORMANCE_HINT`` ``LATENCY``): ``scores`` is one
  synchronous call, which ``THROUGHPUT``'s several streams would only split (slower here at
  batch 1 and at batch 64).
- threads not pinned to cores (``ENABLE_CPU_PINNING`` off; ``LATENCY`` turns it on under
  Linux): pinned threads wait for a core that another process, or this one's image-decoding
  threads, also runs on. On a 2-core machine shared with other jobs (median at batch 1, three
  rounds): resnet18 at 224 px 56-91 ms unpinned, 94-96 ms pinned (ONNX Runtime 78-113 ms); a
  32-pixel model 0.66-0.95 ms unpinned, 1.0-3.1 ms pinned.

``import openvino`` starts OpenVINO's usage telemetry (an anonymous "import" event, sent unless
the user has opted out with ``opt_in_out --opt_out`` or ``CI=true`` is set): OpenVINO's choice,
which a library has no business changing for its user.

Example:
    >>> model = load_model("runs/fm/export/model.xml")  # doctest: +SKIP
    >>> model.predict(["shoe.png"], top_k=1)[0].label  # doctest: +SKIP
    'Sneaker'
"""

from __future__ import annotations

import functools
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imagewise.edge.metadata import check_graph
from imagewise.edge.model import ImageModel
from imagewise.edge.onnx import nhwc
from imagewise.edge.runtimes import existing_model_file, usable_cpus
from imagewise.edge.spec import LAYOUT_RAW, ModelSpec
from imagewise.errors import UserError

if TYPE_CHECKING:
    import openvino as ov

RT_INFO_SECTION = "imagewise"  # rt_info/imagewise/<key>: the metadata map of the file
# OpenVINO element types as check_graph names them (ONNX Runtime's names).
ELEMENT_TYPES = {"f32": "tensor(float)", "u8": "tensor(uint8)", "f16": "tensor(float16)"}


def read_metadata(model: ov.Model) -> dict[str, str]:
    """The imagewise metadata map an IR carries in its rt_info ({} when it has none)."""
    if not model.has_rt_info([RT_INFO_SECTION]):
        return {}
    section = model.get_rt_info([RT_INFO_SECTION]).value
    if not isinstance(section, dict):
        return {}
    return {str(k): str(v) for k, v in section.items()}


def graph_description(
    model: ov.Model,
) -> tuple[list[tuple[str, str, list[Any]]], dict[str, list[Any]]]:
    """The model's inputs and outputs as ``check_graph`` takes them: (name, element type,
    shape) per input and name -> shape per output, open dimensions (the batch) as None."""

    def shape(port: Any) -> list[Any]:
        return [d.get_length() if d.is_static else None for d in port.get_partial_shape()]

    def kind(port: Any) -> str:
        name = port.get_element_type().get_type_name()
        return ELEMENT_TYPES.get(name, name)

    inputs = [(p.get_any_name(), kind(p), shape(p)) for p in model.inputs]
    outputs = {name: shape(p) for p in model.outputs for name in p.get_names()}
    return inputs, outputs


def _first_reason(exc: Exception) -> str:
    """The line of an OpenVINO error that says what is wrong: its messages start with the
    source locations of every layer they passed through ("Exception from src/...")."""
    lines = [s.strip() for s in str(exc).splitlines() if s.strip()]
    said = [s for s in lines if not s.startswith(("Exception from ", "Check '"))]
    return (said or lines or [type(exc).__name__])[-1]


def read_ir(core: ov.Core, path: Path) -> ov.Model:
    """The IR at ``path`` read by OpenVINO's IR front end only (other front ends, tried on a
    file that is not IR, print their own parse errors); one line when it cannot be read."""
    from openvino.frontend import FrontEndManager

    existing_model_file(path)
    if not FrontEndManager().load_by_framework("ir").supported(str(path)):
        raise UserError(
            f"'{path}' is not an OpenVINO IR model; give a model.xml written by "
            "'imagewise export RUN --format openvino'"
        )
    weights = path.with_suffix(".bin")
    if not weights.is_file():
        raise UserError(
            f"cannot load OpenVINO model '{path}': its weights '{weights.name}' are not beside "
            "it; keep the .xml and .bin files together"
        )
    try:
        return core.read_model(str(path), str(weights))
    except RuntimeError as exc:  # OpenVINO raises RuntimeError and its own subclasses
        raise UserError(f"cannot load OpenVINO model '{path}': {_first_reason(exc)}") from exc


@functools.cache
def shared_core() -> Any:
    """The process's one ``openvino.Core``: OpenVINO's advice, since every Core loads its own CPU
    plugin with its own thread pools, and a long-lived process (a server, a notebook, a test
    run) that opens several files should not hold one set per file."""
    import openvino as ov

    return ov.Core()


class OpenVinoModel(ImageModel):
    """An exported OpenVINO IR model as an ``ImageModel``: ``predict``, ``predict_iter``,
    ``scores``.

    Args:
        path: the ``.xml`` file (its ``.bin`` beside it).
        threads: OpenVINO's inference threads (default: the CPUs this process may use).
        few_images: accepted for ``load_model``'s signature; OpenVINO compiles the same way
            for one image or many (one stream, see the module).

    Raises:
        UserError: the file is not OpenVINO IR, its weights are missing, it has no imagewise
            metadata or the metadata disagrees with its graph.
    """

    def __init__(
        self, path: str | Path, threads: int | None = None, few_images: bool = False
    ) -> None:
        self.path = Path(path)
        self.threads = threads or usable_cpus()
        core = shared_core()
        model = read_ir(core, self.path)
        metadata = read_metadata(model)
        spec = ModelSpec.from_metadata(metadata, str(path))
        check_graph(spec, *graph_description(model), str(path))
        super().__init__(spec, metadata)
        self.raw_input = spec.input.layout == LAYOUT_RAW
        config = {
            "INFERENCE_NUM_THREADS": self.threads,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32",
            "ENABLE_CPU_PINNING": False,
        }
        try:
            self.compiled = core.compile_model(model, "CPU", config)
        except RuntimeError as exc:
            reason = _first_reason(exc)
            raise UserError(f"cannot compile OpenVINO model '{path}': {reason}") from exc
        self._outputs = (self.compiled.output("logits"), self.compiled.output("probabilities"))
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()  # one infer request, which is not for two threads at once

    def run(self, feed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The graph's logits and calibrated probabilities for its own input layout."""
        import openvino as ov

        # The request reads the array in place and its outputs are copied out once: on a
        # 32-pixel model at batch 1 a call took 0.80 ms this way and 1.17 ms through infer()'s
        # dict in and out, most of what OpenVINO lagged ONNX Runtime by (0.79 ms).
        feed = np.ascontiguousarray(feed)
        with self._lock:
            self._request.set_input_tensor(ov.Tensor(feed, shared_memory=True))
            self._request.infer()
            logits, probs = (self._request.get_tensor(o).data.copy() for o in self._outputs)
        return logits, probs

    def scores(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits and calibrated probabilities (float32, (N, classes)) of uint8 images
        (N, C, H, W) at the model's size."""
        if self.raw_input:
            return self.run(nhwc(images))
        return self.run(self.spec.input.normalize(images))


__all__ = ["RT_INFO_SECTION", "OpenVinoModel", "graph_description", "read_ir", "read_metadata"]
