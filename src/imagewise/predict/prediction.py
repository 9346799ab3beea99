"""Prediction: load a trained classifier and label images, folders and globs."""

from __future__ import annotations

from pathlib import Path

from imagewise.edge.model import ImageModel
from imagewise.edge.results import Prediction
from imagewise.predict.inputs import expand_inputs


def open_model(run: str | Path, device: str = "cpu") -> ImageModel:
    """The model that answers: an ONNX file without PyTorch (``imagewise.edge.onnx``), a run
    folder or TorchScript file through ``imagewise.load``."""
    if Path(run).suffix.lower() == ".onnx":
        from imagewise.edge.onnx import load_model

        return load_model(run, device=device)
    from imagewise.predict.predictor import load

    return load(run, device=device)


def predict(
    run: str | Path, inputs: list[str] | str, top_k: int = 5, device: str = "cpu"
) -> list[Prediction]:
    """Top-k predictions for image files, folders or glob patterns.

    Args:
        run: a run folder written by ``imagewise train``, or a model file written by
            ``imagewise export`` (``.onnx``, ``.pt``).
        inputs: image paths, folders (searched recursively) or glob patterns.
        top_k: how many classes to report per image, best first.
        device: ``cpu``, ``cuda`` or ``auto``.

    Example:
        >>> imagewise.predict("runs/digits", ["img/seven.png"], top_k=3)[0].label  # doctest: +SKIP
        '7'
    """
    inputs = [inputs] if isinstance(inputs, str) else [str(i) for i in inputs]
    paths = expand_inputs(inputs)
    # Files named one by one must be readable; files found in folders or globs may be skipped.
    named = {str(Path(i).expanduser()) for i in inputs if Path(i).expanduser().is_file()}
    return open_model(run, device).predict(paths, top_k=top_k, skippable=lambda p: p not in named)
