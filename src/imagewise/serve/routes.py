"""The endpoints: predict, labels, info, health, readiness, metrics and the web page.

Each request's images are decoded in the thread pool, never on the event loop, within its
pixel budget and deadline (``imagewise.serve.decoding``); the model call
itself (``ImageModel.scores`` on uint8 arrays) happens on the micro-batching worker. Nothing
here imports PyTorch unless Grad-CAM is asked of a run folder's model.
"""

from __future__ import annotations

import base64
import io
import logging
import threading
import time
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response
from PIL import Image
from starlette.datastructures import UploadFile

from imagewise.serve.batching import MicroBatcher, QueueFull, WorkerStopped
from imagewise.serve.decoding import DecodeBudget, decode_request
from imagewise.serve.guards import ServeError
from imagewise.serve.images import safe_name
from imagewise.serve.metrics import ServeMetrics
from imagewise.serve.schemas import (
    ClassScore,
    ErrorResponse,
    ImagePrediction,
    InfoResponse,
    LabelsResponse,
    PredictResponse,
    StatusResponse,
)
from imagewise.serve.settings import ServeSettings

# A page that runs only its own inline code and talks only to this server.
PAGE_POLICY = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src blob: data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)


log = logging.getLogger("imagewise")

NO_GRADCAM = {"onnx": "an ONNX model", "torchscript": "a TorchScript model"}


@dataclass
class ServeState:
    """What the endpoints share: the model, the worker and the settings (in ``app.state``)."""

    classifier: Any
    settings: ServeSettings
    batcher: MicroBatcher
    metrics: ServeMetrics
    model_lock: threading.Lock  # Grad-CAM hooks the model: no batch may run meanwhile
    info: InfoResponse
    page: str
    decoding: DecodeBudget  # the pixels all requests decode at once
    unusable: str | None = None  # why the model must not answer (its outputs are not finite)
    sets: Any = None  # --coverage: an imagewise.edge.conformal.PredictionSets


def _state(request: Request) -> ServeState:
    return request.app.state.serve


State = Annotated[ServeState, Depends(_state)]

router = APIRouter()
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 413, 415, 422, 500, 503, 504)
}
UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "minItems": 1,
                        }
                    },
                    "required": ["file"],
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


async def read_uploads(request: Request, settings: ServeSettings) -> list[tuple[str, bytes]]:
    """(name, bytes) of each image: the form field ``file`` (repeatable) or the raw body."""
    ctype = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    uploads: list[tuple[str, bytes]] = []
    if ctype == "multipart/form-data":
        async with request.form(max_files=settings.max_images + 1, max_fields=16) as form:
            parts = form.getlist("file")
            if len(parts) > settings.max_images:
                raise ServeError(413, f"at most {settings.max_images} images per request")
            for i, part in enumerate(parts, 1):
                if not isinstance(part, UploadFile):
                    raise ServeError(400, "the form field 'file' must hold a file, not text")
                uploads.append((safe_name(part.filename, f"<file {i}>"), await part.read()))
    elif ctype.startswith("image/") or ctype == "application/octet-stream":
        uploads.append(("<body>", await request.body()))
    else:
        raise ServeError(
            415,
            "send images as multipart/form-data in the field 'file', or one image as the "
            "body with an image/* content type",
        )
    if not uploads:
        raise ServeError(400, "no image in the request; send the form field 'file'")
    return uploads


def gradcam_pngs(s: ServeState, views: list[Image.Image], targets: list[int]) -> list[str]:
    """Base64 PNGs of the Grad-CAM heat map for each image's target class, over the image
    (PyTorch models only, so PyTorch is imported here and not before)."""
    from imagewise.data.decode import pil_to_tensor
    from imagewise.explain.cam import cam_maps, overlay

    model = s.classifier.model
    batch = s.classifier.preprocess(views)
    with s.model_lock:
        maps = cam_maps(model, batch.to(s.classifier.device), targets)
    pngs = []
    for view, cam in zip(views, maps, strict=True):
        buf = io.BytesIO()
        overlay(pil_to_tensor(view), cam).save(buf, "PNG")
        pngs.append(base64.b64encode(buf.getvalue()).decode("ascii"))
    return pngs


