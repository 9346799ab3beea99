"""Saved things: weights as safetensors, training state as a state-dict checkpoint.

Both are written to a temporary file and renamed into place, so a run killed at any moment
leaves the previous complete file. Checkpoints load with ``weights_only=True``: they hold
tensors, numbers, strings, lists and dicts only, never pickled modules.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from imagewise.errors import UserError
from imagewise.io import atomic_write


def save_weights(
    model: nn.Module, path: str | Path, metadata: dict[str, str] | None = None
) -> None:
    """Save a model's weights as safetensors (shared tensors handled), atomically."""
    from safetensors.torch import save_model

    atomic_write(path, lambda tmp: save_model(model, tmp, metadata=metadata))


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load safetensors weights into ``model`` (strict: every tensor must match)."""
    from safetensors.torch import load_model

    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except Exception as exc:
        raise UserError(f"cannot read weights '{path}': {exc}".splitlines()[0]) from exc
    if missing or unexpected:
        raise UserError(
            f"weights '{path}' do not fit the model ({len(missing)} missing, "
            f"{len(unexpected)} unexpected tensors); was meta.json edited?"
        )
    return model


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Save a training-state dict with ``torch.save``, atomically."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a training-state dict safely (``weights_only=True``)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"cannot read checkpoint '{path}': {exc}".splitlines()[0]) from exc
