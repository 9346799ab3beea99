"""What stops a request before the app reads it: the token and the body size limit.

Both run as one ASGI middleware, outside FastAPI's routing, so they hold for every path,
including unknown ones, and a refused body is never parsed. The body limit is checked twice:
against ``Content-Length`` before reading, and by counting the bytes as they stream in (a
chunked request has no length to trust).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Collection
from typing import Any


class ServeError(Exception):
    """A request the server refuses, answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class BodyTooLarge(ServeError):
    def __init__(self, limit: int) -> None:
        super().__init__(
            413, f"the request body is larger than {limit} bytes", {"Connection": "close"}
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
    """ASGI middleware: the bearer token (when set) and the request body limit.

    Args:
        app: the ASGI app behind it.
        token: the secret clients send as ``Authorization: Bearer TOKEN``; None: no token.
        open_paths: paths that need no token (liveness, the page).
        max_body_bytes: the largest body; a larger one gets 413.
    """

    def __init__(
        self, app: Any, token: str | None, open_paths: Collection[str], max_body_bytes: int
    ) -> None:
        self.app = app
        self.token = token.encode() if token else None
        self.open_paths = frozenset(open_paths)
        self.max_body_bytes = max_body_bytes

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
        await self.app(scope, self._counting(receive), send)

    def _counting(self, receive: Any) -> Any:
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    raise BodyTooLarge(self.max_body_bytes)
            return message

        return counted
