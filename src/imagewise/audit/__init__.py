"""Data audit: ``check(data)`` finds unreadable and odd files, class imbalance, exact and near
duplicates within and across splits, and likely label errors, without touching the user's files.

Light on import: the contents load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from imagewise.audit.checker import check
    from imagewise.audit.result import AuditResult

__all__ = ["AuditResult", "check"]


def __getattr__(name: str) -> Any:
    if name == "check":
        from imagewise.audit import checker

        return checker.check
    if name == "AuditResult":
        from imagewise.audit import result

        return result.AuditResult
    raise AttributeError(f"module 'imagewise.audit' has no attribute {name!r}")
