"""The report's multi-label section (``eval/report.html`` of a multi-label run): headline
numbers, the per-label table, the precision-recall curves and example errors with Grad-CAM of
the label in question.

The styles are the report's own (``section``, ``.cards``, ``table.sortable``, ``.gallery``).
"""

from __future__ import annotations

import base64
import html
import io
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imagewise.evaluate.scores import MultilabelScores

if TYPE_CHECKING:
    from imagewise.predict.base import Classifier

log = logging.getLogger("imagewise")


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
        + f"<td>{ap}</td><td></td><td></td></tr>"
        for name, avg, ap in (
            ("micro", scores.micro, ""),
            ("macro", scores.macro, f"{scores.map:.3f}"),  # the mAP: the labels' mean AP
        )
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


__all__ = ["label_errors", "multilabel_section"]
