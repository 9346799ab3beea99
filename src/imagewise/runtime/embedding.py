"""Embeddings of a batch: the penultimate layer (the classifier's input) or any named layer.

The penultimate features are what every model answers to ``forward_head(forward_features(x),
pre_logits=True)`` (timm's interface, which the built-in models share); a module without it
gets a forward pre-hook on its final classifier (``get_classifier()``) instead. A named layer is
read with a forward hook, and the forward stops there: a 4-D map is global-average-pooled to
(N, C), transformer tokens (N, T, C) are averaged over the tokens, anything else is flattened.

The network is the run's bare model (no test-time views), in eval mode, fed channels-last
float32 batches, so that the same images give the same bytes.

It sits in the runtime layer because two stages use it: feature extraction and similar-image
search (``imagewise.features``), and the nearest-neighbour out-of-distribution score of
prediction (``imagewise.predict.unknown``).
"""

from __future__ import annotations

import difflib
from typing import Any

import numpy as np
import torch
from torch import nn

from imagewise.data.transforms import normalize
from imagewise.errors import UserError

PENULTIMATE = "penultimate"


class _Reached(Exception):
    """Raised by a layer hook once the wanted output is captured: the rest of the net is moot."""


def network_of(classifier: Any) -> nn.Module:
    """The bare PyTorch model of a classifier loaded from a run folder (``imagewise.load``)."""
    model = getattr(classifier, "model", None)
    if not isinstance(model, nn.Module) or isinstance(model, torch.jit.ScriptModule):
        raise UserError(
            "features need the run folder the model was trained into, not an exported file"
        )
    return model


def classifier_layer(model: nn.Module) -> str:
    """Dotted name of the model's final classifier (``fc``, ``head.fc``), or '' if it has none."""
    from imagewise.models.weights import classifier_names

    names = sorted(classifier_names(model))
    return names[0].rsplit(".", 1)[0] if names and "." in names[0] else ""


def penultimate_name(model: nn.Module) -> str:
    """How the penultimate layer is recorded: ``penultimate (input of fc)``."""
    head = classifier_layer(model)
    return f"{PENULTIMATE} (input of {head})" if head else PENULTIMATE


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name``; a wrong name is one line naming a few valid ones."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        pass
    names = [n for n, _ in model.named_modules() if n]
    close = difflib.get_close_matches(name, names, n=4, cutoff=0.5)
    top = [n for n, _ in model.named_children()]
    shown = list(dict.fromkeys([*close, *top]))[:10]
    nested = [n for n in names if "." in n]
    hint = f", dotted names for nested ones, e.g. {nested[-1]}" if nested else ""
    raise UserError(
        f"model has no layer '{name}'; valid names include {', '.join(shown)} "
        f"({len(names)} layers in all{hint})"
    )


def pool(output: torch.Tensor) -> torch.Tensor:
    """A layer's output as (N, D): 4-D maps averaged over space, tokens over the tokens."""
    if output.ndim == 4:
        return output.float().mean(dim=(2, 3))
    if output.ndim == 3:
        return output.float().mean(dim=1)
    return output.float().reshape(output.shape[0], -1)


def _penultimate(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    features, head = getattr(model, "forward_features", None), getattr(model, "forward_head", None)
    if callable(features) and callable(head):
        return head(features(x), pre_logits=True)
    get = getattr(model, "get_classifier", None)
    classifier = get() if callable(get) else None
    if not isinstance(classifier, nn.Module):
        raise UserError(
            f"{type(model).__name__} has no forward_head or classifier layer; name a layer "
            "with --layer"
        )
    return _hooked(model, classifier, x, inputs=True)


def _hooked(model: nn.Module, module: nn.Module, x: torch.Tensor, inputs: bool) -> torch.Tensor:
    """The input (or output) of ``module`` during a forward of ``x``, stopping there."""
    seen: list[torch.Tensor] = []

    def grab(value: Any) -> None:
        value = value[0] if isinstance(value, tuple | list) else value
        if not isinstance(value, torch.Tensor):
            raise UserError(f"layer gives a {type(value).__name__}, not a tensor; pick another")
        seen.append(value)
        raise _Reached

    if inputs:
        handle = module.register_forward_pre_hook(lambda m, args: grab(args))
    else:
        handle = module.register_forward_hook(lambda m, args, out: grab(out))
    try:
        model(x)
    except _Reached:
        pass
    finally:
        handle.remove()
    if not seen:
        raise UserError("the layer did not run in the model's forward pass; pick another")
    return seen[0]


class Embedder:
    """``embed`` for many batches of one classifier: the network, the layer and the device are
    looked up once, when it is made (a wrong layer name fails then, before any image is read).

    Args:
        classifier: a classifier loaded from a run folder (``imagewise.load(run)``).
        layer: ``None`` for the penultimate layer, or a module's dotted name (see ``embed``).
    """

    def __init__(self, classifier: Any, layer: str | None = None) -> None:
        self.model = network_of(classifier)
        self.preprocessing = classifier.preprocessing
        self.module = resolve_layer(self.model, layer) if layer else None
        self.device = next(self.model.parameters(), torch.empty(0)).device

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, batch_size: int = 256) -> np.ndarray:
        """float32 (N, D) features of uint8 images (N, C, H, W), ``batch_size`` a forward."""
        model, pre = self.model, self.preprocessing
        if images.ndim != 4 or images.shape[1] != pre.channels:
            raise UserError(
                f"expected uint8 images (N, {pre.channels}, H, W) for this model, "
                f"got {tuple(images.shape)}"
            )
        was_training = model.training
        model.eval()
        out = []
        try:
            for start in range(0, len(images), batch_size):
                x = normalize(pre, images[start : start + batch_size]).to(self.device)
                x = x.contiguous(memory_format=torch.channels_last)
                if self.module is None:
                    y = _penultimate(model, x)
                else:
                    y = _hooked(model, self.module, x, False)
                out.append(pool(y).cpu().numpy())
        finally:
            model.train(was_training)
        if not out:
            return np.zeros((0, 0), dtype=np.float32)
        return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)


def embed(
    classifier: Any, images: torch.Tensor, layer: str | None = None, batch_size: int = 256
) -> np.ndarray:
    """Features of uint8 images (N, C, H, W) with the classifier's preprocessing.

    Args:
        classifier: a classifier loaded from a run folder (``imagewise.load(run)``).
        images: uint8 (N, C, H, W) with the model's channels; resized to its size if needed.
        layer: ``None`` for the penultimate layer (the classifier's input), or a module's dotted
            name (``layer3``, ``blocks.11``): 4-D outputs are global-average-pooled.
        batch_size: images per forward pass.

    Returns:
        float32 (N, D).

    Example:
        >>> clf = imagewise.load("runs/fm")  # doctest: +SKIP
        >>> embed(clf, images).shape  # doctest: +SKIP
        (100, 128)

    For many batches, ``Embedder(classifier, layer)`` looks the network and layer up once.
    """
    return Embedder(classifier, layer)(images, batch_size)
