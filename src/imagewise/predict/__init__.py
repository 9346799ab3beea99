"""Prediction: load a trained classifier and label images, folders and globs.

The package is light: its contents load on first use (``import imagewise`` stays quick).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from imagewise.edge.results import Prediction
    from imagewise.predict.base import BaseClassifier, Classifier
    from imagewise.predict.inputs import expand_inputs
    from imagewise.predict.output import FORMATS, format_predictions
    from imagewise.predict.prediction import predict
    from imagewise.predict.predictor import load, load_run


def __getattr__(name: str) -> Any:
    if name in ("predict",):
        from imagewise.predict import prediction

        return getattr(prediction, name)
    if name in ("Prediction",):  # torch-free: the edge layer's
        from imagewise.edge import results

        return results.Prediction
    if name in ("BaseClassifier", "Classifier"):
        from imagewise.predict import base

        return getattr(base, name)
    if name in ("expand_inputs",):
        from imagewise.predict import inputs

        return getattr(inputs, name)
    if name in ("FORMATS", "format_predictions"):
        from imagewise.predict import output

        return getattr(output, name)
    if name in ("load", "load_run"):
        from imagewise.predict import predictor

        return getattr(predictor, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FORMATS",
    "BaseClassifier",
    "Classifier",
    "Prediction",
    "expand_inputs",
    "format_predictions",
    "load",
    "load_run",
    "predict",
]
