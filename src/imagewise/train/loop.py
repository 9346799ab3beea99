"""The training loop: ``train_one_epoch``, ``evaluate_loader`` and a ``fit`` that calls them.

Extension points are plain objects with any of ``on_train_start(state)``,
``on_epoch_end(state)`` and ``on_train_end(state)``, called by duck typing; a hook that wants to
stop sets ``state.stop = True``.

A loss that stops being finite is caught within the epoch: ``fit`` goes back to the state the
epoch started from, lowers the learning rate and runs the epoch again, a bounded number of times
(``Rollback``), then raises ``TrainingDiverged``. A non-finite epoch is never the best one.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from imagewise.config import TrainConfig
from imagewise.data.transforms import BatchAugment
from imagewise.edge.spec import InputContract
from imagewise.errors import UserError
from imagewise.runtime.device import autocast
from imagewise.runtime.inference import predict_loader
from imagewise.runtime.threads import ThreadGovernor
from imagewise.train.compile import unwrap
from imagewise.train.distributed import all_reduce_sum, dist_enabled, gather_arrays
from imagewise.train.task import ClassificationTask

log = logging.getLogger("imagewise")

# After a non-finite loss: how many times the epoch is tried again, and how much lower the
# learning rate is each time (10x, so three tries span lr/1000).
MAX_ROLLBACKS, ROLLBACK_LR_FACTOR = 3, 0.1


class NonFiniteLoss(Exception):
    """The loss (or the weights) stopped being finite; the message says which and where."""


class TrainingDiverged(UserError):
    """The loss stayed non-finite after every rollback: one line, nothing non-finite saved."""


@dataclass
class Components:
    """What a training run is made of, built once by ``imagewise.train`` and read by ``fit``
    (and by hooks, through ``TrainState.parts``)."""

    model: nn.Module  # the bare network: what is saved, evaluated and exported
    task: ClassificationTask  # forward (through DDP / torch.compile when on) and loss
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    augment: BatchAugment
    train_loader: Any
    val_loader: Any
    preprocessing: InputContract
    device: torch.device
    ema: Any = None  # timm ModelEmaV3, whose weights are the ones validated and saved
    # imagewise.train.transfer.Freezer: frozen parts keep eval-mode behaviour in training
    freezer: Any = None
    # Cached features: the loaders feed embeddings, so validation runs this part of the
    # evaluated network (its classifier; imagewise.train.feature_cache.ClassifierOnly).
    feeds: Callable[[nn.Module], nn.Module] | None = None

    @property
    def evaluated(self) -> nn.Module:
        """The network validation measures and the run saves: the EMA when it is on."""
        return self.ema.module if self.ema is not None else self.model

    @property
    def validated(self) -> nn.Module:
        """What validation runs on the val loader's batches: the evaluated network, or the
        part of it that takes cached embeddings."""
        return self.feeds(self.evaluated) if self.feeds is not None else self.evaluated


@dataclass(frozen=True)
class FitSettings:
    """How ``fit`` runs, resolved once: the training config itself (a new per-step setting is
    a field there, read here) plus what ``imagewise.train`` decided about the hardware."""

    config: TrainConfig
    amp_dtype: torch.dtype | None = None  # autocast dtype; None = float32
    channels_last: bool = True
    show_progress: bool = True


@dataclass
class TrainState:
    """What the loop knows; hooks read it and may set ``stop``."""

    epoch: int = 0  # epochs completed
    epochs: int = 0  # planned
    history: list[dict[str, float]] = field(default_factory=list)
    best_metric: float = float("-inf")
    # What picks the best epoch: validation accuracy, or minus the training loss when the
    # validation split is empty.
    metric: str = "val_accuracy"
    # The validation metric that picks the best epoch: val_accuracy or val_macro_f1
    # (imagewise.train.build.selection_metric).
    select_by: str = "val_accuracy"
    best_epoch: int = 0
    improved: bool = False
    stop: bool = False
    stop_reason: str = ""
    train_seconds: float = 0.0
    parts: Components | None = None  # for hooks: model, EMA, preprocessing, ...
    tta: dict[str, Any] = field(default_factory=dict)  # the views the run answers with


class EarlyStopping:
    """Hook: stop after ``patience`` epochs without a better best epoch (0: never)."""

    def __init__(self, patience: int) -> None:
        self.patience = patience

    def on_epoch_end(self, state: TrainState) -> None:
        if self.patience and state.epoch - state.best_epoch >= self.patience:
            state.stop, state.stop_reason = True, f"no improvement for {self.patience} epochs"


def _call(hooks: Sequence[object], name: str, state: TrainState) -> None:
    for hook in hooks:
        fn = getattr(hook, name, None)
        if fn is not None:
            fn(state)


def train_one_epoch(
    parts: Components,
    *,
    settings: FitSettings,
    scaler: torch.amp.GradScaler | None = None,
    progress: Any = None,
    governor: ThreadGovernor | None = None,
) -> dict[str, float]:
    """One pass over the training loader; returns mean loss and accuracy (hard labels).

    Raises ``NonFiniteLoss`` when the loss is NaN or infinite, checked at every step on a CPU
    (where the check costs nothing), every 25 on a GPU (where it waits for the device) and at
    the end; every process checks at the same steps and they agree.
    """
    task, device, cfg = parts.task, parts.device, settings.config
    # Every step on one CPU process, where the check is free; under torchrun or on a GPU it
    # waits for a collective or the device, so every 25 steps.
    check_every = 1 if device.type == "cpu" and not dist_enabled() else 25
    task.train()
    if parts.freezer is not None:  # after train(): frozen BatchNorms keep their statistics
        parts.freezer.set_modes()
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    finite = torch.ones((), device=device, dtype=torch.bool)
    seen = step = 0
    for images, labels in parts.train_loader:
        step += 1  # counted for an empty batch too: every process checks at the same steps
        if images.shape[0] == 0:  # every file in it unreadable
            if step % check_every == 0:
                _check_finite(finite, total_loss, step, device)
            continue
        if governor is not None:
            governor.tick()
        images, labels = images.to(device, non_blocking=True), labels.to(device)
        x, target = parts.augment(images, labels)
        x = x.contiguous(memory_format=torch.channels_last) if settings.channels_last else x
        with autocast(device, settings.amp_dtype):
            loss, logits = task(x, target)
        finite &= torch.isfinite(loss.detach())
        if step % check_every == 0:
            _check_finite(finite, loss, step, device)  # before the step spoils the weights
        _step(parts, loss, cfg, scaler)
        n = images.shape[0]
        total_loss += loss.detach() * n
        correct += _right(logits.detach(), labels)
        seen += n
        if progress is not None:
            progress.update(1)
    _check_finite(finite, total_loss, step, device)
    seen = max(seen, 1)
    return {"loss": float(total_loss) / seen, "accuracy": float(correct) / seen, "images": seen}


def _right(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Images answered right (hard labels): the top class, or for multi-label rows the share
    of each image's labels answered right at probability 0.5 (1 - Hamming loss)."""
    if labels.ndim == 2:
        return ((logits > 0) == (labels > 0.5)).float().mean(1).sum()
    return (logits.argmax(1) == labels).sum().float()


