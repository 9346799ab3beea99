"""What a connection may do before its request reaches the app: how long and how large the
request's headers may be, and how many connections the server holds open.

uvicorn alone bounds none of this. httptools (its default parser) takes headers of any size,
and joins a header that arrives in many pieces at a cost that grows faster than its length (one
150 MB header held the event loop for seconds); its keep-alive timer is cancelled by the first
byte of a request, so a client that sends its headers a byte at a time holds the connection for
ever; and a connection that sends nothing is never closed. Thousands of those use up the
process's file limit, and then every client, ``/readyz`` included, gets an empty reply.
h11 (uvicorn's other parser) has a size limit (``h11_max_incomplete_event_size``) but no
deadline either. The token is read from the headers, so it cannot help before they arrive.

So the protocol classes of ``imagewise.serve.server`` take ``GuardedConnection`` first, which
holds every connection to ``ConnectionLimits``, whichever parser runs:

- the header deadline (nginx's ``client_header_timeout``, Apache's ``mod_reqtimeout
  header=``): from the moment a connection opens, or the first byte of a later request, the
  headers must be complete within ``header_timeout_s``; otherwise 408 (nothing when nothing was
  sent) and the connection is closed. An idle keep-alive connection is closed by uvicorn's own
  timer (``timeout_keep_alive``), which runs between requests.
- the header size: bytes are counted before the parser sees them, and never more than
  ``max_header_bytes`` of a request's head are fed to it; beyond that the answer is 431 and the
  connection is closed. The body is not counted here (the app's ``GuardMiddleware`` limits it).
- the connection cap: past ``max_connections`` open connections, a new one closes the
  connection that has been idle longest (waiting for headers, or for the next request, with no
  answer pending), so a flood of idle or half-open connections cannot lock real clients out; when
  every connection has a request in progress, the new one is answered 503 and closed. uvicorn's
  ``limit_concurrency`` is not used: it counts idle connections too and answers 503 to every
  request once they reach it, which is the lock-out this avoids.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, ClassVar

log = logging.getLogger("imagewise")

FILE_HEADROOM = 64  # files the process keeps for itself (model, logs, sockets) below the limit


@dataclass(frozen=True)
class ConnectionLimits:
    """The limits ``GuardedConnection`` holds every connection to (see the module)."""

    header_timeout_s: float = 10.0
    max_header_bytes: int = 64 * 1024
    max_connections: int = 1000


def error_response(
    status: int,
    reason: str,
    message: str,
    default_headers: list[tuple[bytes, bytes]],
    extra: tuple[tuple[bytes, bytes], ...] = (),
) -> bytes:
    """A whole HTTP/1.1 answer ``{"error": message}`` that closes the connection, written
    straight to the socket (there is no request for the app to answer)."""
    body = json.dumps({"error": message}, separators=(",", ":")).encode()
    head = [f"HTTP/1.1 {status} {reason}\r\n".encode()]
    headers = [
        *default_headers,
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *extra,
        (b"connection", b"close"),
    ]
    head += [name + b": " + value + b"\r\n" for name, value in headers]
    return b"".join(head) + b"\r\n" + body


def connection_cap(requested: int) -> int:
    """``requested``, or less when the process may not open that many files (``ulimit -n``):
    the cap must bite before the file limit does, or accepting fails for every client."""
    try:
        import resource
    except ImportError:  # not on Unix: no such limit to read
        return requested
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or requested + FILE_HEADROOM <= soft:
        return requested
    fitted = max(1, soft - FILE_HEADROOM)
    log.warning(
        "max-connections lowered from %d to %d: this process may open only %d files "
        "(raise it with ulimit -n)",
        requested,
        fitted,
        soft,
    )
    return fitted


class GuardedConnection:
    """Holds a uvicorn HTTP protocol to ``limits``; put it first among the bases.

    The parser-specific subclass tells it where a request's head starts and ends: it calls
    ``_head_started`` when the parser waits for a new request's headers and ``_head_finished``
    when they are complete (``_sync_head`` for parsers with a readable state).
    """

    limits: ClassVar[ConnectionLimits] = ConnectionLimits()
    # The server's connections in the order they became idle, as (when, connection); an entry
    # whose connection has since been busy or closed is skipped when met (``limited`` gives
    # each server its own). Evicting by it costs O(1) a connection, even under a flood.
    idle_order: ClassVar[deque[tuple[float, GuardedConnection]]] = deque()
    # Given by uvicorn's protocol classes:
    connections: set[Any]
    cycle: Any
    loop: asyncio.AbstractEventLoop
    server_state: Any
    transport: asyncio.Transport

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._head_bytes: int | None = 0  # of the current request's head; None: past it
        self._heads = 0  # requests begun on this connection (tells a new head from the last)
        self._deadline: asyncio.TimerHandle | None = None
        self._became_idle()
        self._arm_deadline()
        if len(self.connections) > self.limits.max_connections:
            self._make_room()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)  # type: ignore[misc]

    def data_received(self, data: bytes) -> None:
        while data:
            if self._head_bytes is None:  # a body: GuardMiddleware's to limit
                super().data_received(data)  # type: ignore[misc]
                return
            self._arm_deadline()
            room = max(self.limits.max_header_bytes - self._head_bytes, 0)
            head, data = data[:room], data[room:]
            heads = self._heads
            self._head_bytes += len(head)
            if head:
                super().data_received(head)  # type: ignore[misc]
                self._sync_head()
            if self.transport.is_closing():
                return
            if data and self._heads == heads and self._head_bytes is not None:
                self._refuse(
                    431,
                    "Request Header Fields Too Large",
                    f"the request's headers are larger than {self.limits.max_header_bytes} bytes",
                )
                return

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        self._became_idle()

    # --- the parser's side ------------------------------------------------------------------

    def _head_started(self) -> None:
        self._head_bytes, self._heads = 0, self._heads + 1

    def _head_finished(self) -> None:
        self._head_bytes = None
        self._cancel_deadline()

    def _sync_head(self) -> None:
        """Read the parser's state after it was fed (parsers that report by callbacks: none)."""

    # --- the deadline and the cap -----------------------------------------------------------

    def _arm_deadline(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.limits.header_timeout_s, self._too_slow)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self.transport.is_closing() or self._head_bytes is None:
            return
        if self._answer_pending():  # the next request's head came early: judged after
            self._arm_deadline()
            return
        if self._head_bytes:
            seconds = self.limits.header_timeout_s
            self._refuse(408, "Request Timeout", f"the request headers took over {seconds:g} s")
        else:  # nothing sent: nobody to answer
            self.transport.close()

    def _answer_pending(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _idle(self) -> bool:
        """Waiting for a request's headers, with no answer owed."""
        return (
            self._head_bytes is not None
            and not self._answer_pending()
            and not self.transport.is_closing()
        )

    def _became_idle(self) -> None:
        self._idle_since = time.monotonic()
        order = self.idle_order
        order.append((self._idle_since, self))
        if len(order) > 2 * self.limits.max_connections + 64:  # stale ones pile up: drop them
            live = [(when, c) for when, c in order if c._idle_since == when and c._idle()]
            order.clear()
            order.extend(live)

    def _make_room(self) -> None:
        """Close the connection idle longest; with none idle, refuse this one (503)."""
        order = self.idle_order
        while order:
            when, oldest = order.popleft()
            if oldest is not self and oldest._idle_since == when and oldest._idle():
                oldest.transport.close()
                return
        self._refuse(
            503,
            "Service Unavailable",
            f"the server has {self.limits.max_connections} connections open, each with a "
            "request in progress; try again",
            ((b"retry-after", b"1"),),
        )

    def _refuse(
        self, status: int, reason: str, message: str, extra: tuple[tuple[bytes, bytes], ...] = ()
    ) -> None:
        self._cancel_deadline()
        headers = self.server_state.default_headers
        self.transport.write(error_response(status, reason, message, headers, extra))
        self.transport.close()


def limited(protocol: type, limits: ConnectionLimits) -> type:
    """``protocol`` (a ``GuardedConnection``) holding its connections to ``limits``."""
    if not issubclass(protocol, GuardedConnection):
        raise TypeError(f"{protocol.__name__} does not guard its connections")
    return type(protocol.__name__, (protocol,), {"limits": limits, "idle_order": deque()})
