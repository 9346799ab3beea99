"""A trained classifier ready to use: ``preprocess -> predict -> postprocess``.

``load(run)`` rebuilds the model from the run folder's ``meta.json`` and safetensors weights;
the preprocessing (size, channels, mean/std) and class names come from the same metadata, so
prediction sees images exactly as training did.
"""

from __future__ import annotations

import logging
from pathlib import Path

from imagewise.errors import UserError
from imagewise.predict.base import BaseClassifier, Classifier
from imagewise.runtime.runs import RunFolder

log = logging.getLogger("imagewise")


def load(run: str | Path, device: str = "cpu", check: bool = True) -> BaseClassifier:
    """Load a trained classifier from a run folder or an exported model file.

    Args:
        run: the run folder written by ``imagewise train``, or a file written by
            ``imagewise export``: ``.onnx`` (an ``OnnxClassifier``, run by ONNX Runtime on the
            CPU) or ``.pt`` (TorchScript). All answer the same ``preprocess`` /
            ``probabilities`` / ``postprocess`` / ``predict`` calls.
        device: ``cpu``, ``cuda`` or ``auto`` (ONNX files: the CPU).
        check: refuse a model whose weights or outputs are not finite (NaN or inf), which
            would answer every image with NaN probabilities; ``imagewise.predict.finite``
            says how. Off: the caller checks (the server stays up and reports it).

    Raises:
        UserError: the model cannot be read, or (with ``check``) its outputs are not finite.
    """
    from imagewise.predict.finite import unusable_reason

    if _is_exported(run):
        from imagewise.predict.exported import load_exported

        classifier: BaseClassifier = load_exported(Path(run).expanduser(), device)
    else:
        classifier = load_run(run, device)
    if check and (reason := unusable_reason(classifier, run)):
        raise UserError(reason)
    return classifier


def _is_exported(path: str | Path) -> bool:
    from imagewise.edge.runtimes import is_edge_file

    return is_edge_file(path) or Path(path).suffix.lower() == ".pt"


def load_run(run: str | Path, device: str = "cpu") -> Classifier:
    """Load the PyTorch classifier of a run folder (what evaluation and Grad-CAM need).

    Args:
        run: the run folder written by ``imagewise train``.
        device: ``cpu``, ``cuda`` or ``auto``.
    """
    from imagewise.runtime.device import resolve_device
    from imagewise.runtime.network import load_network

    if _is_exported(run):
        raise UserError(
            f"'{run}' is an exported model; this needs the run folder it was exported from"
        )
    folder = RunFolder.of(run)
    meta = folder.read_meta()
    return Classifier(load_network(folder, meta), meta.spec, resolve_device(device), meta)