@router.post(
    "/v1/predict",
    response_model=PredictResponse,
    responses=ERRORS,
    openapi_extra=UPLOAD_BODY,
    summary="Classify one or several images",
)
async def predict(
    request: Request,
    s: State,
    top_k: Annotated[int | None, Query(ge=1, le=1000, description="classes per image")] = None,
    gradcam: Annotated[bool, Query(description="a Grad-CAM overlay per image (PyTorch)")] = False,
) -> Response:
    """Top-k classes of each image sent, in order: repeat the multipart field ``file`` for
    several images, or send one image's bytes as the body with an ``image/*`` content type."""
    if s.unusable:
        raise ServeError(503, s.unusable)
    if gradcam and not s.info.gradcam:
        runs = NO_GRADCAM.get(s.info.backend, "a classical model")
        raise ServeError(400, f"Grad-CAM needs a PyTorch network; this server runs {runs}")
    uploads = await read_uploads(request, s.settings)
    # The deadline covers decoding and the model: an expensive upload cannot outlast it.
    deadline = time.monotonic() + s.settings.timeout_s
    pre = s.classifier.preprocessing
    views, batch = await decode_request(pre, uploads, s.settings, s.decoding, deadline)
    try:
        rows = await s.batcher.predict(batch, max(deadline - time.monotonic(), 0.0))
    except QueueFull:
        raise ServeError(503, "the server is busy; try again", {"Retry-After": "1"}) from None
    except WorkerStopped:
        raise ServeError(503, "the server is shutting down", {"Retry-After": "5"}) from None
    except TimeoutError:
        raise ServeError(504, f"no answer within {s.settings.timeout_s:g} s") from None
    logits, probs = np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])
    if not np.isfinite(probs).all():
        log.error("the model's outputs for a request are not finite (NaN or inf)")
        raise ServeError(500, "the model's outputs for these images are not finite (NaN or inf)")
    names = [name for name, _ in uploads]
    ood = np.array([r[2] for r in rows], np.float32) if s.info.ood_score else None
    found = None if s.sets is None else s.sets(batch, probs)
    predictions = s.classifier.answers(
        logits, probs, names, top_k or s.info.top_k, s.info.min_confidence, ood, found
    )
    cams: list[str | None] = [None] * len(predictions)
    if gradcam:
        targets = probs.argmax(1).tolist()
        cams = list(await run_in_threadpool(gradcam_pngs, s, views, targets))
    answer = PredictResponse(
        model=s.info.model,
        predictions=[
            ImagePrediction(
                source=p.source,
                answer=None if p.unknown is None else p.answer,
                ood_score=None if p.ood_score is None else round(p.ood_score, 6),
                prediction_set=p.prediction_set,
                set_probabilities=None
                if p.set_probabilities is None
                else [round(x, 6) for x in p.set_probabilities],
                labels=p.labels,
                label_probabilities=None
                if p.label_probabilities is None
                else [round(x, 6) for x in p.label_probabilities],
                top_k=[
                    ClassScore(name=c, probability=round(prob, 6))
                    for c, prob in zip(p.classes, p.probabilities, strict=True)
                ],
                gradcam_png=cam,
            )
            for p, cam in zip(predictions, cams, strict=True)
        ],
    )
    # Serialized here, once: FastAPI would validate the finished model again on the way out.
    body = answer.model_dump_json(by_alias=True, exclude_none=True)
    return Response(body, media_type="application/json")


@router.get("/v1/labels", response_model=LabelsResponse, responses=ERRORS)
async def labels(s: State) -> LabelsResponse:
    """The class names, in the model's order."""
    return LabelsResponse(classes=list(s.info.classes))


@router.get(
    "/v1/info", response_model=InfoResponse, response_model_exclude_none=True, responses=ERRORS
)
async def info(s: State) -> InfoResponse:
    """The model, its input, whether Grad-CAM is available, the threshold below which answers
    are unknown and the out-of-distribution score (when set), and the server's limits."""
    return s.info


@router.get("/healthz", response_model=StatusResponse)
async def healthz() -> StatusResponse:
    """Liveness: the process answers."""
    return StatusResponse(status="ok")


@router.get("/readyz", response_model=StatusResponse, responses=ERRORS)
async def readyz(s: State) -> StatusResponse:
    """Readiness: the model is loaded, gives finite outputs, and the inference worker runs."""
    if s.unusable:
        raise ServeError(503, f"not ready: {s.unusable}")
    if not s.batcher.alive:
        raise ServeError(503, "not ready: the inference worker is not running")
    return StatusResponse(status="ready")


@router.get("/metrics", include_in_schema=False)
async def metrics(s: State) -> Response:
    body, content_type = s.metrics.render()
    return Response(body, media_type=content_type)


@router.get("/", include_in_schema=False)
async def page(s: State) -> HTMLResponse:
    return HTMLResponse(s.page, headers={"Content-Security-Policy": PAGE_POLICY})
