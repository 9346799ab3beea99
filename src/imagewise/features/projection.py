"""A 2-D map of features: PCA (default) or t-SNE, one colour per class, as a PNG.

t-SNE costs O(N log N) per iteration with a large constant; above ``TSNE_MAX_POINTS`` points a
seeded random sample of that many is drawn (and the title says so). Both are seeded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from imagewise.errors import UserError

METHODS = ("pca", "tsne")
TSNE_MAX_POINTS = 10_000


def check_method(method: str) -> None:
    if method not in METHODS:
        raise UserError(f"unknown map method '{method}'; choose pca or tsne")


def project(x: np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
    """(N, D) -> (N, 2) by PCA or t-SNE (seeded)."""
    check_method(method)
    x = np.asarray(x, dtype=np.float64)
    if len(x) < 3:
        raise UserError(f"a map needs at least 3 images, not {len(x)}")
    if method == "pca":
        from sklearn.decomposition import PCA

        n = min(2, *x.shape)
        points = PCA(n_components=n, svd_solver="full").fit_transform(x)
        return np.pad(points, ((0, 0), (0, 2 - n)))
    from sklearn.manifold import TSNE

    perplexity = float(min(30, max(2, (len(x) - 1) // 3)))
    tsne = TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed)
    return tsne.fit_transform(x)


def draw_map(
    features: np.ndarray, labels: Sequence[str], classes: Sequence[str], path: str | Path,
    method: str = "pca", title: str = "",
) -> Path:  # fmt: skip
    """Draw ``features`` (N x D) in 2-D, coloured by ``labels`` ('' for unlabelled) with a
    legend in the order of ``classes``, to ``path`` (PNG); ``title`` opens the figure's title
    (``Features.draw_map``: the model and layer)."""
    from imagewise.figures import new_figure, save_figure

    check_method(method)
    rows = np.arange(len(labels))
    note = ""
    if method == "tsne" and len(rows) > TSNE_MAX_POINTS:
        rows = np.sort(np.random.default_rng(0).choice(rows, TSNE_MAX_POINTS, replace=False))
        note = f", a random {TSNE_MAX_POINTS:,} of {len(labels):,}"
    points = project(features[rows], method)
    shown = np.array(labels, dtype=object)[rows]
    fig = new_figure(7.5, 6)
    ax = fig.add_subplot(1, 1, 1)
    names = [c for c in classes if c in set(shown)] + (
        ["(unlabelled)"] if (shown == "").any() else []
    )
    colours = _palette(len(names))
    size = max(2.0, min(20.0, 4000 / max(1, len(rows))))
    for name, colour in zip(names, colours, strict=True):
        mask = shown == ("" if name == "(unlabelled)" else name)
        ax.scatter(points[mask, 0], points[mask, 1], s=size, color=colour, label=name, alpha=0.7,
                   linewidths=0)  # fmt: skip
    if len(names) > 1 or names != ["(unlabelled)"]:
        ax.legend(markerscale=max(1.0, 12 / size), fontsize=8, loc="center left",
                  bbox_to_anchor=(1.0, 0.5), frameon=False)  # fmt: skip
    axis = "PC" if method == "pca" else "t-SNE "
    ax.set_xlabel(f"{axis}1")
    ax.set_ylabel(f"{axis}2")
    ax.set_title(
        f"{title}: {method.upper() if method == 'pca' else 't-SNE'} of {len(rows):,} images{note}",
        fontsize=9,
    )
    return save_figure(fig, path)


def _palette(n: int) -> list[tuple[float, ...]]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [tuple(cmap(i % cmap.N)) for i in range(n)]
