"""The training loop: ``train_one_epoch``, ``evaluate_loader`` and a ``fit`` that calls them.

Extension points are plain objects with any of ``on_train_start(state)``,
``on_epoch_end(state)`` and ``on_train_end(state)``, called by duck typing; a hook that wants to
stop sets ``state.stop = True``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from imagewise.data.transforms import BatchAugment, Preprocessing
from imagewise.train.compile import unwrap
from imagewise.train.device import autocast
from imagewise.train.distributed import all_reduce_sum
from imagewise.train.task import ClassificationTask


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
    best_epoch: int = 0
    improved: bool = False
    stop: bool = False
    stop_reason: str = ""
    train_seconds: float = 0.0
    # Set by imagewise.train for hooks: "model", "ema" (or None), "preprocessing", "config".
    extra: dict[str, Any] = field(default_factory=dict)


def _call(hooks: Sequence[object], name: str, state: TrainState) -> None:
    for hook in hooks:
        fn = getattr(hook, name, None)
        if fn is not None:
            fn(state)


def _to_device(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    images = images.to(device, non_blocking=True)
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def train_one_epoch(
    task: ClassificationTask,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    augment: BatchAugment,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = True,
    ema: Any = None,
    grad_clip: float = 0.0,
    scaler: torch.amp.GradScaler | None = None,
    progress: Any = None,
) -> dict[str, float]:
    """One pass over ``loader``; returns mean loss and accuracy (against the hard labels)."""
    task.train()
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    for images, labels in loader:
        if images.shape[0] == 0:
            continue
        images, labels = images.to(device, non_blocking=True), labels.to(device)
        hard = labels
        x, target = augment(images, labels)
        x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        with autocast(device, amp_dtype):
            loss, logits = task(x, target)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(task.parameters(), grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update(unwrap(task.model))
        n = images.shape[0]
        total_loss += loss.detach() * n
        correct += (logits.detach().argmax(1) == hard).sum()
        seen += n
        if progress is not None:
            progress.update(1)
    seen = max(seen, 1)
    return {"loss": float(total_loss) / seen, "accuracy": float(correct) / seen, "images": seen}


@torch.no_grad()
def predict_loader(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    pre: Preprocessing,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = True,
    tta: object = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (float32, CPU) and labels for every batch of ``loader``; ``tta`` (a run's views,
    see ``imagewise.models.tta``) averages the logits over them."""
    from imagewise.models.tta import with_tta  # imagewise.models registers every family

    network = with_tta(model.eval(), tta, pre)
    all_logits, all_labels = [], []
    for images, labels in loader:
        if images.shape[0] == 0:
            continue
        x = _to_device(pre.normalize(images.to(device)), device, channels_last)
        with autocast(device, amp_dtype):
            logits = network(x).float()
        all_logits.append(logits.cpu())
        all_labels.append(labels.cpu())
    if not all_logits:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.long)
    return torch.cat(all_logits), torch.cat(all_labels)


def evaluate_loader(
    task: ClassificationTask,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    pre: Preprocessing,
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
    return {
        "loss": float(task.loss(logits, labels)),
        "accuracy": float((logits.argmax(1) == labels).float().mean()),
        "images": len(labels),
    }


def _reduce(stats: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average loss and accuracy over all processes, weighted by their image counts."""
    n = stats["images"]
    loss, acc = (stats["loss"], stats["accuracy"]) if n else (0.0, 0.0)
    loss_sum, correct, total = all_reduce_sum([loss * n, acc * n, float(n)], device)
    if total == 0:
        return {"loss": float("nan"), "accuracy": float("nan"), "images": 0}
    return {"loss": loss_sum / total, "accuracy": correct / total, "images": total}


def fit(
    task: ClassificationTask,
    train_loader: Any,
    val_loader: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    augment: BatchAugment,
    pre: Preprocessing,
    device: torch.device,
    state: TrainState,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = True,
    ema: Any = None,
    grad_clip: float = 0.0,
    patience: int = 0,
    hooks: Sequence[object] = (),
    show_progress: bool = True,
) -> TrainState:
    """Train from ``state.epoch`` to ``state.epochs``, validating after each epoch.

    The validation accuracy (of the EMA weights when EMA is on) decides the best epoch; with
    ``patience`` > 0, training stops after that many epochs without improvement.
    """
    from tqdm import tqdm

    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    _call(hooks, "on_train_start", state)
    while state.epoch < state.epochs and not state.stop:
        epoch = state.epoch + 1
        if hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(epoch)
        start = time.perf_counter()
        with tqdm(
            total=len(train_loader),
            desc=f"epoch {epoch}/{state.epochs}",
            unit="batch",
            disable=None if show_progress else True,  # None: off when not a terminal
            leave=False,
            dynamic_ncols=True,
        ) as bar:
            train = train_one_epoch(
                task,
                train_loader,
                optimizer,
                scheduler,
                augment,
                device,
                amp_dtype,
                channels_last,
                ema,
                grad_clip,
                scaler,
                bar,
            )
        train = _reduce(train, device)
        seconds = time.perf_counter() - start
        eval_model = ema.module if ema is not None else unwrap(task.model)
        val = evaluate_loader(task, val_loader, pre, device, amp_dtype, channels_last, eval_model)
        val = _reduce(val, device)
        state.train_seconds += seconds
        state.epoch = epoch
        row = {
            "epoch": epoch,
            "lr": optimizer.param_groups[0]["lr"],
            "train_loss": train["loss"],
            "train_accuracy": train["accuracy"],
            "val_loss": val["loss"],
            "val_accuracy": val["accuracy"],
            "epoch_seconds": seconds,
            "images_per_second": train["images"] / max(seconds, 1e-9),
        }
        state.history.append(row)
        has_val = val["images"] > 0
        state.metric = "val_accuracy" if has_val else "train_loss"
        metric = val["accuracy"] if has_val else -train["loss"]
        state.improved = metric > state.best_metric
        if state.improved:
            state.best_metric, state.best_epoch = metric, epoch
        if patience and epoch - state.best_epoch >= patience:
            state.stop, state.stop_reason = True, f"no improvement for {patience} epochs"
        _call(hooks, "on_epoch_end", state)
        # A hook may stop one process; under torchrun every process must stop together.
        if all_reduce_sum([float(state.stop)], device)[0] > 0 and not state.stop:
            state.stop, state.stop_reason = True, "stopped by another process"
    _call(hooks, "on_train_end", state)
    return state
