"""Exported ExecuTorch programs (``model.pte``, XNNPACK) run by ExecuTorch's runtime on the CPU.

``imagewise export RUN --format executorch`` writes the program with the model's metadata as
the constant method ``imagewise_metadata`` (one JSON string; ``imagewise.export.executorch``);
``ExecuTorchModel`` reads it back into the model's spec, checks it against the ``forward``
method's input and outputs, and turns uint8 images into scores. ``imagewise predict
model.pte`` and ``imagewise serve model.pte`` open it through
``imagewise.edge.runtimes.load_model``.

PyTorch: on a phone the C++ runtime runs the file alone, but ExecuTorch's Python runtime is
built on libtorch. ``executorch.runtime`` imports ``executorch.extension.pybindings.
portable_lib``, which runs ``import torch`` before loading its extension ``_C`` (linked against
libtorch.so and libtorch_python.so), and ``forward`` takes and returns ``torch.Tensor`` only (a
numpy array is refused: "Unsupported python type"). So predicting with a ``.pte`` from Python
imports torch whatever imagewise does; this module imports ``executorch.runtime`` only when a
file is opened, and borrows ``torch.from_numpy`` then, from the torch that ExecuTorch's runtime
has already imported (the import-linter contract names that one exception). Importing this
module imports neither.

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

METADATA_METHOD = "imagewise_metadata"  # the constant method holding the metadata's JSON
# ExecuTorch's ScalarType codes (runtime/core/portable_type/scalar_type.h), as check_graph
# names element types (ONNX Runtime's names).
SCALAR_TYPES = {6: "tensor(float)", 0: "tensor(uint8)", 5: "tensor(float16)"}


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def open_program(path: Path) -> Any:
    """The ``.pte`` at ``path`` loaded by ExecuTorch's runtime; one line when it cannot be."""
    from executorch.runtime import Runtime

    try:
        return Runtime.get().load_program(path)
    except (RuntimeError, ValueError) as exc:  # the pybindings raise RuntimeError
        raise UserError(f"cannot load ExecuTorch program '{path}': {_first_line(exc)}") from exc


def read_metadata(program: Any, source: str) -> dict[str, str]:
    """The imagewise metadata map a program carries (its constant method's JSON)."""
    if METADATA_METHOD not in program.method_names:
        raise UserError(
            f"'{source}' has no imagewise metadata (no '{METADATA_METHOD}' method); give a "
            "model written by 'imagewise export RUN --format executorch'"
        )
    (text,) = program.load_method(METADATA_METHOD).execute([])
    try:
        props = json.loads(text)
    except ValueError:
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
        if "forward" not in program.method_names:
            raise UserError(f"cannot load ExecuTorch program '{path}': it has no forward method")
        meta = program.metadata("forward")
        check_graph(spec, *graph_description(meta), str(path))
        super().__init__(spec, props)
        self.max_batch = int(meta.input_tensor_meta(0).sizes()[0])  # memory is planned for it
        if threads is not None:
            from executorch.extension.pybindings import portable_lib

            portable_lib._unsafe_reset_threadpool(threads)
        self.program = program  # the method's memory lives as long as its program
        self.forward = program.load_method("forward")
        from torch import from_numpy  # already imported by executorch.runtime (see the module)

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
            out = self.forward.execute([self._tensor(x[start : start + self.max_batch])])
            logits.append(out[0].numpy())
            probs.append(out[1].numpy())
        return np.concatenate(logits), np.concatenate(probs)
