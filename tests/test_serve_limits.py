"""Serving under abuse: headers sent slowly, huge headers, floods of idle connections, and
images that cost more to decode than a request may spend. Every server here is in this
process on 127.0.0.1, with limits small enough to be reached in a second or two."""

from __future__ import annotations

import asyncio
import contextlib
import io
import select
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import httpx
import numpy as np
import pytest
from PIL import Image

from imagewise.serve import ServeSettings, create_app
from imagewise.serve.decoding import DecodeBudget, DecodeBusy, decode_views, open_uploads
from imagewise.serve.guards import ServeError
from imagewise.serve.server import JsonH11Protocol
from test_serve import (
    TINY_PNG,
    SlowClassifier,
    _answer_of,
    _closed_by_server,
    _json_error_of,
    assert_json_error,
    png_bytes,
    running,
)

# Both of uvicorn's parsers: httptools (the default; None) and h11 (its fallback).
PARSERS = pytest.mark.parametrize("http", [None, JsonH11Protocol], ids=["httptools", "h11"])


@contextmanager
def serving(settings: ServeSettings, http: type | None = None, seconds: float = 0.0) -> Iterator:
    with running(create_app(SlowClassifier(seconds), settings), http, settings) as (url, server):
        yield url, server


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=10)


def trickle(sock: socket.socket, data: bytes, pause: float) -> int:
    """Send ``data`` a byte at a time, one every ``pause`` s, until the server answers or
    closes; the bytes sent."""
    sent = 0
    while sent < len(data) and not select.select([sock], [], [], pause)[0]:
        sock.sendall(data[sent : sent + 1])
        sent += 1
    return sent


@PARSERS
def test_headers_sent_byte_by_byte_are_cut_off_with_408(http: type | None) -> None:
    settings = ServeSettings(access_log=False, header_timeout_s=1.0)
    slow_head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200 + b"\r\n\r\n"
    with serving(settings, http) as (url, _), connect(url) as slow, connect(url) as silent:
        sent = trickle(slow, slow_head, pause=0.05)
        assert "headers took over 1 s" in _json_error_of(_answer_of(slow), 408)
        assert sent < 100 and _closed_by_server(slow)  # about a second's worth, not all 240
        assert _closed_by_server(silent)  # connected and sent nothing: closed without a word
        # on a keep-alive connection the deadline starts again with the next request's first byte
        with connect(url) as again:
            again.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _answer_of(again)[0] == 200
            sent = trickle(again, slow_head, pause=0.05)
            assert "headers took over" in _json_error_of(_answer_of(again), 408) and sent < 100
        assert httpx.get(url + "/healthz").status_code == 200


@PARSERS
def test_oversized_headers_get_431_and_a_large_body_does_not(http: type | None) -> None:
    settings = ServeSettings(access_log=False, max_header_bytes=8192)
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: %s\r\n\r\n"
    with serving(settings, http) as (url, _):
        with connect(url) as sock:
            sock.sendall(head % (b"a" * 20_000))
            assert "larger than 8192 bytes" in _json_error_of(_answer_of(sock), 431)
            assert _closed_by_server(sock)
        # 20 MB more: the server stops reading at the limit instead of parsing all of it
        with connect(url) as sock:
            try:
                sock.sendall(head % (b"a" * 20_000_000))
                answer = _answer_of(sock)
            except (BrokenPipeError, ConnectionResetError):  # closed while we still sent
                answer = None
            assert answer is None or answer[0] == 431, answer
        assert httpx.get(url + "/healthz").status_code == 200
        # a head just under the limit passes, and the body is not counted as headers
        ok = httpx.get(url + "/healthz", headers={"X-Pad": "b" * 6000})
        assert ok.status_code == 200, ok.text
        noise = np.random.default_rng(0).integers(0, 255, (300, 300), dtype=np.uint8)
        body = png_bytes(Image.fromarray(noise))
        assert len(body) > 10 * 8192
        r = httpx.post(url + "/v1/predict", content=body, headers={"Content-Type": "image/png"})
        assert r.status_code == 200, r.text


def _closed(socks: list[socket.socket], enough: int, seconds: float) -> set[int]:
    """Indices of the sockets the server closes, once ``enough`` are (or ``seconds`` pass)."""
    closed: set[int] = set()
    deadline = time.monotonic() + seconds
    while len(closed) < enough and (left := deadline - time.monotonic()) > 0:
        open_ = [s for i, s in enumerate(socks) if i not in closed]
        for sock in select.select(open_, [], [], left)[0]:
            try:
                gone = sock.recv(1) == b""
            except ConnectionResetError:  # closed before it read what we sent
                gone = True
            if gone:
                closed.add(socks.index(sock))
    return closed


