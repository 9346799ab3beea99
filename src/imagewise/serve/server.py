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


def _json_400() -> bytes:
    return json.dumps({"error": MALFORMED}, separators=(",", ":")).encode()


def _send_json_400(protocol: Any) -> None:
    """httptools' 400, as uvicorn writes it (its default headers, then close), but in JSON."""
    body = _json_400()
    head = [b"HTTP/1.1 400 Bad Request\r\n"]
    head += [
        name + b": " + value + b"\r\n" for name, value in protocol.server_state.default_headers
    ]
    head += [
        b"content-type: application/json\r\n",
        b"content-length: " + str(len(body)).encode() + b"\r\n",
        b"connection: close\r\n\r\n",
    ]
    protocol.transport.write(b"".join(head) + body)
    protocol.transport.close()


def http_protocol() -> type[asyncio.Protocol]:
    """uvicorn's faster HTTP/1.1 protocol (httptools, else h11), answering bad requests in JSON."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # httptools is optional in uvicorn (no wheel for some platforms)
        return JsonH11Protocol

    class JsonHttpToolsProtocol(HttpToolsProtocol):
        def send_400_response(self, msg: str) -> None:
            _send_json_400(self)

    return JsonHttpToolsProtocol


class JsonH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, answering requests it cannot parse with ``{"error": ...}``."""

    def send_400_response(self, msg: str) -> None:
        import h11

        body = _json_400()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        for event in (h11.Response(status_code=400, headers=headers), h11.Data(data=body)):
            self.transport.write(self.conn.send(event))
        self.transport.write(self.conn.send(h11.EndOfMessage()))
        self.transport.close()


def uvicorn_config(app: Any, settings: ServeSettings, http: type | None = None) -> uvicorn.Config:
    """uvicorn's settings for ``app``: logging, graceful shutdown and the JSON-400 protocol."""
    return uvicorn.Config(
        app,
        http=http or http_protocol(),
        access_log=settings.access_log,
        log_level="info" if settings.access_log else "warning",
        timeout_graceful_shutdown=int(settings.timeout_s) + 5,
    )
