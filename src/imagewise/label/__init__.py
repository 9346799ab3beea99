"""Label less: which unlabelled images to label next (``label_next``).

``selection`` (numpy, scikit-learn) is imported here; ``queue`` (PyTorch) on first use, so the
command line builds its parser without importing torch.
"""

from __future__ import annotations

from typing import Any

from imagewise.label.selection import STRATEGIES, Pick, select

__all__ = ["STRATEGIES", "LabelQueue", "Pick", "label_next", "select"]


def __getattr__(name: str) -> Any:
    if name in ("LabelQueue", "label_next"):
        from imagewise.label import queue

        return getattr(queue, name)
    raise AttributeError(f"module 'imagewise.label' has no attribute {name!r}")
