"""Serving: an HTTP API and a web page over a trained classifier (FastAPI + uvicorn).

The package is light: its contents load on first use (``import imagewise`` stays quick).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from imagewise.serve.app import create_app
    from imagewise.serve.serving import serve
    from imagewise.serve.settings import ServeSettings


def __getattr__(name: str) -> Any:
    if name in ("serve",):
        from imagewise.serve import serving

        return getattr(serving, name)
    if name in ("create_app",):
        from imagewise.serve import app

        return getattr(app, name)
    if name in ("ServeSettings",):
        from imagewise.serve import settings

        return getattr(settings, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ServeSettings", "create_app", "serve"]
