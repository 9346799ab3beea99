"""Serving: an HTTP API and a web page over a trained classifier (FastAPI + uvicorn).

``create_app(classifier, settings)`` builds the app; ``serve(path, **settings)`` loads a run
folder or an ONNX file with ``imagewise.load`` and runs it with uvicorn until stopped.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from imagewise.serve.app import create_app
from imagewise.serve.settings import ServeSettings

log = logging.getLogger("imagewise")


def serve(path: str | Path, **settings: Any) -> None:
    """Load a classifier and answer HTTP requests until interrupted (Ctrl-C or SIGTERM).

    On shutdown uvicorn stops accepting connections and lets open requests finish; the
    inference worker then drains its queue.

    Args:
        path: a run folder written by ``imagewise train`` or an ``.onnx`` file from
            ``imagewise export``.
        **settings: fields of :class:`ServeSettings` (host, port, token, max_batch, ...).

    Example:
        >>> imagewise.serve("runs/fm", port=8080, token="s3cret")  # doctest: +SKIP
    """
    import torch
    import uvicorn
    from PIL import Image

    import imagewise

    options = ServeSettings(**settings)
    if options.threads:
        torch.set_num_threads(options.threads)
    # PIL's own guard against decompression bombs, in line with the server's pixel limit.
    Image.MAX_IMAGE_PIXELS = options.max_pixels
    classifier = imagewise.load(path, device=options.device)
    app = create_app(classifier, options)
    if warning := options.exposure_warning():
        log.warning(warning)
    host = f"[{options.host}]" if ":" in options.host else options.host
    log.info("serving %s at http://%s:%d/ (API docs at /docs)", path, host, options.port)
    config = uvicorn.Config(
        app,
        host=options.host,
        port=options.port,
        access_log=options.access_log,
        log_level="info" if options.access_log else "warning",
        timeout_graceful_shutdown=int(options.timeout_s) + 5,
    )
    uvicorn.Server(config).run()


__all__ = ["ServeSettings", "create_app", "serve"]

from imagewise._stage import make_callable  # noqa: E402

make_callable(__name__, serve)
