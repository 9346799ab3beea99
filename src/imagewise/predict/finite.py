"""A model whose outputs are not finite must not answer: catch it when it is loaded.

Training with too high a learning rate can leave NaN or inf in the weights; such a model
answers every image with NaN probabilities (``8 (nan%)``), which looks like a result. Two cheap
checks at load find it: the weights themselves (a run folder's tensors, an ONNX file's
initializers), then one forward pass of a plain grey image through the classifier's own
preprocessing, for models whose weights are finite but whose outputs overflow (the edge layer's
``imagewise.edge.finite``, which ONNX files loaded without PyTorch get alone).
"""

from __future__ import annotations

from itertools import chain
from pathlib import Path
from typing import Any

import torch

from imagewise.edge.finite import outputs_problem, unusable_message


def _weights_problem(classifier: Any) -> str | None:
    """Where the weights hold NaN or inf (the first such tensor), or None."""
    model = getattr(classifier, "model", None)
    if isinstance(model, torch.nn.Module):
        for name, tensor in chain(model.named_parameters(), model.named_buffers()):
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                return f"its weights hold NaN or inf (first in '{name}')"
        return None
    path = getattr(classifier, "path", None)
    if isinstance(path, Path) and path.suffix.lower() == ".onnx":
        return _onnx_initializers_problem(path)
    return None


def _onnx_initializers_problem(path: Path) -> str | None:
    import numpy as np
    import onnx
    from onnx import numpy_helper

    for init in onnx.load(str(path)).graph.initializer:
        values = numpy_helper.to_array(init)
        if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
            return f"its weights hold NaN or inf (first in '{init.name}')"
    return None


def unusable_reason(classifier: Any, source: str | Path) -> str | None:
    """One line saying why the classifier loaded from ``source`` must not be used, or None.

    Args:
        classifier: what ``imagewise.load`` builds (``Classifier`` or ``OnnxClassifier``).
        source: the run folder or file it came from, named in the message.

    Example:
        >>> unusable_reason(imagewise.load("runs/nan", check=False), "runs/nan")  # doctest: +SKIP
        "model 'runs/nan' gives no usable answers: its weights hold NaN or inf (...); retrain..."
    """
    problem = _weights_problem(classifier) or outputs_problem(classifier)
    return None if problem is None else unusable_message(source, problem)
