"""The app factory: one classifier, one inference worker, JSON errors, metrics and guards.

The app runs any ``ImageModel`` (``imagewise.edge.model``): a run folder's PyTorch classifier
or an ONNX file's ``OnnxModel``, which serves without PyTorch ever being imported.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException

from imagewise.edge.conformal import PredictionSets
from imagewise.edge.drift import DriftMonitor
from imagewise.edge.spec import ModelSpec
from imagewise.edge.unknown import OodScorer, edge_scorer
from imagewise.serve.batching import MicroBatcher
from imagewise.serve.decoding import DECODING_REQUESTS, DecodeBudget
from imagewise.serve.drift import DriftCollector, drift_router
from imagewise.serve.guards import GuardMiddleware, ServeError
from imagewise.serve.metrics import MetricsMiddleware, ServeMetrics
from imagewise.serve.routes import ServeState, router
from imagewise.serve.schemas import InfoResponse
from imagewise.serve.settings import ServeSettings
from imagewise.version import __version__

log = logging.getLogger("imagewise")

ENDPOINTS = (
    "/", "/v1/predict", "/v1/labels", "/v1/info", "/v1/drift", "/healthz", "/readyz", "/metrics",
    "/docs", "/openapi.json",
)  # fmt: skip
DOCS_ASSETS = "/docs/assets"  # Swagger UI's script, style sheet and icon
OPEN_PATHS = ("/", "/healthz")  # no token needed: liveness and the page (it asks for the token)


def backend_of(classifier: Any) -> str:
    """``pytorch``, ``torchscript``, or the exported file's runtime: ``onnx``, ``openvino``,
    ``litert``, ``executorch`` (a model without a PyTorch module; ``onnx`` when unnamed)."""
    model = getattr(classifier, "model", None)
    if model is None:
        from imagewise.edge.runtimes import runtime_of

        path = getattr(classifier, "path", None)
        runtime = None if path is None else runtime_of(path)
        return "onnx" if runtime is None else runtime.kind.lower()
    import torch  # a PyTorch module is loaded, so torch is imported already

    if isinstance(model, torch.jit.ScriptModule):
        return "torchscript"  # no hooks on a compiled graph, so no Grad-CAM
    return "pytorch" if isinstance(model, torch.nn.Module) else "onnx"


def torch_threads() -> Any:
    """The inference worker's ``ThreadGovernor`` (PyTorch models only; imported here so that an
    ONNX server never imports torch)."""
    from imagewise.runtime.threads import ThreadGovernor

    return ThreadGovernor()


def describe(
    classifier: Any,
    settings: ServeSettings,
    min_confidence: float | None = None,
    ood: OodScorer | None = None,
    sets: PredictionSets | None = None,
    drift: DriftMonitor | None = None,
) -> InfoResponse:
    """What the page and clients need to know about the model, its answers and the limits."""
    model = getattr(classifier, "model", None)
    backend = backend_of(classifier)
    pre = classifier.preprocessing
    capabilities = getattr(classifier, "capabilities", None)
    spec: ModelSpec = classifier.spec
    return InfoResponse(
        model=str(getattr(classifier, "name", None) or type(model or classifier).__name__),
        backend=backend,
        classes=list(classifier.classes),
        task=spec.task,
        thresholds=spec.label_thresholds().tolist() if spec.multilabel else None,
        img_size=pre.img_size,
        channels=pre.channels,
        temperature=float(classifier.temperature),
        gradcam=backend == "pytorch" and (capabilities is None or capabilities.gradcam),
        top_k=min(settings.top_k, len(classifier.classes)),
        max_images=settings.max_images,
        max_body_bytes=settings.max_body_bytes,
        max_pixels=settings.max_pixels,
        max_request_pixels=settings.request_pixel_limit,
        max_batch=settings.batch_limit,
        min_confidence=min_confidence,
        ood_score=None if ood is None else str(getattr(ood, "name", "custom")),
        coverage=None if sets is None else sets.coverage,
        drift_window=None if drift is None else drift.window,
        coverage_per_class=None if sets is None else sets.per_class,
        conformal_score=None if sets is None else sets.fit.score,
    )


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _on_serve_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServeError)
    return _error(exc.status, exc.message, exc.headers)


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    message = str(exc.detail)
    if exc.status_code == 404:
        message = f"no such endpoint: {request.url.path} (see /docs)"
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}"
    return _error(exc.status_code, message, exc.headers)


async def _on_invalid(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0]
    where = " ".join(str(part) for part in first.get("loc", ()))
    return _error(422, f"{where}: {first.get('msg', 'invalid')}".strip(": "))


async def _on_crash(request: Request, exc: Exception) -> JSONResponse:
    log.error("internal error on %s: %r", request.url.path, exc)
    return _error(500, "internal server error")


def create_app(
    classifier: Any,
    settings: ServeSettings | None = None,
    unusable: str | None = None,
    min_confidence: float | None = None,
    ood: str | OodScorer | None = None,
    drift: DriftMonitor | None = None,
    sets: PredictionSets | None = None,
) -> FastAPI:
    """The HTTP API and web page over a loaded classifier.

    Args:
        classifier: an ``ImageModel``: what ``imagewise.load`` returns (a run folder's
            ``Classifier``) or ``imagewise.edge.load_model`` (an ONNX file, no PyTorch); the app
            calls its ``scores`` on uint8 batches and its ``answers``.
        settings: address, token, batching and limits (defaults: ``ServeSettings()``).
        unusable: why the model must not answer (``imagewise.predict.finite.unusable_reason``);
            the server then stays up, so the reason can be read, but ``/readyz`` and
            ``/v1/predict`` answer 503 with it.
        min_confidence: below this top probability an answer is ``unknown`` (a number; ``auto``
            is resolved by ``serve``: ``imagewise.predict.unknown.resolve_min_confidence``).
        ood: each answer's out-of-distribution score: ``energy``, or a scorer
            (``imagewise.predict.unknown.resolve_ood``); computed with each model call.
        drift: the drift and out-of-distribution monitor every answered batch feeds
            (``imagewise.edge.drift.DriftMonitor``; ``GET /v1/drift`` and the
            ``imagewise_drift_*`` gauges read it), or None.
        sets: each answer's conformal prediction set (``imagewise.edge.conformal.
            PredictionSets``; ``serve`` resolves ``--coverage`` with
            ``imagewise.predict.conformal.resolve_sets``).

    Example:
        >>> clf = imagewise.load("runs/fm")  # doctest: +SKIP
        >>> app = create_app(clf, ServeSettings(max_batch=16))  # doctest: +SKIP
        >>> uvicorn.run(app)  # doctest: +SKIP
    """
    settings = settings or ServeSettings()
    metrics = ServeMetrics()
    model_lock = threading.Lock()
    scorer = edge_scorer(ood)
    info = describe(classifier, settings, min_confidence, scorer, sets, drift)
    batcher = _batcher(classifier, settings, metrics, model_lock, scorer, drift, info)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        # uvicorn has let the open requests finish; the worker drains whatever is left.
        await asyncio.to_thread(batcher.stop, settings.timeout_s)

    # FastAPI's own /docs loads Swagger UI from a CDN and is blank offline; this one serves
    # the same page with the assets of the fastapi-offline package, from this server.
    app = FastAPIOffline(
        title="imagewise",
        version=__version__,
        description="Image classification: POST images to /v1/predict; the page is at /.",
        lifespan=lifespan,
        static_url=DOCS_ASSETS,
        swagger_ui_parameters={"validatorUrl": None},  # no badge fetched from swagger.io
    )
    page = files("imagewise.serve").joinpath("page.html").read_text(encoding="utf-8")
    decoding = DecodeBudget(DECODING_REQUESTS * settings.request_pixel_limit)
    app.state.serve = ServeState(
        classifier, settings, batcher, metrics, model_lock, info, page, decoding, unusable, sets
    )
    app.state.drift = drift
    if drift is not None:
        metrics.registry.register(DriftCollector(drift))
    _wire(app, settings, metrics)
    return app


def _batcher(
    classifier: Any,
    settings: ServeSettings,
    metrics: ServeMetrics,
    model_lock: threading.Lock,
    scorer: OodScorer | None,
    drift: DriftMonitor | None,
    info: InfoResponse,
) -> MicroBatcher:
    """The micro-batcher over the model: each batch's logits, probabilities and OOD scores,
    the drift monitor fed with every batch answered."""

    def infer(images: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, float | None]]:
        with model_lock:  # a kNN scorer runs the network too
            logits, probs = classifier.scores(images)
            scores = [None] * len(images) if scorer is None else scorer(images, logits).tolist()
        if drift is not None:
            drift.observe(logits, probs)
        return list(zip(logits, probs, scores, strict=True))

    return MicroBatcher(
        infer,
        max_batch=settings.batch_limit,
        max_wait_ms=settings.max_wait_ms if settings.batching else 0.0,
        queue_size=settings.queue_size,
        on_batch=metrics.observe_batch,
        on_depth=metrics.queue_depth.set,
        governor=None if info.backend == "onnx" else torch_threads,
    )


def _wire(app: FastAPI, settings: ServeSettings, metrics: ServeMetrics) -> None:
    """The routes, the error handlers and the middleware (guards, metrics) of the app."""
    app.include_router(router)
    app.include_router(drift_router)
    app.add_exception_handler(ServeError, _on_serve_error)
    app.add_exception_handler(HTTPException, _on_http_error)
    app.add_exception_handler(RequestValidationError, _on_invalid)
    app.add_exception_handler(Exception, _on_crash)
    # The last added runs first: metrics see every answer, including the guards' refusals.
    app.add_middleware(
        GuardMiddleware,
        token=settings.token,
        open_paths=OPEN_PATHS,
        max_body_bytes=settings.max_body_bytes,
        body_timeout_s=settings.body_timeout_s,
    )
    app.add_middleware(MetricsMiddleware, metrics=metrics, endpoints=ENDPOINTS)
