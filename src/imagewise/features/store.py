"""Feature files: ``.npz`` (NumPy, no pickles) and ``.parquet`` (pyarrow), written atomically.

``.npz`` holds ``features`` (float32 N x D), ``paths``, ``labels``, ``splits`` and ``classes``
(unicode arrays) and ``layer``, ``model``, ``run``, ``dim`` (0-d arrays). ``.parquet`` holds
one row per image (``path``, ``label``, ``split``, ``features`` as a fixed-size float32 list,
``path_bytes``), with ``classes``, ``layer``, ``model``, ``run`` and ``dim`` in the schema's
metadata.

Parquet text must be UTF-8: a file name that is not (``caf\\xe9.png``, written in Latin-1) is
in ``path`` with its odd bytes shown as ``\\xNN``, and whole in ``path_bytes`` (the name's
bytes, ``os.fsdecode`` turns them back into the path), as are all names.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from imagewise.errors import UserError
from imagewise.io import atomic_write
from imagewise.names import valid_text


class _Table(NamedTuple):
    """What a feature file holds (``imagewise.features.Features``' fields)."""

    features: np.ndarray
    paths: list[str]
    labels: list[str]
    splits: list[str]
    classes: list[str]
    layer: str
    model: str
    run: str

    @property
    def dim(self) -> int:
        return int(self.features.shape[1]) if self.features.ndim == 2 else 0


def _strings(values: list[str]) -> np.ndarray:
    return np.array(values, dtype=str) if values else np.zeros(0, dtype="<U1")


def _write_npz(result: _Table, tmp: str) -> None:
    with open(tmp, "wb") as f:
        np.savez(
            f,
            features=result.features,
            paths=_strings(result.paths),
            labels=_strings(result.labels),
            splits=_strings(result.splits),
            classes=_strings(result.classes),
            layer=np.array(result.layer),
            model=np.array(result.model),
            run=np.array(result.run),
            dim=np.array(result.dim, dtype=np.int64),
        )


def _write_parquet(result: _Table, tmp: str) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise UserError(
            "writing .parquet needs pyarrow: pip install pyarrow (or use .npz)"
        ) from exc
    flat = pa.array(result.features.reshape(-1), type=pa.float32())
    meta = {
        "classes": json.dumps(result.classes),
        "layer": result.layer,
        "model": result.model,
        "run": result.run,
        "dim": str(result.dim),
    }
    table = pa.table(
        {
            "path": pa.array([valid_text(p) for p in result.paths], type=pa.string()),
            "label": pa.array([valid_text(c) for c in result.labels], type=pa.string()),
            "split": pa.array(result.splits, type=pa.string()),
            "features": pa.FixedSizeListArray.from_arrays(flat, result.dim),
            "path_bytes": pa.array([os.fsencode(p) for p in result.paths], type=pa.binary()),
        }
    ).replace_schema_metadata({f"imagewise.{k}": v for k, v in meta.items()})
    pq.write_table(table, tmp)


def save_features(
    path: str | Path, features: np.ndarray, *, paths: list[str], labels: list[str],
    splits: list[str], classes: list[str], layer: str, model: str, run: str,
) -> Path:  # fmt: skip
    """Write the features (float32 N x D) and what they are to ``path`` (``.npz`` or
    ``.parquet``) atomically; ``Features.save`` calls it."""
    result = _Table(features, paths, labels, splits, classes, layer, model, run)
    suffix = Path(path).suffix.lower()
    writers = {".npz": _write_npz, ".parquet": _write_parquet}
    if suffix not in writers:
        raise UserError(f"--out '{path}': unknown file type '{suffix}'; use .npz or .parquet")
    return atomic_write(path, lambda tmp: writers[suffix](result, tmp))
