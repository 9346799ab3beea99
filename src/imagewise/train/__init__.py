"""Training: the task (model + loss), optimizers, schedules, the loop and the run writer."""

from imagewise.train.loop import TrainState, evaluate_loader, fit, train_one_epoch
from imagewise.train.run import TrainResult, train
from imagewise.train.task import ClassificationTask

__all__ = [
    "ClassificationTask",
    "TrainResult",
    "TrainState",
    "evaluate_loader",
    "fit",
    "train",
    "train_one_epoch",
]

from imagewise._stage import make_callable

make_callable(__name__, train)
