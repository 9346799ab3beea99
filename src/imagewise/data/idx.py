"""MNIST-format IDX files (optionally gzipped) to NumPy arrays.

The format is a four-byte magic (two zero bytes, a type code, the number of dimensions), one
big-endian int32 per dimension, then the data in C order. Read by hand because it is twenty
lines and no maintained library reads it without pulling in a whole dataset framework.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from imagewise.errors import UserError

_DTYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw) into an array of its stored shape and type."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise UserError(f"cannot read IDX file '{path}': {exc}") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise UserError(f"'{path}' is not an IDX file (bad magic number)")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}i", data[4 : 4 + 4 * ndim])
    dtype = np.dtype(_DTYPES[data[2]])
    count = int(np.prod(dims)) if dims else 1
    body = data[4 + 4 * ndim :]
    if len(body) < count * dtype.itemsize:
        raise UserError(f"IDX file '{path}' is truncated: expected {count} values of {dtype}")
    return (
        np.frombuffer(body, dtype=dtype, count=count).reshape(dims).astype(dtype.newbyteorder("="))
    )


def find_idx_pairs(folder: Path) -> dict[str, tuple[Path, Path]]:
    """Find ``{split: (images, labels)}`` in a folder of MNIST-style IDX files.

    Names follow the MNIST convention: ``train-images-idx3-ubyte[.gz]`` with
    ``train-labels-idx1-ubyte[.gz]``, and ``t10k-`` (or ``test-``) for the test split.
    """
    pairs: dict[str, tuple[Path, Path]] = {}
    for images in sorted(folder.glob("*-images-idx3-ubyte*")):
        prefix = images.name.split("-images-")[0]
        labels = next(iter(sorted(folder.glob(f"{prefix}-labels-idx1-ubyte*"))), None)
        if labels is None:
            continue
        split = {"t10k": "test", "test": "test", "train": "train", "val": "val"}.get(prefix)
        if split:
            pairs[split] = (images, labels)
    return pairs
