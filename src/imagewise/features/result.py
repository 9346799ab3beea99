"""What ``features`` and ``similar`` return: ``Features`` (the arrays and what they are) and
``SimilarResult`` (each query's matches). Their files and pictures are written by ``store``,
``projection`` and ``sheet``, which take plain values, so none of them imports this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imagewise.errors import UserError
from imagewise.names import json_dumps, shown


@dataclass
class Features:
    """Features of a collection of images, one row per image that could be read.

    Attributes:
        features: float32 (N, D).
        paths: file paths (or ``fashion-mnist:test/12`` for in-memory images).
        labels: class names; '' for unlabelled images.
        splits: the split each image came from (train / val / test; '' when unlabelled).
        classes: the dataset's class names ([] when unlabelled).
        layer: what the features are (``penultimate (input of fc)``, ``layer3``, ``hog (...)``).
        model: the run's model name.
        run: the run folder.
        skipped: (path, reason) of unreadable files left out.
        seconds: time taken to read and embed.
    """

    features: np.ndarray
    paths: list[str]
    labels: list[str]
    splits: list[str]
    classes: list[str]
    layer: str
    model: str
    run: str
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.features.shape[1]) if self.features.ndim == 2 else 0

    def __len__(self) -> int:
        return len(self.paths)

    def summary(self) -> str:
        """How many images and features, from what, in how long (after the file written, if
        any); the map's file."""
        skipped = f" ({len(self.skipped)} unreadable skipped)" if self.skipped else ""
        wrote = f"wrote {self.files['features']}: " if "features" in self.files else ""
        lines = [
            f"{wrote}{len(self)} images x {self.dim} features "
            f"({self.layer}, {self.model}) in {self.seconds:.1f}s{skipped}"
        ]
        if "map" in self.files:
            lines.append(f"map: {self.files['map']}")
        return "\n".join(lines)

    def label_indices(self) -> np.ndarray:
        """Class index of each row (-1 for unlabelled rows)."""
        lookup = {c: i for i, c in enumerate(self.classes)}
        return np.array([lookup.get(label, -1) for label in self.labels], dtype=np.int64)

    def save(self, path: str | Path) -> Path:
        """Write ``.npz`` or ``.parquet`` (by the suffix), atomically."""
        from imagewise.features.store import save_features

        return save_features(
            path, self.features, paths=self.paths, labels=self.labels, splits=self.splits,
            classes=self.classes, layer=self.layer, model=self.model, run=self.run,
        )  # fmt: skip

    def draw_map(self, path: str | Path, method: str = "pca") -> Path:
        """A 2-D map of the features (``pca`` or ``tsne``), coloured by class, as PNG."""
        from imagewise.features.projection import draw_map

        title = f"{self.model}, {self.layer}"
        return draw_map(self.features, self.labels, self.classes, path, method, title)


FORMATS = ("table", "json", "html")


@dataclass
class Match:
    rank: int
    similarity: float
    path: str
    label: str


@dataclass
class QueryMatches:
    query: str
    matches: list[Match]


@dataclass
class SimilarResult:
    """The nearest images of each query, best first, and the index they came from.

    Attributes:
        queries: one entry per query image, with its ``k`` matches.
        index: the index's folder; ``index_info`` its ``index.json``.
        built: True when the index was built by this call, False when a saved one was reused.
        build_seconds: time to embed the collection and write the index (0 when reused).
        search_seconds: time to embed the queries and search.
    """

    queries: list[QueryMatches]
    index: Path
    index_info: dict[str, Any]
    built: bool
    build_seconds: float = 0.0
    search_seconds: float = 0.0
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        info = self.index_info
        return {
            "index": str(self.index),
            "model": info.get("model"),
            "layer": info.get("layer"),
            "backend": info.get("backend"),
            "count": info.get("count"),
            "queries": [
                {
                    "query": q.query,
                    "matches": [
                        {
                            "rank": m.rank,
                            "similarity": round(m.similarity, 6),
                            "path": m.path,
                            "label": m.label,
                        }
                        for m in q.matches
                    ],
                }
                for q in self.queries
            ],
        }

    def write(self, path: str | Path, fmt: str = "table") -> Path:
        """Write the result as ``fmt`` to ``path``, atomically."""
        from imagewise.io import atomic_write_text

        try:
            return atomic_write_text(path, self.format(fmt) + "\n")
        except OSError as exc:
            raise UserError(f"cannot write '{path}': {exc.strerror or exc}") from exc

    def format(self, fmt: str = "table") -> str:
        """The result as a text table, JSON, or a self-contained HTML contact sheet."""
        if fmt not in FORMATS:
            raise UserError(f"unknown format '{fmt}'; choose {', '.join(FORMATS)}")
        if fmt == "json":
            return json_dumps(self.to_dict())  # names read back whole (imagewise.names)
        if fmt == "html":
            from imagewise.features.sheet import contact_sheet

            return contact_sheet(self.queries, self.index_info)
        lines = []
        for q in self.queries:
            lines += [
                f"query: {shown(q.query)}",
                f"{'rank':>4}  {'similarity':>10}  {'label':<16}  path",
            ]
            lines += [
                f"{m.rank:>4}  {m.similarity:>10.4f}  {m.label or '-':<16}  {shown(m.path)}"
                for m in q.matches
            ]
            lines.append("")
        return "\n".join(lines).rstrip("\n")
