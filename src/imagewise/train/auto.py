"""Defaults that fit the data, and ``--model auto``.

Settings the user left unset (``None`` / ``"auto"`` in the config) are chosen here once the
data is read, from the number of training images: a small dataset gets smaller batches (more
optimizer steps), more epochs and lighter augmentation than Fashion-MNIST's 54,000 images need
(BENCHMARKS.md, "Defaults that fit the data"). The resolved values go into ``config.yaml``.

``--model auto`` picks the network, its input size and the epochs from the data and a speed
table measured on this machine (``imagewise.models.speed``) so that training fits
``--time-budget``.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from imagewise.config import RunConfig, parse_time_budget
from imagewise.data.sources import ImageData
from imagewise.runtime.records import AutoChoice
from imagewise.train.optim import warmup_steps

log = logging.getLogger("imagewise")

# (fewest training images, batch size, augmentation preset): the first row whose count the
# dataset reaches. Small sets need many optimizer steps per epoch and see each image many
# times, where flips and erasing cost more than they teach (digits: BENCHMARKS.md).
SIZE_TIERS: tuple[tuple[int, int, str], ...] = (
    (20_000, 128, "standard"),
    (8_000, 64, "standard"),
    (2_000, 64, "light"),
    (0, 32, "light"),
)
# Epochs: enough for about MIN_STEPS optimizer steps, within [MIN_EPOCHS, MAX_EPOCHS].
MIN_STEPS = 2_000
MIN_EPOCHS, MAX_EPOCHS = 10, 40
# Fewer epochs than this: 'light' augmentation at most. Fashion-MNIST, resnet9p_tiny, 10 epochs:
# 'standard' 92.84% test, below the plain Keras-tutorial settings' 92.99% (BENCHMARKS.md).
SHORT_RUN_EPOCHS = 15
# A network under SMALL_NET weights (the tutorial CNN, LeNet-5) gets no augmentation from
# SMALL_NET_IMAGES training images on (digits' 1,439 still gain from 'light'; BENCHMARKS.md).
SMALL_NET, SMALL_NET_IMAGES = 200_000, 2_000


def drop_last(images: int, global_batch: int) -> bool:
    """Drop the last batch only when it is a small remainder (noisy steps, BatchNorm of 1)."""
    remainder = images % global_batch
    return images > global_batch and 0 < remainder < max(2, global_batch // 4)


def steps_per_epoch(images: int, batch_size: int, world_size: int = 1) -> int:
    """Optimizer steps in one epoch, as the training loader counts them (``drop_last``)."""
    per_rank = math.ceil(images / world_size)
    if drop_last(images, batch_size * world_size):
        return max(1, per_rank // batch_size)
    return max(1, math.ceil(per_rank / batch_size))


def size_tier(images: int) -> tuple[int, str]:
    """(batch size, augmentation preset) for a training set of ``images`` images."""
    for fewest, batch, preset in SIZE_TIERS:
        if images >= fewest:
            return batch, preset
    return SIZE_TIERS[-1][1:]


def epochs_for(images: int, batch_size: int, world_size: int = 1) -> int:
    """Epochs giving about ``MIN_STEPS`` optimizer steps, clipped to [MIN_EPOCHS, MAX_EPOCHS]."""
    steps = steps_per_epoch(images, batch_size, world_size)
    return int(min(MAX_EPOCHS, max(MIN_EPOCHS, math.ceil(MIN_STEPS / steps))))


def augment_for(images: int, epochs: int, parameters: int | None = None) -> str:
    """The augmentation preset for ``images`` training images, ``epochs`` and a network of
    ``parameters`` weights (None = unknown).

    Augmentation is a regulariser: a network of fewer than ``SMALL_NET`` weights underfits any
    but a tiny set and only spends its capacity on the altered copies (the tutorial CNN on 4,500
    and 54,000 Fashion-MNIST images); flips, rotation and erasing pay off over many passes, so a
    short run gets at most ``light`` (BENCHMARKS.md).
    """
    preset = size_tier(images)[1]
    if parameters and parameters < SMALL_NET and images >= SMALL_NET_IMAGES:
        return "none"
    return "light" if preset == "standard" and epochs < SHORT_RUN_EPOCHS else preset


def adapt_defaults(
    cfg: RunConfig, data: ImageData, world_size: int = 1, parameters: int | None = None
) -> dict[str, Any]:
    """Fill the settings left unset (batch size, augmentation, epochs, warm-up) from the data.

    Settings the user gave (defaults < recipe < file < flags) are kept as they are. Logs one
    line naming what was adapted and why; returns those settings and their values.

    Args:
        cfg: the resolved configuration; its ``None`` / ``"auto"`` fields are filled in place.
        data: the prepared dataset (its training split's size decides).
        world_size: processes sharing each step (the global batch is ``batch_size`` times it).
        parameters: the network's weight count (None = unknown), for the augmentation.
    """
    t, aug = cfg.train, cfg.data.augment
    images = len(data.train)
    batch = size_tier(images)[0]
    adapted: dict[str, Any] = {}
    if t.batch_size is None:
        t.batch_size = adapted["batch_size"] = max(1, batch // world_size)
    if t.epochs is None:
        t.epochs = adapted["epochs"] = epochs_for(images, t.batch_size, world_size)
    if aug.preset == "auto":
        aug.preset = adapted["augment"] = augment_for(images, t.epochs, parameters)
    per_epoch = steps_per_epoch(images, t.batch_size, world_size)
    if t.warmup_steps is None:
        # Recorded in steps, so config.yaml says exactly what ran.
        t.warmup_steps = warmup_steps(t, per_epoch)
        if t.warmup_epochs is None or t.schedule == "onecycle":  # else the user's, in epochs
            adapted["warmup_steps"] = t.warmup_steps
    if adapted:
        parts = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in adapted.items())
        log.info(
            "defaults fitted to %s training images: %s (%s steps in all; set any to override)",
            f"{images:,}", parts, f"{t.epochs * per_epoch:,}",
        )  # fmt: skip
    return adapted


# --model auto -------------------------------------------------------------------------------

# Share of the budget the estimate may fill: the rest absorbs a neighbour's burst on a shared
# machine, the first epoch's allocations and the per-epoch bookkeeping.
BUDGET_SHARE = 0.85
SMALL_IMAGE = 64  # native size at or below which the small-image CNNs are the candidates


@dataclass(frozen=True)
class Candidate:
    """A model worth training at one input size, and the fewest epochs that make it worth it."""

    model: str
    img_size: int
    min_epochs: int
    pretrained: bool = False


# What --model auto picked, why and what it measured: the record meta.json keeps.
Choice = AutoChoice


# Pretrained networks --model auto starts photos from, best suited to a CPU first, when their
# ImageNet weights are on this machine (an installed weight package or the hub cache).
PRETRAINED_PICKS = ("tf_efficientnet_lite0", "resnet18", "efficientnet_b0", "mobilenetv3")
# How --model auto trains a pretrained pick: the classifier alone (backbone frozen) for two
# epochs, then everything (progressive fine-tuning), 8 epochs in all. On the photos task at 20
# and 100 images per class this was the most accurate of linear probe, fine-tune and
# progressive (BENCHMARKS.md, "ImageNet weights"); a fine-tune needs a few epochs, not the
# 2,000 steps a network from scratch gets.
TRANSFER_RECIPE: dict[str, Any] = {"freeze": "backbone", "unfreeze_at": 3, "epochs": 8}


def default_model(num_images: int, img_size: int) -> str:
    """``--model auto`` without a time budget: a fast residual CNN for small images (on 2 CPU
    cores resnet9p_tiny trains Fashion-MNIST at about 29 s an epoch, BENCHMARKS.md),
    ResNet-18 for photos."""
    if img_size <= SMALL_IMAGE:
        return "resnet9p_tiny" if num_images < 200_000 else "resnet9p_slim"
    return "resnet18"


def candidates(native: int, fixed_size: int, channels: int) -> list[Candidate]:
    """The models ``--model auto`` weighs, most accurate first.

    Args:
        native: the data's typical image size (clipped to 28..224).
        fixed_size: the ``--img-size`` the user gave (0 = free to choose).
        channels: 1 or 3.
    """
    from imagewise.models.weights import has_pretrained  # weights on this machine

    if native <= SMALL_IMAGE:
        size = fixed_size or native
        return [
            Candidate("resnet9p_slim", size, 12),
            Candidate("resnet9p_tiny", size, 5),
            Candidate("tutorial_cnn", size, 2),
        ]
    sizes = [fixed_size] if fixed_size else [s for s in (224, 160, 128, 96, 64) if s <= native]
    sizes = sizes or [native]
    transfer = [
        Candidate(name, s, 3, pretrained=True)
        for name in PRETRAINED_PICKS
        if has_pretrained(name)
        for s in sizes
    ]
    scratch = [Candidate("resnet18", s, 10) for s in sizes]
    return transfer + scratch + [Candidate("resnet9p_tiny", sizes[-1], 5)]


SpeedFn = Callable[[list[tuple[str, int, int]], int], dict[tuple[str, int, int], Any]]


def _measured(shapes: list[tuple[str, int, int]], num_classes: int, bf16: bool = False) -> dict:
    """This machine's cached speeds; missing ones timed with the thread count training would
    use beside the other work on the machine (two threads fighting a neighbour for two cores
    measured 18x slower than one thread), and with ``bf16`` at the faster precision."""
    import time

    from imagewise.models.speed import measured_speeds
    from imagewise.runtime.threads import ThreadGovernor, kept_threads

    with kept_threads():
        governor = ThreadGovernor(interval=0.2)
        time.sleep(0.25)  # one look at the machine before the first timed step
        governor.tick()
        return measured_speeds(shapes, num_classes, pace=governor.tick, bf16=bf16)


def pick_within_budget(
    options: list[Candidate], train_images: int, val_images: int, channels: int,
    num_classes: int, budget: float, epochs: int | None, wanted: int, speeds: SpeedFn,
) -> Choice:  # fmt: skip
    """The first candidate (most accurate first) whose fewest useful epochs fit the budget.

    Candidates are measured one at a time, so a generous budget times only the first.

    Args:
        options: the candidates, most accurate first.
        train_images / val_images: one epoch's training and validation images.
        channels / num_classes: the input and output of the measured models.
        budget: seconds of training (the loop's ``train_seconds``) to fit in.
        epochs: the epochs the user set, or None to choose them.
        wanted: the epochs worth running when the budget allows (the adaptive default).
        speeds: ``(shapes, num_classes) -> {shape: Speed}`` (tests pass a fake).
    """
    room, considered = BUDGET_SHARE * budget, []
    for i, c in enumerate(options):
        speed = speeds([(c.model, c.img_size, channels)], num_classes)[
            (c.model, c.img_size, channels)
        ]
        per_epoch = train_images / speed.train + val_images / speed.infer
        fits = int(room // per_epoch)
        considered.append(
            {"model": c.model, "img_size": c.img_size, "pretrained": c.pretrained,
             "train_images_per_s": round(speed.train, 1), "epoch_seconds": round(per_epoch, 1),
             "epochs_that_fit": fits}
        )  # fmt: skip
        last = i == len(options) - 1
        if fits >= max(c.min_epochs, epochs or 0) or last:
            n = epochs or max(1, min(fits, wanted))
            if fits >= max(c.min_epochs, epochs or 0):
                why = f"the most accurate candidate with {n} epochs inside the budget"
            else:
                why = "the fastest candidate; the budget is too small for any to train well"
            return Choice(
                c.model, c.img_size, n, c.pretrained, why, budget, round(n * per_epoch, 1),
                considered,
            )  # fmt: skip
    raise AssertionError("candidates() is never empty")


def choose_auto_model(
    cfg: RunConfig, raw: ImageData, world_size: int = 1, speeds: SpeedFn | None = None
) -> Choice | None:
    """``--model auto``: pick model, input size and (when unset) epochs from the data, and with
    ``--time-budget`` from speeds measured on this machine; print the choice and why.

    Fills ``cfg.model.name`` (and ``img_size``, ``epochs``, ``pretrained`` where the user left
    them unset); returns the choice for meta.json, or None when the model was named.

    Args:
        cfg: the resolved configuration.
        raw: the dataset as read (not yet decoded): counts, classes, a sample of image sizes.
        world_size: processes; each measures nothing itself, so several agree.
        speeds: ``(shapes, num_classes) -> {shape: Speed}``; default measured here (at the
            faster of float32 and bf16 where ``--precision auto`` would try bf16), cached.
    """
    from imagewise.data.pipeline import infer_shape

    m, d, t = cfg.model, cfg.data, cfg.train
    if m.name != "auto":
        return None
    native, channels = infer_shape(raw, d)  # the user's --img-size / --channels win
    n_train, n_val = len(raw.train), len(raw.val)
    if not m.time_budget or world_size > 1:
        if m.time_budget:  # every process would time its own share and might choose apart
            log.warning("--time-budget is not used under torchrun; choosing by image size")
        choice = _unbudgeted(native, n_train, channels, bool(m.weights or m.init_from))
    else:
        budget = parse_time_budget(m.time_budget)
        speeds = speeds or functools.partial(_measured, bf16=_may_train_in_bf16(t.precision))
        wanted = epochs_for(n_train, t.batch_size or size_tier(n_train)[0])
        options = candidates(native, d.img_size, channels)
        if m.weights or m.init_from or m.pretrained:  # starting weights given: no hub transfer
            options = [c for c in options if not c.pretrained]
        choice = pick_within_budget(
            options, n_train, n_val, channels, len(raw.classes), budget, t.epochs, wanted, speeds
        )
    m.name, d.img_size = choice.model, d.img_size or choice.img_size
    m.pretrained = m.pretrained or choice.pretrained
    if t.epochs is None and choice.budget_seconds is not None:
        t.epochs = choice.epochs
    if choice.pretrained:
        choice.recipe = _apply_recipe(cfg)
    _announce_choice(choice, n_train, native, channels, len(raw.classes))
    return choice


def _may_train_in_bf16(precision: str) -> bool:
    from imagewise.runtime.device import cpu_has_native_bf16

    return precision == "bf16" or (precision == "auto" and cpu_has_native_bf16())


def _apply_recipe(cfg: RunConfig) -> dict[str, Any]:
    """``TRANSFER_RECIPE`` where the user left each setting at its default, and the weights'
    interpolation and crop for decoding; what was set."""
    from imagewise.models.weights import decode_like_weights, weights_preprocessing

    m, t = cfg.model, cfg.train
    applied: dict[str, Any] = {}
    decode_like_weights(cfg.data, weights_preprocessing(m.name))
    if m.freeze == "none" and not m.unfreeze_at:
        m.freeze, m.unfreeze_at = TRANSFER_RECIPE["freeze"], TRANSFER_RECIPE["unfreeze_at"]
        applied.update(freeze=m.freeze, unfreeze_at=m.unfreeze_at)
    if t.epochs is None:
        t.epochs = applied["epochs"] = TRANSFER_RECIPE["epochs"]
    return applied


def _unbudgeted(native: int, n_train: int, channels: int, own_weights: bool) -> Choice:
    from imagewise.models.weights import has_pretrained, weights_preprocessing

    if native > SMALL_IMAGE and not own_weights:
        for name in PRETRAINED_PICKS:
            if has_pretrained(name):
                size = min(native, int(weights_preprocessing(name).get("img_size", 224)))
                why = f"photos, and ImageNet weights for {name} are on this machine: transfer"
                return Choice(name, size, None, True, why)
    name = default_model(n_train, native)
    why = "small images: a fast residual CNN" if native <= SMALL_IMAGE else "photos"
    return Choice(name, native, None, False, why + " (add --time-budget to measure and fit one)")


def _announce_choice(
    choice: Choice, n_train: int, native: int, channels: int, classes: int
) -> None:
    what = f"{choice.model}{' (pretrained)' if choice.pretrained else ''} at {choice.img_size} px"
    if choice.recipe:
        what += (
            " (" + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in choice.recipe.items()) + ")"
        )
    if choice.budget_seconds is None:
        log.info("model auto: %s: %s", what, choice.reason)
        return
    tried = "; ".join(
        f"{c['model']}@{c['img_size']} {c['train_images_per_s']:,.0f} img/s, "
        f"{c['epochs_that_fit']} epoch(s) fit"
        for c in choice.considered
    )
    log.info(
        "model auto: %s, %d epoch(s), about %.0f s of the %.0f s budget: %s\n"
        "  data: %s training images, %d px, %d channel%s, %d classes\n"
        "  measured on this machine: %s",
        what, choice.epochs, choice.estimate_seconds, choice.budget_seconds, choice.reason,
        f"{n_train:,}", native, channels, "" if channels == 1 else "s", classes, tried,
    )  # fmt: skip
