"""Evaluation: metrics, confusion matrix, calibration, the report and comparisons of runs.

The package is light: its contents load on first use (``import imagewise`` stays quick).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from imagewise.evaluate.compare import compare_runs
    from imagewise.evaluate.evaluation import evaluate, write_evaluation
    from imagewise.evaluate.result import Evaluation


def __getattr__(name: str) -> Any:
    if name in ("evaluate", "write_evaluation"):
        from imagewise.evaluate import evaluation

        return getattr(evaluation, name)
    if name in ("Evaluation",):
        from imagewise.evaluate import result

        return result.Evaluation
    if name in ("compare_runs",):
        from imagewise.evaluate import compare

        return getattr(compare, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Evaluation", "compare_runs", "evaluate", "write_evaluation"]
