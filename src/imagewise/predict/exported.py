"""Classifiers from files written by ``imagewise export``: ONNX (ONNX Runtime) and TorchScript.

Everything comes from the file's own metadata (classes, preprocessing, temperature), so an
exported model is used without its run folder, through the same calls as a run:
``preprocess -> probabilities -> postprocess``, or ``predict``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from imagewise.errors import UserError
from imagewise.predict.base import BaseClassifier, Classifier
from imagewise.predict.file_meta import (
    LAYOUT_RAW,
    load_torchscript,
    parse_metadata,
    preprocessing_of,
)


class OnnxClassifier(BaseClassifier):
    """An exported ONNX model run by ONNX Runtime on the CPU.

    ``logits`` and ``probabilities`` take the same normalized float batch (N, C, H, W) as
    ``Classifier``'s, so code written for one serves the other. A raw-input model (exported
    with ``--raw-input``, input uint8 NHWC) gets that batch turned back into its pixels
    (``round((x * std + mean) * 255)``, exact for batches made by ``preprocess``) before the
    session runs; ``predict`` and ``image_probabilities`` hand it the decoded pixels directly.

    Args:
        path: the ``.onnx`` file.
        threads: ONNX Runtime's intra-op threads (default: torch's thread count).

    Example:
        >>> clf = imagewise.load("runs/fm/export/model.int8.onnx")  # doctest: +SKIP
        >>> clf.predict(["shoe.png"], top_k=1)[0].label  # doctest: +SKIP
        'Sneaker'
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        try:
            self.session = ort.InferenceSession(
                str(self.path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own Fail / InvalidGraph types
            raise UserError(f"cannot load ONNX model '{path}': {str(exc).splitlines()[0]}") from exc
        props = self.session.get_modelmeta().custom_metadata_map
        meta = parse_metadata(props, str(path))
        super().__init__(preprocessing_of(meta), list(meta["classes"]), meta["temperature"], meta)
        self.raw_input = meta["input_layout"] == LAYOUT_RAW
        self.input_name = self.session.get_inputs()[0].name
        self.device = torch.device("cpu")

    def _run(self, feed: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        logits, probs = self.session.run(["logits", "probabilities"], {self.input_name: feed})
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
        return images.permute(0, 2, 3, 1).contiguous().numpy()

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Raw scores of a preprocessed batch (before temperature)."""
        return self._run(self._feed(batch))[0]

    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """Calibrated class probabilities of a preprocessed batch (the graph's softmax)."""
        return self._run(self._feed(batch))[1]

    def scores(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits and calibrated probabilities of uint8 images (N, C, H, W), as arrays."""
        pixels = torch.from_numpy(images)
        if self.raw_input:
            feed = self._pixels(pixels)
        else:
            feed = self._feed(self.preprocessing.normalize(pixels))
        logits, probs = self._run(feed)
        return logits.numpy(), probs.numpy()

    def image_probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Calibrated class probabilities of uint8 images (N, C, H, W) at the model's size."""
        if self.raw_input:
            return self._run(self._pixels(images))[1]
        return super().image_probabilities(images)


def load_exported(path: Path, device: str = "cpu") -> BaseClassifier:
    """An ``OnnxClassifier`` for ``.onnx`` files, a ``Classifier`` for TorchScript ``.pt``."""
    from imagewise.runtime.device import resolve_device

    if not path.is_file():
        raise UserError(f"model file '{path}' does not exist; check the path")
    if path.suffix.lower() == ".onnx":
        if device not in ("cpu", "auto"):
            raise UserError(
                f"ONNX models run on the CPU here (ONNX Runtime's CPU provider), not '{device}'"
            )
        return OnnxClassifier(path)
    dev = resolve_device(device)
    try:
        module, props = load_torchscript(path, dev)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"cannot load TorchScript model '{path}': {first}") from exc
    meta = parse_metadata(props, str(path))
    pre, classes = preprocessing_of(meta), list(meta["classes"])
    return Classifier(module, pre, classes, meta["temperature"], meta, dev)
