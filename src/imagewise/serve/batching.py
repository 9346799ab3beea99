"""Micro-batching: one worker thread runs the model on the images of concurrent requests at once.

Requests put their images on a bounded queue and await one asyncio future per image. The worker
takes the first waiting image, lets others join for at most ``max_wait_ms`` (or until
``max_batch`` are there), runs one model call on the lot and hands each request its rows back
through its event loop (``call_soon_threadsafe``). Images that waited while the model was busy
join the next call at once, so under load batches fill up without any extra wait; that is why
the default wait is 0 (measured in BENCHMARKS.md: a 5 ms wait cost a lone client 40% of its
requests/s and bought nothing at concurrency 32).

Images are uint8 numpy arrays and the model any ``infer`` callable, so serving an ONNX file needs
no PyTorch; a PyTorch model's worker also gets a ``ThreadGovernor`` (``governor``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

log = logging.getLogger("imagewise")


class QueueFull(Exception):
    """The queue has no room for the request's images."""


class WorkerStopped(Exception):
    """The server is shutting down and takes no new work."""


class Governor(Protocol):
    """Tunes the worker thread's compute threads (``imagewise.runtime.threads.ThreadGovernor``)."""

    def tick(self) -> int: ...

    def close(self) -> None: ...


@dataclass
class _Item:
    image: np.ndarray  # one image as the model reads it: uint8 (C, H, W)
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    arrived: float
    deadline: float


def _resolve(results: list[tuple[asyncio.Future, Any]]) -> None:
    """Runs on the event loop: settle futures whose requests still wait for them."""
    for future, result in results:
        if future.done():  # the request timed out or went away
            continue
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)


class MicroBatcher:
    """A bounded queue of images and the one thread that runs the model on them.

    Args:
        infer: uint8 images (N, C, H, W) -> one result per image (e.g. its logits and
            probabilities); called on the worker.
        max_batch: the most images per call (1 turns batching off).
        max_wait_ms: how long the oldest waiting image holds the call open for others.
        queue_size: the most images waiting; ``submit`` raises ``QueueFull`` beyond it.
        on_batch: called with each batch's size and seconds (for metrics).
        on_depth: called with the number of waiting images whenever it changes.
        governor: made on the worker thread, ticked before each model call and closed when
            the worker ends (PyTorch models: thread counts that leave busy cores alone).
    """

    def __init__(
        self,
        infer: Callable[[np.ndarray], Sequence[Any]],
        max_batch: int = 32,
        max_wait_ms: float = 0.0,
        queue_size: int = 256,
        on_batch: Callable[[int, float], None] | None = None,
        on_depth: Callable[[int], None] | None = None,
        governor: Callable[[], Governor] | None = None,
    ) -> None:
        self.infer = infer
        self.governor = governor
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.queue_size = queue_size
        self.on_batch = on_batch or (lambda size, seconds: None)
        self.on_depth = on_depth or (lambda depth: None)
        self._items: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    @property
    def alive(self) -> bool:
        """True while the worker runs and takes new work."""
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    @property
    def depth(self) -> int:
        return len(self._items)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="imagewise-inference", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Take no new work, finish what is queued, and wait for the worker to end."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    async def predict(self, batch: np.ndarray, timeout: float) -> list[Any]:
        """The results of a batch of images, computed together with other requests' images.

        Raises:
            QueueFull: no room for ``len(batch)`` more images.
            WorkerStopped: the server is shutting down.
            TimeoutError: no answer within ``timeout`` seconds.
        """
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        items = [
            _Item(batch[i], loop.create_future(), loop, now, now + timeout)
            for i in range(len(batch))
        ]
        with self._cond:
            if self._stopping or self._thread is None:
                raise WorkerStopped("the server is shutting down")
            if len(self._items) + len(items) > self.queue_size:
                raise QueueFull(f"{len(self._items)} images are waiting")
            self._items.extend(items)
            depth = len(self._items)
            self._cond.notify()
        self.on_depth(depth)
        futures = [item.future for item in items]
        try:
            rows = await asyncio.wait_for(asyncio.gather(*futures), timeout)
        finally:
            for future in futures:
                future.cancel()  # a no-op when settled; tells the worker to skip the others
        return list(rows)

    def _take(self) -> list[_Item] | None:
        """Wait for work, then up to ``max_batch`` items; None when stopped and drained."""
        with self._cond:
            while not self._items:
                if self._stopping:
                    return None
                self._cond.wait()
            close_at = self._items[0].arrived + self.max_wait
            while len(self._items) < self.max_batch and not self._stopping:
                left = close_at - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            taken = [self._items.popleft() for _ in range(min(self.max_batch, len(self._items)))]
            depth = len(self._items)
        self.on_depth(depth)
        return taken

    def _run(self) -> None:
        # Made in this thread: OpenMP thread counts are per thread.
        governor = self.governor() if self.governor else None
        try:
            while (taken := self._take()) is not None:
                if governor:
                    governor.tick()
                self._answer(taken)
        finally:
            if governor:
                governor.close()

    def _answer(self, taken: list[_Item]) -> None:
        """Run the model on the items still awaited, and settle their futures."""
        now = time.monotonic()
        items = [i for i in taken if not i.future.done() and i.deadline > now]
        if not items:
            return
        start = time.perf_counter()
        try:
            results: list[Any] = list(self.infer(np.stack([i.image for i in items])))
        except Exception as exc:  # the requests get a 500; the worker carries on
            log.exception("inference failed on a batch of %d images", len(items))
            results = [exc] * len(items)
        self.on_batch(len(items), time.perf_counter() - start)
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for item, result in zip(items, results, strict=True):
            by_loop.setdefault(item.loop, []).append((item.future, result))
        for loop, settled in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(_resolve, settled)
