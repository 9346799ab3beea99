"""Nearest neighbours by cosine similarity on unit-length rows: NumPy or FAISS.

``numpy``: exact, a chunked matrix product and ``argpartition`` per chunk, the running top-k
merged across chunks, so memory stays at chunk x queries whatever the collection's size.
``faiss-flat`` (``IndexFlatIP``, exact) and ``faiss-ivf`` (``IndexIVFFlat``, inverted lists,
approximate, ``nprobe`` lists searched) when the ``faiss`` package imports; it is optional.
``auto`` picks NumPy below ``FAISS_FROM`` rows, FAISS flat above, IVF from ``IVF_FROM``.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from imagewise.errors import UserError

BACKENDS = ("auto", "numpy", "faiss")
FAISS_FROM = 200_000
IVF_FROM = 1_000_000
_ROWS_PER_CHUNK = 65_536
_QUERIES_PER_CHUNK = 512


def faiss_module() -> Any:
    """The ``faiss`` module, or None when it is not installed."""
    try:
        return importlib.import_module("faiss")
    except ImportError:
        return None


def choose_backend(requested: str, count: int) -> str:
    """``numpy``, ``faiss-flat`` or ``faiss-ivf`` for ``count`` rows."""
    if requested not in BACKENDS:
        raise UserError(f"unknown search backend '{requested}'; choose {', '.join(BACKENDS)}")
    have_faiss = faiss_module() is not None
    if requested == "faiss" and not have_faiss:
        raise UserError("--backend faiss needs the faiss package: pip install faiss-cpu")
    if requested == "numpy" or (requested == "auto" and (count < FAISS_FROM or not have_faiss)):
        return "numpy"
    return "faiss-ivf" if count >= IVF_FROM else "faiss-flat"


def build_searcher(embeddings: np.ndarray, backend: str) -> Any:
    """The FAISS index over unit-length ``embeddings`` for a FAISS backend, else None."""
    if not backend.startswith("faiss"):
        return None
    faiss = faiss_module()
    dim = embeddings.shape[1]
    if backend == "faiss-flat":
        index = faiss.IndexFlatIP(dim)
    else:
        lists = int(min(65_536, max(1, 4 * np.sqrt(len(embeddings)))))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(0).choice(len(embeddings), min(len(embeddings), 256 * lists),
                                                 replace=False)  # fmt: skip
        index.train(embeddings[np.sort(sample)])
        index.nprobe = min(lists, 32)
    index.add(embeddings)
    return index


def top_k_numpy(
    queries: np.ndarray, embeddings: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k (similarities, row indices), best first, ties by row; (Q, k) each."""
    k = min(k, len(embeddings))
    best_sim = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_idx = np.zeros((len(queries), 0), dtype=np.int64)
    sims_out, idx_out = [], []
    for q0 in range(0, len(queries), _QUERIES_PER_CHUNK):
        q = queries[q0 : q0 + _QUERIES_PER_CHUNK]
        sim, idx = best_sim[: len(q)], best_idx[: len(q)]
        for r0 in range(0, len(embeddings), _ROWS_PER_CHUNK):
            chunk = q @ embeddings[r0 : r0 + _ROWS_PER_CHUNK].T
            kk = min(k, chunk.shape[1])
            part = np.argpartition(-chunk, kk - 1, axis=1)[:, :kk]
            sim = np.concatenate([sim, np.take_along_axis(chunk, part, axis=1)], axis=1)
            idx = np.concatenate([idx, part + r0], axis=1)
            if sim.shape[1] > k:
                keep = _order(sim, idx)[:, :k]
                sim, idx = np.take_along_axis(sim, keep, 1), np.take_along_axis(idx, keep, 1)
        order = _order(sim, idx)
        sims_out.append(np.take_along_axis(sim, order, 1))
        idx_out.append(np.take_along_axis(idx, order, 1))
    return np.concatenate(sims_out), np.concatenate(idx_out)


def _order(sim: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Column order per row: highest similarity first, then the lowest row index."""
    return np.lexsort((idx, -sim), axis=1)


def top_k(
    queries: np.ndarray, embeddings: np.ndarray, k: int, searcher: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (similarities, row indices) of unit-length ``queries`` in ``embeddings``, with
    the FAISS ``searcher`` when there is one; rows FAISS leaves empty (-1) are dropped."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if searcher is None:
        return top_k_numpy(queries, embeddings, k)
    sims, idx = searcher.search(queries, min(k, len(embeddings)))
    return sims.astype(np.float32), idx.astype(np.int64)
