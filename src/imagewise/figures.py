"""Figures written as PNG files, atomically.

Built on ``matplotlib.figure.Figure`` rather than ``pyplot``: a Figure draws with the Agg canvas
on its own, so writing a plot neither needs a display nor switches the process's matplotlib
backend (a notebook that imports imagewise keeps its inline plots).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imagewise.io import atomic_write


def new_figure(width: float, height: float) -> Any:
    """An empty ``matplotlib.figure.Figure`` of ``width`` x ``height`` inches."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110)


def save_figure(fig: Any, path: str | Path) -> Path:
    """Lay out ``fig`` and write it to ``path`` as PNG."""
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
