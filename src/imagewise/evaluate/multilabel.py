"""Multi-label evaluation: scores at the run's per-label thresholds, precision-recall curves,
and the report's multi-label section (per-label table, curves, example errors with Grad-CAM).

An image carries any number of the K labels (targets (N, K) of 0/1) and the model gives each
label its own probability (sigmoid over the run's temperature); a label is predicted when its
probability reaches the label's threshold (``probability >= threshold``).
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imagewise.errors import UserError
from imagewise.evaluate.scores import AveragedF1, LabelScores, MultilabelScores, Scores
from imagewise.figures import new_figure, save_figure

if TYPE_CHECKING:
    from imagewise.predict.base import Classifier

log = logging.getLogger("imagewise")

ECE_BINS = 15


def _check_shapes(probs: np.ndarray, targets: np.ndarray, thresholds: np.ndarray, k: int) -> None:
    if probs.ndim != 2 or probs.shape != targets.shape or probs.shape[1] != k:
        raise UserError(
            f"multi-label scores need probabilities and targets of shape (images, {k} labels), "
            f"not {probs.shape} and {targets.shape}"
        )
    if thresholds.shape != (k,):
        raise UserError(
            f"multi-label scores need {k} thresholds, one per label, not {len(thresholds)}"
        )
    if not len(probs):
        raise UserError("multi-label scores need at least one image")


def binary_calibration_error(probs: np.ndarray, targets: np.ndarray, bins: int = ECE_BINS) -> float:
    """One label's calibration error: over equal-width bins of its probability, the gap
    between the mean probability and the share of images carrying the label, weighted by the
    bin's share of the images (bin i holds (i/bins, (i+1)/bins]; a probability of 0 the first).

    Written here rather than taken from scikit-learn: ``calibration_curve`` returns the
    non-empty bins' means without their counts, and ``runtime.calibration``'s ECE measures a
    softmax's top-1 confidence, not one sigmoid output.

    Example:
        >>> round(binary_calibration_error(np.array([0.9, 0.9]), np.array([1, 0])), 2)
        0.4
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    if not len(p):
        return float("nan")
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, p, side="left") - 1, 0, bins - 1)
    error = 0.0
    for i in range(bins):
        members = index == i
        if members.any():
            error += members.mean() * abs(p[members].mean() - y[members].mean())
    return float(error)


def score_multilabel(
    probs: np.ndarray,
    targets: np.ndarray,
    thresholds: np.ndarray | list[float] | tuple[float, ...],
    classes: list[str],
) -> MultilabelScores:
    """Score multi-label predictions: a label is predicted where its probability reaches its
    threshold.

    Args:
        probs: float (N, K) probabilities, one per image and label.
        targets: (N, K) of 0/1, the labels each image carries (a row of zeros: no label).
        thresholds: K thresholds, one per label (e.g. the run's, fitted on validation).
        classes: the K label names.

    Returns:
        mAP (mean over the labels with at least one positive image of scikit-learn's average
        precision), micro and macro precision / recall / F1, the F1s at a plain 0.5,
        exact-match accuracy, Hamming loss, how many images have no true and no predicted
        label, and per label: support, predicted, precision, recall, F1, AP, ECE, threshold.

    Example:
        >>> s = score_multilabel(probs, targets, [0.5] * 3, ["cat", "dog", "car"])  # doctest: +SKIP
        >>> print(s.summary())  # doctest: +SKIP
    """
    from sklearn.metrics import (
        accuracy_score,
        average_precision_score,
        f1_score,
        hamming_loss,
        precision_recall_fscore_support,
    )

    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(targets).astype(np.int64)
    t = np.asarray(thresholds, dtype=np.float64)
    _check_shapes(probs, y, t, len(classes))
    pred = (probs >= t).astype(np.int64)
    p, r, f, support = precision_recall_fscore_support(y, pred, average=None, zero_division=0)
    averaged = {
        avg: Scores(
            *map(float, precision_recall_fscore_support(y, pred, average=avg, zero_division=0)[:3])
        )
        for avg in ("micro", "macro")
    }
    half = (probs >= 0.5).astype(np.int64)
    per_label = {}
    for k, name in enumerate(classes):
        ap = float(average_precision_score(y[:, k], probs[:, k])) if support[k] else None
        per_label[name] = LabelScores(
            precision=float(p[k]),
            recall=float(r[k]),
            f1=float(f[k]),
            support=int(support[k]),
            predicted=int(pred[:, k].sum()),
            ap=ap,
            ece=binary_calibration_error(probs[:, k], y[:, k]),
            threshold=float(t[k]),
        )
    aps = [s.ap for s in per_label.values() if s.ap is not None]
    return MultilabelScores(
        images=len(y),
        map=float(np.mean(aps)) if aps else 0.0,
        micro=averaged["micro"],
        macro=averaged["macro"],
        f1_at_half=AveragedF1(
            micro=float(f1_score(y, half, average="micro", zero_division=0)),
            macro=float(f1_score(y, half, average="macro", zero_division=0)),
        ),
        subset_accuracy=float(accuracy_score(y, pred)),
        hamming_loss=float(hamming_loss(y, pred)),
        no_true_label=int((y.sum(axis=1) == 0).sum()),
        no_predicted_label=int((pred.sum(axis=1) == 0).sum()),
        per_label=per_label,
        ece_bins=ECE_BINS,
    )


