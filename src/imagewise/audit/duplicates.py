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

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from imagewise.audit.fingerprint import Fingerprint

MAX_BITS = 8  # candidate: within 8 of 64 bits of one of the shifted hashes
MIN_PSNR = 30.0  # confirmed: at least 30 dB after aligning by up to one pixel
_ROWS = 128  # rows of the pairwise hash search per step (a 128 x N uint64 temporary)
_PAIRS = 8192  # candidate pairs confirmed per step


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


def hash_candidates(hashes: np.ndarray, max_bits: int = MAX_BITS) -> np.ndarray:
    """Pairs (i < j, positions in ``hashes``) whose unshifted pHash of i is within ``max_bits``
    of any shifted pHash of j; ``hashes`` is uint64 (N, len(SHIFTS)). Returns (P, 3): i, j, bits.
    """
    n = len(hashes)
    base = hashes[:, 0]
    found = []
    for start in range(0, n, _ROWS):
        rows = base[start : start + _ROWS, None]
        cols = hashes[start:]
        dist = np.full((len(rows), len(cols)), 255, dtype=np.uint8)
        for k in range(hashes.shape[1]):
            np.minimum(dist, np.bitwise_count(rows ^ cols[None, :, k]), out=dist)
        # Only j > i: the diagonal block's lower half and the diagonal itself are dropped.
        dist[np.tril_indices(len(rows), 0, len(cols))] = 255
        i, j = np.nonzero(dist <= max_bits)
        found.append(np.stack([i + start, j + start, dist[i, j]], axis=1))
    return np.concatenate(found) if found else np.zeros((0, 3), np.int64)


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


def confirm(pairs: np.ndarray, prints: list[Fingerprint]) -> np.ndarray:
    """PSNR per candidate pair (positions in ``prints``): the better of the fine view (when
    both images have the same size) and the 16x16 coarse view."""
    coarse = np.stack([p.coarse for p in prints]) if prints else np.zeros((0, 16, 16), np.uint8)
    shapes = [p.fine.shape for p in prints]
    by_shape: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]] = {}
    for shape in set(shapes):
        members = np.array([k for k, s in enumerate(shapes) if s == shape], dtype=np.int64)
        where = np.full(len(prints), -1, dtype=np.int64)
        where[members] = np.arange(len(members))
        by_shape[shape] = (where, np.stack([prints[k].fine for k in members]))
    scores = np.zeros(len(pairs), dtype=np.float32)
    for start in range(0, len(pairs), _PAIRS):
        part = pairs[start : start + _PAIRS, :2]
        score = _best_psnr(coarse[part[:, 0]], coarse[part[:, 1]])
        for where, fine in by_shape.values():
            a, b = where[part[:, 0]], where[part[:, 1]]
            both = np.flatnonzero((a >= 0) & (b >= 0))
            if len(both):
                fine_score = _best_psnr(fine[a[both]], fine[b[both]])
                score[both] = np.maximum(score[both], fine_score)
        scores[start : start + len(part)] = score
    return scores


def near_pairs(
    index: np.ndarray, prints: list[Fingerprint], exact: list[list[int]]
) -> list[NearPair]:
    """Near-duplicate pairs among the images ``index`` (scan indices) with ``prints``; pairs
    that are exact duplicates of each other are left to the exact list."""
    hashes = np.stack([p.hashes for p in prints]) if prints else np.zeros((0, 5), np.uint64)
    candidates = hash_candidates(hashes)
    group_of = {i: g for g, members in enumerate(exact) for i in members}
    scores = confirm(candidates, prints)
    found = []
    for (i, j, bits), score in zip(candidates.tolist(), scores.tolist(), strict=True):
        a, b = int(index[i]), int(index[j])
        if score < MIN_PSNR or (a in group_of and group_of.get(b) == group_of[a]):
            continue
        found.append(NearPair(a, b, int(bits), round(float(score), 1)))
    return found
