"""Classifiers from files written by ``imagewise export``: ONNX (ONNX Runtime), TorchScript, and
OpenVINO, LiteRT and ExecuTorch files through their own runtimes.

Everything comes from the file's own metadata (classes, preprocessing, temperature), so an
exported model is used without its run folder, through the same calls as a run:
``preprocess -> probabilities -> postprocess``, or ``predict``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from imagewise.edge.model import ImageModel
from imagewise.edge.onnx import OnnxFile, nhwc
from imagewise.edge.runtimes import check_cpu_device, existing_model_file
from imagewise.edge.spec import InputContract, ModelSpec
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
        return nhwc(pixels_of(self.preprocessing, batch))

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
            return self._run(nhwc(images.numpy()))[1]
        return super().image_probabilities(images)


def pixels_of(pre: InputContract, batch: torch.Tensor) -> np.ndarray:
    """A normalized batch back to its uint8 pixels (N, C, H, W): ``round((x * std + mean) *
    255)``, exact for batches made by ``preprocess``."""
    mean = torch.tensor(pre.mean).view(1, -1, 1, 1)
    std = torch.tensor(pre.std).view(1, -1, 1, 1)
    pixels = ((batch.detach().cpu().float() * std + mean) * 255).round_().clamp_(0, 255)
    return pixels.to(torch.uint8).numpy()


class EdgeClassifier(BaseClassifier):
    """An exported file run by its own runtime (OpenVINO, LiteRT, ExecuTorch: any
    ``imagewise.edge`` model), with the PyTorch API, so evaluation and the export checks treat
    it like a run. Normalized batches are turned back into their pixels (``pixels_of``) and
    handed to the runtime's model, which does its own preprocessing.

    Args:
        model: the edge model (``imagewise.edge.runtimes.load_model``).
    """

    def __init__(self, model: ImageModel) -> None:
        super().__init__(model.spec, file_metadata=model.file_metadata)
        self.edge = model
        self.path = getattr(model, "path", None)
        self.device = torch.device("cpu")

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Raw scores of a preprocessed batch (before temperature)."""
        return torch.from_numpy(self.edge.scores(pixels_of(self.preprocessing, batch))[0])

    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """Calibrated class probabilities of a preprocessed batch (the file's own)."""
        return torch.from_numpy(self.edge.scores(pixels_of(self.preprocessing, batch))[1])

    def scores(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits and calibrated probabilities of uint8 images (N, C, H, W), as arrays."""
        return self.edge.scores(images)

    def image_probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Calibrated class probabilities of uint8 images (N, C, H, W) at the model's size."""
        return torch.from_numpy(self.edge.scores(images.numpy())[1])


def load_exported(path: Path, device: str = "cpu") -> BaseClassifier:
    """An ``OnnxClassifier`` for ``.onnx`` files, a ``Classifier`` for TorchScript ``.pt``, an
    ``EdgeClassifier`` over the runtime's own model for OpenVINO, LiteRT and ExecuTorch files
    (``imagewise.edge.runtimes``)."""
    from imagewise.edge.runtimes import load_model, runtime_of
    from imagewise.runtime.device import resolve_device

    path = existing_model_file(path)
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        check_cpu_device(device)
        return OnnxClassifier(path)
    if runtime_of(path) is not None:
        return EdgeClassifier(load_model(path, device=device, check=False))
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
