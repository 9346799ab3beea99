"""Prediction: load a trained classifier and label images, folders and globs."""

from __future__ import annotations

from pathlib import Path

from imagewise.edge.model import ImageModel
from imagewise.edge.results import Prediction
from imagewise.predict.inputs import expand_inputs

# Up to this many images, an ONNX session is made for a small job (``OnnxFile``'s few_images).
FEW_IMAGES = 8


def open_model(run: str | Path, device: str = "cpu", images: int | None = None) -> ImageModel:
    """The model that answers: an exported file by its own runtime, without PyTorch (ONNX,
    OpenVINO, LiteRT, ExecuTorch: ``imagewise.edge.runtimes``), a run folder or TorchScript
    file through ``imagewise.load``. ``images``: how many it will answer, when known (a handful
    gets a lighter ONNX session)."""
    from imagewise.edge.runtimes import is_edge_file

    if is_edge_file(run):
        from imagewise.edge.runtimes import load_model

        few = images is not None and images <= FEW_IMAGES
        return load_model(run, device=device, few_images=few)
    from imagewise.predict.predictor import load

    return load(run, device=device)


def predict(
    run: str | Path,
    inputs: list[str] | str,
    top_k: int = 5,
    device: str = "cpu",
    min_confidence: float | str | None = None,
    target_precision: float | None = None,
    ood: str | None = "auto",
    batch_size: int = 64,
    coverage: float | None = None,
    coverage_per_class: bool = False,
    non_empty_sets: bool = False,
) -> list[Prediction]:
    """Top-k predictions for image files, folders or glob patterns. Under ``torchrun`` the
    batches are spread over the processes; rank 0 gets all the answers, in the same order,
    and the others an empty list (``imagewise.predict.sharding``).

    Args:
        run: a run folder written by ``imagewise train``, or a model file written by
            ``imagewise export`` (``.onnx``, ``.xml``, ``.tflite``, ``.pte``, ``.pt``).
        inputs: image paths, folders (searched recursively) or glob patterns.
        top_k: how many classes to report per image, best first.
        device: ``cpu``, ``cuda`` or ``auto``.
        min_confidence: below this top (calibrated) probability the answer is ``unknown``;
            ``auto``: the lowest threshold reaching ``target_precision`` on the run's
            validation split (fitted once, kept in ``RUN/unknown.json``), or the one an
            exported file carries.
        target_precision: for ``min_confidence="auto"`` (default 0.95).
        ood: the out-of-distribution score of each image (higher: more unusual): ``energy``,
            ``knn`` (distance to the training embeddings; run folders; the reference is made
            once, kept in ``RUN/knn_reference.npz``), ``none``, or ``auto``: knn when the run
            has a reference, else energy.
        batch_size: images per forward pass (decoded in threads while the previous one runs).
        coverage: each prediction's ``prediction_set``: the classes that hold the true class
            with this probability (split conformal on the run's validation split, fitted once
            and kept in ``RUN/conformal.json``, or the fit an exported file carries).
        coverage_per_class: the sets reach ``coverage`` for each class, not only on average
            (class-conditional thresholds).
        non_empty_sets: keep the top class in every set (a set may otherwise be empty for a
            confident answer: see ``imagewise.edge.conformal``).

    Example:
        >>> imagewise.predict("runs/digits", ["img/seven.png"], top_k=3)[0].label  # doctest: +SKIP
        '7'
        >>> p = imagewise.predict("runs/fm", "photos/", min_confidence="auto")  # doctest: +SKIP
        >>> [x.answer for x in p], [x.ood_score for x in p]  # doctest: +SKIP
        >>> p = imagewise.predict("runs/fm", "shirt.png", coverage=0.9)  # doctest: +SKIP
        >>> p[0].prediction_set  # doctest: +SKIP
        ['Shirt', 'T-shirt/top']
    """
    from imagewise.predict.conformal import resolve_sets
    from imagewise.predict.sharding import predict_all, shard_device
    from imagewise.predict.unknown import resolve_min_confidence, resolve_ood

    inputs = [inputs] if isinstance(inputs, str) else [str(i) for i in inputs]
    paths = expand_inputs(inputs)
    # Files named one by one must be readable; files found in folders or globs may be skipped.
    named = {str(Path(i).expanduser()) for i in inputs if Path(i).expanduser().is_file()}
    model = open_model(run, shard_device(device), len(paths))
    threshold = resolve_min_confidence(model, run, min_confidence, target_precision)
    scorer = resolve_ood(model, run, ood)
    sets = resolve_sets(model, run, coverage, coverage_per_class, non_empty_sets)
    return predict_all(
        model, paths, top_k=top_k, batch_size=batch_size, skippable=lambda p: p not in named,
        min_confidence=threshold, ood=scorer, sets=sets,
    )  # fmt: skip
