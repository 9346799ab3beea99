"""A run folder's "unknown" threshold and kNN reference, fitted once and kept in the folder.

``RUN/unknown.json``: ``--min-confidence auto``'s threshold, fitted on the run's validation
split (re-created from ``config.yaml`` as training made it) for a target precision.
``RUN/knn_reference.npz``: L2-normalized penultimate embeddings of up to 20,000 training images
(float16), for the kNN out-of-distribution score. Both record the sha256 of the weights they
were fitted with, so a retrained run fits them again; the numerics are in
``imagewise.edge.unknown`` (numpy only), so exported models share them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imagewise.edge.model import ImageModel
from imagewise.edge.multilabel import decision_confidence, predicted_labels
from imagewise.edge.unknown import (
    DEFAULT_TARGET_PRECISION,
    KnnReference,
    KnnScore,
    OodScorer,
    ThresholdFit,
    check_min_confidence,
    check_target_precision,
    edge_scorer,
    exported_min_confidence,
    fit_min_confidence,
)
from imagewise.errors import UserError
from imagewise.io import atomic_write_json, file_sha256, read_json

if TYPE_CHECKING:
    from imagewise.runtime.run_data import RunSplit

log = logging.getLogger("imagewise")

UNKNOWN_FILE = "unknown.json"
REFERENCE_FILE = "knn_reference.npz"
FORMAT = "imagewise-unknown/1"
REFERENCE_IMAGES = 20_000  # training images kept in the kNN reference at most
KNN_K = 5  # the neighbour whose distance is the score (BENCHMARKS.md: out-of-distribution)
CHUNK = 1024  # images decoded and scored at a time


def weights_sha256(run: str | Path) -> str:
    """The sha256 of a run's ``model.safetensors``: what a fitted threshold or reference was
    made with."""
    return file_sha256(Path(run) / "model.safetensors")


def _run_split(run: Path, classes: list[str], name: str) -> RunSplit:
    """The ``name`` split of the run's data as training made it, not yet decoded."""
    from imagewise.runtime.run_data import run_split

    purpose = "fit --min-confidence auto on" if name == "val" else "build the kNN reference from"
    return run_split(run, classes, (name,), None, purpose)


def _decoded_chunks(model: ImageModel, part: RunSplit) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """uint8 images (N, C, H, W) at the model's size and their labels, ``CHUNK`` at a time
    (unreadable files skipped)."""
    from imagewise.runtime.run_data import decode_split

    pre = model.preprocessing
    for start in range(0, len(part.split), CHUNK):
        chunk = part.subset(np.arange(start, min(start + CHUNK, len(part.split))))
        try:
            images, labels = decode_split(chunk, list(model.classes), pre)
        except UserError:  # every file of this chunk unreadable
            continue
        yield images.numpy(), labels


def _fitted(path: Path, digest: str) -> dict[str, Any] | None:
    """A stored fit made with these weights, else None."""
    if not path.is_file():
        return None
    try:
        values = read_json(path)
    except ValueError:
        return None
    if not isinstance(values, dict) or values.get("weights_sha256") != digest:
        return None
    return values


