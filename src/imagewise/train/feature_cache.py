"""Cached features: with a frozen backbone, run it once and train the classifier on its outputs.

A frozen backbone in eval mode maps an image to the same embedding every epoch, so computing it
once per kept view (the plain image, plus ``--feature-views`` - 1 augmented ones) and training
only the classifier on those embeddings gives the same result as running the backbone every
epoch, at the cost of one linear layer per step instead of the whole network.

The loop does not know: its loaders yield embeddings instead of images, its "augmentation"
passes them through, its preprocessing leaves them as they are, and the task's network is the
classifier (``ClassifierOnly``). The run still saves and evaluates the whole model.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import nn

from imagewise.data.pipeline import TensorBatches, make_loader
from imagewise.data.sources import Split
from imagewise.data.transforms import BatchAugment, normalize
from imagewise.edge.spec import LAYOUT_EMBEDDINGS, InputContract

log = logging.getLogger("imagewise")


class ClassifierOnly(nn.Module):
    """The model's classifier applied to cached embeddings (``forward_head(pre_logits=True)``
    outputs), scaled as the model scales its logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model  # kept whole so the classifier is looked up after a reset

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        logits = self.model.get_classifier()(embeddings)
        scale = getattr(self.model, "logit_scale", 1.0)
        return logits * scale if scale != 1.0 else logits


class PassThrough:
    """Stands where ``BatchAugment`` does: embeddings go through as they are. Keeps a random
    generator because checkpoints save and restore the augmenter's stream."""

    active = False

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, labels


def embeddings_contract(pre: InputContract) -> InputContract:
    """The 'preprocessing' of cached embeddings: none (validation calls ``normalize``)."""
    return replace(pre, layout=LAYOUT_EMBEDDINGS)


class ViewBatches(TensorBatches):
    """Batches of cached embeddings (views, N, D): each image in each epoch shows one of its
    views, drawn from a stream seeded by the run seed and the epoch (resumes alike)."""

    def __init__(self, views: torch.Tensor, labels: np.ndarray, batch_size: int, **kw: Any):
        super().__init__(Split(labels, views[0]), batch_size, shuffle=True, **kw)
        self.views = views

    def __iter__(self):  # type: ignore[no-untyped-def]
        order = self._indices()
        g = torch.Generator().manual_seed(self.seed * 100019 + self.epoch)
        pick = torch.randint(len(self.views), (len(self.labels),), generator=g)
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield self.views[pick[idx], idx], self.labels[idx]


def embedding_batch(img_size: int, channels: int = 3) -> int:
    """Images per forward pass when computing embeddings: 256 small images, fewer large ones,
    32 from 128 px up. Larger batches of large images are slower on CPU, not faster: on a
    2-core Zen 3, EfficientNet-Lite0 embedded 224-px images 2.9x slower in batches of 256 than
    of 32, and 128-px images 1.2x slower in batches of 98 (their activations leave the caches;
    BENCHMARKS.md, "ImageNet weights")."""
    per_image = channels * img_size * img_size
    return int(max(32, min(256, (32 * 3 * 128 * 128) // per_image)))


@torch.no_grad()
def embed(
    model: nn.Module,
    loader: Any,
    pre: InputContract,
    device: torch.device,
    augment: BatchAugment | None = None,
    desc: str = "features",
    show_progress: bool = True,
) -> tuple[torch.Tensor, np.ndarray]:
    """Embeddings (float32, CPU) and labels of every batch in ``loader``, in order; through
    ``augment`` (one random view) when given, else the plain preprocessing."""
    from tqdm import tqdm

    was_training = model.training
    model.eval()
    # channels-last convolutions are 1.6-1.7x faster on CPU for these networks; the model goes
    # back to the default layout afterwards (its weights are saved as they are)
    channels_last = device.type in ("cpu", "cuda")
    if channels_last:
        model.to(memory_format=torch.channels_last)
    outs, labels = [], []
    for images, y in tqdm(loader, desc=desc, unit="batch", leave=False,
                          disable=None if show_progress else True):  # fmt: skip
        if images.shape[0] == 0:
            continue
        images = images.to(device)
        x = augment(images, y)[0] if augment is not None else normalize(pre, images)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        outs.append(model.forward_head(model.forward_features(x), pre_logits=True).float().cpu())
        labels.append(y.cpu())
    if channels_last:
        model.to(memory_format=torch.contiguous_format)
    model.train(was_training)
    if not outs:
        return torch.empty(0, 0), np.empty(0, dtype=np.int64)
    return torch.cat(outs), torch.cat(labels).numpy()


def cached_loaders(
    model: nn.Module,
    train: Split,
    val: Split,
    pre: InputContract,
    augment: BatchAugment,
    *,
    views: int,
    batch_size: int,
    drop_last: bool,
    seed: int,
    device: torch.device,
    workers: int = -1,
    show_progress: bool = True,
    balanced: bool = False,
) -> tuple[TensorBatches, TensorBatches]:
    """Train and validation loaders of embeddings, computed once with the frozen backbone:
    view 1 is the plain image, views 2.. are random augmentations of it."""
    start = time.perf_counter()
    batch = embedding_batch(pre.img_size, pre.channels)
    train_views, labels = [], np.empty(0, dtype=np.int64)
    for view in range(views):
        x, labels = embed(
            model, make_loader(train, pre, batch, workers=workers), pre, device,
            augment if view else None, f"features, view {view + 1}/{views}", show_progress,
        )  # fmt: skip
        train_views.append(x)
    loader = make_loader(val, pre, batch, workers=workers)
    val_x, val_y = embed(model, loader, pre, device, None, "features, val", show_progress)
    log.info(
        "cached features: %d train image(s) x %d view(s) and %d val, %d values each, in %.1fs",
        len(labels), views, len(val_y), train_views[0].shape[1] if len(labels) else 0,
        time.perf_counter() - start,
    )  # fmt: skip
    if views == 1:
        loader = TensorBatches(
            Split(labels, train_views[0]), batch_size, True, drop_last, seed, balanced=balanced
        )
    else:
        stacked = torch.stack(train_views)
        loader = ViewBatches(
            stacked, labels, batch_size, drop_last=drop_last, seed=seed, balanced=balanced
        )
    return loader, TensorBatches(Split(val_y, val_x), max(256, batch_size))
