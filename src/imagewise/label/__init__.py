"""Label less: which unlabelled images to label next (``label_next``)."""

from __future__ import annotations

from imagewise.label.queue import LabelQueue, label_next
from imagewise.label.selection import STRATEGIES, Pick, select

__all__ = ["STRATEGIES", "LabelQueue", "Pick", "label_next", "select"]
