"""Test-time augmentation as a module, so every consumer of a model runs the same arithmetic.

A run trained with ``tta: true`` answers with the mean of the logits over views of each image
that its training augmentation taught it to treat alike: the mirror image when it trained with
horizontal flips, and the image shifted by a few pixels (up, down, left, right) when it trained
with translation. A view the network never saw in training hurts: mirror TTA on a network
trained without flips cost 1.3 points on Fashion-MNIST (BENCHMARKS.md), so views are chosen
from the augmentation, not fixed. Wrapping the network (rather than looping in each caller)
means ``evaluate``, ``predict``, ``serve`` and the exported ONNX / TorchScript graphs all
compute exactly this. The views are recorded in ``meta.json`` as ``{"mirror": bool, "shift":
pixels}``; older runs wrote ``true``, which meant the mirror alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from imagewise.errors import UserError

if TYPE_CHECKING:
    from imagewise.edge.spec import InputContract


def tta_views(value: Any) -> dict[str, Any]:
    """The views of a run's ``tta`` entry: ``{"mirror": bool, "shift": px}``; ``{}`` for none.

    Accepts what ``meta.json`` holds now (that dict) and before (``true`` / ``false``).
    """
    if not value:
        return {}
    if value is True:
        return {"mirror": True, "shift": 0}
    if isinstance(value, dict) and set(value) <= {"mirror", "shift"}:
        views = {"mirror": bool(value.get("mirror")), "shift": int(value.get("shift") or 0)}
        return views if views["mirror"] or views["shift"] > 0 else {}
    raise UserError(f"unreadable test-time augmentation entry in the run's metadata: {value!r}")


def views_for_training(hflip: bool, translate: float, img_size: int) -> dict[str, Any]:
    """The views a network trained with this augmentation answers with (``{}`` for none).

    The shift is 1 px per 32 px of image side (1 px at 28 px, 7 px at 224 px), within what
    ``translate`` (a fraction of the side) covered in training.
    """
    shift = max(1, round(img_size / 32)) if translate > 0 else 0
    if shift and shift > translate * img_size:
        shift = int(translate * img_size)
    return tta_views({"mirror": hflip, "shift": shift})


def describe(views: dict[str, Any]) -> str:
    """One line for logs and the ONNX metadata, e.g. ``mean of 10 views: mirror, 1 px shifts``."""
    if not views:
        return "none"
    if views == {"mirror": True, "shift": 0}:
        return "mirror mean (in the graph)"
    parts = (["mirror"] if views["mirror"] else []) + (
        [f"{views['shift']} px shifts"] if views["shift"] else []
    )
    return f"mean of {view_count(views)} views: {', '.join(parts)} (in the graph)"


def view_count(views: dict[str, Any]) -> int:
    """How many times the network runs per image."""
    if not views:
        return 1
    return (2 if views["mirror"] else 1) * (5 if views["shift"] else 1)


def _shifted(x: torch.Tensor, s: int, fill: torch.Tensor) -> list[torch.Tensor]:
    """``x`` (NCHW) moved by ``s`` px right, left, down and up, the gap filled with ``fill``
    (1, C, 1, 1): black, as training's translation fills it. Slices, arithmetic and
    concatenation only, so the exported graph keeps its dynamic batch and every ONNX runtime
    reads it."""
    h, w = x.shape[-2:]
    cols, rows = x[..., :, :s] * 0 + fill, x[..., :s, :] * 0 + fill
    return [
        torch.cat([cols, x[..., :, : w - s]], dim=3),
        torch.cat([x[..., :, s:], cols], dim=3),
        torch.cat([rows, x[..., : h - s, :]], dim=2),
        torch.cat([x[..., s:, :], rows], dim=2),
    ]


class ViewMean(nn.Module):
    """The mean of ``model``'s logits over the image, its mirror (``mirror``) and, for each of
    those, its four shifts by ``shift`` px, the gap filled with ``fill`` (the model's input
    value of a black pixel, per channel); the network runs once per view, so memory stays that
    of one batch."""

    def __init__(
        self, model: nn.Module, mirror: bool, shift: int = 0, fill: Sequence[float] = (0.0,)
    ) -> None:
        super().__init__()
        self.model = model
        self.mirror = mirror
        self.shift = shift
        self.register_buffer(
            "fill", torch.tensor(list(fill), dtype=torch.float32).view(1, -1, 1, 1), False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        images = [x, torch.flip(x, dims=[3])] if self.mirror else [x]
        total: torch.Tensor | None = None
        count = 0
        for image in images:
            views = [image, *_shifted(image, self.shift, self.fill)] if self.shift else [image]
            for view in views:
                out = self.model(view)
                total = out if total is None else total + out
                count += 1
        assert total is not None
        return total / count


def with_tta(model: nn.Module, views: Any, pre: InputContract | None = None) -> nn.Module:
    """``model`` as it answers at inference: wrapped in ``ViewMean`` when ``views`` has any
    (a ``tta_views`` dict, or a run's ``tta`` entry of any age); ``pre`` gives the value of a
    black pixel for the shifted views' gaps (0 without it)."""
    views = tta_views(views)
    if not views:
        return model
    fill = [-m / s for m, s in zip(pre.mean, pre.std, strict=True)] if pre else [0.0]
    wrapped = ViewMean(model, views["mirror"], views["shift"], fill)
    # in the model's own mode: a fresh wrapper would start in training mode, and whoever
    # saves and restores the wrapper's mode (FLOP counting does) would put the model in it
    return wrapped.to(next(model.parameters(), wrapped.fill).device).train(model.training)
