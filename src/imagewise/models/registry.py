"""Model registry: ``register_model`` stores builders by name, with what each model can do;
``create_model`` (``imagewise.models.factory``) is the only way in.

Names not in the registry fall through to timm (bare, or with the explicit ``timm:`` prefix).
Every model that comes out of ``create_model`` answers the same timm-style questions:
``forward``, ``forward_features``, ``forward_head(x, pre_logits=...)``, ``reset_classifier``,
``num_features``, ``num_classes``, ``gradcam_layer`` and ``default_loss``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from imagewise.edge.spec import Capabilities
from imagewise.errors import UserError

Builder = Callable[..., nn.Module]


class Batches(Protocol):
    """A split as a one-pass fit reads it: its size, then (normalized float32 images
    (N, C, H, W), int64 labels (N,)) chunks in order, as evaluation preprocesses them."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]: ...


OnePassFit = Callable[..., dict[str, Any]]
"""``fit(model, train: Batches, val: Batches, *, seed: int) -> summary``: fits ``model`` in
place, without the training loop; the summary (JSON values) goes into meta.json's
``training.classical`` and must hold ``train_accuracy``, ``train_loss``, ``val_accuracy``,
``val_loss`` (NaN without validation images), ``train_images``, ``val_images`` and
``train_seconds``."""

TIMM_PREFIX = "timm:"


@dataclass(frozen=True)
class ModelEntry:
    """One registered model: its builder and what ``imagewise models`` shows about it."""

    name: str
    builder: Builder
    family: str
    description: str
    pretrained: bool
    # What the model can do, carried into meta.json (imagewise.edge.spec.Capabilities) so no
    # stage tests a model's name: fitted by the loop ("gradient") or in one pass by its own
    # ``fitter`` ("one_pass"), exportable to ONNX / TorchScript, differentiable for Grad-CAM.
    fit: str = "gradient"
    onnx_export: bool = True
    gradcam: bool = True
    hub: str = ""  # the timm architecture whose pretrained weights it starts from
    fitter: OnePassFit | None = None  # how a one-pass model is fitted (``OnePassFit``)


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str,
    *,
    description: str = "",
    family: str | None = None,
    pretrained: bool = False,
    fit: str = "gradient",
    onnx_export: bool = True,
    gradcam: bool = True,
    hub: str = "",
    fitter: OnePassFit | None = None,
) -> Callable[[Builder], Builder]:
    """Return a decorator that registers a builder under ``name``.

    The builder is called as ``builder(num_classes, in_chans, img_size, pretrained=False,
    **kwargs)`` and returns an ``nn.Module``. ``family`` defaults to the builder's module name;
    ``pretrained`` says whether pretrained weights exist, ``hub`` the timm architecture that
    holds them (``imagewise.models.weights``; default ``name``); ``fit``,
    ``onnx_export`` and ``gradcam`` declare what the model can do (see ``ModelEntry``); a
    ``one_pass`` model gives its ``fitter`` (``OnePassFit``). A name that is already registered
    is refused with ``ValueError``.
    """

    if fit not in ("gradient", "one_pass"):
        raise ValueError(f"model '{name}': fit must be 'gradient' or 'one_pass', not {fit!r}")
    if (fit == "one_pass") != (fitter is not None):
        raise ValueError(f"model '{name}': a fitter goes with fit='one_pass', and only with it")
    if not (isinstance(onnx_export, bool) and isinstance(gradcam, bool)):
        raise ValueError(f"model '{name}': onnx_export and gradcam must be True or False")
    hub = (hub or name) if pretrained else ""

    def decorator(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model '{name}' is already registered")
        fam = family or builder.__module__.rsplit(".", 1)[-1]
        _REGISTRY[name] = ModelEntry(
            name, builder, fam, description, pretrained, fit, onnx_export, gradcam, hub, fitter
        )
        return builder

    return decorator


def list_models() -> list[str]:
    """Return the registered model names, sorted."""
    return sorted(_REGISTRY)


def is_registered(name: str) -> bool:
    """Return whether ``name`` is a registered (built-in) model."""
    return name in _REGISTRY


def get_entry(name: str) -> ModelEntry | None:
    """Return the registry entry for ``name``, or ``None`` when it is not registered."""
    return _REGISTRY.get(name)


def model_capabilities(name: str) -> Capabilities:
    """What the registry declares model ``name`` can do (timm models: everything)."""
    return Capabilities.of(get_entry(name))


def size_error(name: str, img_size: int) -> UserError:
    """Return the error for a model that cannot take ``img_size`` inputs."""
    return UserError(f"model '{name}' cannot take {img_size}x{img_size} inputs; try --img-size 224")


class ClassifierBase(nn.Module):
    """Base of the built-in models: timm-style features / head split.

    Subclasses build ``self.features`` (or override ``forward_features``) and ``self.pre_logits``
    (pooling plus any hidden layers, ending in an ``(N, num_features)`` embedding), then call
    ``_init_head``. ``forward`` is ``forward_head(forward_features(x))``.
    """

    default_loss: str = "cross_entropy"
    gradcam_layer: str = ""
    logit_scale: float = 1.0

    def _init_head(self, num_features: int, num_classes: int, drop: float = 0.0) -> None:
        """Create the classifier: dropout ``drop`` then ``Linear(num_features, num_classes)``."""
        self.num_features = num_features
        self.head_hidden_size = num_features
        self.num_classes = num_classes
        self.head_drop = nn.Dropout(drop)
        self.fc = nn.Linear(num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the last feature map, shape (N, C, H, W)."""
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Map features to logits, or to the (N, num_features) embedding when ``pre_logits``."""
        x = self.pre_logits(x)
        if pre_logits:
            return x
        x = self.fc(self.head_drop(x))
        return x * self.logit_scale if self.logit_scale != 1.0 else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits, shape (N, num_classes)."""
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        """Return the final classification layer."""
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the final layer with a fresh one for ``num_classes`` classes."""
        ref = self.fc.weight
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes, device=ref.device, dtype=ref.dtype)
