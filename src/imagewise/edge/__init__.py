"""The edge layer: what predicting with an exported model needs, and nothing heavier.

Decoding (``images``), the answers and their formats (``results``), the shared classifier
(``model``), the exported file's metadata (``metadata``), the finite-output check (``finite``)
and the runtimes of exported files (``runtimes``: ``load_model(path)`` picks ONNX Runtime,
OpenVINO, LiteRT or ExecuTorch by the file's suffix) import numpy, Pillow and that one runtime
only, never PyTorch, timm or matplotlib, so an exported file predicts and serves on a small
device with ``pip install "imagewise[runtime]"`` (or ``[openvino]``, ``[litert]``,
``[executorch]``). An import-linter contract in ``pyproject.toml`` keeps it so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from imagewise.edge.onnx import OnnxModel
    from imagewise.edge.runtimes import load_model


def __getattr__(name: str) -> Any:
    if name == "OnnxModel":  # onnx.py imports onnxruntime only when it opens one
        from imagewise.edge import onnx

        return onnx.OnnxModel
    if name == "load_model":
        from imagewise.edge import runtimes

        return runtimes.load_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["OnnxModel", "load_model"]
