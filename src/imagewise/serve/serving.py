"""Serving: an HTTP API and a web page over a trained classifier (FastAPI + uvicorn).

``create_app(classifier, settings)`` builds the app; ``serve(path, **settings)`` loads a run
folder (``imagewise.load``) or an exported file (``imagewise.edge.load_model``: ONNX, OpenVINO,
LiteRT or ExecuTorch, without PyTorch) and runs it with uvicorn until stopped.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn

from imagewise.edge.drift import (
    CHECK_EVERY,
    DEFAULT_ALPHA,
    DEFAULT_WINDOW,
    DriftMonitor,
    check_monitor,
)
from imagewise.edge.runtimes import is_edge_file
from imagewise.serve.app import create_app
from imagewise.serve.server import listen_socket, url_of, uvicorn_config
from imagewise.serve.settings import ServeSettings

log = logging.getLogger("imagewise")


def serve(
    path: str | Path,
    min_confidence: float | str | None = None,
    target_precision: float | None = None,
    ood: str | None = "none",
    drift: str = "auto",
    drift_window: int = DEFAULT_WINDOW,
    coverage: float | None = None,
    coverage_per_class: bool = False,
    non_empty_sets: bool = False,
    **settings: Any,
) -> None:
    """Load a classifier and answer HTTP requests until interrupted (Ctrl-C or SIGTERM).

    The address is taken first, before the model loads, so a busy port or a wrong host fails
    at once. A model whose outputs are not finite (NaN weights) is served anyway, so its
    state can be read, but ``/readyz`` and ``/v1/predict`` answer 503 with the reason. On
    shutdown uvicorn stops accepting connections and lets open requests finish; the inference
    worker then drains its queue.

    Args:
        path: a run folder written by ``imagewise train`` or a ``.onnx``, ``.xml``,
            ``.tflite`` or ``.pte`` file from ``imagewise export``.
        min_confidence: below this top probability an answer is ``unknown``; ``auto``: the
            run's fitted threshold (``imagewise predict``'s), or the one an ONNX file carries.
        target_precision: for ``min_confidence="auto"`` (default 0.95).
        ood: each answer's out-of-distribution score: ``energy``, ``knn`` (run folders),
            ``auto`` (knn when the run has a reference, else energy) or ``none``.
        drift: drift and out-of-distribution alarms over the latest ``drift_window`` answers
            against the validation split (``GET /v1/drift``, ``imagewise_drift_*`` gauges, a
            log line when an alarm starts and ends): ``auto`` (default) when a reference can
            be had: a run folder's ``drift_reference.json``, fitted at the first start on its
            validation images (a pass over at most 10,000 of them) and kept, or the one an
            exported file carries; ``on`` (the same, or fail); ``off``.
        drift_window: the images each drift check looks at (default 500).
        coverage: each answer's ``prediction_set``, the classes that hold the true class with
            this probability (``imagewise.predict.conformal``: the run's fit, or the file's).
        coverage_per_class: reach ``coverage`` for each class (class-conditional thresholds).
        non_empty_sets: keep the top class in every set.
        **settings: fields of :class:`ServeSettings` (host, port, token, max_batch, ...);
            port 0 takes a free port, logged with the address. What a client may hold:
            ``header_timeout_s`` (10: seconds to send a request's headers, then 408),
            ``max_header_bytes`` (64 KiB, then 431), ``max_connections`` (1000: past it the
            connection idle longest is closed), ``keep_alive_s`` (5: an idle keep-alive
            connection is closed), ``body_timeout_s`` and ``max_body_bytes`` (the body), and
            ``timeout_s`` (30: from the end of the body through decoding to the answer, then
            504), ``max_pixels`` and ``max_request_pixels`` (one image, and all of a
            request's images, checked before decoding: 413).

    Both are resolved once, when the model has loaded, and apply to every request.

    Raises:
        UserError: a bad setting, an address that cannot be listened on, a model that
            cannot be loaded, a threshold that cannot be had.

    Example:
        >>> imagewise.serve("runs/fm", port=8080, token="s3cret")  # doctest: +SKIP
    """
    options = ServeSettings(**settings)
    check_monitor(drift_window, DEFAULT_ALPHA, CHECK_EVERY)
    sock = listen_socket(options.host, options.port)
    edge = is_edge_file(path)
    with _server_process_settings(options, torch_threads=not edge):
        try:
            answers = (min_confidence, target_precision, ood, drift, drift_window)
            app = _load_app(
                path, options, edge, answers, (coverage, coverage_per_class, non_empty_sets)
            )
            if warning := options.exposure_warning():
                log.warning(warning)
            # At warning level so that -q shows it too: with port 0 it is where to find it.
            log.warning("serving %s at %s/ (API docs at /docs)", path, url_of(sock))
            uvicorn.Server(uvicorn_config(app, options)).run(sockets=[sock])
        finally:
            sock.close()


@contextlib.contextmanager
def _server_process_settings(options: ServeSettings, torch_threads: bool) -> Iterator[None]:
    """For the server's lifetime: PIL's own guard against decompression bombs at the server's
    pixel limit, and (PyTorch models) torch's thread count as asked; as they were once it
    stops. An exported file's threads are its runtime's own (``_load_app``)."""
    from PIL import Image

    pixels, threads = Image.MAX_IMAGE_PIXELS, None
    if torch_threads:
        import torch

        threads = torch.get_num_threads()
        if options.threads:
            torch.set_num_threads(options.threads)
    Image.MAX_IMAGE_PIXELS = options.max_pixels
    try:
        yield
    finally:
        if threads is not None:
            torch.set_num_threads(threads)
        Image.MAX_IMAGE_PIXELS = pixels


def _load_app(
    path: str | Path,
    options: ServeSettings,
    edge: bool,
    answers: tuple[float | str | None, float | None, str | None, str, int],
    coverage: tuple[float | None, bool, bool] = (None, False, False),
) -> Any:
    """The model loaded and checked (the reason logged once if unusable), with its threshold,
    out-of-distribution scorer, prediction sets and drift checks resolved, in its app."""
    from imagewise.predict.conformal import resolve_sets
    from imagewise.predict.drift import resolve_drift
    from imagewise.predict.unknown import resolve_min_confidence, resolve_ood

    if edge:  # the file's own runtime only: no PyTorch in the server's process
        from imagewise.edge.finite import unusable_reason as edge_reason
        from imagewise.edge.runtimes import load_model

        model = load_model(path, device=options.device, threads=options.threads, check=False)
        unusable = edge_reason(model, path)
    else:
        from imagewise.predict.finite import unusable_reason
        from imagewise.predict.predictor import load

        model = load(path, device=options.device, check=False)
        unusable = unusable_reason(model, path)
    min_confidence, target_precision, ood, drift, drift_window = answers
    threshold = resolve_min_confidence(model, path, min_confidence, target_precision)
    scorer = resolve_ood(model, path, ood)
    sets = resolve_sets(model, path, *coverage)
    reference = None if unusable else resolve_drift(model, path, drift)
    monitor = None if reference is None else DriftMonitor(reference, drift_window)
    if unusable:
        log.error("not ready: %s", unusable)
    return create_app(model, options, unusable, threshold, scorer, monitor, sets)


__all__ = ["ServeSettings", "create_app", "serve"]
