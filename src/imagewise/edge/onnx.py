"""Exported ONNX files run by ONNX Runtime on the CPU, without PyTorch.

``OnnxFile`` opens a file written by ``imagewise export`` (session, spec, input layout) and
turns uint8 images into scores; ``OnnxModel`` is the ``ImageModel`` over it, which
``imagewise predict model.onnx`` and ``imagewise serve model.onnx`` use; the PyTorch-facing
``imagewise.predict.exported.OnnxClassifier`` wraps the same ``OnnxFile``.

Example:
    >>> model = load_model("runs/fm/export/model.int8.onnx")  # doctest: +SKIP
    >>> model.predict(["shoe.png"], top_k=1)[0].label  # doctest: +SKIP
    'Sneaker'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from imagewise.edge.finite import unusable_reason
from imagewise.edge.metadata import check_graph
from imagewise.edge.model import ImageModel
from imagewise.edge.runtimes import check_cpu_device, existing_model_file, usable_cpus
from imagewise.edge.spec import LAYOUT_RAW, ModelSpec
from imagewise.errors import UserError


def nhwc(images: np.ndarray) -> np.ndarray:
    """uint8 (N, C, H, W) -> the contiguous (N, H, W, C) a raw-input graph takes."""
    return np.ascontiguousarray(images.transpose(0, 2, 3, 1))


class OnnxFile:
    """An ONNX file written by ``imagewise export``: its session, spec and input layout.

    Args:
        path: the ``.onnx`` file.
        threads: ONNX Runtime's intra-op threads (default: the CPUs this process may use).
        few_images: the session answers a handful of images and exits (``predict one.png``):
            float graphs then get ONNX Runtime's basic graph optimizations only, which skip
            the blocked-layout copy of every convolution's weights: about half the peak
            memory and a faster start, slower per image, which a handful of images does not
            notice (BENCHMARKS.md, "Edge runtime"). INT8 graphs
            keep the full level: their fused integer kernels come from it, and their answers
            must be those the export was verified with.

    Raises:
        UserError: the file is not an ONNX model ONNX Runtime can load, or has no imagewise
            metadata.
    """

    def __init__(
        self, path: str | Path, threads: int | None = None, few_images: bool = False
    ) -> None:
        self.path = Path(path)
        self.threads = threads or usable_cpus()
        self.session = self._open(full=not few_images)
        props = self.session.get_modelmeta().custom_metadata_map
        if few_images and props.get("quantization", "none") != "none":
            del self.session  # one session in memory at a time
            self.session = self._open(full=True)
        self.spec = ModelSpec.from_metadata(props, str(path))
        self.metadata = dict(props)
        inputs = [(i.name, i.type, list(i.shape)) for i in self.session.get_inputs()]
        outputs = {o.name: list(o.shape) for o in self.session.get_outputs()}
        check_graph(self.spec, inputs, outputs, str(path))
        self.raw_input = self.spec.input.layout == LAYOUT_RAW
        self.input_name = self.session.get_inputs()[0].name

    def _open(self, full: bool) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        if not full:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        try:
            return ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail / InvalidGraph types
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UserError(f"cannot load ONNX model '{self.path}': {first}") from exc

    def run(self, feed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The graph's logits and calibrated probabilities for its own input layout."""
        logits, probs = self.session.run(["logits", "probabilities"], {self.input_name: feed})
        return logits, probs

    def scores(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits and calibrated probabilities of uint8 images (N, C, H, W) at the model's size:
        raw-input graphs take the pixels (NHWC), the others the normalized floats."""
        return self.run(nhwc(images) if self.raw_input else self.spec.input.normalize(images))


class OnnxModel(ImageModel):
    """An exported ONNX model as an ``ImageModel``: ``predict``, ``predict_iter``, ``scores``.

    Args:
        path: the ``.onnx`` file.
        threads: ONNX Runtime's intra-op threads (default: the CPUs this process may use).
        few_images: a session for a handful of images (``OnnxFile``): less memory, slower per
            image.
    """

    def __init__(
        self, path: str | Path, threads: int | None = None, few_images: bool = False
    ) -> None:
        self.file = OnnxFile(path, threads, few_images)
        super().__init__(self.file.spec, self.file.metadata)

    @property
    def path(self) -> Path:
        return self.file.path

    @property
    def raw_input(self) -> bool:
        """True for graphs exported with ``--raw-input`` (uint8 NHWC in)."""
        return self.file.raw_input

    def scores(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits and calibrated probabilities (float32, (N, classes)) of uint8 images
        (N, C, H, W) at the model's size."""
        return self.file.scores(images)


def load_model(
    path: str | Path,
    *,
    device: str = "cpu",
    threads: int | None = None,
    check: bool = True,
    few_images: bool = False,
) -> OnnxModel:
    """An exported ONNX file, ready to predict, without PyTorch.

    Args:
        path: a ``.onnx`` file written by ``imagewise export``.
        device: ``cpu`` or ``auto`` (ONNX Runtime's CPU provider).
        threads: ONNX Runtime's intra-op threads (default: the CPUs this process may use).
        check: refuse a model whose outputs for a plain grey image are not finite (NaN or inf).
        few_images: the session answers a handful of images (less memory, slower per image).

    Raises:
        UserError: in one line: the file is missing, is not ONNX, has no imagewise metadata,
            or (with ``check``) gives no finite outputs.
    """
    check_cpu_device(device)
    model = OnnxModel(existing_model_file(path), threads, few_images)
    if check and (reason := unusable_reason(model, path)):
        raise UserError(reason)
    return model
