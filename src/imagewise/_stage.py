"""Stage packages that are also the stage's function: ``imagewise.train(...)``.

``imagewise.train`` is both the package ``imagewise/train/`` and the function users call.
Python binds a package's attribute to its subpackage whenever the subpackage is imported, so a
plain function of that name would be shadowed unpredictably; giving the package module a
``__call__`` (module ``__class__`` assignment, supported since Python 3.5) makes both the same
object.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from typing import Any


def make_callable(module_name: str, func: Callable[..., Any]) -> None:
    """Make the module ``module_name`` callable as ``func``, with ``func``'s docstring."""

    class StageModule(types.ModuleType):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return func(*args, **kwargs)

    module = sys.modules[module_name]
    module.__class__ = StageModule
    module.__call__.__func__.__doc__ = func.__doc__
