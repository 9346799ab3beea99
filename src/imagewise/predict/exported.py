"""Classifiers from files written by ``imagewise export``: ONNX (ONNX Runtime) and TorchScript.

Everything comes from the file's own metadata (classes, preprocessing, temperature), so an
exported model is used without its run folder, through the same calls as a run:
``preprocess -> probabilities -> postprocess``, or ``predict``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from imagewise.edge.onnx import OnnxFile, check_cpu_device, existing_model_file, nhwc
from imagewise.edge.spec import ModelSpec
from imagewise.errors import UserError
from imagewise.predict.base import BaseClassifier, Classifier
from imagewise.predict.file_meta import load_torchscript


class OnnxClassifier(BaseClassifier):
    """An exported ONNX model run by ONNX Runtime on the CPU, with the PyTorch API.

    ``logits`` and ``probabilities`` take the same normalized float batch (N, C, H, W) as
    ``Classifier``'s, so code written for one serves the other (evaluation, export checks). A
    raw-input model (exported with ``--raw-input``, input uint8 NHWC) gets that batch turned back
    into its pixels (``round((x * std + mean) * 255)``, exact for batches made by ``preprocess``)
    before the session runs; ``predict``, ``scores`` and ``image_probabilities`` hand it the
    decoded pixels directly. The session and metadata are the edge layer's ``OnnxFile``, which
    ``imagewise.edge.onnx.OnnxModel`` (the same file without PyTorch) uses too.

    Args:
        path: the ``.onnx`` file.
        threads: ONNX Runtime's intra-op threads (default: torch's thread count).

    Example:
        >>> clf = imagewise.load("runs/fm/export/model.int8.onnx")  # doctest: +SKIP
        >>> clf.predict(["shoe.png"], top_k=1)[0].label  # doctest: +SKIP
        'Sneaker'
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        self.file = OnnxFile(path, threads or torch.get_num_threads())
        super().__init__(self.file.spec, file_metadata=self.file.metadata)
        self.path = self.file.path
        self.session = self.file.session
        self.raw_input = self.file.raw_input
        self.input_name = self.file.input_name
        self.device = torch.device("cpu")

    def _run(self, feed: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        logits, probs = self.file.run(feed)
        return torch.from_numpy(logits), torch.from_numpy(probs)

    def _feed(self, batch: torch.Tensor) -> np.ndarray:
        """A normalized batch -> the graph's input."""
        if not self.raw_input:
            return batch.detach().to("cpu", torch.float32).contiguous().numpy()
        pre = self.preprocessing
        mean = torch.tensor(pre.mean).view(1, -1, 1, 1)
        std = torch.tensor(pre.std).view(1, -1, 1, 1)
        pixels = ((batch.detach().cpu().float() * std + mean) * 255).round_().clamp_(0, 255)
        return self._pixels(pixels.to(torch.uint8))

    @staticmethod
    def _pixels(images: torch.Tensor) -> np.ndarray:
        return nhwc(images.numpy())

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Raw scores of a preprocessed batch (before temperature)."""
        return self._run(self._feed(batch))[0]

    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """Calibrated class probabilities of a preprocessed batch (the graph's softmax)."""
        return self._run(self._feed(batch))[1]

    def scores(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits and calibrated probabilities of uint8 images (N, C, H, W), as arrays."""
        return self.file.scores(images)

    def image_probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Calibrated class probabilities of uint8 images (N, C, H, W) at the model's size."""
        if self.raw_input:
            return self._run(self._pixels(images))[1]
        return super().image_probabilities(images)


def load_exported(path: Path, device: str = "cpu") -> BaseClassifier:
    """An ``OnnxClassifier`` for ``.onnx`` files, a ``Classifier`` for TorchScript ``.pt``."""
    from imagewise.runtime.device import resolve_device

    path = existing_model_file(path)
    if path.suffix.lower() == ".onnx":
        check_cpu_device(device)
        return OnnxClassifier(path)
    dev = resolve_device(device)
    try:
        module, props = load_torchscript(path, dev)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"cannot load TorchScript model '{path}': {first}") from exc
    spec = ModelSpec.from_metadata(props, str(path))
    _check_outputs(module, spec.input, len(spec.classes), path, dev)
    return Classifier(module, spec, dev, file_metadata=props)


def _check_outputs(module: Any, pre: Any, classes: int, path: Path, dev: Any) -> None:
    """One forward pass of a blank image of the metadata's shape: the graph must take it and
    answer one score per named class (a TorchScript file states no shapes to read)."""
    try:
        with torch.no_grad():
            out = module(torch.zeros(1, pre.channels, pre.img_size, pre.img_size, device=dev))
    except Exception as exc:  # TorchScript raises RuntimeError subclasses of many kinds
        raise UserError(
            f"'{path}' has broken metadata: the graph does not take the "
            f"{pre.channels}x{pre.img_size}x{pre.img_size} input it describes; re-export it"
        ) from exc
    width = out.shape[-1] if isinstance(out, torch.Tensor) else None
    if width != classes:
        raise UserError(
            f"'{path}' has broken metadata: classes names {classes} classes but the graph "
            f"answers {width}; re-export it with 'imagewise export RUN'"
        )
