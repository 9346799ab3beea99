"""What ``features`` and ``similar`` read: a dataset ``train`` accepts, or unlabelled images.

A built-in name, a folder of class folders, an IDX folder or a CSV manifest is read with
``imagewise.data.sources.resolve_source`` (labelled, in splits); a folder with images directly
in it, image files and globs are unlabelled (label ''). Images are decoded a batch at a time,
with the model's channels and size, in reader threads while the model runs the batch before
(``imagewise.edge.stream.read_ahead``).
"""

from __future__ import annotations

import glob
import hashlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from imagewise.data.decode import (
    UnreadableImageError,
    is_image_file,
    read_image,
    resize_tensor_images,
)
from imagewise.edge.stream import read_ahead
from imagewise.errors import UserError

log = logging.getLogger("imagewise")

SPLIT_CHOICES = ("train", "val", "test", "all")


@dataclass
class Collection:
    """Images to embed: names (file paths, or ``fashion-mnist:test/12`` for in-memory ones),
    labels (class names, '' when unlabelled), the split each came from, and the class names."""

    names: list[str]
    labels: list[str]
    splits: list[str]
    classes: list[str]
    source: str  # what the user gave, as given
    split: str  # train | val | test | all | '' (unlabelled images)
    images: torch.Tensor | None = None  # uint8 (N, C, H, W) when the data is in memory
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)

    def __len__(self) -> int:
        return len(self.names)

    def fingerprint(self) -> str:
        """sha256 of what the images are: paths with sizes and mtimes, or the pixels in memory.
        A changed, added or removed file changes it."""
        h = hashlib.sha256()
        text = "\0".join([self.source, self.split, *self.names, *self.labels])
        h.update(text.encode("utf-8", "surrogateescape"))  # a name that is not UTF-8: its bytes
        if self.images is not None:
            h.update(self.images.contiguous().numpy().tobytes())
            return h.hexdigest()
        for name in self.names:
            try:
                st = Path(name).stat()
                h.update(f"{st.st_size}:{st.st_mtime_ns};".encode())
            except OSError:
                h.update(b"missing;")
        return h.hexdigest()

    def image(
        self,
        i: int,
        channels: int,
        size: int | None,
        interpolation: str = "bilinear",
        crop_pct: float = 1.0,
    ) -> torch.Tensor:
        """Image ``i`` as uint8 (C, H, W) with ``channels``, resized to ``size`` when given.

        Raises:
            UnreadableImageError: a file that cannot be decoded.
        """
        if self.images is None:
            return read_image(self.names[i], channels, size, interpolation, crop_pct)
        img = match_channels(self.images[i : i + 1], channels)
        return (resize_tensor_images(img, size, interpolation, crop_pct) if size else img)[0]

    def batches(
        self,
        channels: int,
        size: int,
        batch_size: int,
        interpolation: str = "bilinear",
        crop_pct: float = 1.0,
    ) -> Iterator[tuple[list[int], torch.Tensor]]:
        """(indices, uint8 batch) in order; unreadable files are skipped, logged and recorded
        in ``skipped``. Files decode in reader threads ahead of the consumer
        (``imagewise.edge.stream.read_ahead``, as prediction reads them)."""

        def read(i: int) -> np.ndarray:
            try:
                return self.image(i, channels, size, interpolation, crop_pct).numpy()
            except UnreadableImageError as exc:
                raise _Unreadable(exc) from exc

        def skip(i: int, error: UserError) -> None:
            if not isinstance(error, _Unreadable):
                raise error  # only a file that cannot be decoded is skipped
            log.warning("skipped unreadable image %s (%s)", error.path, error.reason)
            self.skipped.append((error.path, error.reason))

        batches = read_ahead(
            read, range(len(self)), batch_size, key=lambda position, i: i,
            skippable=lambda i: True, on_skip=skip,
        )  # fmt: skip
        for batch in batches:
            yield batch.keys, torch.from_numpy(batch.images)


class _Unreadable(UserError):
    """An image ``batches`` skips (``read_ahead`` skips ``UserError``s), with its path and why."""

    def __init__(self, exc: UnreadableImageError) -> None:
        super().__init__(str(exc))
        self.path, self.reason = exc.path, exc.reason