def run_min_confidence(
    model: ImageModel, run: str | Path, target_precision: float = DEFAULT_TARGET_PRECISION
) -> ThresholdFit:
    """``--min-confidence auto`` for a run folder: the threshold fitted on its validation split
    for ``target_precision``, read from ``RUN/unknown.json`` when fitted before with the same
    weights and target, else fitted now and stored there.

    Args:
        model: the run's classifier (``imagewise.load(run)``).
        run: its run folder.
        target_precision: the precision the answers kept must reach on the validation images.

    Example:
        >>> clf = imagewise.load("runs/fm")  # doctest: +SKIP
        >>> run_min_confidence(clf, "runs/fm", 0.99).coverage  # doctest: +SKIP
        0.78
    """
    target = check_target_precision(target_precision)
    path = Path(run) / UNKNOWN_FILE
    digest = weights_sha256(run)
    stored = _fitted(path, digest)
    if stored and abs(float(stored.get("target_precision", -1)) - target) < 1e-12:
        fit = ThresholdFit.from_json(stored)
        log.info("min confidence %s, fitted before (%s)", fit.describe(), path)
        return fit
    part = _run_split(Path(run), list(model.classes), "val")
    confidence, correct = [], []
    for images, labels in _decoded_chunks(model, part):
        _, probs = model.scores(images)
        sure, right = _answer_quality(model, probs, labels)
        confidence.append(sure)
        correct.append(right)
    if not confidence:
        raise UserError(
            f"'{run}' has no validation images to fit --min-confidence auto on; give a number"
        )
    fit = fit_min_confidence(np.concatenate(confidence), np.concatenate(correct), target)
    record = {
        "format": FORMAT,
        **fit.to_json(),
        "temperature": float(model.temperature),
        "weights_sha256": digest,
        "fitted": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    atomic_write_json(path, record)
    log.info("min confidence %s, fitted now and kept in %s", fit.describe(), path)
    return fit


def _answer_quality(
    model: ImageModel, probs: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each validation answer's confidence and whether it is right, as ``ImageModel.answers``
    judges ``unknown``: the top probability and the top class, or for a multi-label model the
    least sure label decision (``decision_confidence``) and the whole label set (labels
    (N, K) 0/1), so the fitted precision is that of exact label sets."""
    if not model.spec.multilabel:
        return probs.max(axis=1), probs.argmax(axis=1) == labels
    thresholds = model.spec.label_thresholds()
    given = predicted_labels(probs, thresholds)
    right = (given == (np.asarray(labels) > 0)).all(axis=1)
    return decision_confidence(probs, thresholds), right


def fitted_unknown(run: str | Path) -> dict[str, Any] | None:
    """What an export carries: the run's stored threshold (``unknown.json``), if it was fitted
    with the current weights; None otherwise."""
    path = Path(run) / UNKNOWN_FILE
    stored = _fitted(path, weights_sha256(run)) if path.is_file() else None
    if stored is None:
        return None
    return ThresholdFit.from_json(stored).to_json()


def resolve_min_confidence(
    model: ImageModel,
    run: str | Path,
    min_confidence: float | str | None,
    target_precision: float | None = None,
) -> float | None:
    """The threshold ``min_confidence`` asks for: None, a probability, or ``auto`` (a run
    folder's fitted one, or the one an exported file carries).

    Raises:
        UserError: a value outside 0..1, or ``auto`` with nothing to fit on.
    """
    if min_confidence is None:
        if target_precision is not None:
            check_target_precision(target_precision)
        return None
    if isinstance(min_confidence, str) and min_confidence != "auto":
        try:
            min_confidence = float(min_confidence)
        except ValueError:
            raise UserError(
                f"--min-confidence must be a probability from 0 to 1 or auto, not "
                f"'{min_confidence}'"
            ) from None
    if not isinstance(min_confidence, str):
        if target_precision is not None:
            raise UserError("--target-precision goes with --min-confidence auto, not a number")
        return check_min_confidence(float(min_confidence))
    if target_precision is not None:
        check_target_precision(target_precision)
    if _is_run_folder(run):
        return run_min_confidence(
            model, run, DEFAULT_TARGET_PRECISION if target_precision is None else target_precision
        ).min_confidence
    fit = exported_min_confidence(model.spec.unknown, str(run), target_precision)
    log.info("min confidence %s, carried by %s", fit.describe(), run)
    return fit.min_confidence


def _is_run_folder(run: str | Path) -> bool:
    return Path(run).expanduser().is_dir()


def knn_reference(
    model: ImageModel, run: str | Path, fit: bool = True, images: int = REFERENCE_IMAGES
) -> KnnReference | None:
    """The run's kNN reference (``RUN/knn_reference.npz``): read when made with the current
    weights, else (with ``fit``) made now from up to ``images`` training images and stored.

    Args:
        model: the run's classifier (``imagewise.load(run)``).
        run: its run folder.
        fit: make the reference when there is none (or it is stale); else return None.
        images: the most training images it holds (a seeded sample).
    """
    path = Path(run) / REFERENCE_FILE
    if not fit and not path.is_file():
        return None  # without hashing the weights: the usual case of --ood auto
    digest = weights_sha256(run)
    if path.is_file():
        reference = KnnReference.load(path)
        if reference.weights_sha256 == digest:
            return reference
        log.info("the kNN reference in %s was made with other weights", path)
    if not fit:
        return None
    part = _run_split(Path(run), list(model.classes), "train")
    total = len(part.split)
    if total > images:
        part = part.subset(np.sort(np.random.default_rng(0).choice(total, images, False)))
    log.info("embedding %d of %d training images for the kNN reference", len(part.split), total)
    embed = penultimate(model)
    parts = [embed(chunk) for chunk, _ in _decoded_chunks(model, part)]
    if not parts:
        raise UserError(f"no readable training images in '{part.resolved}' for the kNN reference")
    from imagewise.edge.unknown import l2_normalized

    embeddings = l2_normalized(np.concatenate(parts)).astype(np.float16)
    reference = KnnReference(embeddings, KNN_K, digest, total)
    reference.save(path)
    log.info("kept the kNN reference of %d images in %s", len(embeddings), path)
    return reference


def penultimate(model: ImageModel) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 images (N, C, H, W) -> the run network's penultimate features (N, D), float32, as
    ``imagewise.features.embed`` computes them.

    Raises:
        UserError: the model is not a run folder's network.
    """
    import torch

    from imagewise.runtime.embedding import Embedder

    if not isinstance(getattr(model, "model", None), torch.nn.Module):
        raise UserError(
            f"--ood knn needs a run folder's network with penultimate features, which "
            f"{model.name} does not give; use --ood energy"
        )
    embedder = Embedder(model)  # the network looked up once, for every batch
    return lambda images: embedder(torch.from_numpy(np.ascontiguousarray(images)))


def resolve_ood(model: ImageModel, run: str | Path, ood: str | None) -> OodScorer | None:
    """The out-of-distribution scorer ``ood`` names for this model.

    ``auto`` (or None): kNN when the run folder has a reference made with its weights, else the
    energy score; ``knn`` makes the reference when missing (run folders only); ``energy``;
    ``none``.
    """
    if ood in (None, "auto"):
        reference = knn_reference(model, run, fit=False) if _is_run_folder(run) else None
        return _knn(model, reference) if reference is not None else edge_scorer("energy")
    if ood == "knn" and _is_run_folder(run):
        reference = knn_reference(model, run)
        assert reference is not None
        return _knn(model, reference)
    return edge_scorer(ood)


def _knn(model: ImageModel, reference: KnnReference) -> KnnScore:
    return KnnScore(reference, penultimate(model))
