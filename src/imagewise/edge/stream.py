"""Decoding ahead of the model: images are read in a small pool of threads while the previous
batch runs, and come out as ready uint8 batches, in order.

Pillow releases the GIL while it decodes and resizes, so threads overlap with the model (whose
own kernels release it too) without processes or copies. The inputs are cut into batches of
``batch_size`` *inputs* (batch ``i`` holds inputs ``i*B .. i*B+B-1``; an unreadable file that may
be skipped leaves its batch one shorter), so a batch holds the same images however the work is
split: ``select`` lets a process of a torchrun job decode only its own batches
(``imagewise.predict.sharding``), and each of its batches equals the single process's.

Thread budget: the model keeps its own threads (PyTorch's intra-op threads, ONNX Runtime's
session threads: every core); the readers are one per core, at most 4, and run beside it. On 2
cores, resnet18 at 224 px, predicting a folder ran at 93-96% of the model's rate on ready
tensors whether the readers overlapped the model, waited for it to finish each batch, ran at a
lower priority or did not exist (decoding one image costs ~2 ms of CPU against 33-47 ms for the
model; BENCHMARKS.md, "Predict throughput"); overlapping wins wherever the model leaves a core
idle (a GPU, small models, the file copies of ``--sort-into``), so it is what the stream does.

Torch-free (edge layer): numpy and the standard library.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np

from imagewise.errors import UserError

log = logging.getLogger("imagewise")

T = TypeVar("T")
K = TypeVar("K")

_POLL = 0.1  # seconds between looks at the stop flag while blocked


@dataclass
class Batch(Generic[K]):
    """One batch of decoded images.

    Attributes:
        index: which batch of the input it is (batch ``i`` holds inputs ``i*B .. i*B+B-1``).
        images: uint8 (N, C, H, W), N >= 1.
        keys: the key of each image (its file name for files), in order.
    """

    index: int
    images: np.ndarray
    keys: list[K] = field(default_factory=list)


def reader_threads(cores: int | None = None) -> int:
    """How many threads decode: one per core this process may use, at most 4 (more only add
    memory; a JPEG at 224 px takes ~2 ms, a model far longer)."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    return max(1, min(4, cores or 1))


def read_ahead(
    read: Callable[[T], np.ndarray],
    items: Iterable[T],
    batch_size: int,
    *,
    key: Callable[[int, T], K],
    skippable: Callable[[K], bool] | None = None,
    on_skip: Callable[[K, UserError], None] | None = None,
    select: Callable[[int], bool] | None = None,
    threads: int | None = None,
    ahead: int = 2,
) -> Iterator[Batch[K]]:
    """Decoded batches of ``items``, in order, read by a pool of threads ahead of the consumer.

    Args:
        read: an item -> uint8 (C, H, W); raises ``UserError`` for an unreadable one.
        items: anything ``read`` takes (file paths, PIL images, video frames); consumed lazily,
            by a feeder thread (a generator's own work, e.g. demuxing a video, overlaps too).
        batch_size: inputs per batch.
        key: (position in ``items``, item) -> the key the batch carries for it (its name).
        skippable: for the keys this returns True for, an unreadable item is skipped with a
            warning; others raise the ``UserError`` (in order, when the consumer reaches it).
        on_skip: called with the key and the error of each skipped item, in order, in the
            consumer's thread, instead of the warning (to word it, or to keep a list).
        select: which batch indices to decode (None: all); the others' items are not read.
        threads: reader threads (None: ``reader_threads()``; 0: read in the calling thread,
            one batch at a time, no threads at all).
        ahead: ready batches held for the consumer at most (memory: about
            ``(ahead + 2) * batch_size`` decoded images, and at most two batches of items
            not yet read).

    Example:
        >>> for batch in read_ahead(model.read, paths, 64, key=lambda i, p: p):  # doctest: +SKIP
        ...     logits, probs = model.scores(batch.images)
    """
    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, not {batch_size}")
    chunks = _chunks(items, batch_size, key, select or (lambda i: True))
    threads = reader_threads() if threads is None else threads
    if threads <= 0:
        for index, pairs in chunks:
            pending = [(k, _done(read, item)) for k, item in pairs]
            if batch := _collect(index, pending, skippable, on_skip):
                yield batch
        return
    yield from _threaded(read, chunks, skippable, on_skip, threads, max(1, ahead))


