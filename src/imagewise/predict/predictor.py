"""A trained classifier ready to use: ``preprocess -> predict -> postprocess``.

``load(run)`` rebuilds the model from the run folder's ``meta.json`` and safetensors weights;
the preprocessing (size, channels, mean/std) and class names come from the same metadata, so
prediction sees images exactly as training did.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from imagewise.data.decode import (
    UnreadableImageError,
    load_image,
    normalize_mode,
    pil_to_tensor,
    resize_image,
)
from imagewise.data.transforms import Preprocessing
from imagewise.errors import UserError
from imagewise.runs import RunFolder

log = logging.getLogger("imagewise")


@dataclass
class Prediction:
    """The top-k classes of one image, best first."""

    source: str
    classes: list[str]
    probabilities: list[float]

    @property
    def label(self) -> str:
        return self.classes[0]

    @property
    def confidence(self) -> float:
        return self.probabilities[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "top_k": [
                {"class": c, "probability": round(p, 6)}
                for c, p in zip(self.classes, self.probabilities, strict=True)
            ],
        }


class BaseClassifier:
    """What every classifier shares: reading images, preprocessing, top-k with class names.

    Subclasses say how a normalized batch becomes ``logits``: ``Classifier`` runs a PyTorch
    module, ``OnnxClassifier`` (``imagewise.predict.exported``) an ONNX Runtime session. Both are
    built by ``load``, from a run folder or from an exported file.
    """

    def __init__(
        self,
        preprocessing: Preprocessing,
        classes: list[str],
        temperature: float = 1.0,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.preprocessing = preprocessing
        self.classes = classes
        self.temperature = temperature
        self.meta = meta or {}

    def _read(self, img: Image.Image | str | Path) -> torch.Tensor:
        pre = self.preprocessing
        if isinstance(img, Image.Image):
            return pil_to_tensor(resize_image(normalize_mode(img, pre.channels), pre.img_size))
        try:
            return pil_to_tensor(load_image(img, pre.channels, pre.img_size))
        except UnreadableImageError as exc:
            raise UserError(
                f"cannot read image '{exc.path}' ({exc.reason}); give a JPEG, PNG, BMP, "
                "TIFF, WebP or GIF file"
            ) from exc

    def preprocess(self, images: Sequence[Image.Image | str | Path]) -> torch.Tensor:
        """Files or PIL images -> a normalized float batch (N, C, H, W)."""
        return self.preprocessing.normalize(torch.stack([self._read(img) for img in images]))

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Raw scores of a preprocessed batch (before temperature)."""
        raise NotImplementedError

    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """Calibrated class probabilities of a preprocessed batch."""
        return torch.softmax(self.logits(batch) / self.temperature, dim=1)

    def image_probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Calibrated class probabilities of uint8 images (N, C, H, W) at the model's size."""
        return self.probabilities(self.preprocessing.normalize(images))

    def postprocess(
        self, probs: torch.Tensor, sources: Sequence[str], top_k: int = 5
    ) -> list[Prediction]:
        """Probabilities -> top-k predictions with class names."""
        k = max(1, min(top_k, len(self.classes)))
        values, indices = probs.topk(k, dim=1)
        return [
            Prediction(src, [self.classes[i] for i in idx.tolist()], val.tolist())
            for src, val, idx in zip(sources, values, indices, strict=True)
        ]

    def predict(
        self,
        images: Iterable[Image.Image | str | Path],
        top_k: int = 5,
        batch_size: int = 64,
        skippable: Callable[[str], bool] | None = None,
    ) -> list[Prediction]:
        """Top-k predictions for image files or PIL images, in order.

        Args:
            images: file paths or PIL images.
            top_k: classes per image.
            batch_size: images per forward pass.
            skippable: for files this returns True for, an unreadable file is skipped with a
                warning instead of failing the call (used for files found in folders).
        """
        items = [images] if isinstance(images, str | Path | Image.Image) else list(images)
        out: list[Prediction] = []
        for start in range(0, len(items), batch_size):
            tensors, names = [], []
            for i, item in enumerate(items[start : start + batch_size]):
                name = f"<image {start + i}>" if isinstance(item, Image.Image) else str(item)
                try:
                    tensors.append(self._read(item))
                except UserError as exc:
                    if skippable is None or not skippable(name):
                        raise
                    log.warning("skipped: %s", str(exc).split(";")[0])
                    continue
                names.append(name)
            if tensors:
                probs = self.image_probabilities(torch.stack(tensors))
                out.extend(self.postprocess(probs, names, top_k))
        return out


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
        preprocessing: Preprocessing,
        classes: list[str],
        temperature: float = 1.0,
        meta: dict[str, Any] | None = None,
        device: torch.device | None = None,
        tta: object = None,
    ) -> None:
        super().__init__(preprocessing, classes, temperature, meta)
        self.device = device or torch.device("cpu")
        # not at import: ONNX-only use needs no timm
        from imagewise.models.tta import tta_views, with_tta

        self.model = model.to(self.device).eval()
        self.tta = tta_views(tta)  # {"mirror": bool, "shift": px}, or {} without TTA
        # The model as it answers (the mean over its test-time views when the run has them),
        # built once rather than per batch; ``model`` stays the bare network, for Grad-CAM
        # and features.
        self.network = with_tta(self.model, self.tta, preprocessing)

    @torch.no_grad()
    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Raw scores of a preprocessed batch (before temperature)."""
        x = batch.to(self.device).contiguous(memory_format=torch.channels_last)
        return self.network(x).float().cpu()


def load(run: str | Path, device: str = "cpu", check: bool = True) -> BaseClassifier:
    """Load a trained classifier from a run folder or an exported model file.

    Args:
        run: the run folder written by ``imagewise train``, or a file written by
            ``imagewise export``: ``.onnx`` (an ``OnnxClassifier``, run by ONNX Runtime on the
            CPU) or ``.pt`` (TorchScript). All answer the same ``preprocess`` /
            ``probabilities`` / ``postprocess`` / ``predict`` calls.
        device: ``cpu``, ``cuda`` or ``auto`` (ONNX files: the CPU).
        check: refuse a model whose weights or outputs are not finite (NaN or inf), which
            would answer every image with NaN probabilities; ``imagewise.predict.finite``
            says how. Off: the caller checks (the server stays up and reports it).

    Raises:
        UserError: the model cannot be read, or (with ``check``) its outputs are not finite.
    """
    from imagewise.predict.finite import unusable_reason

    if _is_exported(run):
        from imagewise.predict.exported import load_exported

        classifier: BaseClassifier = load_exported(Path(run).expanduser(), device)
    else:
        classifier = load_run(run, device)
    if check and (reason := unusable_reason(classifier, run)):
        raise UserError(reason)
    return classifier


def _is_exported(path: str | Path) -> bool:
    return Path(path).suffix.lower() in (".onnx", ".pt")


def load_run(run: str | Path, device: str = "cpu") -> Classifier:
    """Load the PyTorch classifier of a run folder (what evaluation and Grad-CAM need).

    Args:
        run: the run folder written by ``imagewise train``.
        device: ``cpu``, ``cuda`` or ``auto``.
    """
    from imagewise.models import create_model
    from imagewise.train.checkpoint import load_weights
    from imagewise.train.device import resolve_device

    if _is_exported(run):
        raise UserError(
            f"'{run}' is an exported model; this needs the run folder it was exported from"
        )
    folder = RunFolder.of(run)
    meta = folder.read_meta()
    pre = Preprocessing(**meta["preprocessing"])
    spec = meta["model"]
    model = create_model(
        spec["name"],
        num_classes=spec["num_classes"],
        in_chans=pre.channels,
        img_size=pre.img_size,
        pretrained=False,
        **spec.get("kwargs", {}),
    )
    load_weights(model, folder.weights)
    model = model.to(memory_format=torch.channels_last)
    return Classifier(
        model,
        pre,
        list(meta["classes"]),
        float(meta.get("temperature", 1.0)),
        meta,
        resolve_device(device),
        tta=_run_tta(folder, meta),
    )


def _run_tta(folder: RunFolder, meta: dict[str, Any]) -> object:
    """The run's test-time augmentation entry (``meta.json``, else its config's ``tta``)."""
    if "tta" in meta:
        return meta["tta"]
    if not folder.config.is_file():  # runs written before meta.json carried it
        return False
    from imagewise.config import load_config_file

    return load_config_file(folder.config).train.tta  # then, true meant the mirror alone
