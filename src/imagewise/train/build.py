"""The parts of a training run, built from its config: model, precision, loaders, optimizer,
schedule, augmentation, EMA, and the forward wrapper (DDP, torch.compile); and putting a
``last.ckpt`` back into them for ``--resume``.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from imagewise.config import RunConfig
from imagewise.data.pipeline import make_loader
from imagewise.data.sources import ImageData
from imagewise.data.transforms import BatchAugment
from imagewise.edge.spec import InputContract
from imagewise.errors import UserError
from imagewise.runtime.device import measure_bf16_speedup
from imagewise.train.auto import default_model, drop_last
from imagewise.train.compile import CompiledWithFallback
from imagewise.train.distillation import make_task
from imagewise.train.distributed import broadcast_from_main
from imagewise.train.loop import Components, TrainState
from imagewise.train.optim import build_optimizer, build_scheduler
from imagewise.train.task import ClassificationTask, class_weights
from imagewise.train.transfer import Freezer, lr_scales

log = logging.getLogger("imagewise")


def build_model(
    cfg: RunConfig, data: ImageData, pre: InputContract, device: torch.device
) -> torch.nn.Module:
    from imagewise.models import create_model

    if cfg.model.name == "auto":  # train() chooses from the data first; this is for other callers
        cfg.model.name = default_model(len(data.train), pre.img_size)
    model = create_model(
        cfg.model.name,
        num_classes=len(data.classes),
        in_chans=pre.channels,
        img_size=pre.img_size,
        pretrained=cfg.model.pretrained,
        **model_kwargs(cfg),
    )
    return model.to(device)


def restore(ckpt: dict[str, Any], parts: Components, state: TrainState) -> None:
    """Put a ``last.ckpt`` back: weights, optimizer, schedule, EMA, random streams, history."""
    parts.model.load_state_dict(ckpt["model"])
    parts.optimizer.load_state_dict(ckpt["optimizer"])
    parts.scheduler.load_state_dict(ckpt["scheduler"])
    if parts.ema is not None and ckpt.get("ema") is not None:
        parts.ema.load_state_dict(ckpt["ema"])
    torch.set_rng_state(ckpt["torch_rng"])
    parts.augment.generator.set_state(ckpt["augment_rng"])
    state.epoch, state.history = int(ckpt["epoch"]), list(ckpt["history"])
    state.best_metric, state.best_epoch = float(ckpt["best_metric"]), int(ckpt["best_epoch"])
    state.train_seconds = float(ckpt["train_seconds"])
    state.metric = str(ckpt.get("metric", state.metric))  # checkpoints before it: val_accuracy
    state.stop_reason = str(ckpt.get("stop_reason", ""))


def build_components(
    cfg: RunConfig, data: ImageData, pre: InputContract, model: torch.nn.Module,
    device: torch.device, rank: int, world: int, compile_model: bool,
    freezer: Freezer | None = None, cached: bool = False, show_progress: bool = True,
) -> Components:  # fmt: skip
    """Everything the loop needs, from the config: loaders (sharded by rank), optimizer and
    per-step schedule, augmentation (its own random stream per process), EMA, and the task
    whose forward runs through DDP and torch.compile when they are on.

    ``freezer``: what trains (``imagewise.train.transfer``); ``cached``: train the classifier
    on the frozen backbone's embeddings, computed here once (``wants_cached_features``)."""
    t = cfg.train
    if cached:
        return _cached_components(cfg, data, pre, model, device, freezer, show_progress)
    train_loader = make_loader(
        data.train, pre, t.batch_size, shuffle=True,
        drop_last=drop_last(len(data.train), t.batch_size * world), seed=t.seed,
        workers=cfg.data.workers, rank=rank, world_size=world, balanced=t.sampler == "balanced",
    )  # fmt: skip
    val_loader = make_loader(
        data.val, pre, max(256, t.batch_size), workers=cfg.data.workers, rank=rank,
        world_size=world,
    )  # fmt: skip
    scales = lr_scales(model, t.layer_lr_decay, freezer.head_lr_scale if freezer else 1.0)
    optimizer = build_optimizer(model, t, world, scales, include_frozen=cfg.model.unfreeze_at > 0)
    ema = None
    if t.ema_decay > 0:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=t.ema_decay)
    forward: torch.nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ids = [device] if device.type == "cuda" else None
        # DDP reduces the gradients of the parameters that train when it is built: parameters
        # that --unfreeze-at will free later must be among them, and until then they have no
        # gradient, which DDP has to be told to expect.
        later = freezer is not None and freezer.unfreeze_at > 0
        if later:
            for param in model.parameters():
                param.requires_grad_(True)
        forward = DistributedDataParallel(model, device_ids=ids, find_unused_parameters=later)
        if later:
            freezer.apply()
    if compile_model:
        forward = CompiledWithFallback(forward)
    return Components(
        model=model,
        task=_weighted(make_task(cfg, forward, data, pre, device), cfg, data, device),
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, t, len(train_loader)),
        augment=BatchAugment(pre, cfg.data.augment, len(data.classes), seed=t.seed + 7919 * rank),
        train_loader=train_loader,
        val_loader=val_loader,
        preprocessing=pre,
        device=device,
        ema=ema,
        freezer=freezer,
    )


