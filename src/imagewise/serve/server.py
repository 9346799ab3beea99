"""The listening socket and uvicorn's setup: a busy port or a bad host is a UserError, and a
request the HTTP parser rejects gets the same JSON error shape as every other refusal.

``serve`` binds the socket itself, before the model is loaded, so a wrong ``--host`` or
``--port`` fails in a second with one line instead of after the load with uvicorn's log and
exit code; it then hands the socket to uvicorn (``Server.run(sockets=[sock])``).
"""

from __future__ import annotations

import asyncio
import errno
import json
import socket
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from imagewise.errors import UserError
from imagewise.serve.connections import (
    ConnectionLimits,
    GuardedConnection,
    connection_cap,
    error_response,
    limited,
)
from imagewise.serve.settings import ServeSettings

MALFORMED = "the request is not valid HTTP (malformed request line or headers)"
HOST_HINT = "use --host 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)"


def listen_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` and listening (port 0: one the system picks).

    It listens at once, as gunicorn's master does: the port is ours from here on, and clients
    that connect while the model loads wait in the backlog instead of being refused.

    Raises:
        UserError: the port is in use or not allowed, or the host is not an address here.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # Lets a restarted server take its port back while old connections sit in TIME_WAIT;
        # on Linux it never lets two servers listen on one port.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise UserError(_bind_error(host, port, exc)) from exc
    return sock


def _bind_error(host: str, port: int, exc: OSError) -> str:
    if isinstance(exc, socket.gaierror):
        return f"cannot listen on '{host}': not an IP address or a known host name; {HOST_HINT}"
    if exc.errno == errno.EADDRINUSE:
        return (
            f"port {port} on {host} is already in use by another program; stop it or choose "
            "another port with --port (0 picks a free one)"
        )
    if exc.errno == errno.EACCES:
        return f"no permission to listen on port {port} (below 1024 needs root); use --port 8000"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {host}: it is not an address of this machine; {HOST_HINT}"
    return f"cannot listen on {host} port {port}: {exc.strerror or exc}; {HOST_HINT}"


def url_of(sock: socket.socket) -> str:
    """The address clients use, with the port the system gave (``[...]`` around IPv6)."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _send_json_400(protocol: Any) -> None:
    """httptools' 400, as uvicorn writes it (its default headers, then close), but in JSON."""
    headers = protocol.server_state.default_headers
    protocol.transport.write(error_response(400, "Bad Request", MALFORMED, headers))
    protocol.transport.close()


def http_protocol() -> type[asyncio.Protocol]:
    """uvicorn's faster HTTP/1.1 protocol (httptools, else h11), answering bad requests in JSON
    and holding each connection to ``ConnectionLimits`` (``imagewise.serve.connections``)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # httptools is optional in uvicorn (no wheel for some platforms)
        return JsonH11Protocol

    class JsonHttpToolsProtocol(GuardedConnection, HttpToolsProtocol):
        def send_400_response(self, msg: str) -> None:
            _send_json_400(self)

        # httptools reports by callbacks where a request's head ends and the next one begins.
        def on_headers_complete(self) -> None:
            self._head_finished()
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._head_started()

    return JsonHttpToolsProtocol


class JsonH11Protocol(GuardedConnection, H11Protocol):
    """uvicorn's h11 protocol, answering requests it cannot parse with ``{"error": ...}`` and
    holding each connection to ``ConnectionLimits``."""

    def send_400_response(self, msg: str) -> None:
        import h11

        body = json.dumps({"error": MALFORMED}, separators=(",", ":")).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        for event in (h11.Response(status_code=400, headers=headers), h11.Data(data=body)):
            self.transport.write(self.conn.send(event))
        self.transport.write(self.conn.send(h11.EndOfMessage()))
        self.transport.close()

    def handle_events(self) -> None:
        super().handle_events()
        self._sync_head()

    def _sync_head(self) -> None:
        import h11

        # h11 waits for a request's head exactly while the client's side is IDLE.
        reading = self.conn.their_state is h11.IDLE
        if reading and self._head_bytes is None:
            self._head_started()
        elif not reading and self._head_bytes is not None:
            self._head_finished()


def uvicorn_config(app: Any, settings: ServeSettings, http: type | None = None) -> uvicorn.Config:
    """uvicorn's settings for ``app``: logging, graceful shutdown, idle keep-alive connections
    closed after ``keep_alive_s``, and the JSON-400 protocol holding every connection to the
    header deadline, the header size limit and the connection cap (``http``: another
    ``GuardedConnection`` protocol, as a test's ``JsonH11Protocol``)."""
    limits = ConnectionLimits(
        header_timeout_s=settings.header_timeout_s,
        max_header_bytes=settings.max_header_bytes,
        max_connections=connection_cap(settings.max_connections),
    )
    return uvicorn.Config(
        app,
        http=limited(http or http_protocol(), limits),
        access_log=settings.access_log,
        log_level="info" if settings.access_log else "warning",
        timeout_graceful_shutdown=int(settings.timeout_s) + 5,
        timeout_keep_alive=settings.keep_alive_s,  # type: ignore[arg-type]  # a float works
        # h11's own limit on a head it has not parsed yet; ours (counted before it) bites first
        h11_max_incomplete_event_size=settings.max_header_bytes,
    )
