"""Read every image once, in parallel, and keep what the checks need: whether it decodes (and
why not), its format, mode and size, and its fingerprint.

Files are opened read-only and never written. Built-in and IDX datasets have no files: their
images are fingerprinted from the arrays, and named ``SOURCE:SPLIT/INDEX``.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from imagewise.audit.fingerprint import Fingerprint, fingerprint
from imagewise.data.decode import UnreadableImageError, load_image
from imagewise.data.sources import SPLITS, ImageData

CHUNK = 256  # images per task: large enough that a task's overhead is small, small for the bar
SERIAL_BELOW = 600  # fewer images than this are read in this process: a pool costs ~2 s to start


@dataclass
class FileInfo:
    """What one image is, before its pixels are looked at."""

    error: str | None = None  # why it could not be decoded (None: it decoded)
    format: str | None = None  # PIL's detected format (JPEG, PNG, ...)
    mode: str | None = None  # PIL mode before any conversion (L, RGB, CMYK, I;16, P, ...)
    width: int = 0
    height: int = 0
    fp: Fingerprint | None = None


@dataclass
class Scan:
    """Every image of a dataset, in split order, with what was read of it."""

    names: list[str]  # a file path, or SOURCE:SPLIT/INDEX for in-memory images
    splits: np.ndarray  # split name per image
    labels: np.ndarray  # class index per image, or 0/1 per class (N, K) for multi-label data
    classes: list[str]
    in_memory: bool
    infos: list[FileInfo] = field(default_factory=list)
    separator: str = "|"  # between a multi-label image's labels in one cell (label_text)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def multilabel(self) -> bool:
        """Whether each image carries a set of labels (0/1 per class) rather than one."""
        return self.labels.ndim == 2

    def label_text(self, i: int) -> str:
        """Image ``i``'s label as a user wrote it: the class name, or for multi-label data the
        names joined by ``separator`` in class order (empty for an image with no label)."""
        if not self.multilabel:
            return self.classes[self.labels[i]]
        return self.separator.join(self.classes[k] for k in np.flatnonzero(self.labels[i]))

    def readable(self) -> np.ndarray:
        """Indices of the images that decoded."""
        return np.array([i for i, f in enumerate(self.infos) if f.error is None], dtype=np.int64)

    def prints(self, index: np.ndarray) -> list[Fingerprint]:
        """The fingerprints of ``index`` (readable images only)."""
        prints = [self.infos[i].fp for i in index]
        return [p for p in prints if p is not None]


def describe_file(path: str, with_features: bool = False) -> FileInfo:
    """Open ``path`` read-only and describe it; a file that does not decode gets the reason.
    ``with_features``: also the label model's features (``labels.image_features``)."""
    try:
        with Image.open(path) as img:
            info = FileInfo(format=img.format, mode=img.mode)
            img.load()
            img = ImageOps.exif_transpose(img) or img
            info.width, info.height = img.size
            info.fp = fingerprint(img, with_features)
        return info
    except Exception as exc:  # any failure to decode is a finding, not a crash
        return FileInfo(error=_reason(path, exc))


def _reason(path: str, exc: Exception) -> str:
    """The same short reason training gives for the file (decode.load_image's wording)."""
    if Path(path).is_file() and Path(path).stat().st_size == 0:
        return "the file is empty"
    try:
        load_image(path)
    except UnreadableImageError as err:
        return err.reason
    except Exception:
        pass
    return f"cannot be decoded ({type(exc).__name__})"


def describe_array(image: np.ndarray, with_features: bool = False) -> FileInfo:
    """Describe one in-memory image, uint8 (C, H, W) with C = 1 or 3."""
    arr = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
    img = Image.fromarray(np.ascontiguousarray(arr))
    height, width = arr.shape[:2]
    fp = fingerprint(img, with_features)
    return FileInfo(format=None, mode=img.mode, width=width, height=height, fp=fp)


