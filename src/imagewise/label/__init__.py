"""Label less: which unlabelled images to label next (``label_next``), machine labels for the
ones the model is sure of (``label_auto``), and retraining on the labels given so far
(``retrain``).

``selection`` (numpy, scikit-learn) is imported here; the PyTorch parts on first use, so the
command line builds its parser without importing torch.
"""

from __future__ import annotations

from typing import Any

from imagewise.label.selection import STRATEGIES, Pick, select

__all__ = [
    "STRATEGIES",
    "AutoLabels",
    "LabelQueue",
    "Pick",
    "label_auto",
    "label_next",
    "retrain",
    "select",
]

_LAZY = {
    "LabelQueue": "queue",
    "label_next": "queue",
    "AutoLabels": "auto",
    "label_auto": "auto",
    "retrain": "progress",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"imagewise.label.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'imagewise.label' has no attribute {name!r}")
