"""``create_model``: the only way to build a model, from the registry or timm, checked with one
forward pass and, with ``pretrained``, loaded with the hub's weights (``imagewise.models.weights``).

Apart from the registry so that the weights, which read registry entries (their ``hub``), and
the registry do not import each other.
"""

from __future__ import annotations

import difflib
from typing import Any

import timm
import torch
from torch import nn

from imagewise.errors import UserError
from imagewise.models.registry import TIMM_PREFIX, Builder, get_entry, list_models, size_error


def _unknown(name: str) -> UserError:
    """Build the 'unknown model' error, with close registry names when difflib finds some."""
    msg = (
        f"unknown model '{name}'; run 'imagewise models' to list the built-in ones, "
        "or give any timm model name"
    )
    bare = name.removeprefix(TIMM_PREFIX)
    by_lower = {n.lower(): n for n in list_models()}
    close = difflib.get_close_matches(bare.lower(), list(by_lower), n=3, cutoff=0.7)
    if close:
        msg += f" (did you mean {', '.join(by_lower[c] for c in close)}?)"
    return UserError(msg)


def _timm_gradcam_layer(model: nn.Module) -> str | None:
    """Best-effort Grad-CAM layer for an arbitrary timm model: its last feature_info module."""
    info = getattr(model, "feature_info", None)
    try:
        layer = info[-1]["module"]
        model.get_submodule(layer)
    except (TypeError, IndexError, KeyError, AttributeError):
        return None
    return layer


def _takes(builder: Builder, param: str) -> bool:
    import inspect

    return param in inspect.signature(builder).parameters


def set_head_dropout(model: nn.Module, name: str, p: float) -> None:
    """Set the dropout before the classifier: our ``head_drop``, or timm's ``drop_rate``."""
    if not 0 <= p < 1:
        raise UserError(f"--dropout must be in [0, 1), not {p}")
    head = getattr(model, "head_drop", None)
    if isinstance(head, nn.Dropout):
        head.p = p
    elif isinstance(getattr(model, "drop_rate", None), float):
        model.drop_rate = p
    else:
        raise UserError(f"model '{name}' has no dropout before its classifier; drop --dropout")


def _build(name: str, num_classes: int, in_chans: int, img_size: int, pretrained: bool, **kwargs):
    """Build ``name`` from the registry or timm, without the size check."""
    entry = None if name.startswith(TIMM_PREFIX) else get_entry(name)
    if entry is not None:
        if pretrained and not entry.pretrained:
            raise UserError(
                f"model '{name}' has no pretrained weights; train it from scratch or pick a "
                "timm model"
            )
        return entry.builder(num_classes, in_chans, img_size, pretrained=False, **kwargs)
    timm_name = name.removeprefix(TIMM_PREFIX)
    if not timm_name or not timm.is_model(timm_name):
        raise _unknown(name)
    model = timm.create_model(timm_name, num_classes=num_classes, in_chans=in_chans, **kwargs)
    model.gradcam_layer = _timm_gradcam_layer(model)
    return model


def create_model(
    name: str,
    num_classes: int,
    in_chans: int = 3,
    img_size: int = 224,
    pretrained: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Build model ``name`` for ``num_classes`` classes and ``in_chans`` x img_size² inputs.

    Registered names come first; other names (or ``timm:NAME``) go to ``timm.create_model``.
    The model is checked with one eval-mode forward pass on a zero image and returned in train
    mode. ``pretrained`` loads the hub's weights (``imagewise.models.weights``: cache first,
    channels and patch sizes adapted, a new classifier); what was loaded is in
    ``model.weights_report``. Raises ``UserError`` for unknown names, impossible sizes and
    missing weights.
    """
    dropout = kwargs.pop("dropout", None)
    entry = get_entry(name)
    if dropout is not None and entry is not None and _takes(entry.builder, "dropout"):
        kwargs["dropout"], dropout = dropout, None
    sizes = {"num_classes": num_classes, "in_chans": in_chans, "img_size": img_size}
    for what, value in sizes.items():
        if not isinstance(value, int) or value < 1:
            raise UserError(f"{what} must be a positive whole number, got {value!r}")
    try:
        model = _build(name, num_classes, in_chans, img_size, pretrained, **kwargs)
    except TypeError as exc:
        if "unexpected keyword argument" not in str(exc):
            raise
        raise UserError(
            f"model '{name}' does not take option(s) {sorted(kwargs)}; drop them"
        ) from exc
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, in_chans, img_size, img_size))
    except Exception as exc:
        raise size_error(name, img_size) from exc
    if dropout is not None:
        set_head_dropout(model, name, float(dropout))
    model.train()
    if not hasattr(model, "default_loss"):
        model.default_loss = "cross_entropy"
    if pretrained:  # built bare, then loaded by name and shape (imagewise.models.weights)
        from imagewise.models.weights import load_into, pretrained_weights

        model.weights_report = load_into(model, pretrained_weights(name))
    return model
