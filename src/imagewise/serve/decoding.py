"""A request's uploads to the model's batch, within three bounds, so that decoding is never the
cheap way to hold the server (32 images of 49 megapixels each pass the per-image limit, and
four such requests took 48 s and 2.5 GB to decode):

- the request's pixels: every image is opened first (its header only; a JPEG at the reduced
  size it will decode to), and when their pixels add up to more than ``max_request_pixels`` the
  request gets 413 before any image is decoded;
- the server's pixels: a request takes its pixels from one ``DecodeBudget`` before decoding
  and gives them back after, so the decoding in progress at any moment, and the memory it holds,
  is bounded whatever the number of clients; a request that finds no room before its deadline
  gets 503 with ``Retry-After``;
- the request's deadline: ``timeout_s`` counts from the end of the body, through decoding, to
  the model's answer; decoding checks it before each image and stops with 504 once it is past.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import numpy as np
from fastapi.concurrency import run_in_threadpool
from PIL import Image

from imagewise.edge.images import image_array
from imagewise.edge.spec import InputContract
from imagewise.serve.guards import ServeError
from imagewise.serve.images import ImageRejected, decode_opened, open_upload
from imagewise.serve.settings import ServeSettings

DECODING_REQUESTS = 2  # the server's decoding budget: this many requests at the pixel limit


class DecodeBusy(Exception):
    """The server's decoding budget had no room before the request's deadline."""


class DecodeBudget:
    """The pixels the server decodes at once, shared by every request.

    Args:
        pixels: the most decoded pixels in progress together; one request larger than that
            still runs when nothing else decodes.
    """

    def __init__(self, pixels: int) -> None:
        self.pixels = pixels
        self.used = 0
        self._changed = asyncio.Condition()

    def _fits(self, pixels: int) -> bool:
        return self.used == 0 or self.used + pixels <= self.pixels

    @asynccontextmanager
    async def hold(self, pixels: int, timeout: float) -> AsyncIterator[None]:
        """Hold ``pixels`` of the budget for the block, waiting at most ``timeout`` seconds.

        Raises:
            DecodeBusy: no room within ``timeout``.
        """
        async with self._changed:
            if not self._fits(pixels):
                room = self._changed.wait_for(lambda: self._fits(pixels))
                try:
                    await asyncio.wait_for(room, timeout)
                except TimeoutError:
                    raise DecodeBusy from None
            self.used += pixels
        try:
            yield
        finally:
            async with self._changed:
                self.used -= pixels
                self._changed.notify_all()


def _which(i: int, name: str, count: int) -> str:
    return f"image {i} ({name})" if count > 1 else name


def open_uploads(
    pre: InputContract, uploads: list[tuple[str, bytes]], max_pixels: int
) -> list[Image.Image]:
    """Each upload opened and checked from its header, no pixel decoded.

    Raises:
        ServeError: an upload is empty, not an image or too large (naming it).
    """
    opened: list[Image.Image] = []
    try:
        for i, (name, data) in enumerate(uploads, 1):
            try:
                opened.append(open_upload(data, pre, max_pixels))
            except ImageRejected as exc:
                which = _which(i, name, len(uploads))
                raise ServeError(exc.status, f"{which}: {exc.message}") from None
    except BaseException:
        for img in opened:
            img.close()
        raise
    return opened


def decode_views(
    pre: InputContract,
    opened: list[Image.Image],
    names: list[str],
    deadline: float,
    timeout_s: float,
) -> tuple[list[Image.Image], np.ndarray]:
    """Decode every opened image to the model's view, checking the deadline (``time.monotonic``)
    before each; the views and the uint8 (N, C, H, W) batch. The images are closed.

    Raises:
        ServeError: 504 once the deadline is past, 400 for a truncated or corrupt image.
    """
    views = []
    try:
        for i, (img, name) in enumerate(zip(opened, names, strict=True), 1):
            if time.monotonic() > deadline:
                raise ServeError(504, f"no answer within {timeout_s:g} s")
            try:
                views.append(decode_opened(img, pre))
            except ImageRejected as exc:
                which = _which(i, name, len(names))
                raise ServeError(exc.status, f"{which}: {exc.message}") from None
    finally:
        for img in opened:
            img.close()
    return views, np.stack([image_array(view) for view in views])


async def decode_request(
    pre: InputContract,
    uploads: list[tuple[str, bytes]],
    settings: ServeSettings,
    budget: DecodeBudget,
    deadline: float,
) -> tuple[list[Image.Image], np.ndarray]:
    """The uploads decoded in the thread pool, within the request's pixels, the server's
    budget and the deadline (see the module); the views and the batch.

    Raises:
        ServeError: 413 (too many pixels), 503 (no room to decode before the deadline), 504
            (the deadline passed while decoding), or the upload's own 400 / 413 / 415.
    """
    opened = await run_in_threadpool(open_uploads, pre, uploads, settings.max_pixels)
    try:
        pixels = sum(img.width * img.height for img in opened)
        limit = settings.request_pixel_limit
        if pixels > limit:
            raise ServeError(
                413,
                f"the images decode to {pixels} pixels in all, more than the limit of {limit} "
                "per request; send fewer or smaller images",
            )
        names = [name for name, _ in uploads]
        async with budget.hold(pixels, deadline - time.monotonic()):
            return await run_in_threadpool(
                decode_views, pre, opened, names, deadline, settings.timeout_s
            )
    except DecodeBusy:
        raise ServeError(
            503, "the server is busy decoding other images; try again", {"Retry-After": "1"}
        ) from None
    finally:
        for img in opened:
            img.close()
