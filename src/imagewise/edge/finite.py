"""A model whose outputs are not finite must not answer: the check every loader shares.

One forward pass of a plain grey image through the model's own preprocessing finds weights that
hold NaN or inf and finite weights whose outputs overflow alike. Torch-free (edge layer);
``imagewise.predict.finite`` adds the check of a PyTorch model's (and an ONNX file's) weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from imagewise.edge.model import ImageModel

ADVICE = "retrain it, e.g. with a lower --lr"


def outputs_problem(model: ImageModel) -> str | None:
    """Whether a plain grey image, preprocessed as the model expects, gets finite outputs."""
    pre = model.preprocessing
    grey = np.full((1, pre.channels, pre.img_size, pre.img_size), 128, np.uint8)
    logits, probs = model.scores(grey)
    for name, values in (("scores", logits), ("probabilities", probs)):
        if not np.isfinite(values).all():
            return f"its {name} for a plain grey image are not finite (NaN or inf)"
    return None


def unusable_message(source: str | Path, problem: str) -> str:
    """The one line that refuses the model loaded from ``source``."""
    return f"model '{source}' gives no usable answers: {problem}; {ADVICE}"


def unusable_reason(model: ImageModel, source: str | Path) -> str | None:
    """One line saying why ``model`` (loaded from ``source``) must not be used, or None."""
    problem = outputs_problem(model)
    return None if problem is None else unusable_message(source, problem)
