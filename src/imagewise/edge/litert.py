"""Exported TFLite files run by LiteRT (``ai-edge-litert``) on the CPU, without PyTorch or
TensorFlow.

A ``.tflite`` written by ``imagewise export --format tflite`` (``imagewise.export.tflite``)
takes the normalized batch channels last (``LAYOUT_NHWC``, float32 N x H x W x C, any batch
size), answers ``logits`` and ``probabilities`` (by those names, in that order), and carries the
export's metadata map as JSON in its flatbuffer's metadata entry ``imagewise``. ``LiteRtModel``
reads that entry with the TFLite schema's own Python classes (shipped in ai-edge-litert), runs
the file with LiteRT's interpreter (XNNPACK on the CPU) and feeds it int8 when a file's input is
quantized (a full-integer file; imagewise's INT8 files take float32).

Example:
    >>> model = load_model("runs/fm/export/model.int8.tflite")  # doctest: +SKIP
    >>> model.predict(["shoe.png"], top_k=1)[0].label  # doctest: +SKIP
    'Sneaker'
"""

from __future__ import annotations

import json
import mmap
import threading
from pathlib import Path
from typing import Any

import numpy as np

from imagewise.edge.metadata import check_graph
from imagewise.edge.model import ImageModel
from imagewise.edge.runtimes import usable_cpus
from imagewise.edge.spec import ModelSpec
from imagewise.errors import UserError

METADATA_NAME = "imagewise"  # the flatbuffer metadata entry holding the map, as JSON
SIGNATURE = "serving_default"
INPUT_NAME = "input"
OUTPUT_NAMES = ("logits", "probabilities")
_KINDS = {np.dtype(np.float32): "tensor(float)", np.dtype(np.uint8): "tensor(uint8)"}


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata map of a .tflite written by ``imagewise export`` (empty when it has none).

    The file is mapped, not read: only the flatbuffer's table of metadata and the one buffer
    are touched.

    Raises:
        UserError: the file is not a TFLite flatbuffer, or its ``imagewise`` entry is not a
            JSON map of strings.
    """
    try:
        raw = _metadata_bytes(Path(path))
    except Exception as exc:  # a damaged flatbuffer fails anywhere: struct, index, type
        why = str(exc).splitlines()[0] if str(exc) else ""
        raise UserError(f"cannot load LiteRT model '{path}': it is not a TFLite file "
                        f"({type(exc).__name__}: {why})") from None  # fmt: skip
    if raw is None:
        return {}
    try:
        props = json.loads(raw.decode())
    except (UnicodeDecodeError, ValueError):
        props = None
    if not isinstance(props, dict) or not all(isinstance(v, str) for v in props.values()):
        raise UserError(f"'{path}' has broken metadata: its '{METADATA_NAME}' entry is not a "
                        "JSON map of text; re-export it with 'imagewise export RUN'")  # fmt: skip
    return props


def _metadata_bytes(path: Path) -> bytes | None:
    """The bytes of the file's ``imagewise`` metadata entry, None when it has none."""
    from ai_edge_litert import schema_py_generated as schema

    with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as m:
        if not schema.Model.ModelBufferHasIdentifier(m, 0):
            raise ValueError("no TFL3 identifier")
        model = schema.Model.GetRootAs(m, 0)
        entries = {model.Metadata(i).Name(): model.Metadata(i).Buffer()
                   for i in range(model.MetadataLength())}  # fmt: skip
        index = entries.get(METADATA_NAME.encode())
        if index is None:
            return None
        buffer = model.Buffers(index)
        if buffer.Offset() > 1:  # a buffer stored after the flatbuffer (files over 2 GB)
            return bytes(m[buffer.Offset() : buffer.Offset() + buffer.Size()])
        return buffer.DataAsNumpy().tobytes()


class LiteRtModel(ImageModel):
    """An exported .tflite as an ``ImageModel``: ``predict``, ``predict_iter``, ``scores``.

    Args:
        path: the ``.tflite`` file.
        threads: LiteRT's threads (default: the CPUs this process may use).
        few_images: accepted for the common signature; LiteRT has no lighter mode to pick.

    Raises:
        UserError: in one line: the file is not a TFLite model LiteRT can load, has no
            imagewise metadata, or its metadata disagrees with its graph.
    """

    def __init__(
        self, path: str | Path, threads: int | None = None, few_images: bool = False
    ) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.path = Path(path)
        props = read_metadata(self.path)
        spec = ModelSpec.from_metadata(props, str(path))
        try:
            self.interpreter = Interpreter(
                model_path=str(self.path), num_threads=threads or usable_cpus()
            )
        except (ValueError, RuntimeError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UserError(f"cannot load LiteRT model '{path}': {first}") from None
        inputs = self.interpreter.get_input_details()
        self.outputs = {d["name"]: d for d in self.interpreter.get_output_details()}
        graph_inputs = [(d["name"], _kind(d), _shape(d)) for d in inputs]
        check_graph(spec, graph_inputs, {k: _shape(d) for k, d in self.outputs.items()}, str(path))
        self.input = inputs[0]
        self._batch = 0  # the batch size the interpreter's tensors are allocated for
        self._lock = threading.Lock()  # one interpreter runs one batch at a time
        super().__init__(spec, props)

    def scores(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits and calibrated probabilities (float32, (N, classes)) of uint8 images
        (N, C, H, W) at the model's size."""
        x = np.ascontiguousarray(self.spec.input.normalize(images).transpose(0, 2, 3, 1))
        with self._lock:
            if len(x) != self._batch:
                self.interpreter.resize_tensor_input(self.input["index"], list(x.shape), True)
                self.interpreter.allocate_tensors()
                self._batch = len(x)
            self.interpreter.set_tensor(self.input["index"], _quantize(x, self.input))
            self.interpreter.invoke()
            logits, probs = (_dequantize(self.interpreter.get_tensor(self.outputs[n]["index"]),
                                         self.outputs[n]) for n in OUTPUT_NAMES)  # fmt: skip
        return logits, probs


def _shape(detail: dict[str, Any]) -> list[Any]:
    """A tensor's shape with its open dimensions (-1: the batch) as None."""
    return [None if d < 0 else int(d) for d in detail["shape_signature"]]


def _kind(detail: dict[str, Any]) -> str:
    """The element type as ``check_graph`` words it; a quantized input stands for floats."""
    if _scale(detail) is not None:
        return "tensor(float)"
    return _KINDS.get(np.dtype(detail["dtype"]), f"tensor({np.dtype(detail['dtype']).name})")


def _scale(detail: dict[str, Any]) -> tuple[float, int] | None:
    """(scale, zero point) of an integer tensor that stands for floats, else None."""
    scale, zero = detail["quantization"]
    if np.dtype(detail["dtype"]).kind not in "iu" or scale == 0:
        return None
    return float(scale), int(zero)


def _quantize(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """Floats as the input tensor takes them: themselves, or int8/uint8 at its scale."""
    quant = _scale(detail)
    if quant is None:
        return x
    scale, zero = quant
    info = np.iinfo(detail["dtype"])
    return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(detail["dtype"])


def _dequantize(y: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    quant = _scale(detail)
    if quant is None:
        return y.astype(np.float32, copy=False)
    scale, zero = quant
    return ((y.astype(np.float32) - zero) * np.float32(scale)).astype(np.float32)
