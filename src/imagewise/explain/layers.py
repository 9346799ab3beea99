"""Which layer Grad-CAM looks at: found from one forward pass, or named by the user.

For a CNN the target is the last module whose output is still a spatial map (N, C, H, W) with
more than one cell, pooling layers aside: ``layer4`` of a ResNet, ``bn2`` of an EfficientNet,
the last ReLU before VGG's final max-pool. Of nested modules that return the same tensor the
outermost is named (``layer4``, not ``layer4.1``). A Vision Transformer has
no such map after its patch embedding, only tokens (N, T, C); there the target is the last
block's ``norm1`` (as in the grad-cam tutorial for ViT) and a reshape turns the tokens, prefix
tokens dropped, back into a square map.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from imagewise.errors import UserError

ReshapeTransform = Callable[[torch.Tensor], torch.Tensor]


class TokensToMap:
    """Grad-CAM ``reshape_transform`` for transformer tokens: (N, T, C) -> (N, C, h, w).

    The first ``prefix_tokens`` tokens (class and register tokens) are dropped; the rest must
    form a square grid, h = w = sqrt(T - prefix_tokens). A 4-D map passes through unchanged.
    """

    def __init__(self, prefix_tokens: int = 1) -> None:
        self.prefix_tokens = prefix_tokens

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.ndim == 4:
            return tokens
        if tokens.ndim != 3:
            raise UserError(
                f"the Grad-CAM layer gives outputs of shape {tuple(tokens.shape)}; pick a layer "
                "with a spatial map (N, C, H, W) or transformer tokens (N, T, C)"
            )
        grid = tokens[:, self.prefix_tokens :, :]
        side = math.isqrt(grid.shape[1])
        if side * side != grid.shape[1]:
            raise UserError(
                f"{grid.shape[1]} tokens (after {self.prefix_tokens} prefix tokens) do not form "
                "a square grid; pick another layer with --layer"
            )
        return grid.reshape(grid.shape[0], side, side, grid.shape[2]).permute(0, 3, 1, 2)


def require_map(activations: torch.Tensor) -> torch.Tensor:
    """Grad-CAM ``reshape_transform`` for CNN layers: a spatial map passes, anything else fails
    with a message (instead of the package's "Invalid grads shape")."""
    if activations.ndim != 4:
        raise UserError(
            f"the Grad-CAM layer gives outputs of shape {tuple(activations.shape)}; pick a layer "
            "with a spatial map (N, C, H, W)"
        )
    return activations


def _prefix_tokens(model: nn.Module) -> int:
    return int(getattr(model, "num_prefix_tokens", 1))


def _is_map(out: object) -> bool:
    return isinstance(out, torch.Tensor) and out.ndim == 4 and out.shape[-2] * out.shape[-1] > 1


def _is_tokens(out: object) -> bool:
    return isinstance(out, torch.Tensor) and out.ndim == 3


def _forward_order(model: nn.Module, sample: torch.Tensor) -> list[tuple[str, nn.Module, object]]:
    """(name, module, output) of every submodule, in the order their forwards complete."""
    done: list[tuple[str, nn.Module, object]] = []
    handles = []
    modes = {m: m.training for m in model.modules()}
    try:
        for name, module in model.named_modules():
            if name:  # the model itself returns logits
                hook = lambda m, i, o, name=name: done.append((name, m, o))  # noqa: E731
                handles.append(module.register_forward_hook(hook))
        model.eval()
        param = next(model.parameters(), None)
        device = param.device if param is not None else sample.device
        with torch.no_grad():
            model(sample.to(device))
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    return done


def find_target_layer(
    model: nn.Module, sample: torch.Tensor
) -> tuple[str, nn.Module, ReshapeTransform | None]:
    """The layer Grad-CAM should look at, found from one forward pass of ``sample``.

    Args:
        model: a CNN or Vision Transformer.
        sample: an input batch (N, C, H, W) the model accepts; one image is enough.

    Returns:
        (dotted name, module, reshape_transform): the transform is ``None`` for a CNN and turns
        tokens into a map for a transformer.

    Example:
        >>> x = torch.zeros(1, 3, 224, 224)  # doctest: +SKIP
        >>> find_target_layer(resnet, x)[0]  # doctest: +SKIP
        'layer4'
    """
    done = _forward_order(model, sample)
    # A pooled map (and a container that ends in the pooling) only resamples the features.
    pooled = {id(out) for _, module, out in done if "Pool" in type(module).__name__}
    maps = [i for i, (_, _, out) in enumerate(done) if _is_map(out) and id(out) not in pooled]
    last_map = maps[-1] if maps else -1
    # A transformer block (tokens out, with a norm1) that runs after the last spatial map.
    for name, module, out in reversed(done[last_map + 1 :]):
        norm1 = getattr(module, "norm1", None)
        if _is_tokens(out) and isinstance(norm1, nn.Module):
            return f"{name}.norm1", norm1, TokensToMap(_prefix_tokens(model))
    if last_map < 0:
        raise UserError(
            f"{type(model).__name__} has no layer with a spatial map (N, C, H, W) for Grad-CAM; "
            "name one with --layer"
        )
    name, module, _ = done[last_map]
    return name, module, None


def named_target_layer(
    model: nn.Module, name: str
) -> tuple[str, nn.Module, ReshapeTransform | None]:
    """The layer called ``name`` (a dotted name such as ``layer4`` or ``blocks.11.norm1``).

    Args:
        model: the network.
        name: the module's dotted name, as in ``model.named_modules()``.

    Returns:
        (name, module, reshape_transform) as ``find_target_layer``; the transform is set for
        models with prefix tokens (ViT-style) and passes spatial maps through unchanged.
    """
    try:
        module = model.get_submodule(name) if name else None
    except AttributeError:
        module = None
    if module is None:
        top = [n for n, _ in model.named_children()]
        nested = [n for n, m in model.named_modules() if n.count(".") == 1 and list(m.children())]
        hint = f" (nested ones with dots, e.g. {nested[-1]})" if nested else ""
        raise UserError(f"model has no layer '{name}'; its layers are {', '.join(top[:12])}{hint}")
    reshape = TokensToMap(_prefix_tokens(model)) if hasattr(model, "num_prefix_tokens") else None
    return name, module, reshape
