"""From resolved splits to batches: image size and channels, decoding, mean/std, loaders.

File datasets are decoded once into memory at the target size when they fit (``cache=auto``),
which turns every epoch after the first into pure tensor work; larger ones stream through
DataLoader workers. Either way the training loop sees uint8 batches (N, C, H, W).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import torch

from imagewise.config import DataConfig
from imagewise.data.decode import (
    UnreadableImageError,
    probe_image,
    read_image,
    resize_tensor_images,
)
from imagewise.data.sources import ImageData, Split
from imagewise.data.transforms import LUMA
from imagewise.edge.spec import InputContract
from imagewise.errors import UserError

log = logging.getLogger("imagewise")

MIN_SIZE, MAX_SIZE = 28, 224
CACHE_BUDGET_BYTES = 3 * 1024**3


def _sample_paths(data: ImageData, k: int = 200) -> list[str]:
    paths = data.train.paths or []
    if len(paths) <= k:
        return list(paths)
    rng = np.random.default_rng(0)
    return [paths[i] for i in rng.choice(len(paths), size=k, replace=False)]


def infer_shape(data: ImageData, cfg: DataConfig) -> tuple[int, int]:
    """Image size and channels: from the config, else from the data (size clipped to 28..224)."""
    if data.train.in_memory:
        images = data.train.images
        assert images is not None
        channels, native = images.shape[1], min(images.shape[-2:])
    else:
        probes = []
        for path in _sample_paths(data):
            try:
                probes.append(probe_image(path))
            except Exception:  # unreadable files are reported when decoded
                continue
        if not probes:
            raise UserError(f"no readable image found in '{data.source}'")
        channels = 1 if all(gray for _, _, gray in probes) else 3
        native = int(np.median([min(w, h) for w, h, _ in probes]))
    size = cfg.img_size or int(min(max(native, MIN_SIZE), MAX_SIZE))
    return size, cfg.channels or channels


def _decode_all(
    paths: list[str], channels: int, size: int, strict: bool, desc: str,
    interpolation: str = "bilinear", crop_pct: float = 1.0,
) -> tuple[torch.Tensor, np.ndarray, list[tuple[str, str]]]:  # fmt: skip
    """Decode files in threads (PIL releases the GIL while decoding and resizing)."""
    from tqdm import tqdm

    out = torch.empty((len(paths), channels, size, size), dtype=torch.uint8)
    ok = np.ones(len(paths), dtype=bool)
    bad: list[tuple[str, str]] = []

    def work(i: int) -> None:
        try:
            out[i] = read_image(paths[i], channels, size, interpolation, crop_pct)
        except UnreadableImageError as exc:
            if strict:
                raise UserError(
                    f"unreadable image {exc.path} ({exc.reason}); remove it or run without --strict"
                ) from exc
            ok[i] = False
            bad.append((exc.path, exc.reason))

    threads = min(8, (os.cpu_count() or 1) * 2)
    with ThreadPoolExecutor(threads) as pool:
        bar = tqdm(
            total=len(paths),
            desc=desc,
            unit="img",
            disable=True if len(paths) < 2000 else None,
            leave=False,
        )
        for _ in pool.map(work, range(len(paths))):
            bar.update()
        bar.close()
    return out[torch.from_numpy(ok)], ok, bad


def _check_files(paths: list[str], channels: int, strict: bool) -> tuple[np.ndarray, list]:
    """Decode each file once at a tiny size to find the unreadable ones before streaming."""
    _, ok, bad = _decode_all(paths, channels, 8, strict, "checking images")
    return ok, bad


def materialize(data: ImageData, cfg: DataConfig, size: int, channels: int) -> ImageData:
    """Decode file splits into memory when they fit, else check them; skip corrupt files."""
    interpolation, crop_pct = cfg.interpolation or "bilinear", cfg.crop_pct or 1.0
    splits = {name: data.split(name) for name in ("train", "val", "test")}
    files = [s for s in splits.values() if not s.in_memory]
    total = sum(len(s) for s in files) * channels * size * size
    cache = cfg.cache == "ram" or (cfg.cache == "auto" and total <= CACHE_BUDGET_BYTES)
    skipped = list(data.skipped)
    for name, split in splits.items():
        if split.in_memory and split.images is not None:
            images = resize_tensor_images(split.images, size, interpolation, crop_pct)
            splits[name] = replace(split, images=images)
            continue
        if not len(split):
            continue
        assert split.paths is not None
        if cache:
            images, ok, bad = _decode_all(
                split.paths, channels, size, cfg.strict, f"decoding {name}", interpolation,
                crop_pct,
            )  # fmt: skip
            kept = split.subset(np.flatnonzero(ok))
            splits[name] = replace(kept, images=images)
        else:
            ok, bad = _check_files(split.paths, channels, cfg.strict)
            splits[name] = split.subset(np.flatnonzero(ok))
        skipped.extend(bad)
    if len(skipped) > len(data.skipped):
        log.warning(
            "skipped %d unreadable image(s), e.g. %s",
            len(skipped) - len(data.skipped),
            skipped[len(data.skipped)][0],
        )
    if not len(splits["train"]):
        raise UserError(f"no readable training images in '{data.source}'")
    _refuse_emptied_classes(data, splits["train"].labels)
    result = ImageData(
        data.classes,
        splits["train"],
        splits["val"],
        splits["test"],
        data.source,
        data.kind,
        skipped,
        data.task,
    )
    return _match_channels(result, channels)


def _refuse_emptied_classes(data: ImageData, kept: np.ndarray) -> None:
    """A class whose training images were all skipped as unreadable would train as if it did
    not exist (and its validation images would count against the rest): one line instead."""
    before, after = _present(data.train.labels), _present(kept)
    emptied = sorted(before - after)
    if emptied:
        name = data.classes[emptied[0]]
        raise UserError(
            f"class '{name}' has no readable training image (every one was skipped as "
            "unreadable; see the warning above); fix or remove its files, or its folder"
        )


def _present(labels: np.ndarray) -> set[int]:
    """The classes some image carries (class indices, or 0/1 rows of multi-label data)."""
    labels = np.asarray(labels)
    if labels.ndim == 2:
        return set(np.flatnonzero(labels.any(axis=0)).tolist())
    return set(np.unique(labels).tolist())


def compute_mean_std(
    split: Split, channels: int, size: int, interpolation: str = "bilinear", crop_pct: float = 1.0
) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the training images (a sample of 2000 at most)."""
    n = len(split)
    index = np.random.default_rng(0).permutation(n)[: min(n, 2000)]
    if split.in_memory:
        assert split.images is not None
        x = split.images[torch.from_numpy(index)].float().div_(255)
    else:
        assert split.paths is not None
        x = torch.stack(
            [
                read_image(split.paths[i], channels, size, interpolation, crop_pct)
                for i in index[:500]
            ]
        )
        x = x.float().div_(255)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]


