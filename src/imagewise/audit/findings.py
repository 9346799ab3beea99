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
        "label": scan.classes[scan.labels[i]],
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
    """Per split: images per class and the imbalance ratio (largest class / smallest)."""
    out = []
    for split in SPLITS:
        labels = scan.labels[scan.splits == split]
        if len(labels) == 0:
            continue
        counts = np.bincount(labels, minlength=len(scan.classes))
        present = counts[counts > 0]
        out.append(
            {
                "split": split,
                "counts": {name: int(n) for name, n in zip(scan.classes, counts, strict=True)},
                "imbalance_ratio": round(float(present.max() / present.min()), 2),
                "empty_classes": [n for n, c in zip(scan.classes, counts, strict=True) if c == 0],
            }
        )
    return out