def match_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 (N, C, H, W) to ``channels``: gray repeated to RGB, RGB to gray by ITU-R 601-2
    luma (PIL's ``convert('L')``)."""
    if images.shape[1] == channels:
        return images
    if channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    weights = torch.tensor([299, 587, 114], dtype=torch.int32).view(1, 3, 1, 1)
    luma = (images.to(torch.int32) * weights).sum(dim=1, keepdim=True)
    return ((luma + 500) // 1000).to(torch.uint8)


def _is_plain_folder(path: Path) -> bool:
    """A folder with image files directly in it: unlabelled images, not class folders."""
    return path.is_dir() and any(p.is_file() and is_image_file(p) for p in path.iterdir())


def _refuse_empty_folder(path: Path) -> None:
    from imagewise.data.idx import find_idx_pairs

    if not path.is_dir() or find_idx_pairs(path):
        return
    if not any(p.is_file() and is_image_file(p) for p in path.rglob("*")):
        raise UserError(
            f"folder '{path}' has no images (.jpg, .png, .bmp, .tif, .webp, .gif); "
            "give a folder with images in it, or class folders of images"
        )


def _is_dataset(item: str) -> bool:
    from imagewise.data import builtin

    path = Path(item).expanduser()
    if builtin.canonical_name(item) and not path.exists():
        return True
    if path.is_file():
        return path.suffix.lower() == ".csv"
    return path.is_dir() and not _is_plain_folder(path)


def _unlabelled(items: Sequence[str]) -> Collection:
    from imagewise.predict.inputs import expand_inputs

    names = expand_inputs(list(items))
    return Collection(names, [""] * len(names), [""] * len(names), [], " ".join(items), "")


def _label_names(classes: list[str], label: np.ndarray) -> str:
    """A class index's name, or a multi-label row's names joined by ``|`` ('' for none)."""
    if np.ndim(label):
        return "|".join(classes[k] for k in np.flatnonzero(label))
    return classes[int(label)]


def _dataset(source: str, split: str) -> Collection:
    from imagewise.data.sources import SPLITS, resolve_source

    data = resolve_source(source)
    chosen = SPLITS if split == "all" else (split,)
    names: list[str] = []
    labels: list[str] = []
    splits: list[str] = []
    tensors = []
    for name in chosen:
        part = data.split(name)
        labels.extend(_label_names(data.classes, y) for y in part.labels)
        splits.extend([name] * len(part))
        if part.images is not None:
            names.extend(f"{data.source}:{name}/{i}" for i in range(len(part)))
            tensors.append(part.images)
        else:
            names.extend(part.paths or [])
    if not names:
        raise UserError(f"'{source}' has no images in the {split} split")
    images = torch.cat(tensors) if tensors else None
    if images is None and split == "all":  # files: in path order, whatever split carved them
        order = np.argsort(np.array(names), kind="stable")
        names, labels, splits = ([seq[i] for i in order] for seq in (names, labels, splits))
    return Collection(names, labels, splits, list(data.classes), source, split, images)


def resolve_collection(data: str | Sequence[str], split: str | None = None) -> Collection:
    """The images ``data`` names, with labels where it has them.

    Args:
        data: a dataset (built-in name, folder of class folders, IDX folder, CSV manifest), or
            image files, folders with images in them, and globs (unlabelled); a list for several.
        split: for a dataset, ``train``, ``val``, ``test`` or ``all``. Default: ``test`` for the
            built-ins, ``all`` for folders and manifests (every file given).
    """
    items = [data] if isinstance(data, str | Path) else [str(d) for d in data]
    if not items:
        raise UserError("no data given; name a dataset, a folder of images, files or a glob")
    if split is not None and split not in SPLIT_CHOICES:
        raise UserError(f"unknown split '{split}'; choose one of {', '.join(SPLIT_CHOICES)}")
    for item in items:
        _refuse_empty_folder(Path(str(item)).expanduser())
    if len(items) == 1 and _is_dataset(str(items[0])):
        from imagewise.data import builtin

        source = str(items[0])
        builtin_data = builtin.canonical_name(source) and not Path(source).exists()
        return _dataset(source, split or ("test" if builtin_data else "all"))
    if split not in (None, "all"):
        raise UserError(
            f"--split {split} needs a dataset (class folders, a CSV manifest or a built-in); "
            "these are unlabelled images"
        )
    missing = [i for i in items if not Path(i).expanduser().exists() and not glob.has_magic(i)]
    if missing:
        raise UserError(
            f"'{missing[0]}' does not exist; give a dataset, image files, folders or globs"
        )
    return _unlabelled([str(i) for i in items])
