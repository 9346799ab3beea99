"""imagewise: from a folder of labelled images to a classifier that is trained fast, measured,
explained, exported and served.

    >>> import imagewise
    >>> result = imagewise.train("digits", "runs/digits", epochs=5)  # doctest: +SKIP
    >>> imagewise.evaluate("runs/digits").accuracy  # doctest: +SKIP
    >>> imagewise.predict("runs/digits", ["some/digit.png"])[0].label  # doctest: +SKIP
    >>> imagewise.export("runs/digits", format="onnx").path  # doctest: +SKIP
    >>> imagewise.serve("runs/digits", port=8000)  # HTTP API and page  # doctest: +SKIP

The heavy parts (torch, timm) load on first use, so ``import imagewise`` stays quick.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imagewise.version import __version__

# train / evaluate / predict / explain / export / serve are stage packages that are callable
# (see imagewise._stage).
_STAGES = ("train", "evaluate", "predict", "explain", "export", "serve")
_EXPORTS = {
    "load": "imagewise.predict.predictor",
    "create_model": "imagewise.models",
    "list_models": "imagewise.models",
}

if TYPE_CHECKING:
    from imagewise.evaluate.compare import compare_runs as compare
    from imagewise.models import create_model, list_models
    from imagewise.predict.predictor import load


def __getattr__(name: str) -> Any:
    import importlib

    if name in _STAGES:
        return importlib.import_module(f"imagewise.{name}")
    if name == "compare":
        return importlib.import_module("imagewise.evaluate.compare").compare_runs
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'imagewise' has no attribute {name!r}")


__all__ = [
    "__version__",
    "compare",
    "create_model",
    "evaluate",
    "explain",
    "export",
    "list_models",
    "load",
    "predict",
    "serve",
    "train",
]
