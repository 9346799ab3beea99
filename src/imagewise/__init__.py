"""imagewise: from a folder of labelled images to a classifier that is trained fast, measured,
explained, exported and served.

    >>> import imagewise
    >>> result = imagewise.train("digits", "runs/digits", epochs=5)  # doctest: +SKIP
    >>> imagewise.tune("digits", "runs/tune", trials=20).best_params  # doctest: +SKIP
    >>> imagewise.evaluate("runs/digits").accuracy  # doctest: +SKIP
    >>> imagewise.predict("runs/digits", ["some/digit.png"])[0].label  # doctest: +SKIP
    >>> imagewise.export("runs/digits", format="onnx").path  # doctest: +SKIP
    >>> imagewise.serve("runs/digits", port=8000)  # HTTP API and page  # doctest: +SKIP
    >>> imagewise.check_data("photos/").summary()  # before training  # doctest: +SKIP
    >>> imagewise.features("runs/digits", "digits", out="digits.npz").features  # doctest: +SKIP
    >>> imagewise.similar("runs/digits", ["a.png"], "photos/", k=5)  # doctest: +SKIP
    >>> imagewise.card("runs/digits", intended_use="...").markdown_path  # doctest: +SKIP

The public API is plain functions. The heavy parts (torch, timm) load on first use, so
``import imagewise`` stays quick.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

# The stage packages are bound first, on purpose: Python sets a package's attribute to its
# subpackage when that subpackage is first imported, which would replace the function of the
# same name below at that moment. They are light: their contents load on first use.
from imagewise import card as _card_stage  # noqa: F401
from imagewise import evaluate as _evaluate_stage  # noqa: F401
from imagewise import explain as _explain_stage  # noqa: F401
from imagewise import export as _export_stage  # noqa: F401
from imagewise import features as _features_stage  # noqa: F401
from imagewise import predict as _predict_stage  # noqa: F401
from imagewise import serve as _serve_stage  # noqa: F401
from imagewise import train as _train_stage  # noqa: F401
from imagewise import tune as _tune_stage  # noqa: F401
from imagewise.version import __version__

_STAGES = ("train", "tune", "evaluate", "predict", "explain", "export", "serve", "features", "card")
_FUNCTIONS = {
    "train": "imagewise.train.run",
    "distill": "imagewise.train.distill",
    "tune": "imagewise.tune.search",
    "evaluate": "imagewise.evaluate.evaluation",
    "predict": "imagewise.predict.prediction",
    "load": "imagewise.predict.predictor",
    "explain": "imagewise.explain.explanation",
    "export": "imagewise.export.exporter",
    "serve": "imagewise.serve.serving",
    "compare": "imagewise.evaluate.compare",  # as compare_runs
    "check_data": "imagewise.audit.checker",  # as check
    "features": "imagewise.features.extraction",
    "similar": "imagewise.features.similarity",
    "card": "imagewise.card.builder",
    "label_next": "imagewise.label.queue",
    "label_serve": "imagewise.label.server",
    "label_auto": "imagewise.label.auto",
    "create_model": "imagewise.models",
    "list_models": "imagewise.models",
}

_TARGETS = {"compare": "compare_runs", "check_data": "check"}  # names that differ in the module


def _on_first_call(name: str) -> Callable[..., Any]:
    """A plain function that imports its implementation on the first call, with its docs."""
    module, target = _FUNCTIONS[name], _TARGETS.get(name, name)

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), target)(*args, **kwargs)

    call.__qualname__ = name
    # For a stage, the package's dotted name: ``import imagewise.train.loop as loop`` walks
    # attributes from the root, meets this function, and Python then looks the module up as
    # f"{obj.__name__}.loop" in sys.modules, which finds the stage's module.
    call.__name__ = f"imagewise.{name}" if name in _STAGES else name
    call.__doc__ = f"``{module}.{target}``, imported on the first call (see its docstring)."
    return call


if TYPE_CHECKING:  # what type checkers and editors see: the functions themselves
    from imagewise.audit.checker import check as check_data
    from imagewise.card.builder import card
    from imagewise.evaluate.compare import compare_runs as compare
    from imagewise.evaluate.evaluation import evaluate
    from imagewise.explain.explanation import explain
    from imagewise.export.exporter import export
    from imagewise.features.extraction import features
    from imagewise.features.similarity import similar
    from imagewise.label.auto import label_auto
    from imagewise.label.queue import label_next
    from imagewise.label.server import label_serve
    from imagewise.models import create_model, list_models
    from imagewise.predict.prediction import predict
    from imagewise.predict.predictor import load
    from imagewise.serve.serving import serve
    from imagewise.train.distill import distill
    from imagewise.train.run import train
    from imagewise.tune.search import tune
else:
    train = _on_first_call("train")
    distill = _on_first_call("distill")
    tune = _on_first_call("tune")
    evaluate = _on_first_call("evaluate")
    predict = _on_first_call("predict")
    load = _on_first_call("load")
    explain = _on_first_call("explain")
    export = _on_first_call("export")
    serve = _on_first_call("serve")
    compare = _on_first_call("compare")
    check_data = _on_first_call("check_data")
    features = _on_first_call("features")
    similar = _on_first_call("similar")
    card = _on_first_call("card")
    label_next = _on_first_call("label_next")
    label_serve = _on_first_call("label_serve")
    label_auto = _on_first_call("label_auto")
    create_model = _on_first_call("create_model")
    list_models = _on_first_call("list_models")

__all__ = [
    "__version__",
    "card",
    "check_data",
    "compare",
    "create_model",
    "distill",
    "evaluate",
    "explain",
    "export",
    "features",
    "label_auto",
    "label_next",
    "label_serve",
    "list_models",
    "load",
    "predict",
    "serve",
    "similar",
    "train",
    "tune",
]
