"""Data audit: ``check(data)`` finds unreadable and odd files, class imbalance, exact and near
duplicates within and across splits, and likely label errors, without touching the user's files.

Light on import: the contents load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from imagewise.audit.checker import AuditResult, check

__all__ = ["AuditResult", "check"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from imagewise.audit import checker as module

        return getattr(module, name)
    raise AttributeError(f"module 'imagewise.audit' has no attribute {name!r}")