def selection_metric(cfg: RunConfig, data: ImageData) -> str:
    """The history column that picks the best epoch: ``--select-by``, or with ``auto`` macro F1
    when the largest training class outnumbers the smallest more than 3x, else accuracy."""
    choice = cfg.train.select_by
    if data.multilabel:
        # accuracy / macro_f1 are the labels' at 0.5 (imagewise.train.loop.multilabel_stats)
        return "val_map" if choice == "auto" else f"val_{choice}"
    if choice == "map":
        raise UserError(
            "--select-by map is for multi-label data; this data has one class per image: "
            "use auto, accuracy or macro_f1"
        )
    if choice == "auto":
        counts = np.bincount(data.train.labels, minlength=len(data.classes))
        ratio = counts.max() / max(1, counts.min())
        choice = "macro_f1" if ratio > 3 else "accuracy"
        if choice == "macro_f1":
            log.info(
                "classes imbalanced %.1fx (largest / smallest): the best epoch is picked by "
                "validation macro F1 (--select-by accuracy to change)", ratio,
            )  # fmt: skip
    return f"val_{choice}"


def _weighted(
    task: ClassificationTask, cfg: RunConfig, data: ImageData, device: torch.device
) -> ClassificationTask:
    """``--class-weight auto``: the loss weighs each class by its inverse frequency (for
    multi-label data each label's presence by its absent / present images)."""
    if cfg.train.class_weight == "auto":
        weights = class_weights(data.train.labels, len(data.classes))
        task.class_weight = weights.to(device)
        shown = ", ".join(
            f"{c} {w:.2f}" for c, w in zip(data.classes, weights.tolist(), strict=True)
        )
        log.info("class weights: %s", shown if len(data.classes) <= 12 else "inverse frequency")
    return task


def wants_cached_features(cfg: RunConfig, freezer: Freezer | None, world: int) -> bool:
    """Whether the classifier trains on cached embeddings: a backbone frozen for the whole run,
    one process, no teacher (it needs the images), and ``--cache-features`` not ``off``."""
    choice = cfg.train.cache_features
    frozen = freezer is not None and freezer.backbone
    if choice == "off" or not frozen:
        if choice == "on" and not frozen:
            raise UserError("--cache-features on needs --freeze backbone without --unfreeze-at")
        return False
    why = "under torchrun" if world > 1 else "with a teacher" if cfg.train.teacher else ""
    if why:
        log.info("cached features are off %s: the frozen backbone runs every step", why)
        return False
    return True


def _cached_components(
    cfg: RunConfig, data: ImageData, pre: InputContract, model: torch.nn.Module,
    device: torch.device, freezer: Freezer | None, show_progress: bool,
) -> Components:  # fmt: skip
    """The loop's parts for a frozen backbone: loaders of embeddings computed once, the
    classifier as the task's network; the whole model is still what is saved."""
    from imagewise.train.feature_cache import (
        ClassifierOnly,
        PassThrough,
        cached_loaders,
        embeddings_contract,
    )

    t, classes = cfg.train, len(data.classes)
    augment = BatchAugment(pre, cfg.data.augment, classes, seed=t.seed)
    if t.feature_views > 1 and (cfg.data.augment.mixup or cfg.data.augment.cutmix):
        log.info("cached features: MixUp / CutMix are not applied to embeddings")
        augment.mix = None
    train_loader, val_loader = cached_loaders(
        model, data.train, data.val, pre, augment, views=t.feature_views,
        batch_size=t.batch_size, drop_last=drop_last(len(data.train), t.batch_size),
        seed=t.seed, device=device, workers=cfg.data.workers, show_progress=show_progress,
        balanced=t.sampler == "balanced",
    )  # fmt: skip
    # frozen parameters left out: only the head learns
    head = freezer.head_lr_scale if freezer is not None else 1.0
    optimizer = build_optimizer(model, t, lr_scales=lr_scales(model, 1.0, head))
    ema = None
    if t.ema_decay > 0:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=t.ema_decay)
    loss = getattr(model, "default_loss", "auto") if t.loss == "auto" else t.loss
    return Components(
        model=model,
        task=_weighted(
            ClassificationTask(
                ClassifierOnly(model), loss, classes, t.label_smoothing, data.multilabel
            ),
            cfg,
            data,
            device,
        ),
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, t, len(train_loader)),
        augment=PassThrough(t.seed),  # type: ignore[arg-type]
        train_loader=train_loader,
        val_loader=val_loader,
        preprocessing=embeddings_contract(pre),
        device=device,
        ema=ema,
        freezer=freezer,
        feeds=ClassifierOnly,
    )


def measured_cpu_precision(
    model: torch.nn.Module,
    pre: InputContract,
    batch_size: int,
    channels_last: bool,
    measure: bool = True,
) -> torch.dtype | None:
    """bf16 autocast if a timed step of this model is faster in it on this CPU, else float32.

    ``measure``: this is rank 0 and its CPU has native bf16 (else float32 without timing).
    Under torchrun every process takes rank 0's answer, so they agree, and every process
    calls the broadcast, so none waits on a collective another skipped. A failed timing
    means float32.
    """
    speedup = 0.0
    if measure:
        try:
            speedup = measure_bf16_speedup(
                model, batch_size, pre.channels, pre.img_size, channels_last
            )
        except RuntimeError as exc:  # an operator without a bf16 kernel, memory
            reason = str(exc).splitlines()[0]
            log.warning("precision auto: float32 (the bf16 timing failed: %s)", reason)
    speedup = broadcast_from_main(speedup)
    if speedup == 0.0:
        return None
    faster = speedup > 1.05  # a clear gain, not noise
    log.info(
        "precision auto: %s (a bf16 training step measured %.2fx %s than float32 on this CPU)",
        "bf16 autocast" if faster else "float32",
        speedup if speedup >= 1 else 1 / speedup,
        "faster" if speedup >= 1 else "slower",
    )
    return torch.bfloat16 if faster else None


def model_kwargs(config: RunConfig) -> dict[str, Any]:
    return {} if config.model.dropout is None else {"dropout": config.model.dropout}