def _chunks(
    items: Iterable[T], size: int, key: Callable[[int, T], K], select: Callable[[int], bool]
) -> Iterator[tuple[int, list[tuple[K, T]]]]:
    """(batch index, [(key, item)]) for the selected batches, items taken lazily."""
    chunk: list[tuple[K, T]] = []
    index = 0
    for position, item in enumerate(items):
        if select(index):
            chunk.append((key(position, item), item))
        if (position + 1) % size == 0:
            if chunk:
                yield index, chunk
            chunk, index = [], index + 1
    if chunk:
        yield index, chunk


def _done(read: Callable[[T], np.ndarray], item: T) -> Future[np.ndarray]:
    """``read(item)`` as a finished future (the threadless path shares ``_collect``)."""
    future: Future[np.ndarray] = Future()
    try:
        future.set_result(read(item))
    except Exception as exc:
        future.set_exception(exc)
    return future


def _collect(
    index: int,
    pending: list[tuple[K, Future[np.ndarray]]],
    skippable: Callable[[K], bool] | None,
    on_skip: Callable[[K, UserError], None] | None = None,
) -> Batch[K] | None:
    """Wait for one batch's reads; skip the unreadable items that may be skipped."""
    arrays, keys = [], []
    for k, future in pending:
        try:
            arrays.append(future.result())
        except UserError as exc:
            if skippable is None or not skippable(k):
                raise
            if on_skip is None:
                log.warning("skipped: %s", str(exc).split(";")[0])
            else:
                on_skip(k, exc)
            continue
        keys.append(k)
    return Batch(index, np.stack(arrays), keys) if arrays else None


_END = object()


def _threaded(
    read: Callable[[T], np.ndarray],
    chunks: Iterator[tuple[int, list[tuple[K, T]]]],
    skippable: Callable[[K], bool] | None,
    on_skip: Callable[[K, UserError], None] | None,
    threads: int,
    ahead: int,
) -> Iterator[Batch[K]]:
    """A feeder thread walks ``chunks`` and submits every read to the pool; the consumer (this
    generator) takes the batches' futures in order. Bounded: ``ahead`` batches wait in the
    queue, and the feeder blocks until there is room."""
    ready: queue.Queue[object] = queue.Queue(maxsize=ahead)
    stop = threading.Event()
    pool = ThreadPoolExecutor(threads, "imagewise-read")

    def put(entry: object) -> bool:
        while not stop.is_set():
            try:
                ready.put(entry, timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    def feed() -> None:
        previous: list[Future[np.ndarray]] = []
        try:
            for index, pairs in chunks:
                if stop.is_set():
                    return
                pending = [(k, pool.submit(read, item)) for k, item in pairs]
                if not put((index, pending)):
                    return
                # At most two batches of items not yet read (a video's full-size frames).
                wait(previous)
                previous = [f for _, f in pending]
            put(_END)
        except BaseException as exc:  # handed to the consumer, raised there
            put(exc)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    feeder = threading.Thread(target=feed, name="imagewise-feed", daemon=True)
    feeder.start()
    try:
        while True:
            entry = ready.get()
            if entry is _END:
                return
            if isinstance(entry, BaseException):
                raise entry
            index, pending = entry  # type: ignore[misc]
            if batch := _collect(index, pending, skippable, on_skip):
                yield batch
    finally:
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)
        feeder.join(timeout=5)
        pool.shutdown(wait=True)
