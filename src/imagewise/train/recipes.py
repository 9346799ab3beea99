"""Recipes: named sets of training settings, chosen by measurement (BENCHMARKS.md).

A recipe sits between the defaults and the config file: defaults < recipe < --config < flags,
so any part of it can still be changed. The recipe's name is kept in ``config.yaml``.
"""

from __future__ import annotations

from typing import Any

from imagewise.errors import UserError

RECIPES: dict[str, dict[str, Any]] = {
    # The defaults as they are: resnet9_tiny on small images, 10 epochs, AdamW one-cycle.
    "default": {},
    # Fewest minutes to a good model on a CPU: fewer, larger batches, light augmentation.
    "fast": {
        "epochs": 7,
        "batch_size": 256,
        "augment": "light",
        "label_smoothing": 0.1,
    },
    # The most accuracy inside a 20-minute CPU budget on 28 px data: the half-width ResNet-9
    # (4x the FLOPs of resnet9_tiny), affordable since bf16 autocast halved the step time.
    "accurate": {
        "model": "resnet9_slim",
        "epochs": 12,
        "batch_size": 128,
        "augment": "standard",
        "label_smoothing": 0.1,
    },
}


def recipe_options(name: str) -> dict[str, Any]:
    """The flat options of recipe ``name`` (see ``imagewise.config.OPTIONS``)."""
    if name not in RECIPES:
        raise UserError(f"unknown recipe '{name}'; choose one of {', '.join(RECIPES)}")
    return dict(RECIPES[name])
