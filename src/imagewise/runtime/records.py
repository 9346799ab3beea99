"""The typed parts of a run's ``meta.json`` beside the model's spec: the training summary, the
calibration, the transfer start, the teacher and what ``--model auto`` chose.

Each is a ``Record`` (``imagewise.edge.records``): its fields are declared once, in the order
the file holds them, and reading, writing and checking come from them. Keys a later version
adds are kept in ``extra``. Torch-free, like ``imagewise.runtime.meta``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from imagewise.edge.records import Record, entry


def _positive(x: float) -> bool:
    return x > 0


def _not_negative(x: float) -> bool:
    return x >= 0


def _probability(x: float) -> bool:
    return 0 <= x <= 1


_COUNT: dict[str, Any] = {"must": _not_negative, "why": "a whole number, 0 or more"}
_SECONDS: dict[str, Any] = {"must": _not_negative, "why": "a number of seconds, 0 or more"}
_PROBABILITY: dict[str, Any] = {"must": _probability, "why": "a probability from 0 to 1"}
_ABOVE_0: dict[str, Any] = {"must": _positive, "why": "a finite number above 0"}


@dataclass
class TrainingSummary(Record):
    """How training went: epochs run and planned, the best epoch and its validation scores,
    what selected it, the time it took and why it stopped; a one-pass fit records its fit's
    summary in ``classical``. Empty until the first epoch ends. Reported, never acted on."""

    epochs_run: int | None = entry(None, omit_none=True, **_COUNT)
    epochs_planned: int | None = entry(None, omit_none=True, **_COUNT)
    best_epoch: int | None = entry(None, omit_none=True, **_COUNT)
    best_val_accuracy: float | None = entry(None, **_PROBABILITY)
    best_val_macro_f1: float | None = entry(None, omit_none=True, **_PROBABILITY)
    best_val_map: float | None = entry(None, omit_none=True, **_PROBABILITY)  # multi-label
    selected_by: str | None = entry(None, omit_none=True)
    train_seconds: float | None = entry(None, omit_none=True, **_SECONDS)
    stop_reason: str | None = entry(None, omit_none=True)
    classical: dict[str, Any] | None = entry(None, omit_none=True)
    extra: dict[str, Any] = entry(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """As training has always written it: nothing before the first epoch, then every
        entry (``best_val_accuracy`` null without validation images)."""
        return super().to_json() if self.epochs_run is not None else dict(self.extra)


@dataclass
class Calibration(Record):
    """The temperature fitted on the validation split and the scores before and after; a run
    with nothing to fit on records 1 and a ``note`` saying why."""

    temperature: float = entry(1.0, required=True, **_ABOVE_0)
    fitted_on: str | None = None
    val_images: int | None = entry(None, omit_none=True, **_COUNT)
    val_nll_before: float | None = entry(None, omit_none=True)
    val_nll_after: float | None = entry(None, omit_none=True)
    val_ece_before: float | None = entry(None, omit_none=True)
    val_ece_after: float | None = entry(None, omit_none=True)
    note: str | None = entry(None, omit_none=True)
    extra: dict[str, Any] = entry(default_factory=dict)


@dataclass
class WeightsLoad(Record):
    """What loading the starting weights did (``imagewise.models.weights.LoadReport``): the
    file, the name mapping used, the tensors cast, loaded, adapted, left new and unused."""

    source: str = entry("", required=True)
    mapping: str = ""
    cast: dict[str, int] = entry(default_factory=dict)
    loaded: int = entry(0, required=True, **_COUNT)
    adapted: dict[str, str] = entry(default_factory=dict)
    new: list[str] = entry(default_factory=list)
    unused: int = entry(0, **_COUNT)
    extra: dict[str, Any] = entry(default_factory=dict)


@dataclass
class TransferRecord(Record):
    """Where the run started from and what it trained: the weights loaded, where the
    preprocessing came from, the learning-rate scales, the freeze mode and the parameters that
    train and stay frozen."""

    weights: WeightsLoad | None = None
    preprocessing_from: Literal["weights", "data"] | None = entry(None, omit_none=True)
    preprocessing_source: str | None = entry(None, omit_none=True)
    layer_lr_decay: float | None = entry(None, omit_none=True, **_ABOVE_0)
    head_lr_scale: float | None = entry(None, omit_none=True, **_ABOVE_0)
    mode: str = entry("none", required=True)
    freeze_bn: bool = False
    unfreeze_at: int | None = entry(None, **_COUNT)
    trainable_parameters: int = entry(0, required=True, **_COUNT)
    frozen_parameters: int = entry(0, required=True, **_COUNT)
    extra: dict[str, Any] = entry(default_factory=dict)


@dataclass
class Teacher(Record):
    """The run a student was distilled from, and the loss weights."""

    run: str
    model: str
    classes: str
    alpha: float = entry(0.5, required=True, **_PROBABILITY)
    temperature: float = entry(4.0, required=True, **_ABOVE_0)
    extra: dict[str, Any] = entry(default_factory=dict)


@dataclass
class AutoChoice(Record):
    """What ``--model auto`` picked, why, and what it measured."""

    model: str
    img_size: int = entry(0, required=True, must=_positive, why="a whole number above 0")
    epochs: int | None = entry(None, omit_none=True, must=_positive, why="above 0")
    pretrained: bool = False
    reason: str = ""
    budget_seconds: float | None = entry(None, omit_none=True)
    estimate_seconds: float | None = entry(None, omit_none=True)
    considered: list[dict[str, Any]] = entry(default_factory=list)
    # transfer settings applied where the user left them at their defaults (TRANSFER_RECIPE)
    recipe: dict[str, Any] = entry(default_factory=dict)
    extra: dict[str, Any] = entry(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """As the run folder has always held it: an empty ``recipe`` left out."""
        return {k: v for k, v in super().to_json().items() if v != {}}


@dataclass
class PseudoLabels(Record):
    """``train --unlabelled``: the teacher (a run folder inside this one), the pool, the
    confidence threshold fitted on the teacher's validation split for the target precision,
    and how many pool images were labelled with the teacher's answer (the manifest beside)."""

    teacher: str
    pool: str
    manifest: str
    pool_images: int = entry(0, required=True, **_COUNT)
    unreadable: int = entry(0, **_COUNT)
    labelled: int = entry(0, required=True, **_COUNT)
    share: float = entry(0.0, required=True, **_PROBABILITY)
    threshold: float = entry(0.0, required=True, **_PROBABILITY)
    target_precision: float = entry(0.95, required=True, **_PROBABILITY)
    val_precision: float = entry(0.0, required=True, **_PROBABILITY)
    val_coverage: float = entry(0.0, required=True, **_PROBABILITY)
    val_images: int = entry(0, required=True, **_COUNT)
    extra: dict[str, Any] = entry(default_factory=dict)

    def describe(self) -> str:
        """The line a self-trained run prints."""
        return (
            f"pseudo-labelled {self.labelled:,} of {self.pool_images:,} pool images "
            f"({self.share:.1%}) at confidence >= {self.threshold:.4g} (the teacher's "
            f"validation precision {self.val_precision:.3f} for target {self.target_precision:g}"
            f", coverage {self.val_coverage:.1%} of {self.val_images} images)"
        )