def _step(
    parts: Components, loss: torch.Tensor, cfg: TrainConfig, scaler: torch.amp.GradScaler | None
) -> None:
    """Backward, clip, optimizer and schedule step, EMA update (a new per-step setting is a
    ``TrainConfig`` field read here)."""
    optimizer = parts.optimizer
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    if cfg.grad_clip > 0:
        nn.utils.clip_grad_norm_(parts.task.parameters(), cfg.grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    parts.scheduler.step()
    if parts.ema is not None:
        parts.ema.update(parts.model)


def _check_finite(
    finite: torch.Tensor, loss: torch.Tensor, step: int, device: torch.device
) -> None:
    if all_reduce_sum([float(not finite)], device)[0] > 0:
        value = float(loss.detach().float())
        if math.isfinite(value):  # an earlier step's, or another process's
            raise NonFiniteLoss(f"the loss stopped being finite by step {step}")
        raise NonFiniteLoss(f"the loss became {value} at step {step}")


class Rollback:
    """The state an epoch starts from, kept in memory to go back to after a non-finite loss.

    Copies of the weights, optimizer, schedule and EMA (a few times the model's size). Going
    back also lowers the learning rate by ``ROLLBACK_LR_FACTOR``: the schedule's base rates, so
    the rest of the schedule keeps its shape and the checkpoint (hence ``--resume``) keeps it.
    """

    def __init__(self, model: nn.Module, optimizer: Any, scheduler: Any, ema: Any) -> None:
        self.parts = {"model": model, "optimizer": optimizer, "scheduler": scheduler}
        if ema is not None:
            self.parts["ema"] = ema
        self.saved: dict[str, Any] = {}
        self.used = 0  # rollbacks over the whole run, bounded by MAX_ROLLBACKS
        self.tries = 0  # since the kept state

    def keep(self) -> None:
        self.saved = {k: copy.deepcopy(p.state_dict()) for k, p in self.parts.items()}
        self.tries = 0

    def restore(self) -> float:
        """Back to the kept state with a lower learning rate; returns the new base rate."""
        for key, part in self.parts.items():
            part.load_state_dict(copy.deepcopy(self.saved[key]))
        self.used += 1
        self.tries += 1
        factor = ROLLBACK_LR_FACTOR**self.tries
        scheduler, optimizer = self.parts["scheduler"], self.parts["optimizer"]
        scheduler.base_lrs = [lr * factor for lr in scheduler.base_lrs]
        for group in optimizer.param_groups:
            group["lr"] *= factor
            if "initial_lr" in group:
                group["initial_lr"] *= factor
        return max(scheduler.base_lrs)


def evaluate_loader(
    task: ClassificationTask,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    pre: InputContract,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = True,
    model: nn.Module | None = None,
) -> dict[str, float]:
    """Mean loss and accuracy of ``model`` (default: the task's) over ``loader``."""
    logits, labels = predict_loader(
        model or unwrap(task.model), loader, pre, device, amp_dtype, channels_last
    )
    if len(labels) == 0:
        return {"loss": float("nan"), "accuracy": float("nan"), "images": 0}
    if labels.ndim == 2:
        return multilabel_stats(task, logits, labels)
    pred, classes = logits.argmax(1), logits.shape[1]
    return {
        "loss": float(task.loss(logits, labels)),
        "accuracy": float((pred == labels).float().mean()),
        "images": len(labels),
        # per class: right, predicted, true; summed over processes before macro F1
        "counts": [
            *torch.bincount(labels[pred == labels], minlength=classes).tolist(),
            *torch.bincount(pred, minlength=classes).tolist(),
            *torch.bincount(labels, minlength=classes).tolist(),
        ],
    }


def multilabel_stats(
    task: ClassificationTask, logits: torch.Tensor, labels: torch.Tensor
) -> dict[str, Any]:
    """``evaluate_loader`` for multi-label rows: loss; accuracy and per-label counts at
    probability 0.5 (for macro F1); and the scores themselves, since average precision does
    not add up over processes (``_reduce`` gathers them for mAP)."""
    pred, truth = logits > 0, labels > 0.5
    return {
        "loss": float(task.loss(logits, labels)),
        "accuracy": float((pred == truth).float().mean()),
        "images": len(labels),
        "counts": [
            *(pred & truth).sum(0).tolist(),
            *pred.sum(0).tolist(),
            *truth.sum(0).tolist(),
        ],
        "scores": (logits.numpy(), truth.numpy()),
    }


def mean_average_precision(scores: Any, truth: Any) -> float:
    """Mean over labels of scikit-learn's average precision, over the labels that have a
    positive image (a label without one has no AP)."""
    import numpy as np
    from sklearn.metrics import average_precision_score

    scores, truth = np.asarray(scores), np.asarray(truth)
    present = np.flatnonzero(truth.any(axis=0))
    if not len(present):
        return float("nan")
    return float(np.mean([average_precision_score(truth[:, k], scores[:, k]) for k in present]))


def macro_f1(counts: Sequence[float]) -> float:
    """Macro-averaged F1 from per-class (right, predicted, true) counts laid end to end, over
    the classes that occur in the labels or the predictions (as scikit-learn's ``f1_score``)."""
    k = len(counts) // 3
    right, predicted, true = counts[:k], counts[k : 2 * k], counts[2 * k :]
    scores = [2 * r / (p + t) for r, p, t in zip(right, predicted, true, strict=True) if p + t]
    return sum(scores) / len(scores) if scores else float("nan")


def _reduce(stats: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average loss and accuracy over all processes, weighted by their image counts."""
    n = stats["images"]
    loss, acc = (stats["loss"], stats["accuracy"]) if n else (0.0, 0.0)
    counts = [float(c) for c in stats.get("counts", [])]  # validation only
    loss_sum, correct, total, *counts = all_reduce_sum(
        [loss * n, acc * n, float(n), *counts], device
    )
    if total == 0:
        return {"loss": float("nan"), "accuracy": float("nan"), "images": 0}
    out = {"loss": loss_sum / total, "accuracy": correct / total, "images": total}
    if counts:
        out["macro_f1"] = macro_f1(counts)
    if "scores" in stats:  # multi-label validation: mAP over every process's images
        import numpy as np

        logits, truth = stats["scores"]
        together = gather_arrays(np.concatenate([logits, truth.astype(np.float32)], axis=1))
        k = logits.shape[1]
        out["map"] = mean_average_precision(together[:, :k], together[:, k:] > 0.5)
    return out


def fit(
    parts: Components,
    state: TrainState,
    *,
    settings: FitSettings,
    hooks: Sequence[object] = (),
) -> TrainState:
    """Train from ``state.epoch`` to ``state.epochs``, validating after each epoch.

    The validation accuracy (of the EMA weights when EMA is on) decides the best epoch; a
    hook (``EarlyStopping``, the run folder's writer, the caller's) may stop the run.
    """
    amp = settings.amp_dtype
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
    rollback = Rollback(parts.model, parts.optimizer, parts.scheduler, parts.ema)
    governor = ThreadGovernor() if parts.device.type == "cpu" else None
    state.parts = parts
    _call(hooks, "on_train_start", state)
    try:
        while state.epoch < state.epochs and not state.stop:
            epoch = state.epoch + 1
            if hasattr(parts.train_loader, "set_epoch"):
                parts.train_loader.set_epoch(epoch)
            rollback.keep()
            while True:  # the epoch, again from its start after a non-finite loss
                try:
                    train, val, seconds = _train_and_validate(
                        parts, epoch, state.epochs, settings, scaler, governor, rollback
                    )
                    break
                except NonFiniteLoss as exc:
                    _roll_back(rollback, exc, epoch)
            _record(state, epoch, parts.optimizer, train, val, seconds)
            _call(hooks, "on_epoch_end", state)
            # A hook may stop one process; under torchrun every process must stop together.
            if all_reduce_sum([float(state.stop)], parts.device)[0] > 0 and not state.stop:
                state.stop, state.stop_reason = True, "stopped by another process"
    finally:
        if governor is not None:
            governor.close()
    _call(hooks, "on_train_end", state)
    return state


def _train_and_validate(
    parts: Components, epoch: int, epochs: int, settings: FitSettings,
    scaler: torch.amp.GradScaler | None, governor: ThreadGovernor | None, rollback: Rollback,
) -> tuple[dict[str, float], dict[str, float], float]:  # fmt: skip
    """One epoch of training, then validation; raises ``NonFiniteLoss`` for a non-finite one."""
    from tqdm import tqdm

    start = time.perf_counter()
    with tqdm(
        total=len(parts.train_loader),
        desc=f"epoch {epoch}/{epochs}",
        unit="batch",
        disable=None if settings.show_progress else True,  # None: off when not a terminal
        leave=False,
        dynamic_ncols=True,
    ) as bar:
        train = train_one_epoch(
            parts, settings=settings, scaler=scaler, progress=bar, governor=governor
        )
    train = _reduce(train, parts.device)
    seconds = time.perf_counter() - start
    if not _finite_weights(rollback.parts):
        raise NonFiniteLoss("the weights became non-finite")
    val = evaluate_loader(
        parts.task, parts.val_loader, parts.preprocessing, parts.device, settings.amp_dtype,
        settings.channels_last, parts.validated,
    )  # fmt: skip
    val = _reduce(val, parts.device)
    if val["images"] and not math.isfinite(val["loss"]):
        raise NonFiniteLoss(f"the validation loss became {val['loss']}")
    return train, val, seconds


def _record(
    state: TrainState, epoch: int, optimizer: Any, train: dict[str, float],
    val: dict[str, float], seconds: float,
) -> None:  # fmt: skip
    """The finished epoch into ``state``: history row, best epoch (never a non-finite one)."""
    state.train_seconds += seconds
    state.epoch = epoch
    state.history.append(
        {
            "epoch": epoch,
            "lr": optimizer.param_groups[0]["lr"],
            "train_loss": train["loss"],
            "train_accuracy": train["accuracy"],
            "val_loss": val["loss"],
            "val_accuracy": val["accuracy"],
            "val_macro_f1": val.get("macro_f1", float("nan")),
            **({"val_map": val["map"]} if "map" in val else {}),
            "epoch_seconds": seconds,
            "images_per_second": train["images"] / max(seconds, 1e-9),
        }
    )
    has_val = val["images"] > 0
    state.metric = state.select_by if has_val else "train_loss"
    metric = state.history[-1][state.select_by] if has_val else -train["loss"]
    state.improved = math.isfinite(metric) and metric > state.best_metric
    if state.improved:
        state.best_metric, state.best_epoch = metric, epoch


def _finite_weights(parts: dict[str, Any]) -> bool:
    """Every floating-point weight and buffer of the model (and its EMA) is finite."""
    modules = [parts["model"]] + ([parts["ema"].module] if "ema" in parts else [])
    return all(
        bool(torch.isfinite(t).all())
        for m in modules
        for t in m.state_dict().values()
        if t.is_floating_point()
    )


def _roll_back(rollback: Rollback, exc: NonFiniteLoss, epoch: int) -> None:
    """Go back to the start of the epoch with a lower learning rate, or give up in one line."""
    what = f"{exc} in epoch {epoch}"
    if rollback.used >= MAX_ROLLBACKS:
        lr = max(rollback.parts["scheduler"].base_lrs)
        raise TrainingDiverged(
            f"training diverged: {what}, also after lowering the "
            f"learning rate {round(1 / ROLLBACK_LR_FACTOR**MAX_ROLLBACKS)}x (base rate {lr:.3g}); "
            "no non-finite weights were saved. Try a lower --lr or --grad-clip 1"
        )
    lr = rollback.restore()
    log.warning(
        "%s; back to the start of the epoch with the learning rate lowered "
        "%dx (base rate now %.3g), try %d of %d",
        what, round(1 / ROLLBACK_LR_FACTOR), lr, rollback.used, MAX_ROLLBACKS,
    )  # fmt: skip
