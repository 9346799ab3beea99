"""A run folder's conformal thresholds (``--coverage``), fitted once and kept in the folder.

``RUN/conformal.json`` (format ``imagewise-conformal/1``): the thresholds of the default score
(``imagewise.edge.conformal``, randomized RAPS) for every coverage 0.50-0.99 and any other
asked for, marginal and per class, fitted on the run's validation split (re-created from
``config.yaml`` as training made it: images the weights never trained on, though they chose
the epoch and the temperature). It records the sha256 of the weights, so a retrained run fits
again; ``imagewise export`` carries it into the file's metadata (``ModelSpec.conformal``), so an
exported model answers the same sets without the run folder or PyTorch.

The numerics are numpy (``imagewise.edge.conformal``). MAPIE (``MapieClassifier``) computes the
same split-conformal quantile and APS / RAPS sets, but it wraps a scikit-learn estimator and
draws its randomization per call; the edge runtime must answer without scikit-learn, and the
same image must get the same set on every runtime (the pixel-hash tie-breaker), so the few
lines are ours. ``tests/test_conformal.py`` compares the quantile with MAPIE's when installed.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from imagewise.edge.conformal import (
    COVERAGE_GRID,
    DEFAULT_SCORE,
    FORMAT,
    ConformalFit,
    PredictionSets,
    check_coverage,
    check_coverage_request,
    coverage_key,
    fit_conformal,
    needed_images,
    tie_breakers,
)
from imagewise.edge.model import ImageModel
from imagewise.errors import UserError
from imagewise.io import atomic_write_json
from imagewise.predict.unknown import _decoded_chunks, _fitted, _is_run_folder, weights_sha256

log = logging.getLogger("imagewise")

CONFORMAL_FILE = "conformal.json"


def calibration_scores(
    model: ImageModel, run: str | Path
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The probabilities, labels and tie-breakers (``tie_breakers``) of the run's validation
    split, the conformal calibration images.

    Raises:
        UserError: the run's data cannot be re-opened, or it has no validation images.
    """
    from imagewise.runtime.run_data import run_split

    part = run_split(Path(run), model.classes, ("val",), None, "fit --coverage on")
    probs, labels, u = [], [], []
    for images, y in _decoded_chunks(model, part):
        probs.append(model.scores(images)[1])
        labels.append(y)
        u.append(tie_breakers(images))
    if not probs:
        raise UserError(f"'{run}' has no readable validation images to fit --coverage on")
    return np.concatenate(probs), np.concatenate(labels), np.concatenate(u)


def run_conformal(
    model: ImageModel, run: str | Path, coverage: float | None = None, score: str = DEFAULT_SCORE
) -> ConformalFit:
    """The run's conformal thresholds: read from ``RUN/conformal.json`` when fitted with the
    current weights and score (and holding ``coverage``), else fitted on its validation split
    now and stored there.

    Args:
        model: the run's classifier (``imagewise.load(run)``).
        run: its run folder.
        coverage: a coverage that must be among the fitted ones (besides 0.50-0.99).
        score: ``raps`` (default), ``aps`` or ``lac``.

    Example:
        >>> fit = run_conformal(imagewise.load("runs/fm"), "runs/fm", 0.9)  # doctest: +SKIP
        >>> fit.threshold(0.9)[:2]  # doctest: +SKIP
        array([0.871, 0.871])
    """
    path = Path(run) / CONFORMAL_FILE
    digest = weights_sha256(run)
    stored = _fitted(path, digest)
    wanted = [] if coverage is None else [check_coverage(coverage)]
    if stored is not None and stored.get("score") == score:
        try:
            fit = ConformalFit.from_json(stored)
        except ValueError:
            fit = None
        if fit is not None and all(coverage_key(c) in fit.thresholds for c in wanted):
            log.info("conformal thresholds fitted before (%s)", path)
            return fit
        wanted += [float(k) for k in stored.get("thresholds", {})]
    probs, labels, u = calibration_scores(model, run)
    fit = fit_conformal(probs, labels, u, score, coverages=sorted({*COVERAGE_GRID, *wanted}))
    record = {
        "format": FORMAT,
        **fit.to_json(),
        "calibration_images": fit.calibration_images,
        "temperature": float(model.temperature),
        "weights_sha256": digest,
        "fitted": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    atomic_write_json(path, record)
    log.info("conformal thresholds fitted on %d validation images, kept in %s", len(labels), path)
    return fit


def fitted_conformal(run: str | Path) -> dict[str, Any] | None:
    """What an export carries: the run's stored fit (``conformal.json``) if made with the
    current weights, else None."""
    stored = _fitted(Path(run) / CONFORMAL_FILE, weights_sha256(run))
    if stored is None:
        return None
    try:
        return ConformalFit.from_json(stored).to_json()
    except ValueError:
        return None


def resolve_sets(
    model: ImageModel,
    run: str | Path,
    coverage: float | None,
    per_class: bool = False,
    non_empty: bool = False,
) -> PredictionSets | None:
    """The prediction sets ``--coverage`` asks for: a run folder's fit (made now if needed) or
    the one an exported file carries; None without a coverage.

    Raises:
        UserError: a coverage outside (0, 1), ``per_class`` without a coverage, a multi-label
            model, or an exported file that carries no fit (or none for this coverage).
    """
    coverage = check_coverage_request(coverage, per_class, non_empty)
    if coverage is None:
        return None
    refuse_multilabel(model)
    fit = run_conformal(model, run, coverage) if _is_run_folder(run) else _carried(model, run)
    sets = PredictionSets(fit, coverage, per_class, non_empty)
    few = fit.too_few(coverage) if per_class else []
    if few:
        names = ", ".join(model.classes[i] for i in few[:5]) + (" ..." if len(few) > 5 else "")
        log.warning(
            "%d class(es) have fewer than the %d calibration images coverage %g needs per "
            "class (%s): each of them is in every set",
            len(few), needed_images(coverage), coverage, names,
        )  # fmt: skip
    log.info("prediction sets at %s, from %d validation images", sets.describe(),
             fit.calibration_images)  # fmt: skip
    return sets


def refuse_multilabel(model: ImageModel) -> None:
    """Conformal sets cover one true class per image; a multi-label model answers label sets
    of its own (per-label thresholds), so ``--coverage`` is refused in one line."""
    if model.spec.multilabel:
        raise UserError(
            "--coverage (conformal prediction sets) is for single-label models; this "
            "multi-label model answers each image's label set from its fitted thresholds"
        )


def _carried(model: ImageModel, source: str | Path) -> ConformalFit:
    values = getattr(model.spec, "conformal", None)
    if values is None:
        raise UserError(
            f"'{source}' carries no conformal thresholds; export it again from its run folder "
            "(imagewise export RUN fits them), or predict with the run folder"
        )
    return ConformalFit.from_json(values)  # checked when the file was read
