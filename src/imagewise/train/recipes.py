"""Recipes: named sets of training settings, chosen by measurement (BENCHMARKS.md).

A recipe sits between the defaults and the config file: defaults < recipe < --config < flags,
so any part of it can still be changed. The recipe's name is kept in ``config.yaml``.
"""

from __future__ import annotations

from typing import Any

from imagewise.errors import UserError

RECIPES: dict[str, dict[str, Any]] = {
    # The defaults as they are: resnet9p_tiny on small images, 10 epochs, AdamW one-cycle.
    "default": {},
    # Fewest minutes to 93% on a CPU: 6 epochs of larger batches, light augmentation (93.21%
    # test in 165 s on 2 cores, BENCHMARKS.md).
    "fast": {
        "epochs": 6,
        "batch_size": 256,
        "augment": "light",
        "label_smoothing": 0.1,
    },
    # The most accuracy inside a 20-minute CPU budget on 28 px data: the default network
    # (resnet9p_tiny there) for 38 epochs, answering with the mean over mirror and 1 px shifted
    # views (10 per image; BENCHMARKS.md).
    "accurate": {
        "epochs": 38,
        "batch_size": 128,
        "augment": "standard",
        "label_smoothing": 0.1,
        "tta": True,
    },
}


def recipe_options(name: str) -> dict[str, Any]:
    """The flat options of recipe ``name`` (see ``imagewise.config.OPTIONS``)."""
    if name not in RECIPES:
        raise UserError(f"unknown recipe '{name}'; choose one of {', '.join(RECIPES)}")
    return dict(RECIPES[name])
