"""``imagewise.distill``: train a student with a teacher run's soft targets (Hinton et al.
2015); the loss, the task and the teacher's checks are in ``imagewise.train.distillation``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imagewise.errors import UserError
from imagewise.train.distillation import (
    DistillationTask,
    convert_for_teacher,
    distillation_loss,
    refuse_one_pass_student,
)
from imagewise.train.result import TrainResult
from imagewise.train.run import train

__all__ = [
    "DistillationTask",
    "TrainResult",
    "convert_for_teacher",
    "distill",
    "distillation_loss",
]


def distill(
    data: str,
    teacher: str | Path,
    student: str,
    out: str | Path | None = None,
    **options: Any,
) -> TrainResult:
    """Train ``student`` on ``data`` with soft targets from the ``teacher`` run.

    Args:
        data: as for ``imagewise.train``: a folder, CSV manifest, IDX folder, ``digits`` or
            ``fashion-mnist``. Its classes must be the teacher's, in the same order.
        teacher: a run folder trained by gradient steps (any model, any preprocessing: its
            input is converted from the student's batch).
        student: any registry or timm model name (not a one-pass model such as hog_svm).
        out: the run folder (default ``runs/DATA-STUDENT``).
        **options: every ``imagewise.train`` setting, e.g. ``epochs=10``, and
            ``distill_alpha`` (weight of the soft targets, default 0.5) and
            ``distill_temperature`` (default 4).

    Example:
        >>> import imagewise
        >>> imagewise.distill("fashion-mnist", teacher="runs/big", student="tutorial_cnn",
        ...                   out="runs/small", epochs=10)  # doctest: +SKIP
    """
    for name in ("model", "teacher"):
        if name in options:
            raise UserError(f"distill names the {name} with its own argument, not '{name}='")
    refuse_one_pass_student(student)  # before the data is read
    path = Path(teacher).expanduser()
    # Stored absolute, so --resume and the record in meta.json work from any directory.
    where = str(path.resolve()) if path.exists() else str(teacher)
    return train(data, out, model=student, teacher=where, **options)
