"""A saved similarity index: L2-normalized embeddings of a collection and what they are.

    INDEX_DIR/
      embeddings.npy   float32 (N, D), each row of unit length (cosine = dot product)
      paths.json       the images, in the rows' order (files, or fashion-mnist:train/12)
      labels.json      their class names ('' when unlabelled)
      index.json       format, model, run, weights_sha256, layer, dim, count, backend, data,
                       split, key, created
      faiss.index      the FAISS index, when the backend is FAISS

``key`` is a sha256 over the run's weights, the layer and the collection's fingerprint (file
names, sizes and mtimes, or the pixels of in-memory data): an index whose key differs from the
one computed now is stale and is built again. Every file is written atomically, index.json last.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from imagewise.errors import UserError
from imagewise.io import atomic_write, atomic_write_json, read_json

FORMAT = "imagewise-index/1"
INDEX_FILE = "index.json"


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32); zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, np.float32(1e-12)), dtype=np.float32)


def index_key(weights_sha256: str, layer: str, fingerprint: str) -> str:
    """What an index depends on: the weights, the layer, the collection."""
    return hashlib.sha256(f"{weights_sha256}\0{layer}\0{fingerprint}".encode()).hexdigest()


def default_dir(run: str | Path, source: str, split: str, layer: str) -> Path:
    """``RUN/index/<data name>-<split>-<short hash of the data's full path, split, layer>``."""
    where = source if not Path(source).expanduser().exists() else str(Path(source).resolve())
    short = hashlib.sha256(f"{where}\0{split}\0{layer}".encode()).hexdigest()[:10]
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(source.rstrip("/")).stem or "data")[:40]
    return Path(run) / "index" / f"{name}-{split or 'files'}-{short}"


def is_index_dir(path: str | Path) -> bool:
    return (Path(path).expanduser() / INDEX_FILE).is_file()


@dataclass
class Index:
    """Unit-length embeddings with their paths and labels, and the index's metadata."""

    embeddings: np.ndarray
    paths: list[str]
    labels: list[str]
    info: dict[str, Any]
    folder: Path | None = None
    searcher: Any = None  # a FAISS index when the backend is FAISS

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def backend(self) -> str:
        return str(self.info.get("backend", "exact"))

    def save(self, folder: str | Path) -> Path:
        """Write the index to ``folder`` (index.json last, so a half-written index is stale)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / INDEX_FILE).unlink(missing_ok=True)
        atomic_write(folder / "embeddings.npy", lambda t: _save_npy(t, self.embeddings))
        atomic_write_json(folder / "paths.json", self.paths)
        atomic_write_json(folder / "labels.json", self.labels)
        if self.searcher is not None:
            import faiss

            atomic_write(folder / "faiss.index", lambda t: faiss.write_index(self.searcher, t))
        atomic_write_json(folder / INDEX_FILE, self.info)
        self.folder = folder
        return folder


def _save_npy(tmp: str, array: np.ndarray) -> None:
    with open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)


def new_info(**fields: Any) -> dict[str, Any]:
    """index.json's content: the format, the given fields, and when."""
    created = datetime.now(UTC).replace(microsecond=0).isoformat()
    return {"format": FORMAT, **fields, "created": created}


def load_index(folder: str | Path) -> Index:
    """Read an index folder written by ``Index.save``.

    Raises:
        UserError: not an index folder, or its files disagree (one line naming the file).
    """
    folder = Path(folder).expanduser()
    if not is_index_dir(folder):
        raise UserError(f"'{folder}' is not an index folder (it has no {INDEX_FILE})")
    try:
        info = read_json(folder / INDEX_FILE)
        if info.get("format") != FORMAT:
            raise UserError(f"'{folder}/{INDEX_FILE}' is not a {FORMAT} index; build it again")
        embeddings = np.load(folder / "embeddings.npy", allow_pickle=False)
        paths, labels = read_json(folder / "paths.json"), read_json(folder / "labels.json")
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read the index in '{folder}': {exc}; build it again") from exc
    if not (len(embeddings) == len(paths) == len(labels) == info.get("count")):
        raise UserError(f"the index in '{folder}' is inconsistent (counts differ); build it again")
    searcher = None
    if str(info.get("backend", "")).startswith("faiss"):
        from imagewise.features.search import faiss_module

        faiss = faiss_module()
        if faiss is None:
            info = {**info, "backend": "exact"}  # without FAISS: exact search (IVF was approximate)
        else:
            searcher = faiss.read_index(str(folder / "faiss.index"))
    return Index(embeddings, paths, labels, info, folder, searcher)