def test_a_flood_of_half_open_connections_past_the_cap_leaves_readyz_answering() -> None:
    settings = ServeSettings(access_log=False, max_connections=20)
    with serving(settings) as (url, server), ExitStack() as stack:
        flood = [stack.enter_context(connect(url)) for _ in range(200)]
        for sock in flood:
            with contextlib.suppress(OSError):  # already closed to make room
                sock.sendall(b"GET /readyz HTTP/1.1\r\nHo")  # never finished
        ready = httpx.get(url + "/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
        closed = _closed(flood, enough=180, seconds=5)
        assert set(range(150)) <= closed  # the oldest idle ones made room for the new
        assert len(server.server_state.connections) <= 21  # type: ignore[attr-defined]


def test_when_every_connection_has_a_request_in_progress_a_new_one_gets_503() -> None:
    settings = ServeSettings(access_log=False, max_connections=2, batching=False)
    with serving(settings, seconds=1.0) as (url, server):
        answers: list[httpx.Response] = []

        def post() -> None:
            answers.append(httpx.post(url + "/v1/predict", files={"file": ("a.png", TINY_PNG)}))

        busy = [threading.Thread(target=post) for _ in range(2)]
        for thread in busy:
            thread.start()
        state = server.server_state  # type: ignore[attr-defined]
        for _ in range(1000):  # until uvicorn holds both requests (bounded)
            if len(state.tasks) == 2:
                break
            time.sleep(0.005)
        with connect(url) as third:  # answered at once, before it sends anything
            message = _json_error_of(_answer_of(third), 503)
        for thread in busy:
            thread.join(30)
    assert "2 connections open" in message
    assert [r.status_code for r in answers] == [200, 200]


def _jpeg(side: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (side, side), 90).save(buf, "JPEG")
    return buf.getvalue()


def test_a_request_whose_images_decode_to_too_many_pixels_gets_413() -> None:
    settings = ServeSettings(access_log=False, max_pixels=10_000_000, max_request_pixels=10_000_000)
    blank = png_bytes(Image.new("1", (2000, 2000)), optimize=True)  # 4 megapixels, a few KB
    with serving(settings) as (url, _):
        info = httpx.get(url + "/v1/info").json()
        two = httpx.post(url + "/v1/predict", files=[("file", (f"{i}.png", blank)) for i in "ab"])
        three = [("file", (f"{i}.png", blank)) for i in "abc"]
        refused = httpx.post(url + "/v1/predict", files=three)
        # a JPEG counts at the size it decodes to for an 8-pixel model (an eighth a side)
        jpegs = [("file", (f"{i}.jpg", _jpeg(3000))) for i in "abcd"]
        photos = httpx.post(url + "/v1/predict", files=jpegs)
    assert info["max_request_pixels"] == 10_000_000
    assert two.status_code == 200, two.text
    message = assert_json_error(refused, 413)
    assert "12000000 pixels in all" in message and "limit of 10000000" in message
    assert photos.status_code == 200, photos.text


def test_decoding_stops_once_the_request_deadline_is_past() -> None:
    pre = SlowClassifier(0.0).preprocessing
    uploads = [("a.png", TINY_PNG), ("b.png", TINY_PNG)]
    views, batch = decode_views(pre, open_uploads(pre, uploads, 1000), ["a", "b"], 1e18, 1.0)
    assert batch.shape == (2, 1, 8, 8) and len(views) == 2
    opened = open_uploads(pre, uploads, 1000)
    with pytest.raises(ServeError) as refused:
        decode_views(pre, opened, ["a", "b"], time.monotonic() - 0.001, 0.5)
    assert refused.value.status == 504 and "0.5 s" in refused.value.message
    assert all(img.fp is None for img in opened)  # closed, not decoded


def test_the_decoding_budget_makes_a_request_wait_then_refuses_it_at_its_deadline() -> None:
    budget = DecodeBudget(10)

    async def scenario() -> list[str]:
        seen = []
        async with budget.hold(8, 1.0):
            try:
                async with budget.hold(5, 0.05):
                    seen.append("decoded beside the first")
            except DecodeBusy:
                seen.append("busy")

            async def later() -> None:
                async with budget.hold(5, 5.0):
                    seen.append("decoded after the first")

            waiting = asyncio.ensure_future(later())
            await asyncio.sleep(0)
            seen.append("first done")
        await waiting
        async with budget.hold(50, 0.0):  # larger than the budget, alone: it runs
            seen.append("alone")
        return seen

    assert asyncio.run(scenario()) == ["busy", "first done", "decoded after the first", "alone"]
    assert budget.used == 0


def test_connection_settings_refuse_nonsense() -> None:
    from imagewise.errors import UserError

    for bad, says in (
        ({"header_timeout_s": 0}, "header-timeout"),
        ({"keep_alive_s": float("nan")}, "keep-alive"),
        ({"max_header_bytes": 0}, "max-header-bytes"),
        ({"max_connections": 0}, "max-connections"),
        ({"max_request_pixels": 0}, "max-request-pixels"),
    ):
        with pytest.raises(UserError, match=says):
            ServeSettings(**bad)
    assert ServeSettings(max_pixels=7).request_pixel_limit == 14
