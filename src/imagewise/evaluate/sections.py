"""The report's robustness and slices sections (``eval/report.html``), when measured, and
the images of a split that the report's galleries show.

Kept apart from ``report.py`` so that page stays one idea; the styles are the report's own
(``section``, ``table.sortable``, ``.muted``, ``.bad``).
"""

from __future__ import annotations

import base64
import html
import io
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from imagewise.edge.spec import InputContract
    from imagewise.evaluate.robustness import Robustness
    from imagewise.evaluate.slices import Slices

STRIP_PIXELS = 64  # each example image is enlarged (nearest neighbour) to about this size
_FIGURE = '<figure style="margin:0;font-size:.85em">'


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _cell(value: float | None, text: str | None = None) -> str:
    if value is None:
        return "<td>-</td>"
    return f'<td data-value="{value}">{text if text is not None else _pct(value)}</td>'


def _png_uri(pixels: np.ndarray) -> str:
    """An H x W x C uint8 image as an enlarged PNG data URI."""
    from PIL import Image

    rgb = np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels
    scale = max(1, STRIP_PIXELS // max(rgb.shape[:2]))
    image = Image.fromarray(np.ascontiguousarray(rgb))
    image = image.resize((rgb.shape[1] * scale, rgb.shape[0] * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def split_images(split: Any, indices: list[int], pre: InputContract) -> torch.Tensor:
    """uint8 (N, C, H, W) images of ``split`` as the model takes them, from memory or files."""
    import torch

    from imagewise.data.decode import read_image

    if split.images is not None:
        return split.images[torch.as_tensor(indices, dtype=torch.long)]
    return torch.stack(
        [
            read_image(split.paths[i], pre.channels, pre.img_size, pre.interpolation, pre.crop_pct)
            for i in indices
        ]
    )


def _robustness_table(r: Robustness) -> str:
    from imagewise.evaluate.corruptions import CORRUPTIONS

    rows = []
    for name in r.worst_first():
        scores = r.of(name)
        c = CORRUPTIONS[name]
        levels = " / ".join(f"{v:g}" for v in c.levels)
        drop = r.clean.accuracy - r.mean_accuracy(name)
        rows.append(
            f'<tr><td>{_esc(name)}</td><td style="text-align:left">{_esc(c.unit)}: {levels}</td>'
            + "".join(_cell(s.score.accuracy) for s in scores)
            + _cell(r.mean_accuracy(name))
            + f'<td data-value="{drop}" class="{"bad" if drop > 0.05 else ""}">'
            f"{100 * drop:.2f} pts</td>"
            + "".join(_cell(s.score.ece, f"{s.score.ece:.4f}") for s in scores)
            + "</tr>"
        )
    head = (
        '<th>corruption</th><th style="text-align:left">level (severity 1 / 2 / 3)</th>'
        "<th>accuracy 1</th>"
        "<th>accuracy 2</th><th>accuracy 3</th><th>mean accuracy</th><th>drop from clean</th>"
        "<th>ECE 1</th><th>ECE 2</th><th>ECE 3</th>"
    )
    clean = (
        f"<tr><td><i>clean</i></td><td></td>{_cell(r.clean.accuracy) * 4}<td>0.00 pts</td>"
        + _cell(r.clean.ece, f"{r.clean.ece:.4f}") * 3
        + "</tr>"
    )
    return (
        f'<table class="sortable" id="robustness-table"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody><tfoot>{clean}</tfoot></table>"
    )


def _robustness_per_class(r: Robustness) -> str:
    names = r.worst_first()
    head = "".join(f"<th>{_esc(n)}</th>" for n in names)
    rows = []
    for cls in r.classes:
        means: list[float | None] = []
        for name in names:
            values = [s.score.per_class_accuracy[cls] for s in r.of(name)]
            known = [v for v in values if v is not None]  # None: no image of the class
            means.append(float(np.mean(known)) if len(known) == len(values) else None)
        rows.append(
            f"<tr><td>{_esc(cls)}</td>{_cell(r.clean.per_class_accuracy[cls])}"
            + "".join(_cell(m) for m in means)
            + "</tr>"
        )
    return (
        "<details><summary>Per class: accuracy clean and under each corruption (mean over "
        'the severities)</summary><table class="sortable" id="robustness-per-class"><thead>'
        f"<tr><th>class</th><th>clean</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody>"
        "</table></details>"
    )


def _strip(r: Robustness) -> str:
    """One image clean, then under each corruption at severity 1, 2 and 3 (worst first)."""
    if ("clean", 0) not in r.example:
        return ""
    clean = f'<img src="{_png_uri(r.example[("clean", 0)])}" alt="clean">'
    figures = [f"{_FIGURE}{clean}<figcaption>clean</figcaption></figure>"]
    for name in r.worst_first():
        tiles = "".join(
            f'<img src="{_png_uri(r.example[(name, s)])}" alt="{_esc(name)} {s}">'
            for s in (1, 2, 3)
            if (name, s) in r.example
        )
        tiles = f'<div style="display:flex;gap:3px">{tiles}</div>'
        figures.append(f"{_FIGURE}{tiles}<figcaption>{_esc(name)} 1 / 2 / 3</figcaption></figure>")
    return (
        f'<h2 style="margin-top:14px">Example</h2><p class="muted">One test image (class '
        f"{_esc(r.example_class)}) as the model sees it, under each corruption at severity "
        f'1, 2 and 3.</p><div id="robustness-strip" style="display:flex;flex-wrap:wrap;'
        f'gap:10px 18px;image-rendering:pixelated">{"".join(figures)}</div>'
    )


def robustness_section(r: Robustness | None) -> str:
    """The robustness section: the table (worst corruption first), per class, the strip."""
    if r is None:
        return ""
    return (
        '<section id="robustness"><h2>Robustness to common corruptions</h2>'
        f'<p class="muted">{r.images:,} of {r.sampled_from:,} images (a stratified sample, seed '
        f"{r.seed}), corrupted at the model's input size. On them, uncorrupted: accuracy "
        f"{_pct(r.clean.accuracy)}, ECE {r.clean.ece:.4f}; under corruption "
        f"{_pct(r.mean_accuracy_all)} on average. Worst corruption first; click a column to "
        f"sort.</p>{_robustness_table(r)}{_robustness_per_class(r)}{_strip(r)}</section>"
    )


def slices_section(s: Slices | None) -> str:
    """The slices section: one row per value of the column, worst first, and the warnings."""
    if s is None:
        return ""
    coverage = any(x.coverage is not None for x in s.slices)
    rows = "".join(
        f"<tr><td>{_esc(x.value or '(empty)')}</td>"
        f'<td data-value="{x.images}">{x.images:,}</td>{_cell(x.accuracy)}'
        f"{_cell(x.ece, f'{x.ece:.4f}')}{_cell(x.coverage) if coverage else ''}"
        f"<td>{'too few to judge' if x.too_small else ''}</td></tr>"
        for x in s.slices
    )
    warnings = "".join(f'<p class="bad">{_esc(w)}</p>' for w in s.warnings)
    return (
        f'<section id="slices"><h2>Slices by {_esc(s.column)}</h2><p class="muted">One row per '
        f"value of the manifest's column '{_esc(s.column)}', worst first (slices of fewer than "
        f"{s.min_images} images last).</p>{warnings}"
        f'<table class="sortable" id="slices-table"><thead><tr><th>{_esc(s.column)}</th>'
        f"<th>images</th><th>accuracy</th><th>ECE</th>{'<th>coverage</th>' if coverage else ''}"
        "<th>note</th></tr>"
        f"</thead><tbody>{rows}</tbody></table></section>"
    )


__all__ = ["robustness_section", "slices_section", "split_images"]
