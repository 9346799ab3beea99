"""Optimizers and learning-rate schedules: small factories from a name to an object."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from imagewise.config import TrainConfig
from imagewise.errors import UserError

# name -> (default lr at batch 128, default weight decay, builder(params, lr, cfg, fused))
_OPTIMIZERS: dict[str, tuple[float, float, Callable]] = {
    "sgd": (
        0.05,
        5e-4,
        lambda p, lr, c, f: torch.optim.SGD(
            p, lr=lr, momentum=c.momentum, nesterov=c.nesterov and c.momentum > 0, fused=f
        ),
    ),
    "adam": (2e-3, 0.0, lambda p, lr, c, f: torch.optim.Adam(p, lr=lr, fused=f)),
    "adamw": (2e-3, 0.05, lambda p, lr, c, f: torch.optim.AdamW(p, lr=lr, fused=f)),
    # PyTorch has no fused RMSprop.
    "rmsprop": (
        1e-3,
        1e-5,
        lambda p, lr, c, f: torch.optim.RMSprop(p, lr=lr, momentum=c.momentum),
    ),
}
# Devices with PyTorch's single-kernel ("fused") SGD/Adam/AdamW. On CPU it is 2.5-3.4x faster
# than the per-tensor loop PyTorch picks by default there (tutorial CNN 0.43 -> 0.13 ms a step,
# resnet9p_tiny 1.17 -> 0.38 ms; BENCHMARKS.md) and computes the same update.
_FUSED_DEVICES = ("cpu", "cuda")


def _can_fuse(params: list[nn.Parameter]) -> bool | None:
    """``True`` when every parameter sits on a device with fused kernels as a float tensor;
    ``None`` (PyTorch's own choice) otherwise."""
    ok = all(p.device.type in _FUSED_DEVICES and p.is_floating_point() for p in params)
    return True if params and ok else None


SCHEDULES = ("onecycle", "cosine", "step", "constant")


def default_lr(cfg: TrainConfig, world_size: int = 1) -> float:
    """The learning rate used when none is given: linear scaling with the global batch size for
    SGD, square-root scaling for the adaptive optimizers (Granziol et al. 2022)."""
    base = _OPTIMIZERS[cfg.optimizer][0]
    ratio = cfg.batch_size * world_size / 128
    return base * ratio if cfg.optimizer == "sgd" else base * math.sqrt(ratio)


def build_optimizer(
    model: nn.Module, cfg: TrainConfig, world_size: int = 1
) -> torch.optim.Optimizer:
    """The optimizer named in ``cfg``; biases and normalization weights get no weight decay.
    ``world_size`` processes of ``cfg.batch_size`` each make the global batch."""
    if cfg.optimizer not in _OPTIMIZERS:
        raise UserError(
            f"unknown optimizer '{cfg.optimizer}'; choose one of {', '.join(_OPTIMIZERS)}"
        )
    _, wd_default, build = _OPTIMIZERS[cfg.optimizer]
    wd = wd_default if cfg.weight_decay is None else cfg.weight_decay
    decay, no_decay = [], []
    for _, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]
    lr = cfg.lr if cfg.lr is not None else default_lr(cfg, world_size)
    return build(groups, lr, cfg, _can_fuse(decay + no_decay))


def lr_factor(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """The schedule as a function of the step: a factor of the base learning rate.

    ``onecycle`` warms up over the first quarter then anneals by cosine to zero (Smith 2018);
    ``cosine`` warms up for ``warmup_epochs`` then anneals; ``step`` multiplies by ``gamma``
    every ``step_size`` epochs after warm-up; ``constant`` only warms up.
    """
    if cfg.schedule not in SCHEDULES:
        raise UserError(f"unknown schedule '{cfg.schedule}'; choose one of {', '.join(SCHEDULES)}")
    total = max(1, cfg.epochs * steps_per_epoch)
    if cfg.schedule == "onecycle":
        warmup = max(1, int(0.25 * total))
    else:
        warmup = min(int(cfg.warmup_epochs * steps_per_epoch), total - 1)
    step_size = (cfg.step_size or max(1, cfg.epochs // 3)) * steps_per_epoch

    def factor(step: int) -> float:
        if step < warmup:
            return 0.04 + 0.96 * step / warmup
        if cfg.schedule in ("onecycle", "cosine"):
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        if cfg.schedule == "step":
            return cfg.gamma ** ((step - warmup) // step_size)
        return 1.0

    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step scheduler; its state dict resumes exactly (the factor itself is not saved)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, steps_per_epoch))
