"""Features: embeddings (penultimate or a named layer) and HOG features of images, their 2-D
map, and similar-image search over a saved index of a collection.

The package is light: its contents load on first use (``import imagewise`` stays quick).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from imagewise.features.extraction import features
    from imagewise.features.index import Index, load_index
    from imagewise.features.result import Features, Match, QueryMatches, SimilarResult
    from imagewise.features.similarity import similar
    from imagewise.runtime.embedding import embed

_MODULES = {
    "embed": "imagewise.runtime.embedding",
    "Features": "result",
    "features": "extraction",
    "Index": "index",
    "load_index": "index",
    "Match": "result",
    "QueryMatches": "result",
    "SimilarResult": "result",
    "similar": "similarity",
}


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        import importlib

        module = _MODULES[name]
        module = module if "." in module else f"imagewise.features.{module}"
        return getattr(importlib.import_module(module), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Features",
    "Index",
    "Match",
    "QueryMatches",
    "SimilarResult",
    "embed",
    "features",
    "load_index",
    "similar",
]
