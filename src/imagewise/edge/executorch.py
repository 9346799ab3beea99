"""Exported ExecuTorch programs (``model.pte``, XNNPACK) run by ExecuTorch's runtime on the CPU.

``imagewise export RUN --format executorch`` writes the program with the model's metadata as
the constant method ``imagewise_metadata`` (its JSON's UTF-8 bytes as a uint8 tensor;
``imagewise.export.executorch``);
``ExecuTorchModel`` reads it back into the model's spec, checks it against the ``forward``
method's input and outputs, and turns uint8 images into scores. ``imagewise predict
model.pte`` and ``imagewise serve model.pte`` open it through
``imagewise.edge.runtimes.load_model``.

PyTorch: on a phone the C++ runtime runs the file alone, but ExecuTorch's Python runtime is
its C++ extension ``executorch.extension.pybindings._C``, linked against libtorch, whose
``forward`` takes and returns ``torch.Tensor`` only (a numpy array is refused: "Unsupported
python type"). So running a ``.pte`` from Python needs torch, and this module imports it when
a file is opened (the import-linter contract names this one exception); importing the module
imports neither torch nor ExecuTorch. It loads the extension directly rather than through
``executorch.runtime`` or ``portable_lib``: those import ``executorch.exir`` first (the
compiler, with torchao and sympy: about 3,000 modules), which took 16-20 s against 5 s for
torch and the extension alone, measured on a busy 2-core machine.

Example:
    >>> model = load_model("runs/fm/export/model.int8.pte")  # doctest: +SKIP
    >>> model.predict(["shoe.png"], top_k=1)[0].label  # doctest: +SKIP
    'Sneaker'
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from imagewise.edge.metadata import check_graph
from imagewise.edge.model import ImageModel
from imagewise.edge.spec import ModelSpec
from imagewise.errors import UserError

METADATA_METHOD = "imagewise_metadata"  # the constant method returning the metadata (JSON bytes)
# ExecuTorch's ScalarType codes (runtime/core/portable_type/scalar_type.h), as check_graph
# names element types (ONNX Runtime's names).
SCALAR_TYPES = {6: "tensor(float)", 0: "tensor(uint8)", 5: "tensor(float16)"}


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def runtime() -> Any:
    """ExecuTorch's Python extension, with torch imported first as its own wrapper
    (``portable_lib``) does: the extension converts ``torch.Tensor``s."""
    import torch  # noqa: F401  (the extension's inputs and outputs are torch tensors)

    try:
        from executorch.extension.pybindings import _C as extension
    except ImportError:  # a build that only ships the wrapper
        from executorch.extension.pybindings import portable_lib as extension
    return extension


def open_program(path: Path) -> Any:
    """The ``.pte`` at ``path`` loaded by ExecuTorch's runtime; one line when it cannot be."""
    try:
        return runtime()._load_program(str(path))
    except RuntimeError as exc:  # the extension raises RuntimeError ("error: 0x:12")
        raise UserError(
            f"cannot load ExecuTorch program '{path}' ({_first_line(exc)}); give a .pte "
            "written by 'imagewise export RUN --format executorch'"
        ) from exc


def method_names(program: Any) -> list[str]:
    """The names of a loaded program's methods."""
    return [program.get_method_name(i) for i in range(program.num_methods())]


def read_metadata(program: Any, source: str) -> dict[str, str]:
    """The imagewise metadata map a program carries (its constant method's JSON)."""
    if METADATA_METHOD not in method_names(program):
        raise UserError(
            f"'{source}' has no imagewise metadata (no '{METADATA_METHOD}' method); give a "
            "model written by 'imagewise export RUN --format executorch'"
        )
    (value,) = program.load_method(METADATA_METHOD)([])
    try:
        props = json.loads(value.numpy().tobytes().decode())
    except (AttributeError, TypeError, ValueError):  # not a tensor, not UTF-8, not JSON
        props = None
    if not isinstance(props, dict):
        raise UserError(
            f"'{source}' has broken metadata: {METADATA_METHOD} is not a JSON object; "
            "re-export it with 'imagewise export RUN'"
        )
    return {str(k): str(v) for k, v in props.items()}


def graph_description(meta: Any) -> tuple[list[tuple[str, str, list[Any]]], dict[str, list[Any]]]:
    """The ``forward`` method's input and outputs as ``check_graph`` takes them. ExecuTorch
    names neither and gives the batch axis its upper bound, which is left unchecked here."""

    def shape(info: Any) -> list[Any]:
        return [None, *info.sizes()[1:]]

    if meta.num_inputs() != 1 or meta.num_outputs() != 2:
        return [("input", "?", [])] * meta.num_inputs(), {}
    first = meta.input_tensor_meta(0)
    kind = SCALAR_TYPES.get(first.dtype(), f"ScalarType {first.dtype()}")
    names = ("logits", "probabilities")  # the graph's outputs, in order
    outputs = {name: shape(meta.output_tensor_meta(i)) for i, name in enumerate(names)}
    return [("input", kind, shape(first))], outputs


class ExecuTorchModel(ImageModel):
    """An exported ExecuTorch program as an ``ImageModel``: ``predict``, ``predict_iter``,
    ``scores``.

    Args:
        path: the ``.pte`` file.
        threads: the threads of ExecuTorch's thread pool (XNNPACK's), which is one per process:
            given, it is set for every program of the process; None leaves ExecuTorch's
            choice (the performance cores it counts).
        few_images: accepted for ``load_model``'s signature; a program runs the same way for
            one image or many.

    Raises:
        UserError: the file is not a program ExecuTorch loads, or its imagewise metadata is
            missing, broken or disagrees with the program.
    """

    def __init__(
        self, path: str | Path, threads: int | None = None, few_images: bool = False
    ) -> None:
        self.path = Path(path)
        program = open_program(self.path)
        props = read_metadata(program, str(path))
        spec = ModelSpec.from_metadata(props, str(path))
        if "forward" not in method_names(program):
            raise UserError(f"cannot load ExecuTorch program '{path}': it has no forward method")
        meta = program.method_meta("forward")
        check_graph(spec, *graph_description(meta), str(path))
        super().__init__(spec, props)
        self.max_batch = int(meta.input_tensor_meta(0).sizes()[0])  # memory is planned for it
        if threads is not None:
            runtime()._unsafe_reset_threadpool(threads)
        self.program = program  # the method's memory lives as long as its program
        self.forward = program.load_method("forward")
        from torch import from_numpy  # imported with the runtime (see the module)

        self._tensor = from_numpy

    def scores(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits and calibrated probabilities (float32, (N, classes)) of uint8 images
        (N, C, H, W) at the model's size, in runs of at most ``max_batch`` images (the batch
        the program planned its memory for)."""
        x = self.spec.input.normalize(images)
        if not len(x):
            empty = np.zeros((0, len(self.spec.classes)), np.float32)
            return empty, empty.copy()
        logits, probs = [], []
        for start in range(0, len(x), self.max_batch):
            out = self.forward([self._tensor(x[start : start + self.max_batch])])
            logits.append(out[0].numpy())
            probs.append(out[1].numpy())
        return np.concatenate(logits), np.concatenate(probs)
