"""What every classifier is: ``preprocess -> predict -> postprocess`` with class names.

``BaseClassifier`` holds what they share (reading images, preprocessing, top-k);
``Classifier`` runs a PyTorch module (a run folder's network, or a TorchScript file);
``imagewise.predict.exported.OnnxClassifier`` an ONNX Runtime session.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from imagewise.data.transforms import normalize
from imagewise.edge.model import ImageModel
from imagewise.edge.results import Prediction
from imagewise.edge.spec import Capabilities, ModelSpec
from imagewise.errors import UserError
from imagewise.runtime.meta import RunMeta

log = logging.getLogger("imagewise")

__all__ = ["BaseClassifier", "Classifier", "Prediction"]


class BaseClassifier(ImageModel):
    """What every PyTorch-facing classifier shares: ``ImageModel``'s reading, top-k and batched
    prediction, plus the tensor calls evaluation, export checks and Grad-CAM use.

    Subclasses say how a normalized batch becomes ``logits``: ``Classifier`` runs a PyTorch
    module, ``OnnxClassifier`` (``imagewise.predict.exported``) an ONNX Runtime session. Both are
    built by ``load``, from a run folder or from an exported file.
    """

    def __init__(
        self,
        spec: ModelSpec,
        run_meta: RunMeta | None = None,
        file_metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(spec, file_metadata)
        self._run_meta = run_meta

    @property
    def name(self) -> str:
        """The model's name (``resnet9p_tiny``), as its run or exported file records it."""
        return self.spec.model or type(getattr(self, "model", self)).__name__

    @property
    def run_meta(self) -> RunMeta:
        """The run folder's metadata (classifiers loaded from a run folder only)."""
        if self._run_meta is None:
            raise UserError("this needs a model loaded from a run folder, not an exported file")
        return self._run_meta

    @property
    def capabilities(self) -> Capabilities:
        """What the model can do: its spec's declaration, except that an exported graph (ONNX,
        TorchScript) has no hooks for Grad-CAM and is exported already."""
        model = getattr(self, "model", None)
        if isinstance(model, torch.nn.Module) and not isinstance(model, torch.jit.ScriptModule):
            return self.spec.capabilities
        return replace(self.spec.capabilities, onnx_export=False, gradcam=False)

    def _read(self, img: Image.Image | str | Path) -> torch.Tensor:
        return torch.from_numpy(self.read(img))

    def preprocess(self, images: Sequence[Image.Image | str | Path]) -> torch.Tensor:
        """Files or PIL images -> a normalized float batch (N, C, H, W)."""
        return normalize(self.spec.input, torch.stack([self._read(img) for img in images]))

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Raw scores of a preprocessed batch (before temperature)."""
        raise NotImplementedError

    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """Calibrated class probabilities of a preprocessed batch (a multi-label model's
        sigmoid per class)."""
        return self.calibrated(self.logits(batch))

    def calibrated(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits -> calibrated probabilities: the softmax over the temperature, or for a
        multi-label model each class's sigmoid (``ModelSpec.probabilities`` in numpy)."""
        if self.spec.multilabel:
            return torch.sigmoid(logits / self.temperature)
        return torch.softmax(logits / self.temperature, dim=1)

    def image_probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Calibrated class probabilities of uint8 images (N, C, H, W) at the model's size."""
        return self.probabilities(normalize(self.spec.input, images))

    def scores(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits and calibrated probabilities of uint8 images (N, C, H, W), as arrays."""
        logits = self.logits(normalize(self.spec.input, torch.from_numpy(images)))
        return logits.numpy(), self.calibrated(logits).numpy()

    def postprocess(
        self, probs: torch.Tensor, sources: Sequence[str], top_k: int = 5
    ) -> list[Prediction]:
        """Probabilities -> top-k predictions with class names."""
        k = max(1, min(top_k, len(self.classes)))
        values, indices = probs.topk(k, dim=1)
        return [
            Prediction(src, [self.spec.classes[i] for i in idx.tolist()], val.tolist())
            for src, val, idx in zip(sources, values, indices, strict=True)
        ]


class Classifier(BaseClassifier):
    """A PyTorch model with its preprocessing, class names and calibration temperature.

    Example:
        >>> clf = imagewise.load("runs/digits")  # doctest: +SKIP
        >>> clf.predict(["seven.png"], top_k=3)[0].label  # doctest: +SKIP
        '7'
    """

    def __init__(
        self,
        model: torch.nn.Module,
        spec: ModelSpec,
        device: torch.device | None = None,
        run_meta: RunMeta | None = None,
        file_metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(spec, run_meta, file_metadata)
        self.device = device or torch.device("cpu")
        # not at import: ONNX-only use needs no timm
        from imagewise.runtime.tta import tta_views, with_tta

        self.model = model.to(self.device).eval()
        self.tta = tta_views(dict(spec.tta))  # {"mirror": bool, "shift": px}, or {} without TTA
        # The model as it answers (the mean over its test-time views when the run has them),
        # built once rather than per batch; ``model`` stays the bare network, for Grad-CAM
        # and features.
        self.network = with_tta(self.model, self.tta, spec.input)

    @torch.no_grad()
    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Raw scores of a preprocessed batch (before temperature)."""
        x = batch.to(self.device).contiguous(memory_format=torch.channels_last)
        return self.network(x).float().cpu()
