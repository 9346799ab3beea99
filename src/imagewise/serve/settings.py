"""What a server may do: address, token, micro-batching and the limits on what clients send."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from imagewise.errors import UserError


@dataclass
class ServeSettings:
    """Settings of ``imagewise serve``; every limit has a default that suits a small server.

    Args:
        host: the address to bind; loopback by default, so nothing outside the machine can call.
        port: the TCP port (0: one the system picks; the log says which).
        token: when set, every endpoint but ``/healthz`` and the page needs
            ``Authorization: Bearer TOKEN``.
        batching: group concurrent requests into one model call (off: one image per call).
        max_batch: the most images in one model call.
        max_wait_ms: how long the first image of a batch waits for others to join it (0: only
            the images that arrived while the model was busy join).
        queue_size: the most images waiting for the model; beyond it requests get 503.
        timeout_s: how long a request may take once its body has arrived: decoding its
            images and waiting for the model; beyond it 504.
        max_body_bytes: the largest request body; larger ones get 413 before they are parsed.
        body_timeout_s: how long a client may take to send a request body, plus one second
            per 500 bytes received (so slow links still upload); slower ones get 408 and the
            connection is closed, so a client trickling bytes cannot hold it for ever.
        max_images: the most images in one request.
        max_pixels: the largest image (width x height), checked from the header before decoding.
        max_request_pixels: the most pixels one request's images may decode to, all together
            (a JPEG counts at the reduced size it decodes to); more gets 413 before any image
            is decoded. None: twice ``max_pixels``. The server decodes at most twice this many
            pixels at once; a request that finds no room before its deadline gets 503.
        header_timeout_s: how long a client may take to send a request's headers, from the
            moment it connects or sends the first byte of a later request; slower ones get 408
            and the connection is closed (one that sent nothing is just closed).
        max_header_bytes: the largest request head (request line and headers); larger ones get
            431 and the connection is closed.
        max_connections: the most open connections; past it a new connection closes the one
            idle longest, or gets 503 when every one has a request in progress. Lowered (with a
            warning) when the process may not open that many files.
        keep_alive_s: how long an idle keep-alive connection stays open between requests.
        top_k: classes per image when the request does not say.
        device: ``cpu``, ``cuda`` or ``auto`` (for run folders).
        threads: compute threads for the model: torch's for a run folder (None: torch's
            default), ONNX Runtime's for an ONNX file (None: the CPUs this process may use).
        access_log: log one line per request.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    batching: bool = True
    max_batch: int = 32
    max_wait_ms: float = 0.0
    queue_size: int = 256
    timeout_s: float = 30.0
    max_body_bytes: int = 20 * 1024 * 1024
    body_timeout_s: float = 10.0
    max_images: int = 32
    max_pixels: int = 50_000_000
    max_request_pixels: int | None = None
    header_timeout_s: float = 10.0
    max_header_bytes: int = 64 * 1024
    max_connections: int = 1000
    keep_alive_s: float = 5.0
    top_k: int = 5
    device: str = "cpu"
    threads: int | None = None
    access_log: bool = True

    def __post_init__(self) -> None:
        positive = {
            "max_batch": self.max_batch,
            "queue_size": self.queue_size,
            "max_body_bytes": self.max_body_bytes,
            "max_images": self.max_images,
            "max_pixels": self.max_pixels,
            "max_request_pixels": self.request_pixel_limit,
            "max_header_bytes": self.max_header_bytes,
            "max_connections": self.max_connections,
            "top_k": self.top_k,
        }
        for name, value in positive.items():
            if value < 1:
                raise UserError(f"{name.replace('_', '-')} must be at least 1, not {value}")
        if self.max_wait_ms < 0 or self.timeout_s <= 0 or self.body_timeout_s <= 0:
            raise UserError(
                "max-wait-ms must be 0 or more, and timeout and body-timeout more than 0"
            )
        if not (self.header_timeout_s > 0 and self.keep_alive_s > 0):
            raise UserError("header-timeout and keep-alive must be more than 0 seconds")
        if self.max_images > self.queue_size:
            raise UserError(
                f"max-images ({self.max_images}) must not exceed queue-size ({self.queue_size})"
            )
        if not 0 <= self.port < 65536:
            raise UserError(f"port must be between 0 and 65535, not {self.port}")
        if self.threads is not None and self.threads < 1:
            raise UserError(f"threads must be at least 1, not {self.threads}")
        if self.token is not None and not self.token.strip():
            raise UserError("the token is empty; give a secret string or leave it out")

    @property
    def request_pixel_limit(self) -> int:
        """The most decoded pixels in one request: ``max_request_pixels``, or twice
        ``max_pixels``."""
        if self.max_request_pixels is None:
            return 2 * self.max_pixels
        return self.max_request_pixels

    @property
    def batch_limit(self) -> int:
        """Images per model call: ``max_batch``, or 1 without batching."""
        return self.max_batch if self.batching else 1

    @property
    def loopback(self) -> bool:
        """True when only this machine can reach ``host``."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def exposure_warning(self) -> str | None:
        """A warning when other machines may reach the server and no token guards it."""
        if self.loopback or self.token:
            return None
        return (
            f"warning: serving on {self.host} without a token; anyone who can reach this "
            "address can use the model (set --token)"
        )