def _files_task(paths: list[str], with_features: bool) -> list[FileInfo]:
    return [describe_file(p, with_features) for p in paths]


def _arrays_task(images: np.ndarray, with_features: bool) -> list[FileInfo]:
    return [describe_array(img, with_features) for img in images]


def list_images(data: ImageData) -> Scan:
    """The images of ``data`` in split order (train, val, test), not yet read."""
    names: list[str] = []
    splits: list[str] = []
    labels: list[np.ndarray] = []
    in_memory = False
    empty = np.zeros((0, len(data.classes)) if data.multilabel else 0, np.int64)
    for split_name in SPLITS:
        split = data.split(split_name)
        if split.in_memory:
            in_memory = True
            names.extend(f"{data.source}:{split_name}/{i}" for i in range(len(split)))
        else:
            names.extend(split.paths or [])
        splits.extend([split_name] * len(split))
        labels.append(np.asarray(split.labels, dtype=np.int64))
    return Scan(
        names=names,
        splits=np.array(splits, dtype=object),
        labels=np.concatenate(labels) if labels else empty,
        classes=list(data.classes),
        in_memory=in_memory,
    )


def _chunks(data: ImageData) -> Iterator[tuple[Callable[..., list[FileInfo]], object]]:
    """(task, argument) per chunk of CHUNK images, in split order."""
    for split_name in SPLITS:
        split = data.split(split_name)
        for start in range(0, len(split), CHUNK):
            if split.in_memory:
                assert split.images is not None
                yield _arrays_task, split.images[start : start + CHUNK].numpy()
            else:
                assert split.paths is not None
                yield _files_task, split.paths[start : start + CHUNK]


def read_all(
    data: ImageData,
    workers: int | None = None,
    show_progress: bool = True,
    with_features: bool = True,
) -> Scan:
    """Read and fingerprint every image of ``data``, over ``workers`` processes.

    Args:
        data: the dataset (``resolve_source`` with no carved splits).
        workers: processes (default: the CPU cores this process may use, or 1 below
            SERIAL_BELOW images; 1 = no pool).
        show_progress: a tqdm bar on stderr.
        with_features: also compute the label model's features (in the same pass, in parallel).
    """
    from tqdm.auto import tqdm

    scan = list_images(data)
    if workers is None:
        workers = 1 if len(scan) < SERIAL_BELOW else usable_cores()
    bar = tqdm(total=len(scan), desc="reading", unit="img", disable=not show_progress)
    with bar:
        for infos in _run(_chunks(data), workers, with_features):
            scan.infos.extend(infos)
            bar.update(len(infos))
    return scan


def pool_context() -> multiprocessing.context.BaseContext:
    """Fork where the system has it, else spawn (see ``_run``)."""
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    return multiprocessing.get_context(method)


def usable_cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _run(
    chunks: Iterable[tuple[Callable[..., list[FileInfo]], object]], workers: int, flag: bool
) -> Iterator[list[FileInfo]]:
    """Each chunk's result, in order; a process pool when ``workers`` > 1.

    The pool forks where the system can: a spawned worker imports imagewise (and torch) again,
    2 s on a quiet machine and 50 s on a busy one. Forking a process that holds torch's
    threads is safe here because the workers only run PIL, NumPy, SciPy and scikit-image,
    none of which use OpenMP (the library that cannot run in a forked child of a process that
    used it); where fork is missing (macOS, Windows), spawn.
    """
    if workers <= 1:
        for task, arg in chunks:
            yield task(arg, flag)
        return
    with ProcessPoolExecutor(workers, mp_context=pool_context()) as pool:
        pending = []
        for task, arg in chunks:
            pending.append(pool.submit(task, arg, flag))
            # Keep a bounded number of chunks in flight so results stream to the bar and
            # memory does not hold every chunk's pixels at once.
            while len(pending) > 4 * workers:
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()
