"""Conformal prediction sets measured on the evaluated images (``evaluate(coverage=...)``).

The thresholds come from the run's validation split (``imagewise.predict.conformal``, kept in
``RUN/conformal.json``); here the sets of the held-out images are built with them and counted:
the empirical coverage (should be at least the target, within about one point on a few
thousand images), per class, and the mean set size.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from imagewise.edge.conformal import PredictionSets, class_scores, tie_breakers
from imagewise.evaluate.scores import ConformalScores

CHUNK = 1024  # images read at a time when the split is not in memory


def split_tie_breakers(clf: Any, split: Any) -> np.ndarray:
    """The pixel-hash tie-breakers (``tie_breakers``) of an evaluated ``Split``'s images, as
    prediction computes them from the same uint8 pixels."""
    if split.images is not None:
        return tie_breakers(split.images.numpy())
    parts = []
    for start in range(0, len(split), CHUNK):
        paths = split.paths[start : start + CHUNK]
        parts.append(tie_breakers(np.stack([clf.read(p) for p in paths])))
    return np.concatenate(parts) if parts else np.zeros(0)


def measure_sets(
    clf: Any,
    run: Any,
    split: Any,
    probs: np.ndarray,
    labels: np.ndarray,
    coverage: float,
    per_class: bool = False,
    non_empty: bool = False,
) -> tuple[np.ndarray, ConformalScores]:
    """The prediction sets (bool, N x classes) of the evaluated images and their figures.

    Args:
        clf: the run's classifier; run: its folder (the fit is read or made there).
        split: the evaluated ``Split`` (its pixels give the tie-breakers).
        probs, labels: the images' calibrated probabilities and true classes.
        coverage: the target; per_class: class-conditional thresholds; non_empty: the top
            class in every set.
    """
    from imagewise.predict.conformal import resolve_sets

    sets = resolve_sets(clf, run, coverage, per_class, non_empty)
    assert sets is not None
    fit = sets.fit
    u = split_tie_breakers(clf, split) if fit.randomized else None
    scores = class_scores(probs, fit.score, u, fit.penalty, fit.k_reg)
    member = sets.from_scores(scores, probs)
    return member, _figures(member, labels, clf.classes, sets)


def _figures(
    member: np.ndarray, labels: np.ndarray, classes: list[str], sets: PredictionSets
) -> ConformalScores:
    hit = member[np.arange(len(labels)), labels]
    per_class = {
        name: round(float(hit[labels == k].mean()), 6)
        for k, name in enumerate(classes)
        if np.any(labels == k)
    }
    return ConformalScores(
        coverage_target=sets.coverage,
        score=sets.fit.score,
        per_class=sets.per_class,
        coverage=round(float(hit.mean()), 6),
        mean_set_size=round(float(member.sum(axis=1).mean()), 6),
        empty_sets=round(float((member.sum(axis=1) == 0).mean()), 6),
        non_empty=sets.non_empty,
        per_class_coverage=per_class,
        calibration_images=sets.fit.calibration_images,
    )


def conformal_section(figures: ConformalScores | None) -> str:
    """The report's "Prediction sets" section (``""`` when no coverage was asked)."""
    from html import escape

    if figures is None:
        return ""
    kind = "its own threshold per class" if figures.per_class else "one threshold for all"
    rows = "".join(
        f"<tr><td>{escape(name)}</td><td>{value:.1%}</td></tr>"
        for name, value in sorted(figures.per_class_coverage.items(), key=lambda kv: kv[1])
    )
    return (
        '<section id="sets"><h2>Prediction sets</h2><p class="muted">Conformal sets at coverage '
        f"{figures.coverage_target:g} ({escape(figures.score)} score, {kind}), fitted on "
        f"{figures.calibration_images} validation images: each set should hold the true class "
        f"at least that often.</p><p>coverage <b>{figures.coverage:.2%}</b> · mean set size "
        f"<b>{figures.mean_set_size:.2f}</b> · empty sets <b>{figures.empty_sets:.1%}</b>"
        f"{' (the top class kept in every set)' if figures.non_empty else ''}</p>"
        "<table><thead><tr><th>class (lowest first)"
        f"</th><th>coverage</th></tr></thead><tbody>{rows}</tbody></table></section>"
    )
