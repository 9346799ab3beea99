"""The edge layer: what predicting with an exported model needs, and nothing heavier.

Decoding (``images``), the answers and their formats (``results``), the shared classifier
(``model``), the exported file's metadata (``metadata``), the finite-output check (``finite``)
and ONNX Runtime sessions (``onnx``: ``load_model(path)`` -> ``OnnxModel``) import numpy, Pillow
and onnxruntime only, never PyTorch, timm or matplotlib, so an ONNX file predicts and serves on
a small device with ``pip install "imagewise[runtime]"``. An import-linter contract in
``pyproject.toml`` keeps it so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from imagewise.edge.onnx import OnnxModel, load_model


def __getattr__(name: str) -> Any:
    if name in ("OnnxModel", "load_model"):  # onnx.py imports onnxruntime only when it opens one
        from imagewise.edge import onnx

        return getattr(onnx, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["OnnxModel", "load_model"]
