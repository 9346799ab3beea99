"""Hyperparameter search: grid, random and Bayesian (TPE) on Optuna, pruning poor trials,
stored in SQLite or any SQL database so several workers share one study.

The package is light: its contents load on first use (``import imagewise`` stays quick).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from imagewise.tune.search import TuneResult, tune
    from imagewise.tune.space import Param, Space, default_space, read_space


def __getattr__(name: str) -> Any:
    if name in ("TuneResult", "tune"):
        from imagewise.tune import search

        return getattr(search, name)
    if name in ("Param", "Space", "default_space", "read_space"):
        from imagewise.tune import space

        return getattr(space, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Param", "Space", "TuneResult", "default_space", "read_space", "tune"]
