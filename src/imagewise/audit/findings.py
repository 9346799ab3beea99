"""Per-file findings (unreadable, format vs extension, tiny, size outliers, colour modes) and
class counts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from imagewise.audit.fingerprint import mode_name
from imagewise.audit.scan import Scan
from imagewise.data.sources import SPLITS

TINY = 16  # an image with a side under 16 px holds too little to learn from
TOP_PAIRS = 10  # the label pairs most often seen together that the summary names
OUTLIER_FACTOR = 16.0  # a size outlier has 16x more or fewer pixels than the median (4x a side)

# The extensions each detected format may carry.
EXTENSIONS = {
    "JPEG": {".jpg", ".jpeg", ".jfif", ".jpe"},
    "MPO": {".jpg", ".jpeg"},  # a JPEG with extra frames (some cameras)
    "PNG": {".png"},
    "BMP": {".bmp"},
    "TIFF": {".tif", ".tiff"},
    "WEBP": {".webp"},
    "GIF": {".gif"},
    "PPM": {".ppm", ".pgm", ".pbm", ".pnm"},
}


def _entry(scan: Scan, i: int, **extra: Any) -> dict[str, Any]:
    return {
        "path": scan.names[i],
        "split": str(scan.splits[i]),
        "label": scan.label_text(i),
        **extra,
    }


def _sizes(scan: Scan, flagged: set[int]) -> dict[str, list[dict[str, Any]]]:
    ok = [i for i, f in enumerate(scan.infos) if f.error is None]
    tiny, outliers = [], []
    if not ok:
        return {"tiny": tiny, "size_outliers": outliers}
    areas = np.array([scan.infos[i].width * scan.infos[i].height for i in ok], dtype=np.float64)
    median = float(np.median(areas))
    for i, area in zip(ok, areas.tolist(), strict=True):
        f = scan.infos[i]
        if min(f.width, f.height) < TINY:
            tiny.append(_entry(scan, i, width=f.width, height=f.height))
            flagged.add(i)
        elif area > median * OUTLIER_FACTOR or area * OUTLIER_FACTOR < median:
            outliers.append(
                _entry(scan, i, width=f.width, height=f.height, median_pixels=int(median))
            )
    return {"tiny": tiny, "size_outliers": outliers}


def _modes(scan: Scan) -> list[dict[str, Any]]:
    """One entry per colour mode, most common first; the files are listed for every mode but
    the most common (listing 60,000 grey images says nothing)."""
    by_mode: dict[str, list[int]] = {}
    for i, f in enumerate(scan.infos):
        if f.error is None and f.mode is not None:
            by_mode.setdefault(mode_name(f.mode), []).append(i)
    ordered = sorted(by_mode.items(), key=lambda kv: -len(kv[1]))
    return [
        {
            "mode": mode,
            "count": len(members),
            "paths": [] if rank == 0 else [scan.names[i] for i in members],
        }
        for rank, (mode, members) in enumerate(ordered)
    ]


def file_findings(scan: Scan, flagged: set[int]) -> dict[str, list[dict[str, Any]]]:
    """``unreadable``, ``format_mismatch``, ``tiny``, ``size_outliers`` and ``modes``; adds the
    unreadable and tiny images to ``flagged``."""
    unreadable, mismatch = [], []
    for i, f in enumerate(scan.infos):
        if f.error is not None:
            unreadable.append(_entry(scan, i, reason=f.error))
            flagged.add(i)
        elif f.format is not None and f.format in EXTENSIONS:
            suffix = Path(scan.names[i]).suffix.lower()
            if suffix not in EXTENSIONS[f.format]:
                mismatch.append(_entry(scan, i, extension=suffix, format=f.format))
    return {
        "unreadable": unreadable,
        "format_mismatch": mismatch,
        **_sizes(scan, flagged),
        "modes": _modes(scan),
    }


def split_counts(scan: Scan) -> list[dict[str, Any]]:
    """Per split: images per class and the imbalance ratio (largest class / smallest). For
    multi-label data the counts are images per label, plus ``no_label``: images with none."""
    out = []
    for split in SPLITS:
        labels = scan.labels[scan.splits == split]
        if len(labels) == 0:
            continue
        if scan.multilabel:
            counts = labels.sum(axis=0, dtype=np.int64)
        else:
            counts = np.bincount(labels, minlength=len(scan.classes))
        present = counts[counts > 0]
        ratio = float(present.max() / present.min()) if len(present) else 1.0
        entry: dict[str, Any] = {
            "split": split,
            "counts": {name: int(n) for name, n in zip(scan.classes, counts, strict=True)},
            "imbalance_ratio": round(ratio, 2),
            "empty_classes": [n for n, c in zip(scan.classes, counts, strict=True) if c == 0],
        }
        if scan.multilabel:
            entry["no_label"] = int((labels.sum(axis=1) == 0).sum())
        out.append(entry)
    return out


def label_sets(scan: Scan, top: int = TOP_PAIRS) -> dict[str, Any]:
    """A multi-label dataset's labels over all its images: images per label, images with no
    label, labels per image, the co-occurrence table (``cooccurrence[a][b]``: images carrying
    both labels a and b; the diagonal is each label's count) and the ``top`` most frequent
    pairs, each with its Jaccard index (images with both / images with either)."""
    rows = scan.labels.astype(np.int64)
    table = rows.T @ rows
    counts = np.diag(table)
    pairs = [
        (int(table[a, b]), a, b)
        for a in range(len(scan.classes))
        for b in range(a + 1, len(scan.classes))
        if table[a, b] > 0
    ]
    pairs.sort(key=lambda p: (-p[0], p[1], p[2]))
    return {
        "labels": list(scan.classes),
        "counts": {name: int(n) for name, n in zip(scan.classes, counts, strict=True)},
        "no_label": int((rows.sum(axis=1) == 0).sum()),
        "labels_per_image": round(float(rows.sum(axis=1).mean()), 3) if len(rows) else 0.0,
        "cooccurrence": table.tolist(),
        "top_pairs": [
            {
                "labels": [scan.classes[a], scan.classes[b]],
                "count": n,
                "jaccard": round(n / int(counts[a] + counts[b] - n), 3),
            }
            for n, a, b in pairs[:top]
        ],
    }
