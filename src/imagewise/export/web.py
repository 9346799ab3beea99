"""The ``web`` format: a folder whose page classifies images in the browser, offline.

``imagewise export RUN --format web`` writes::

    web/index.html                          the page: drop or choose images, top-k answers
    web/imagewise.js                        its code: the input contract's preprocessing (Pillow's
                                            resize, ported), onnxruntime-web, the answers
    web/model.js                            the ONNX model (base64) and its metadata
    web/metadata.json                       the same metadata, for tools
    web/MODEL_CARD.md                       the run's model card, when it has one
    web/ort/ort.wasm.min.js                 onnxruntime-web (imagewise.export.onnxruntime_web)
    web/ort/ort-wasm-simd-threaded.mjs.js   its Emscripten glue, as a string
    web/ort/ort-wasm-simd-threaded.wasm.js  its WebAssembly binary, as base64
    web/ort/LICENSE.txt                     onnxruntime-web's MIT licence

Open ``index.html`` from disk or put the folder on any static server: nothing is fetched from
the network. ``web.int8/`` holds the INT8 model (the ONNX export's static QDQ graph).

The parity check (``load``) opens the page in headless Chromium (Playwright) and sends the
validation images' pixels through the page's own normalization and onnxruntime-web session;
without Playwright or Chromium it runs the folder's model with ONNX Runtime in Python and says
so in parity.json's ``runtime``.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import logging
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import PIL

from imagewise.edge.model import ImageModel
from imagewise.edge.spec import ModelSpec
from imagewise.errors import UserError
from imagewise.export.onnxruntime_web import GLUE, LOADER, WASM, onnxruntime_web, version_of

if TYPE_CHECKING:
    from imagewise.export.targets import ExportJob

log = logging.getLogger("imagewise")

PAGE_FILES = ("index.html", "imagewise.js")
MODEL_SCRIPT = "model.js"
MODEL_VARIABLE = "window.IMAGEWISE_MODEL = "
NO_BROWSER = "ONNX Runtime (no Chromium here; the page itself was not run)"
BATCH = 64  # images per call into the page
START_TIMEOUT_MS = 120_000

MIT_LICENSE = """onnxruntime-web {version} (https://www.npmjs.com/package/onnxruntime-web), files
ort.wasm.min.js, ort-wasm-simd-threaded.mjs and ort-wasm-simd-threaded.wasm (the last two
stored here as a JavaScript string and as base64).

MIT License

Copyright (c) Microsoft Corporation. All rights reserved.

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""


def write(job: ExportJob, path: Path) -> None:
    """The ``web`` format's writer: the page's folder at ``path`` (see the module)."""
    ort_dir = onnxruntime_web()
    version = version_of(ort_dir)
    onnx_bytes = job.onnx_file(job.precision).read_bytes()
    path.mkdir()
    page = resources.files("imagewise.export") / "webpage"
    for name in PAGE_FILES:
        (path / name).write_bytes((page / name).read_bytes())
    model = {
        "metadata": job.metadata,
        "runtime": f"onnxruntime-web {version}",
        "pillow": PIL.__version__,  # the page resizes as this Pillow does (imagewise.js)
        "onnx": base64.b64encode(onnx_bytes).decode("ascii"),
    }
    _script(path / MODEL_SCRIPT, "IMAGEWISE_MODEL", model)
    (path / "metadata.json").write_text(json.dumps(job.metadata, indent=2, ensure_ascii=False))
    ort = path / "ort"
    ort.mkdir()
    shutil.copyfile(ort_dir / LOADER, ort / LOADER)
    _script(ort / f"{GLUE}.js", "IMAGEWISE_ORT_GLUE", (ort_dir / GLUE).read_text("utf-8"))
    wasm = base64.b64encode((ort_dir / WASM).read_bytes()).decode("ascii")
    _script(ort / f"{WASM}.js", "IMAGEWISE_ORT_WASM", wasm)
    (ort / "LICENSE.txt").write_text(MIT_LICENSE.format(version=version))
    if (card := job.metadata.get("model_card")) is not None:  # a card of these weights
        (path / "MODEL_CARD.md").write_text(card, encoding="utf-8")


def _script(path: Path, name: str, value: Any) -> None:
    """A classic script that sets ``window.NAME`` to ``value`` (JSON is JavaScript)."""
    path.write_text(f"window.{name} = {json.dumps(value, ensure_ascii=True)};\n", "ascii")


def read_model(folder: Path) -> dict[str, Any]:
    """``model.js`` of a page's folder: ``metadata``, ``runtime`` and ``onnx`` (base64)."""
    text = (folder / MODEL_SCRIPT).read_text("ascii").strip()
    if not (text.startswith(MODEL_VARIABLE) and text.endswith(";")):
        raise UserError(f"'{folder / MODEL_SCRIPT}' is not a model written by imagewise export")
    return dict(json.loads(text[len(MODEL_VARIABLE) : -1]))


# The export check runs at most this many images through the page: it computes with one
# WebAssembly thread (about 2.6 resnet18 images/s at 224 px on 2 EPYC cores, 96/s for a small
# 32 px model), so 2000 images would take 13 minutes for a 224 px network.
CHECK_IMAGES = 500


class BrowserUnavailable(Exception):
    """Playwright or a Chromium it can start is missing here."""


def load(path: Path, threads: int | None = None) -> ImageModel:
    """The page's folder opened for the parity check: in headless Chromium when Playwright and
    Chromium are here (``WebPageModel``; the page runs one thread), else its model in ONNX
    Runtime with ``threads`` (``FolderOnnxModel``)."""
    try:
        return WebPageModel(path)
    except BrowserUnavailable as why:
        log.warning("checking the web page's model with ONNX Runtime in Python: %s", why)
        return FolderOnnxModel(path, threads)


def chromium() -> str | None:
    """The Chromium to run the page in: ``IMAGEWISE_CHROMIUM``, else one on the PATH, else
    None (Playwright's own, if installed)."""
    given = os.environ.get("IMAGEWISE_CHROMIUM")
    if given:
        return given
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    return None


class WebPageModel(ImageModel):
    """The exported page in headless Chromium, as an ``ImageModel``: ``scores`` sends uint8
    pixels into the page (its ``imagewise.scoresOfPixels``), which normalizes them in JavaScript
    and runs its onnxruntime-web session. Network requests other than the folder's own files
    are refused. Call ``close`` (or use it in a ``with``) to end the browser.

    Raises:
        BrowserUnavailable: Playwright is not installed or Chromium does not start.
        UserError: the page does not start its model (the page's own error).
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        model = read_model(self.folder)
        super().__init__(ModelSpec.from_metadata(model["metadata"], str(self.folder)),
                         model["metadata"])  # fmt: skip
        self._browser = _Browser(self.folder)
        self.refused = self._browser.refused  # URLs the page asked for outside its folder
        self.errors = self._browser.errors
        self.runtime_name = f"{model['runtime']} (WebAssembly) in Chromium {self._browser.version}"
        self.check_images = CHECK_IMAGES

    def scores(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits and calibrated probabilities (float32, (N, classes)) of uint8 images
        (N, C, H, W) at the model's size, computed by the page."""
        pre = self.spec.input
        if images.ndim != 4 or images.shape[1:] != (pre.channels, pre.img_size, pre.img_size):
            raise ValueError(f"images of shape {images.shape} are not the model's input")
        logits, probs = [], []
        for start in range(0, len(images), BATCH):
            chunk = np.ascontiguousarray(images[start : start + BATCH], dtype=np.uint8)
            data = base64.b64encode(chunk.tobytes()).decode("ascii")
            out = self._browser.evaluate(
                "([data, n]) => window.imagewise.scoresOfPixels(data, n)", [data, len(chunk)]
            )
            logits.append(np.asarray(out["logits"], np.float32).reshape(len(chunk), -1))
            probs.append(np.asarray(out["probabilities"], np.float32).reshape(len(chunk), -1))
        return np.concatenate(logits), np.concatenate(probs)

    def close(self) -> None:
        """End the browser (and Playwright's driver); the model answers no more."""
        self._browser.close()

    def __enter__(self) -> WebPageModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Browser:
    """Headless Chromium (through Playwright's sync API) showing a page's folder from disk,
    every other request refused. Playwright runs in a thread of its own: its sync API refuses a
    thread with a running asyncio loop (a notebook, a server) or another Playwright, and it
    keeps the frames of the calls made through it, which must not hold the caller's objects."""

    def __init__(self, folder: Path) -> None:
        if importlib.util.find_spec("playwright") is None:
            raise BrowserUnavailable("Playwright is not installed")
        self.refused: list[str] = []
        self.errors: list[str] = []
        self._driver: Any = None
        self._chromium: Any = None
        self._page: Any = None
        self._thread: ThreadPoolExecutor | None = ThreadPoolExecutor(1, "imagewise-chromium")
        try:
            self.version = self._call(self._launch)
            self._page = self._call(self._open, folder)
        except BaseException:
            self.close()
            raise

    def _call(self, function: Callable[..., Any], *args: Any) -> Any:
        assert self._thread is not None, "the browser was closed"
        return self._thread.submit(function, *args).result()

    def evaluate(self, script: str, arg: Any = None) -> Any:
        """``script`` evaluated in the page (awaited if it returns a promise)."""
        return self._call(self._page.evaluate, script, arg)

    def _launch(self) -> str:
        from playwright.sync_api import sync_playwright

        try:
            self._driver = sync_playwright().start()
            # --no-sandbox: the page is this export's own files, with the network refused
            self._chromium = self._driver.chromium.launch(
                executable_path=chromium(), args=["--no-sandbox"]
            )
        except Exception as exc:  # Playwright raises its own Error for a missing browser
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BrowserUnavailable(f"Chromium did not start ({first})") from None
        return str(self._chromium.version)

    def _open(self, folder: Path) -> Any:
        """The page, its model started."""
        refused, errors = self.refused, self.errors

        def offline(route: Any) -> None:
            if route.request.url.startswith(("file:", "blob:", "data:")):
                route.continue_()
            else:
                refused.append(route.request.url)
                route.abort()

        page = self._chromium.new_page()
        page.route("**/*", offline)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto((folder / "index.html").resolve().as_uri())
        page.wait_for_function(
            "() => window.imagewise && window.imagewise.state !== 'loading'",
            timeout=START_TIMEOUT_MS,
        )
        if page.evaluate("window.imagewise.state") != "ready":
            why = page.evaluate("window.imagewise.error") or "; ".join(errors)
            raise UserError(f"the web page in '{folder}' did not start its model: {why}")
        return page

    def _stop(self) -> None:
        chromium, self._chromium = self._chromium, None
        driver, self._driver = self._driver, None
        try:
            if chromium is not None:
                chromium.close()
        finally:
            if driver is not None:
                driver.stop()

    def close(self) -> None:
        """Chromium, Playwright's driver and the thread ended."""
        thread, self._thread = self._thread, None
        if thread is not None:
            try:
                thread.submit(self._stop).result()
            finally:
                thread.shutdown()


class FolderOnnxModel(ImageModel):
    """The page folder's model run by ONNX Runtime in Python: the check where no Chromium is
    (the page's JavaScript does not run; parity.json's runtime says so)."""

    runtime_name = NO_BROWSER

    def __init__(self, folder: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        from imagewise.edge.runtimes import usable_cpus

        model = read_model(Path(folder))
        super().__init__(ModelSpec.from_metadata(model["metadata"], str(folder)),
                         model["metadata"])  # fmt: skip
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or usable_cpus()
        self.session = ort.InferenceSession(
            base64.b64decode(model["onnx"]), options, providers=["CPUExecutionProvider"]
        )

    def scores(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits and calibrated probabilities of uint8 images (N, C, H, W)."""
        feed = {"input": self.spec.input.normalize(images)}
        logits, probs = self.session.run(["logits", "probabilities"], feed)
        return logits, probs