def prepare(data: ImageData, cfg: DataConfig) -> tuple[ImageData, InputContract]:
    """Decide size and channels, decode or check the files, and measure mean/std."""
    size, channels = infer_shape(data, cfg)
    interpolation, crop_pct = cfg.interpolation or "bilinear", cfg.crop_pct or 1.0
    data = materialize(data, cfg, size, channels)
    mean, std = compute_mean_std(data.train, channels, size, interpolation, crop_pct)
    return data, InputContract(size, channels, mean, std, interpolation, crop_pct)


def _match_channels(data: ImageData, channels: int) -> ImageData:
    def fix(split: Split) -> Split:
        if split.images is None or split.images.shape[1] == channels:
            return split
        images = split.images
        if channels == 3:
            images = images.expand(-1, 3, -1, -1).contiguous()
        else:
            images = images.float().mul(torch.tensor(LUMA).view(1, 3, 1, 1))
            images = images.sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
        return replace(split, images=images)

    return ImageData(
        data.classes,
        fix(data.train),
        fix(data.val),
        fix(data.test),
        data.source,
        data.kind,
        data.skipped,
        data.task,
    )


class TensorBatches:
    """Batches of an in-memory split: uint8 images and int64 labels, reshuffled each epoch.

    With ``world_size > 1`` each rank takes its own interleaved share of one shared permutation,
    as ``DistributedSampler`` does; when shuffling (training) the shares are padded so that every
    rank runs the same number of steps, otherwise (evaluation) every image is counted once.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        balanced: bool = False,
    ) -> None:
        assert split.images is not None
        self.images, self.labels = split.images, torch.from_numpy(split.labels)
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.seed, self.rank, self.world_size, self.epoch = seed, rank, world_size, 0
        self.balanced = balanced and shuffle

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> torch.Tensor:
        n = len(self.labels)
        if self.balanced:
            order = balanced_draw(self.labels, self.seed, self.epoch)
        elif self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        if self.world_size > 1:
            if self.shuffle:
                per_rank = math.ceil(n / self.world_size)
                order = torch.cat([order, order[: per_rank * self.world_size - n]])
            order = order[self.rank :: self.world_size]
        return order

    def __len__(self) -> int:
        total = len(self.labels)
        if self.shuffle:
            n = math.ceil(total / self.world_size)
        else:
            n = len(range(self.rank, total, self.world_size))
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self._indices()
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield self.images[idx], self.labels[idx]


def balanced_draw(labels: torch.Tensor | np.ndarray, seed: int, epoch: int) -> torch.Tensor:
    """``--sampler balanced``: as many indices as there are images, drawn with replacement so
    that every class is equally likely (each image with probability 1 / (classes x its class's
    count)); the same draw in every process (seeded by the run seed and the epoch).

    Multi-label rows (N, K) draw each image by its rarest label (``strata``: images without a
    label form a group of their own), so rare labels come up as often as common ones."""
    from imagewise.data.sources import strata

    labels = torch.as_tensor(strata(np.asarray(labels)))
    counts = torch.bincount(labels).double()
    present = int((counts > 0).sum())
    weights = 1.0 / (counts[labels] * present)
    g = torch.Generator().manual_seed(seed * 100003 + epoch + 7)
    return torch.multinomial(weights, len(labels), replacement=True, generator=g)


class BalancedSampler(torch.utils.data.Sampler):
    """``balanced_draw`` for streamed file datasets, sharded by rank like DistributedSampler."""

    def __init__(self, labels: np.ndarray, seed: int, rank: int = 0, world_size: int = 1):
        self.labels, self.seed, self.rank, self.world_size = labels, seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.world_size)

    def __iter__(self) -> Iterator[int]:
        order = balanced_draw(self.labels, self.seed, self.epoch)
        order = torch.cat([order, order[: len(self) * self.world_size - len(order)]])
        return iter(order[self.rank :: self.world_size].tolist())


class FileImages(torch.utils.data.Dataset):
    """Decodes one file per item to uint8 (C, size, size); an unreadable file yields None."""

    def __init__(self, split: Split, pre: InputContract) -> None:
        assert split.paths is not None
        self.paths, self.labels, self.pre = split.paths, split.labels, pre

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int] | None:
        try:
            pre = self.pre
            image = read_image(
                self.paths[i], pre.channels, pre.img_size, pre.interpolation, pre.crop_pct
            )
            label = self.labels[i]  # a class index, or a multi-label row of 0/1
            return image, (int(label) if np.ndim(label) == 0 else torch.from_numpy(label))
        except UnreadableImageError as exc:
            log.warning("skipped unreadable image %s (%s)", exc.path, exc.reason)
            return None


def _collate(items: list) -> tuple[torch.Tensor, torch.Tensor]:
    items = [it for it in items if it is not None]
    if not items:
        return torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.int64)
    labels = [y for _, y in items]
    if isinstance(labels[0], torch.Tensor):  # multi-label rows
        return torch.stack([x for x, _ in items]), torch.stack(labels)
    return torch.stack([x for x, _ in items]), torch.tensor(labels)


def make_loader(
    split: Split,
    pre: InputContract,
    batch_size: int,
    shuffle: bool = False,
    drop_last: bool = False,
    seed: int = 0,
    workers: int = -1,
    rank: int = 0,
    world_size: int = 1,
    balanced: bool = False,
) -> TensorBatches | torch.utils.data.DataLoader:
    """An iterable of (uint8 images, labels) batches with ``len()`` and ``set_epoch(epoch)``.
    ``balanced`` (training): classes drawn equally often (``balanced_draw``)."""
    if split.in_memory:
        return TensorBatches(
            split, batch_size, shuffle, drop_last, seed, rank, world_size, balanced
        )
    from torch.utils.data import DataLoader, DistributedSampler, Subset

    dataset = FileImages(split, pre)
    sampler: torch.utils.data.Sampler
    if shuffle and balanced:
        sampler = BalancedSampler(split.labels, seed, rank, world_size)
    elif shuffle:  # padded so every rank runs the same number of steps
        sampler = DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed
        )
    else:  # evaluation: each image once, on one rank
        dataset = Subset(dataset, range(rank, len(dataset), world_size))
        sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=False)
    workers = (os.cpu_count() or 1) if workers < 0 else workers
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=workers,
        persistent_workers=workers > 0,
        collate_fn=_collate,
        prefetch_factor=4 if workers > 0 else None,
    )
    loader.set_epoch = sampler.set_epoch  # type: ignore[attr-defined]
    return loader
