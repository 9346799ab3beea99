"""A run folder's drift reference: the validation split's answers, fitted once and kept.

``RUN/drift_reference.json`` (format ``imagewise-drift/1``) holds what the server's drift
checks compare with (``imagewise.edge.drift.DriftReference``: the energy score's 95th
percentile and the share above it, the mean top probability and its spread, the predicted
class counts) and the sha256 of the weights it was fitted with, so a retrained run fits it
again. ``imagewise export`` carries it in the file's ``drift`` metadata, so a server of the
exported file has the same alarms without PyTorch.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from imagewise.edge.drift import DriftReference, fit_reference
from imagewise.edge.model import ImageModel
from imagewise.errors import UserError
from imagewise.io import atomic_write_json
from imagewise.predict.unknown import _decoded_chunks, _fitted, _is_run_folder, weights_sha256

log = logging.getLogger("imagewise")

DRIFT_FILE = "drift_reference.json"
FIT_IMAGES = 10_000  # validation images fitted on at most (a seeded sample): a bounded start
DRIFT_MODES = ("auto", "on", "off")


def run_drift_reference(
    model: ImageModel, run: str | Path, fit: bool = True
) -> DriftReference | None:
    """The run's drift reference: read from ``RUN/drift_reference.json`` when fitted with the
    current weights, else (with ``fit``) fitted now on up to ``FIT_IMAGES`` validation images
    and stored there.

    Args:
        model: the run's classifier (``imagewise.load(run)``).
        run: its run folder.
        fit: fit the reference when there is none (or it is stale); else return None.

    Raises:
        UserError: the run's data cannot be re-opened or has no validation images.

    Example:
        >>> ref = run_drift_reference(imagewise.load("runs/fm"), "runs/fm")  # doctest: +SKIP
        >>> ref.ood_share, ref.images  # doctest: +SKIP
        (0.05, 6000)
    """
    path = Path(run) / DRIFT_FILE
    digest = weights_sha256(run)
    stored = _fitted(path, digest)
    if stored is not None:
        return DriftReference.from_json(stored, str(path), len(model.classes))
    if not fit:
        return None
    from imagewise.runtime.run_data import run_split

    # Label-free, so a multi-label model's reference is fitted the same way: its energy, its
    # highest label probability and the mix of its most probable label.
    part = run_split(
        Path(run), list(model.classes), ("val",), FIT_IMAGES, "fit the drift reference on"
    )
    logits, probs = [], []
    for images, _ in _decoded_chunks(model, part):
        chunk_logits, chunk_probs = model.scores(images)
        logits.append(chunk_logits)
        probs.append(chunk_probs)
    if not logits:
        raise UserError(
            f"no readable validation images in '{part.resolved}' for the drift reference"
        )
    reference = fit_reference(np.concatenate(logits), np.concatenate(probs), digest)
    atomic_write_json(
        path, {**reference.to_json(), "fitted": datetime.now(UTC).isoformat(timespec="seconds")}
    )
    log.info("drift reference fitted on %d validation images, kept in %s", reference.images, path)
    return reference


def fitted_drift(model: ImageModel, run: str | Path) -> dict | None:
    """What an export carries (its ``drift`` metadata): the run's reference, fitted now when
    missing or stale; None (with a warning) when the run's data cannot be re-opened."""
    try:
        reference = run_drift_reference(model, run)
    except UserError as exc:
        log.warning("the export carries no drift reference: %s", exc)
        return None
    return None if reference is None else reference.to_json()


def resolve_drift(model: ImageModel, path: str | Path, drift: str) -> DriftReference | None:
    """The reference ``drift`` asks for: ``off`` none; ``on`` the run's (fitted now if
    needed) or the one an exported file carries, else one line; ``auto`` the same, but a
    reference that cannot be had is a warning and the server runs without drift checks.

    Raises:
        UserError: an unknown mode, or ``on`` with no reference to be had.
    """
    if drift not in DRIFT_MODES:
        raise UserError(f"--drift must be one of {', '.join(DRIFT_MODES)}, not '{drift}'")
    if drift == "off":
        return None
    try:
        if _is_run_folder(path):
            return run_drift_reference(model, path)
        carried = getattr(model.spec, "drift", None)
        if carried is None:
            raise UserError(
                f"'{path}' carries no drift reference; export it again with this imagewise "
                "(imagewise export RUN fits it on the run's validation images)"
            )
        return DriftReference.from_json(carried, str(path), len(model.classes))
    except UserError as exc:
        if drift == "on":
            raise
        log.warning("no drift checks: %s", exc)
        return None
