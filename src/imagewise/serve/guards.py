"""What stops a request before the app reads it: the token, the body size limit and the time
a client may take to send the body.

All run as one ASGI middleware, outside FastAPI's routing, so they hold for every path,
including unknown ones, and a refused body is never parsed. The body limit is checked twice:
against ``Content-Length`` before reading, and by counting the bytes as they stream in (a
chunked request has no length to trust).

The body's time limit is Apache's (mod_reqtimeout ``body=20,MinRate=500``) rather than nginx's
(a limit per read): a per-read limit never stops a client that sends one byte every few
seconds, which holds a connection and a request slot for as long as it likes. The whole body
must arrive within ``body_timeout_s``, extended by one second for every ``BODY_MIN_RATE`` bytes
received, so a large upload on a slow link still gets through.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import Collection
from typing import Any


class ServeError(Exception):
    """A request the server refuses, answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


BODY_MIN_RATE = 500  # bytes per second that extend the body's time limit by one second


class BodyTooLarge(ServeError):
    def __init__(self, limit: int) -> None:
        super().__init__(
            413, f"the request body is larger than {limit} bytes", {"Connection": "close"}
        )


class BodyTimeout(ServeError):
    def __init__(self, seconds: float) -> None:
        super().__init__(
            408,
            f"the request body came too slowly (the limit is {seconds:g} s, plus 1 s per "
            f"{BODY_MIN_RATE} bytes received)",
            {"Connection": "close"},  # the rest of a slow body is not worth waiting for
        )


async def send_error(send: Any, error: ServeError) -> None:
    """Answer ``{"error": ...}`` straight from ASGI (the app never sees the request)."""
    body = json.dumps({"error": error.message}, separators=(",", ":")).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ] + [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def bearer_token(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            return token.strip() if scheme.lower() == b"bearer" else None
    return None


class GuardMiddleware:
    """ASGI middleware: the bearer token (when set), the request body limit and its time limit.

    Args:
        app: the ASGI app behind it.
        token: the secret clients send as ``Authorization: Bearer TOKEN``; None: no token.
        open_paths: paths that need no token (liveness, the page).
        max_body_bytes: the largest body; a larger one gets 413.
        body_timeout_s: seconds from the request's headers to the end of its body, plus one
            per ``BODY_MIN_RATE`` bytes received; a slower body gets 408 and the connection
            is closed.
    """

    def __init__(
        self,
        app: Any,
        token: str | None,
        open_paths: Collection[str],
        max_body_bytes: int,
        body_timeout_s: float = 10.0,
    ) -> None:
        self.app = app
        self.token = token.encode() if token else None
        self.open_paths = frozenset(open_paths)
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope["headers"]
        if self.token and scope["path"] not in self.open_paths:
            given = bearer_token(headers)
            if given is None or not hmac.compare_digest(given, self.token):
                message = "missing or wrong token; send the header 'Authorization: Bearer TOKEN'"
                await send_error(send, ServeError(401, message, {"WWW-Authenticate": "Bearer"}))
                return
        length = next((v for k, v in headers if k == b"content-length"), None)
        if length is not None:
            if not length.isdigit():
                await send_error(send, ServeError(400, "the Content-Length header is not a number"))
                return
            if int(length) > self.max_body_bytes:
                await send_error(send, BodyTooLarge(self.max_body_bytes))
                return
        await self.app(scope, self._guarded(receive), send)

    def _guarded(self, receive: Any) -> Any:
        """``receive`` that counts the body's bytes and holds it to its time limit."""
        seen = 0
        started = time.monotonic()
        complete = False  # after the body, receive only waits for the client to go away

        async def guarded() -> dict:
            nonlocal seen, complete
            if complete:
                return await receive()
            left = started + self.body_timeout_s + seen / BODY_MIN_RATE - time.monotonic()
            try:
                message = await asyncio.wait_for(receive(), max(left, 0.0))
            except TimeoutError:
                raise BodyTimeout(self.body_timeout_s) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    raise BodyTooLarge(self.max_body_bytes)
                complete = not message.get("more_body", False)
            return message

        return guarded
