"""``TrainResult``: what a finished run reports (``imagewise.train`` and ``imagewise.distill``
return it); the run folder holds the rest."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from imagewise.config import RunConfig
    from imagewise.runtime.runs import RunFolder
    from imagewise.train.loop import TrainState


@dataclass
class TrainResult:
    """What a finished run reports; the run folder holds the rest."""

    run: Path
    model: str
    epochs: int
    best_epoch: int
    best_val_accuracy: float  # NaN when there was no validation split
    train_seconds: float
    stop_reason: str
    temperature: float = 1.0  # fitted on the validation split after training
    # or val_macro_f1 (imbalanced classes), val_map (multi-label), train_loss
    selected_by: str = "val_accuracy"
    best_val_map: float | None = None  # multi-label runs: the best epoch's validation mAP
    pseudo_labels: str | None = None  # train --unlabelled: what the teacher labelled (a line)

    @classmethod
    def of(
        cls, folder: RunFolder, cfg: RunConfig, state: TrainState, temperature: float
    ) -> TrainResult:
        best = next((h for h in state.history if h["epoch"] == state.best_epoch), {})
        by_val = state.metric != "train_loss"
        return cls(
            run=folder.path,
            model=cfg.model.name,
            epochs=state.epoch,
            best_epoch=state.best_epoch,
            best_val_accuracy=best.get("val_accuracy", float("nan")) if by_val else float("nan"),
            selected_by=state.metric,
            train_seconds=state.train_seconds,
            stop_reason=state.stop_reason,
            temperature=temperature,
            best_val_map=best.get("val_map") if by_val else None,
        )

    def summary(self, what: str = "") -> str:
        """Two lines: how long it trained and which epoch it kept, and the run folder (and
        between them, for a self-trained run, what its teacher pseudo-labelled).

        Args:
            what: the words the first line starts with (default ``trained MODEL``), e.g.
                ``distilled runs/big into tutorial_cnn``.
        """
        if self.best_val_map is not None and self.best_val_map == self.best_val_map:
            best = f"best validation mAP {self.best_val_map:.4f} (epoch {self.best_epoch})"
        else:
            best = self._best_accuracy()
        epochs = f"{self.epochs} epoch" + ("" if self.epochs == 1 else "s")
        what = what or f"trained {self.model}"
        lines = [f"{what} for {epochs} in {self.train_seconds:.0f}s; {best}"]
        lines += [self.pseudo_labels] if self.pseudo_labels else []
        return "\n".join([*lines, f"run folder: {self.run}"])

    def _best_accuracy(self) -> str:
        return (
            f"best validation accuracy {self.best_val_accuracy:.2%} (epoch {self.best_epoch}"
            + (", picked by macro F1)" if self.selected_by == "val_macro_f1" else ")")
            if self.best_val_accuracy == self.best_val_accuracy  # NaN: no validation split
            else f"no validation split: kept epoch {self.best_epoch} (lowest training loss)"
        )
