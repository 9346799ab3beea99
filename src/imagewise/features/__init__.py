"""Features: embeddings (penultimate or a named layer) and HOG features of images, their 2-D
map, and similar-image search over an index of a collection.

The package is light: its contents load on first use (``import imagewise`` stays quick).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from imagewise.features.extract import embed


def __getattr__(name: str) -> Any:
    if name in ("embed",):
        from imagewise.features import extract

        return getattr(extract, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["embed"]
