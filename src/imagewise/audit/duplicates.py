"""Exact and near duplicates, within a split and across splits.

Exact: the same decoded pixels (``fingerprint.exact_hash``). Near: a perceptual-hash match
(candidates) that the pixels confirm. The pHash alone cannot decide: distinct Fashion-MNIST
items of one kind sit within a few bits of each other, while a copy shifted by one pixel can be
24 bits away. So candidates are pairs within ``MAX_BITS`` of one of the five shifted hashes,
and a pair is confirmed when the two images, aligned by at most one pixel, agree to
``MIN_PSNR`` dB, compared at their own size (shifted and re-encoded copies) or at 16x16
(rescaled copies, whose fine detail the resampling moved). Measured on Fashion-MNIST
(BENCHMARKS.md, "Data audit"): planted copies score 31-108 dB, distinct look-alikes below 30.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from imagewise.audit.fingerprint import Fingerprint

log = logging.getLogger("imagewise")

MAX_BITS = 8  # candidate: within 8 of 64 bits of one of the shifted hashes
MIN_PSNR = 30.0  # confirmed: at least 30 dB after aligning by up to one pixel
_ROWS = 128  # rows of the pairwise hash search per step (a 128 x N uint64 temporary)
_PAIRS = 8192  # candidate pairs confirmed per step
_BLOCK = 1024  # rows per task when the search runs in a process pool


@dataclass
class NearPair:
    """Two images (indices into the scan) and how alike they are."""

    a: int
    b: int
    bits: int  # pHash distance (the best of the shifted hashes)
    psnr: float  # dB after alignment


def exact_groups(index: np.ndarray, prints: list[Fingerprint]) -> list[list[int]]:
    """Groups (of scan indices, two or more) of images with the same decoded pixels."""
    by_hash: dict[bytes, list[int]] = defaultdict(list)
    for i, fp in zip(index.tolist(), prints, strict=True):
        by_hash[fp.exact].append(i)
    return [group for group in by_hash.values() if len(group) > 1]


def _candidates_from(hashes: np.ndarray, first: int, last: int, max_bits: int) -> np.ndarray:
    """``hash_candidates`` for the rows ``first:last`` (against every later row)."""
    base = hashes[:, 0]
    found = [np.zeros((0, 3), np.int64)]
    for start in range(first, last, _ROWS):
        rows = base[start : min(last, start + _ROWS), None]
        cols = hashes[start:]
        dist = np.full((len(rows), len(cols)), 255, dtype=np.uint8)
        xor = np.empty(dist.shape, dtype=np.uint64)
        bits = np.empty(dist.shape, dtype=np.uint8)
        for k in range(hashes.shape[1]):
            np.bitwise_xor(rows, cols[None, :, k], out=xor)
            np.bitwise_count(xor, out=bits)
            np.minimum(dist, bits, out=dist)
        # Only j > i: the diagonal block's lower half and the diagonal itself are dropped.
        dist[np.tril_indices(len(rows), 0, len(cols))] = 255
        i, j = np.nonzero(dist <= max_bits)
        found.append(np.stack([i + start, j + start, dist[i, j]], axis=1).astype(np.int64))
    return np.concatenate(found)


def hash_candidates(hashes: np.ndarray, max_bits: int = MAX_BITS, workers: int = 1) -> np.ndarray:
    """Pairs (i < j, positions in ``hashes``) whose unshifted pHash of i is within ``max_bits``
    of any shifted pHash of j; ``hashes`` is uint64 (N, len(SHIFTS)). Returns (P, 3): i, j, bits.

    All pairs are compared (N^2 / 2 XOR and popcounts, vectorized): 70,000 images take about a
    minute on two cores, and no index can promise to find every pair within 8 bits faster.
    With ``workers`` > 1 the rows are shared out over a process pool.
    """
    n = len(hashes)
    if workers <= 1 or n < 32 * _BLOCK:  # below ~30,000 a pool costs more than it saves
        return _candidates_from(hashes, 0, n, max_bits)
    from concurrent.futures import ProcessPoolExecutor

    from imagewise.audit.scan import pool_context

    # Blocks get cheaper down the triangle; many small ones keep both workers busy to the end.
    blocks = [(s, min(n, s + _BLOCK)) for s in range(0, n, _BLOCK)]
    with ProcessPoolExecutor(workers, mp_context=pool_context()) as pool:
        parts = [pool.submit(_candidates_from, hashes, a, b, max_bits) for a, b in blocks]
        return np.concatenate([part.result() for part in parts])


def _best_psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """PSNR (dB) of each pair of equal-shape grey stacks (P, H, W), the best over alignments
    of up to one pixel each way."""
    a = a.astype(np.float32)
    b = b.astype(np.float32)
    h, w = a.shape[1:]
    best = np.full(len(a), np.inf, dtype=np.float32)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            pa = a[:, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)]
            pb = b[:, max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)]
            np.minimum(best, ((pa - pb) ** 2).mean(axis=(1, 2)), out=best)
    return 10 * np.log10(255.0**2 / np.maximum(best, 1e-6))


Views = tuple[np.ndarray, dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]]]
_shared: Views | None = None  # a pool worker's copy of the views (given once, at its start)


def _views(prints: list[Fingerprint]) -> Views:
    """The coarse views stacked, and the fine views stacked per image size (with each image's
    row in its stack, -1 where it has another size)."""
    coarse = np.stack([p.coarse for p in prints]) if prints else np.zeros((0, 16, 16), np.uint8)
    shapes = [p.fine.shape for p in prints]
    by_shape = {}
    for shape in set(shapes):
        members = np.array([k for k, s in enumerate(shapes) if s == shape], dtype=np.int64)
        where = np.full(len(prints), -1, dtype=np.int64)
        where[members] = np.arange(len(members))
        by_shape[shape] = (where, np.stack([prints[k].fine for k in members]))
    return coarse, by_shape


def _score(part: np.ndarray, views: Views) -> np.ndarray:
    coarse, by_shape = views
    score = _best_psnr(coarse[part[:, 0]], coarse[part[:, 1]])
    for where, fine in by_shape.values():
        a, b = where[part[:, 0]], where[part[:, 1]]
        both = np.flatnonzero((a >= 0) & (b >= 0))
        if len(both):
            score[both] = np.maximum(score[both], _best_psnr(fine[a[both]], fine[b[both]]))
    return score


def _share(views: Views) -> None:
    global _shared
    _shared = views


def _score_shared(part: np.ndarray) -> np.ndarray:
    assert _shared is not None
    return _score(part, _shared)


def confirm(pairs: np.ndarray, prints: list[Fingerprint], workers: int = 1) -> np.ndarray:
    """PSNR per candidate pair (positions in ``prints``): the better of the fine view (when
    both images have the same size) and the 16x16 coarse view; over ``workers`` processes when
    there are many pairs (each worker is given the views once, as it starts)."""
    views = _views(prints)
    blocks = [pairs[s : s + _PAIRS, :2] for s in range(0, len(pairs), _PAIRS)]
    if workers <= 1 or len(blocks) < 4 * workers:
        scores = [_score(part, views) for part in blocks]
    else:
        from concurrent.futures import ProcessPoolExecutor

        from imagewise.audit.scan import pool_context

        context = pool_context()
        with ProcessPoolExecutor(workers, context, initializer=_share, initargs=(views,)) as pool:
            scores = list(pool.map(_score_shared, blocks))
    return np.concatenate(scores) if scores else np.zeros(0, np.float32)


def near_pairs(
    index: np.ndarray, prints: list[Fingerprint], exact: list[list[int]], workers: int = 1
) -> list[NearPair]:
    """Near-duplicate pairs among the images ``index`` (scan indices) with ``prints``; pairs
    that are exact duplicates of each other are left to the exact list; ``workers`` processes
    for the pairwise hash search."""
    hashes = np.stack([p.hashes for p in prints]) if prints else np.zeros((0, 5), np.uint64)
    candidates = hash_candidates(hashes, workers=workers)
    log.debug("near duplicates: %d pHash candidate pairs to confirm", len(candidates))
    group_of = {i: g for g, members in enumerate(exact) for i in members}
    scores = confirm(candidates, prints, workers)
    found = []
    for (i, j, bits), score in zip(candidates.tolist(), scores.tolist(), strict=True):
        a, b = int(index[i]), int(index[j])
        if score < MIN_PSNR or (a in group_of and group_of.get(b) == group_of[a]):
            continue
        found.append(NearPair(a, b, int(bits), round(float(score), 1)))
    return found
