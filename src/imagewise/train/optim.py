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
# Warm-up as a fraction of all optimizer steps when none is set: one-cycle's own quarter (Smith
# 2018); a short ramp for cosine and step; none for constant, which means constant (Keras).
# Counted in steps, not epochs, so a two-epoch run does not spend half of itself warming up.
WARMUP_FRACTION = {"onecycle": 0.25, "cosine": 0.05, "step": 0.05, "constant": 0.0}


def warmup_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """The warm-up in optimizer steps: ``warmup_steps`` if set, else ``warmup_epochs`` (not for
    one-cycle, whose warm-up is part of its shape: runs saved before ``warmup_steps`` existed
    carry ``warmup_epochs: 1.0`` and resume as they ran), else ``WARMUP_FRACTION`` of the run;
    always less than the whole run.

    Args:
        cfg: the training settings (``epochs`` resolved).
        steps_per_epoch: optimizer steps in one epoch.
    """
    total = max(1, _epochs(cfg) * steps_per_epoch)
    if cfg.warmup_steps is not None:
        steps = cfg.warmup_steps
    elif cfg.warmup_epochs is not None and cfg.schedule != "onecycle":
        steps = int(cfg.warmup_epochs * steps_per_epoch)
    else:
        steps = int(WARMUP_FRACTION.get(cfg.schedule, 0.0) * total)
    return max(0, min(steps, total - 1))


def _epochs(cfg: TrainConfig) -> int:
    if cfg.epochs is None:  # a caller that skipped imagewise.train.auto.adapt_defaults
        raise ValueError("TrainConfig.epochs is unset; resolve it (train.auto.adapt_defaults)")
    return cfg.epochs


def default_lr(cfg: TrainConfig, world_size: int = 1) -> float:
    """The learning rate used when none is given: linear scaling with the global batch size for
    SGD, square-root scaling for the adaptive optimizers (Granziol et al. 2022)."""
    base = _OPTIMIZERS[cfg.optimizer][0]
    ratio = cfg.batch_size * world_size / 128
    return base * ratio if cfg.optimizer == "sgd" else base * math.sqrt(ratio)


def build_optimizer(
    model: nn.Module,
    cfg: TrainConfig,
    world_size: int = 1,
    lr_scales: dict[str, float] | None = None,
    include_frozen: bool = False,
) -> torch.optim.Optimizer:
    """The optimizer named in ``cfg``; biases and normalization weights get no weight decay.
    ``world_size`` processes of ``cfg.batch_size`` each make the global batch.

    Args:
        lr_scales: parameter name -> factor of the learning rate (layer-wise decay,
            ``imagewise.train.transfer.lr_scales``); missing names learn at the full rate.
        include_frozen: hold frozen parameters too (they get no gradient, so no update, until
            ``--unfreeze-at`` lets them train).
    """
    if cfg.optimizer not in _OPTIMIZERS:
        raise UserError(
            f"unknown optimizer '{cfg.optimizer}'; choose one of {', '.join(_OPTIMIZERS)}"
        )
    _, wd_default, build = _OPTIMIZERS[cfg.optimizer]
    wd = wd_default if cfg.weight_decay is None else cfg.weight_decay
    lr = cfg.lr if cfg.lr is not None else default_lr(cfg, world_size)
    scales = lr_scales or {}
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad or include_frozen:
            key = (scales.get(name, 1.0), param.ndim > 1)
            groups.setdefault(key, []).append(param)
    # The base rate's groups first (history.csv's lr column, and older checkpoints' order).
    param_groups = [
        {"params": params, "weight_decay": wd if decays else 0.0, "lr": lr * scale}
        for (scale, decays), params in sorted(
            groups.items(), key=lambda kv: (kv[0][0] != 1.0, -kv[0][0], not kv[0][1])
        )
    ]
    everything = [p for g in param_groups for p in g["params"]]
    return build(param_groups, lr, cfg, _can_fuse(everything))


def lr_factor(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """The schedule as a function of the step: a factor of the base learning rate.

    Every schedule first warms up linearly over ``warmup_steps(cfg, steps_per_epoch)`` steps.
    ``onecycle`` and ``cosine`` then anneal by cosine to zero (one-cycle: Smith 2018, whose
    warm-up is a quarter of the run by default); ``step`` multiplies by ``gamma`` every
    ``step_size`` epochs; ``constant`` stays at the base rate.
    """
    if cfg.schedule not in SCHEDULES:
        raise UserError(f"unknown schedule '{cfg.schedule}'; choose one of {', '.join(SCHEDULES)}")
    epochs = _epochs(cfg)
    total = max(1, epochs * steps_per_epoch)
    warmup = warmup_steps(cfg, steps_per_epoch)
    step_size = (cfg.step_size or max(1, epochs // 3)) * steps_per_epoch

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