def plot_pr_curves(
    probs: np.ndarray,
    targets: np.ndarray,
    classes: list[str],
    path: str | Path,
    thresholds: np.ndarray | list[float] | tuple[float, ...] | None = None,
) -> Path:
    """Each label's precision-recall curve in a panel of its own (with its AP and the share of
    images carrying it as the chance level), the label's threshold marked as a point.

    Args:
        probs: float (N, K) probabilities.
        targets: (N, K) of 0/1.
        classes: the K label names.
        path: the PNG to write.
        thresholds: K thresholds to mark (default: 0.5 for every label).
    """
    from sklearn.metrics import average_precision_score, precision_recall_curve

    probs, y = np.asarray(probs, dtype=np.float64), np.asarray(targets).astype(np.int64)
    k = len(classes)
    t = np.full(k, 0.5) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    _check_shapes(probs, y, t, k)
    cols = min(k, 4)
    rows = math.ceil(k / cols)
    fig = new_figure(2.9 * cols, 2.6 * rows)
    for i, name in enumerate(classes):
        ax = fig.add_subplot(rows, cols, i + 1)
        positives = int(y[:, i].sum())
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("recall", fontsize=8)
        ax.set_ylabel("precision", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if not positives:
            ax.set_title(f"{name}: no image carries it", fontsize=9)
            continue
        precision, recall, _ = precision_recall_curve(y[:, i], probs[:, i])
        ap = average_precision_score(y[:, i], probs[:, i])
        ax.step(recall, precision, where="post", color="#4c72b0", lw=1.4)
        ax.axhline(positives / len(y), color="k", ls="--", lw=0.8)  # a random ranking's precision
        chosen = probs[:, i] >= t[i]
        hits = int((chosen & (y[:, i] == 1)).sum())
        p_at = hits / chosen.sum() if chosen.any() else 0.0
        ax.plot(
            [hits / positives], [p_at], "o", color="#dd8452", ms=6, label=f"threshold {t[i]:.2f}"
        )
        ax.legend(loc="lower left", fontsize=7)
        ax.set_title(f"{name}: AP {ap:.3f}", fontsize=9)
    return save_figure(fig, path)


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "<td>-</td>"
    return f'<td data-value="{value}">{value:.{digits}f}</td>'


def _label_table(scores: MultilabelScores) -> str:
    rows = "".join(
        f"<tr><td>{_esc(name)}</td>"
        f'<td data-value="{s.support}">{s.support}</td>'
        f'<td data-value="{s.predicted}">{s.predicted}</td>'
        + "".join(_num(v) for v in (s.precision, s.recall, s.f1, s.ap))
        + _num(s.ece, 4)
        + _num(s.threshold)
        + "</tr>"
        for name, s in scores.per_label.items()
    )
    foot = "".join(
        f"<tr><td><i>{name} average</i></td><td></td><td></td>"
        + "".join(f"<td>{v:.3f}</td>" for v in (avg.precision, avg.recall, avg.f1))
        + f"<td>{scores.map:.3f}</td><td></td><td></td></tr>"
        for name, avg in (("micro", scores.micro), ("macro", scores.macro))
    )
    return (
        '<table class="sortable" id="per-label"><thead><tr><th>label</th><th>support</th>'
        "<th>predicted</th><th>precision</th><th>recall</th><th>F1</th><th>AP</th><th>ECE</th>"
        f"<th>threshold</th></tr></thead><tbody>{rows}</tbody><tfoot>{foot}</tfoot></table>"
    )


def _cards(scores: MultilabelScores) -> str:
    cards = [
        ("mAP", f"{scores.map:.4f}"),
        ("micro F1", f"{scores.micro.f1:.4f}"),
        ("macro F1", f"{scores.macro.f1:.4f}"),
        ("micro F1 at 0.5", f"{scores.f1_at_half.micro:.4f}"),
        ("macro F1 at 0.5", f"{scores.f1_at_half.macro:.4f}"),
        ("subset accuracy", f"{100 * scores.subset_accuracy:.2f}%"),
        ("Hamming loss", f"{scores.hamming_loss:.4f}"),
        ("images", f"{scores.images:,}"),
        ("no true label", f"{scores.no_true_label:,}"),
        ("no predicted label", f"{scores.no_predicted_label:,}"),
    ]
    return (
        '<div class="cards">'
        + "".join(f'<div class="card"><b>{v}</b><span>{k}</span></div>' for k, v in cards)
        + "</div>"
    )


def label_errors(
    scores: MultilabelScores, probs: np.ndarray, targets: np.ndarray, labels: int = 3, n: int = 3
) -> list[tuple[int, str, list[int], list[int]]]:
    """The example errors the report shows: for the ``labels`` labels with the lowest F1 that
    have any error, (label index, name, the ``n`` most confident false positives, the ``n``
    positives given the lowest probability among those missed), image indices."""
    names = list(scores.per_label)
    pred = probs >= np.array([scores.per_label[c].threshold for c in names])
    out = []
    for name, _ in scores.worst(len(names)):
        k = names.index(name)
        false_pos = np.flatnonzero(pred[:, k] & (targets[:, k] == 0))
        missed = np.flatnonzero(~pred[:, k] & (targets[:, k] == 1))
        if not len(false_pos) and not len(missed):
            continue
        false_pos = false_pos[np.argsort(-probs[false_pos, k], kind="stable")][:n]
        missed = missed[np.argsort(probs[missed, k], kind="stable")][:n]
        out.append((k, name, false_pos.tolist(), missed.tolist()))
        if len(out) == labels:
            break
    return out


def _png(image: Any) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _gallery(
    chosen: list[tuple[int, str, list[int], list[int]]],
    probs: np.ndarray,
    clf: Classifier,
    images: Any,
    sources: list[str],
) -> str:
    """The example errors, each image beside its Grad-CAM for the label in question."""
    from PIL import Image

    from imagewise.data.transforms import normalize
    from imagewise.evaluate.sections import split_images

    cases = [(k, name, i, kind) for k, name, fp, miss in chosen
             for kind, ids in (("false positive", fp), ("missed", miss)) for i in ids]  # fmt: skip
    pre = clf.preprocessing
    pixels = split_images(images, [c[2] for c in cases], pre)
    cams, note = None, "Grad-CAM of the label in question: where the model looked to score it."
    if not clf.capabilities.gradcam:
        note = f"No Grad-CAM: {clf.name} declares no feature map to explain."
    else:
        try:
            from imagewise.explain import cam_maps

            targets = [c[0] for c in cases]  # the label's own logit
            cams = cam_maps(clf.model, normalize(pre, pixels.to(clf.device)), targets)
        except Exception as exc:  # a report without heat maps beats no report
            log.warning("Grad-CAM failed for the report: %s", exc)
            note = f"Grad-CAM not available: {exc}"
    figures = []
    for j, (k, name, i, kind) in enumerate(cases):
        rgb = pixels[j].permute(1, 2, 0).numpy()
        rgb = np.repeat(rgb, 3, axis=2) if rgb.shape[2] == 1 else rgb
        scale = max(1, 160 // max(rgb.shape[:2]))
        plain = Image.fromarray(np.ascontiguousarray(rgb)).resize(
            (rgb.shape[1] * scale, rgb.shape[0] * scale), Image.Resampling.NEAREST
        )
        tiles = f'<img src="{_png(plain)}" alt="image {i}">'
        if cams is not None:
            from imagewise.explain import overlay

            tiles += (
                f'<img src="{_png(overlay(rgb, cams[j], 160))}" alt="Grad-CAM of {_esc(name)}">'
            )
        source = sources[i] if sources else f"image #{i}"
        figures.append(
            f'<figure><div class="imgs">{tiles}</div><figcaption><b class="bad">{kind}</b> of '
            f"<b>{_esc(name)}</b>: probability {100 * probs[i, k]:.2f}%<br>"
            f'<span class="src">{_esc(source)}</span></figcaption></figure>'
        )
    return f'<p class="muted">{_esc(note)}</p><div class="gallery">{"".join(figures)}</div>'


def multilabel_section(
    scores: MultilabelScores,
    probs: np.ndarray,
    targets: np.ndarray,
    pr_curves: Path | None = None,
    clf: Classifier | None = None,
    images: Any = None,
    sources: list[str] | None = None,
    labels: int = 3,
    per_kind: int = 3,
) -> str:
    """The report's multi-label section: headline numbers, the per-label table, the
    precision-recall curves (``pr_curves``, a PNG, when written) and example errors.

    Args:
        scores: ``score_multilabel`` of ``probs`` and ``targets``.
        probs: float (N, K) probabilities of the evaluated images.
        targets: (N, K) of 0/1.
        pr_curves: the PNG of ``plot_pr_curves``; left out when None or missing.
        clf: the classifier, for Grad-CAM of the example errors (no gallery without it).
        images: the evaluated ``Split`` (images in memory or their paths).
        sources: each image's file (or nothing: the gallery says ``image #i``).
        labels: how many labels (lowest F1 first) the gallery shows errors of.
        per_kind: how many false positives and how many missed positives per label.
    """
    probs, targets = np.asarray(probs), np.asarray(targets)
    half = scores.f1_at_half
    intro = (
        f'<p class="muted">{scores.images:,} images, {len(scores.per_label)} labels; a label is '
        "predicted when its probability reaches its threshold (fitted on the validation split). "
        f"At a plain 0.5 for every label the micro F1 would be {half.micro:.4f} (here "
        f"{scores.micro.f1:.4f}), the macro F1 {half.macro:.4f} (here {scores.macro.f1:.4f}). "
        f"AP: average precision; ECE over {scores.ece_bins} equal-width bins of the label's "
        "probability. Click a column to sort.</p>"
    )
    figure = ""
    if pr_curves is not None and Path(pr_curves).is_file():
        uri = "data:image/png;base64," + base64.b64encode(Path(pr_curves).read_bytes()).decode()
        figure = (
            '<h2 style="margin-top:14px">Precision-recall curves</h2><p class="muted">The dot: '
            "the label's threshold; the dashed line: the share of images carrying it.</p>"
            f'<img class="plot" src="{uri}" alt="precision-recall curves">'
        )
    gallery = ""
    if clf is not None and images is not None:
        chosen = label_errors(scores, probs, targets, labels, per_kind)
        body = (
            _gallery(chosen, probs, clf, images, sources or [])
            if chosen
            else "<p>No errors: every label right on every image.</p>"
        )
        gallery = (
            '<h2 style="margin-top:14px" id="label-errors">Example errors</h2><p class="muted">'
            f"For the {len(chosen)} labels with the lowest F1: the most confident false "
            f"positives and the positives given the lowest probability.</p>{body}"
        )
    return (
        '<section id="multilabel"><h2>Multi-label scores</h2>'
        f"{_cards(scores)}{intro}{_label_table(scores)}{figure}{gallery}</section>"
    )


__all__ = [
    "MultilabelScores",
    "binary_calibration_error",
    "label_errors",
    "multilabel_section",
    "plot_pr_curves",
    "score_multilabel",
]
