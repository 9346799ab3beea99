"""Training: the task (model + loss), optimizers, schedules, the loop and the run writer.

The package is light: its contents load on first use (``import imagewise`` stays quick).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from imagewise.train.loop import (
        Components,
        EarlyStopping,
        FitSettings,
        TrainState,
        evaluate_loader,
        fit,
        train_one_epoch,
    )
    from imagewise.train.result import TrainResult
    from imagewise.train.run import train
    from imagewise.train.task import ClassificationTask


def __getattr__(name: str) -> Any:
    if name in ("train",):
        from imagewise.train import run

        return run.train
    if name in ("TrainResult",):
        from imagewise.train import result

        return result.TrainResult
    if name in (
        "Components",
        "EarlyStopping",
        "FitSettings",
        "TrainState",
        "evaluate_loader",
        "fit",
        "train_one_epoch",
    ):
        from imagewise.train import loop

        return getattr(loop, name)
    if name in ("ClassificationTask",):
        from imagewise.train import task

        return getattr(task, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ClassificationTask",
    "Components",
    "EarlyStopping",
    "FitSettings",
    "TrainResult",
    "TrainState",
    "evaluate_loader",
    "fit",
    "train",
    "train_one_epoch",
]
