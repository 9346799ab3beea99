"""``imagewise label serve``: the local labelling page, on ``imagewise serve``'s server stack.

The page (``page.html``) asks for one image at a time (``/api/next``), shows it large with
the guess pre-selected, and posts each answer (``/api/answer``); ``LabelSession`` holds the
leases and writes the answers. Images are served by the id the server gave them, never by a
path a client names; requests bodies are small (``MAX_BODY_BYTES``) and the server listens on
127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import io
import logging
import threading
from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from imagewise.errors import UserError
from imagewise.label.progress import estimate_gain
from imagewise.label.session import LEASE_S, LabelSession, Refused, class_keys
from imagewise.names import shown
from imagewise.serve.guards import GuardMiddleware, ServeError

log = logging.getLogger("imagewise")

GAIN_BATCH = 100  # the page shows the accuracy the next this many labels should add
MAX_BODY_BYTES = 16 * 1024  # the page sends ids and a class name, nothing more
BROWSER_FORMATS = {".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png", ".gif": "gif"} | {
    ".webp": "webp", ".bmp": "bmp"
}  # fmt: skip
LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]
PAGE_POLICY = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)


class TabRequest(BaseModel):
    tab: str


class AnswerRequest(BaseModel):
    tab: str
    id: str
    action: str
    label: str | None = None


class RetrainJob:
    """One retrain at a time in a background thread (``imagewise.label.retrain``, which adds
    its progress entry to ``OUT.progress.json``); the page asks for its state."""

    def __init__(self, run: str | Path | None, out: Path) -> None:
        self.run = run
        self.out = out
        self.thread: threading.Thread | None = None
        self.error: str | None = None

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def start(self) -> None:
        from imagewise.label import retrain

        if self.run is None:
            raise Refused(409, "the server was started without --run; there is no run to retrain")
        if self.running:
            raise Refused(409, "a retrain is running already")
        if not self.out.is_file():
            raise Refused(409, "nothing labelled yet; label some images first")
        self.error = None
        self.thread = threading.Thread(target=self._work, args=(retrain,), daemon=True)
        self.thread.start()

    def _work(self, retrain: Any) -> None:
        try:
            retrain(self.run, self.out)
        except UserError as exc:
            self.error = str(exc)
        except Exception as exc:  # the page shows it; the server goes on
            log.exception("retrain failed")
            self.error = f"the retrain failed: {exc!r}"

    def status(self) -> dict[str, Any]:
        return {"available": self.run is not None, "running": self.running, "error": self.error}


def create_label_app(
    session: LabelSession,
    out: str | Path,
    run: str | Path | None = None,
    hosts: list[str] | None = None,
) -> FastAPI:
    """The labelling page and its JSON API over ``session``.

    Args:
        session: the images, leases and answers (``imagewise.label.items.open_session``).
        out: the manifest the answers go to (shown on the page; the retrain trains on it).
        run: the run the page's retrain button retrains (None: no button).
        hosts: the only ``Host`` headers answered (a loopback server: its own names, so a
            web page that rebinds its DNS name to 127.0.0.1 cannot read it); None: any.
    """
    app = FastAPI(title="imagewise label", docs_url=None, redoc_url=None, openapi_url=None)
    page = files("imagewise.label").joinpath("page.html").read_text(encoding="utf-8")
    job = RetrainJob(run, Path(out))
    _routes(app, session, job, page, Path(out))
    _errors(app)
    app.add_middleware(GuardMiddleware, token=None, open_paths=(), max_body_bytes=MAX_BODY_BYTES)
    if hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=hosts)
    return app


def _routes(app: FastAPI, session: LabelSession, job: RetrainJob, page: str, out: Path) -> None:
    def progress() -> dict[str, Any]:
        history = session.book.history()
        gain = estimate_gain(history, GAIN_BATCH) if history else None
        return {
            **session.progress(),
            "history": history,
            "gain": None if gain is None else {"batch": GAIN_BATCH, "val_accuracy": gain},
            "retrain": job.status(),
        }

    @app.get("/", include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": PAGE_POLICY})

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        return {
            "mode": session.book.mode,
            "classes": session.classes,
            "keys": class_keys(session.classes),
            "actions": list(session.actions),
            "out": shown(str(out)),
            "retrain": job.run is not None,
        }

    @app.post("/api/tab")
    def tab() -> dict[str, str]:
        return {"tab": session.open_tab()}

    @app.post("/api/next")
    def next_image(body: TabRequest) -> dict[str, Any]:
        return {"item": session.next(body.tab), "progress": progress()}

    @app.post("/api/answer")
    def answer(body: AnswerRequest) -> dict[str, Any]:
        session.answer(body.tab, body.id, body.action, body.label)
        return {"item": session.next(body.tab), "progress": progress()}

    @app.post("/api/undo")
    def undo(body: TabRequest) -> dict[str, Any]:
        item = session.undo(body.tab)
        if item is None:
            item = session.next(body.tab)
        return {"item": item, "progress": progress()}

    @app.post("/api/release")
    def release(body: TabRequest) -> dict[str, bool]:
        session.release(body.tab)
        return {"released": True}

    @app.get("/api/progress")
    def progress_now() -> dict[str, Any]:
        return progress()

    @app.post("/api/retrain", status_code=202)
    def retrain() -> dict[str, Any]:
        job.start()
        return job.status()

    @app.get("/api/image/{item_id}")
    def image(item_id: str) -> Response:
        item = session.by_id.get(item_id)
        if item is None:
            raise Refused(404, f"no image '{item_id}' in this queue")
        return _image_response(Path(item.path))


def _image_response(path: Path) -> Response:
    """The image as the browser can show it: the file itself, or PNG for other formats."""
    if not path.is_file():
        raise Refused(404, "the image file is gone")
    fmt = BROWSER_FORMATS.get(path.suffix.lower())
    headers = {"Cache-Control": "no-store"}
    if fmt is not None:
        return FileResponse(path, media_type=f"image/{fmt}", headers=headers)
    from PIL import Image

    buf = io.BytesIO()
    try:
        with Image.open(path) as img:
            img.convert("RGB").save(buf, format="PNG")
    except (OSError, ValueError) as exc:
        raise Refused(415, f"cannot read this image: {exc}") from exc
    return Response(buf.getvalue(), media_type="image/png", headers=headers)


def _errors(app: FastAPI) -> None:
    """Every refusal as ``{"error": message}`` with its status."""

    def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    async def refused(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, Refused)
        return error(exc.status, exc.message)

    async def serve_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServeError)
        return error(exc.status, exc.message, exc.headers)

    async def user_error(request: Request, exc: Exception) -> JSONResponse:
        return error(500, str(exc))  # a write the disk refused: the answer was not recorded

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        return error(exc.status_code, str(exc.detail))

    app.add_exception_handler(Refused, refused)
    app.add_exception_handler(ServeError, serve_error)
    app.add_exception_handler(UserError, user_error)
    app.add_exception_handler(HTTPException, http_error)


def label_serve(
    data: str | Path,
    pool: str | Path | None = None,
    *,
    queue: str | Path | None = None,
    run: str | Path | None = None,
    out: str | Path | None = None,
    review: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    lease_s: float = LEASE_S,
) -> None:
    """Serve the labelling page until interrupted (Ctrl-C or SIGTERM).

    The address is taken first, so a busy port fails at once; the inputs are read next
    (``imagewise.label.items.open_session``: the arguments are the same). Every answer is in
    ``out`` (default ``labels.csv``; review: ``reviewed.csv``) as soon as it is given.

    Example:
        >>> label_serve("data/", queue="queue.csv", out="labels.csv")  # doctest: +SKIP
    """
    import uvicorn

    from imagewise.label.items import open_session
    from imagewise.serve.server import listen_socket, url_of, uvicorn_config
    from imagewise.serve.settings import ServeSettings

    settings = ServeSettings(host=host, port=port, access_log=False)
    sock = listen_socket(host, port)
    try:
        session = open_session(
            data, pool, queue=queue, run=run, out=out, review=review, lease_s=lease_s
        )
        book_out = session.book.out
        hosts = LOOPBACK_HOSTS if settings.loopback else None
        app = create_label_app(session, book_out, run, hosts)
        if not settings.loopback:
            log.warning("warning: the page is open to anyone who can reach %s", host)
        done = session.progress()
        log.warning(
            "%s %d images (%d answered) into %s at %s/",
            "reviewing" if review else "labelling", done["total"],
            done["total"] - done["left"], book_out, url_of(sock),
        )  # fmt: skip
        uvicorn.Server(uvicorn_config(app, settings)).run(sockets=[sock])
    finally:
        sock.close()
