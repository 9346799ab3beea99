"""``--format web``: the page's folder, offline in headless Chromium from disk and from a static
server, its answers against Python's, its preprocessing against Pillow's pixels, the parity
records, and where onnxruntime-web's files come from."""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import http.server
import io
import json
import re
import shutil
import tarfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from PIL import Image

import imagewise
import imagewise.cli
from imagewise.edge.images import image_array, load_image
from imagewise.edge.spec import InputContract
from imagewise.errors import UserError
from imagewise.export import onnxruntime_web as ortweb
from imagewise.export.web import NO_BROWSER, FolderOnnxModel, WebPageModel, load, read_model
from test_export import copy_run, parity_of

from conftest import CLASSES

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium (make install installs it)"
)

FOLDER_FILES = {
    "index.html",
    "imagewise.js",
    "model.js",
    "metadata.json",
    "ort/ort.wasm.min.js",
    "ort/ort-wasm-simd-threaded.mjs.js",
    "ort/ort-wasm-simd-threaded.wasm.js",
    "ort/LICENSE.txt",
}
# The one address in a file the page loads: text of onnxruntime-web's warning for threads
# without cross-origin isolation (the page asks for one thread, so it is never shown).
KNOWN_TEXT_URLS = {"ort/ort.wasm.min.js": ["https://web.dev/cross-origin-isolation-guide/"]}
RESULTS = """() => Array.from(document.querySelectorAll('.result[data-state=done]')).map(r => [
  r.querySelector('.name').textContent, r.querySelector('.label').textContent,
  Object.fromEntries(Array.from(r.querySelectorAll('.bars li'))
    .map(li => [li.dataset.class, Number(li.dataset.probability)]))])"""
DROP = """(files) => {
  const transfer = new DataTransfer();
  for (const f of files) {
    const bytes = Uint8Array.from(atob(f.data), (c) => c.charCodeAt(0));
    transfer.items.add(new File([bytes], f.name, { type: "image/png" }));
  }
  document.querySelector("#drop").dispatchEvent(
    new DragEvent("drop", { dataTransfer: transfer, bubbles: true, cancelable: true }));
}"""


@pytest.fixture(scope="module")
def web_run(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the trained run exported with --format web (float32)."""
    try:
        ortweb.onnxruntime_web()
    except UserError as exc:
        pytest.skip(f"onnxruntime-web's files are not here and cannot be downloaded: {exc}")
    run = copy_run(trained_run, tmp_path_factory.mktemp("web") / "run")
    assert imagewise.cli.main(["export", str(run), "--format", "web", "-q"]) == 0
    return run


@pytest.fixture(scope="module")
def browser(web_run: Path) -> Iterator[Any]:
    """Headless Chromium for the page tests (the export's own check runs beside it)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@contextmanager
def static_server(folder: Path) -> Iterator[str]:
    """Python's static file server for ``folder`` on 127.0.0.1 (port picked by the system)."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def offline_page(browser: Any, allowed: str = "file:") -> Iterator[tuple[Any, list[str]]]:
    """A page whose requests outside ``allowed`` (and blob:/data:) are refused and recorded,
    with its errors recorded alongside."""
    context = browser.new_context()
    problems: list[str] = []

    def only_local(route: Any) -> None:
        if route.request.url.startswith((allowed, "blob:", "data:")):
            route.continue_()
        else:
            problems.append(f"network: {route.request.url}")
            route.abort()

    context.route("**/*", only_local)
    page = context.new_page()
    page.on("pageerror", lambda e: problems.append(f"error: {e}"))
    page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
    try:
        yield page, problems
    finally:
        context.close()


def encoded(file: Path) -> str:
    return base64.b64encode(file.read_bytes()).decode()


def files_of(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def page_images(folder_data: Path, tmp_path: Path) -> list[Path]:
    """Real PNGs of each class (RGB and grayscale) and ones the page must resize as Pillow does:
    shrunk more than 6x (Pillow's block reduce first), enlarged, and half transparent."""
    files = []
    for c in CLASSES:
        for name in ("001.png", "002.png"):  # grayscale, RGB
            files.append(tmp_path / f"{c}-{name}")
            shutil.copy(folder_data / c / name, files[-1])
    photo = Image.open(folder_data / CLASSES[1] / "004.png").convert("RGB")
    wide = photo.resize((203, 131), Image.Resampling.BICUBIC)
    wide.save(tmp_path / "wide.png")
    photo.resize((21, 27), Image.Resampling.BICUBIC).save(tmp_path / "small.png")
    see_through = Image.open(folder_data / CLASSES[2] / "002.png").convert("RGBA")
    ramp = np.linspace(40, 255, see_through.width, dtype=np.uint8)
    alpha = np.tile(ramp, (see_through.height, 1))
    see_through.putalpha(Image.fromarray(alpha))
    see_through.save(tmp_path / "see-through.png")
    return [*files, tmp_path / "wide.png", tmp_path / "small.png", tmp_path / "see-through.png"]


def python_answers(run: Path, files: list[Path], min_confidence: float | None = None) -> dict:
    predictions = imagewise.predict(run, [str(f) for f in files], min_confidence=min_confidence)
    return {
        Path(p.source).name: (p.answer, dict(zip(p.classes, p.probabilities, strict=True)))
        for p in predictions
    }


def check_same(page: dict, python: dict) -> None:
    assert set(page) == set(python)
    for name, (answer, probs) in python.items():
        assert page[name][0] == answer, name
        assert set(page[name][1]) == set(probs) == set(CLASSES)
        assert max(abs(page[name][1][c] - probs[c]) for c in CLASSES) < 1e-4, name


@needs_chromium
def test_folder_is_self_contained_with_the_model_and_its_metadata(web_run: Path) -> None:
    folder = web_run / "export" / "web"
    files = files_of(folder)
    assert files == FOLDER_FILES
    for name in files - {"ort/LICENSE.txt"}:
        urls = re.findall(r"https?://[^\s\"'`)<>]+", (folder / name).read_text("utf-8"))
        assert urls == KNOWN_TEXT_URLS.get(name, []), name
    model = read_model(folder)
    metadata = json.loads((folder / "metadata.json").read_text())
    assert model["metadata"] == metadata
    assert model["runtime"] == f"onnxruntime-web {ortweb.VERSION}"
    onnx_model = onnx.load_from_string(base64.b64decode(model["onnx"]))
    assert {p.key: p.value for p in onnx_model.metadata_props} == metadata
    assert json.loads(metadata["classes"]) == list(CLASSES)
    assert [metadata[k] for k in ("img_size", "channels", "quantization")] == ["32", "3", "none"]
    license_text = (folder / "ort" / "LICENSE.txt").read_text()
    assert license_text.startswith(f"onnxruntime-web {ortweb.VERSION} ")
    assert "MIT License" in license_text
    record = parity_of(web_run, "web")
    assert record["runtime"].startswith(
        f"onnxruntime-web {ortweb.VERSION} (WebAssembly) in Chromium "
    )
    assert record["passed"] and record["top1_agreement"] == 1.0
    assert record["max_abs_probability_difference"] < 1e-4
    assert record["accuracy_exported"] == record["accuracy_pytorch"]
    assert record["bytes"] == sum((folder / f).stat().st_size for f in files)


@needs_chromium
def test_page_from_disk_answers_as_python_and_says_unknown_below_the_threshold(
    web_run: Path, browser: Any, folder_data: Path, tmp_path: Path
) -> None:
    images = page_images(folder_data, tmp_path)
    folder = web_run / "export" / "web"
    python = python_answers(web_run, images)
    with offline_page(browser) as (page, problems):
        page.set_viewport_size({"width": 375, "height": 800})
        page.goto((folder / "index.html").as_uri())
        page.set_input_files("#files", [str(f) for f in images])
        page.wait_for_function(
            f"() => document.querySelectorAll('.result[data-state=done]').length === {len(images)}",
            timeout=30_000,
        )
        shown = {name: (label, probs) for name, label, probs in page.evaluate(RESULTS)}
        status = page.text_content("#status")
        overflow = page.evaluate("document.documentElement.scrollWidth")
        pixels = [
            page.evaluate("(data) => window.imagewise.pixelsOfFile(data)", encoded(f))
            for f in images
        ]
    assert problems == []
    check_same(shown, python)
    for file, got in zip(images, pixels, strict=True):  # the browser decodes as Pillow does
        want = image_array(load_image(file, 3, 32))
        assert np.array_equal(np.frombuffer(base64.b64decode(got), np.uint8), want.ravel()), file
    assert status is not None and status.startswith(f"{len(images)} of {len(images)} images")
    assert overflow <= 375  # no sideways scrolling on a phone
    # The same folder with a fitted threshold in its metadata: "unknown" below it, as Python.
    # Halfway across the widest gap between two images' top probabilities near the middle: a
    # threshold equal to one image's probability would make its answer a coin toss between
    # the page's float32 and Python's.
    tops = sorted(max(p.values()) for _, p in python.values())
    middle = range(max(1, len(tops) // 4), max(2, 3 * len(tops) // 4 + 1))
    k = max(middle, key=lambda i: tops[i] - tops[i - 1])
    threshold = (tops[k - 1] + tops[k]) / 2
    strict = tmp_path / "strict"
    shutil.copytree(folder, strict)
    model = read_model(strict)
    model["metadata"]["unknown"] = json.dumps({"min_confidence": threshold})
    text = (strict / "model.js").read_text().split(" = ", 1)[0]
    (strict / "model.js").write_text(f"{text} = {json.dumps(model)};\n")
    with offline_page(browser) as (page, problems):
        page.goto((strict / "index.html").as_uri())
        page.set_input_files("#files", [str(f) for f in images])
        page.wait_for_function(
            f"() => document.querySelectorAll('.result[data-state=done]').length === {len(images)}",
            timeout=30_000,
        )
        strict_shown = {name: (label, probs) for name, label, probs in page.evaluate(RESULTS)}
    assert problems == []
    strict_python = python_answers(web_run, images, min_confidence=threshold)
    assert 0 < sum(a == "unknown" for a, _ in strict_python.values()) < len(images)
    check_same(strict_shown, strict_python)


@needs_chromium
def test_page_on_a_static_server_answers_dropped_images_as_python(
    web_run: Path, browser: Any, folder_data: Path, tmp_path: Path
) -> None:
    images = page_images(folder_data, tmp_path)
    python = python_answers(web_run, images)
    dropped = [{"name": f.name, "data": encoded(f)} for f in images]
    with (
        static_server(web_run / "export" / "web") as url,
        offline_page(browser, url) as (page, problems),
    ):
        page.goto(url + "/index.html")
        page.evaluate(DROP, dropped)
        page.wait_for_function(
            f"() => document.querySelectorAll('.result[data-state=done]').length === {len(images)}",
            timeout=30_000,
        )
        shown = {name: (label, probs) for name, label, probs in page.evaluate(RESULTS)}
    assert problems == []
    check_same(shown, python)


CONTRACTS = [
    (32, 3, "bilinear", 1.0),
    (32, 3, "bicubic", 0.875),
    (24, 1, "bilinear", 0.875),
    (24, 1, "bicubic", 1.0),
    (32, 3, "nearest", 0.9),
    (224, 3, "bicubic", 0.875),
]
SIZES = [(403, 251), (97, 190), (64, 64), (33, 17), (13, 9)]


@needs_chromium
def test_page_preprocessing_gives_pillows_pixels(web_run: Path, browser: Any) -> None:
    """Bilinear, bicubic and nearest, squashed or centre-cropped, RGB and L, shrunk (by more
    than 6x: Pillow's block reduce first), kept and enlarged: the same bytes as Python's."""
    rng = np.random.default_rng(3)
    cases = []
    for size, channels, interpolation, crop in CONTRACTS:
        for w, h in SIZES:
            smooth = np.linspace(0, 255, w * h * 3).reshape(h, w, 3)
            rgb = np.clip(smooth + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
            contract = InputContract(size, channels, (0.5,) * channels, (0.25,) * channels,
                                     interpolation, crop)  # fmt: skip
            cases.append((contract, rgb))
    with offline_page(browser) as (page, problems):
        page.goto((web_run / "export" / "web" / "index.html").as_uri())
        page.wait_for_function("() => window.imagewise.state === 'ready'", timeout=30_000)
        for contract, rgb in cases:
            h, w = rgb.shape[:2]
            rgba = np.concatenate([rgb, np.full((h, w, 1), 255, np.uint8)], axis=2)
            got = page.evaluate(
                "([data, w, h, c]) => window.imagewise.preprocess(data, w, h, c)",
                [base64.b64encode(rgba.tobytes()).decode(), w, h, {
                    "imgSize": contract.img_size, "channels": contract.channels,
                    "interpolation": contract.interpolation, "cropPct": contract.crop_pct}],
            )  # fmt: skip
            pixels = np.frombuffer(base64.b64decode(got), np.uint8)
            want = contract.array(Image.fromarray(rgb))
            assert np.array_equal(pixels.reshape(want.shape), want), (contract, (w, h))
    assert problems == []


@needs_chromium
def test_loader_runs_the_page_or_says_it_did_not(
    web_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = web_run / "export" / "web"
    images = np.random.default_rng(0).integers(0, 256, (5, 3, 32, 32), dtype=np.uint8)

    async def in_a_loop() -> Any:  # as in a notebook or a server, whose thread runs asyncio
        return load(folder)

    with ThreadPoolExecutor(1) as thread:
        page = thread.submit(asyncio.run, in_a_loop()).result()
    assert isinstance(page, WebPageModel)
    logits, probs = page.scores(images)
    assert page.refused == [] and page.errors == []
    page.close()
    monkeypatch.setenv("IMAGEWISE_CHROMIUM", str(folder / "no-such-chromium"))
    fallback = load(folder)
    assert isinstance(fallback, FolderOnnxModel) and fallback.runtime_name == NO_BROWSER
    want_logits, want_probs = fallback.scores(images)
    assert logits.shape == probs.shape == (5, len(CLASSES))
    assert np.abs(logits - want_logits).max() < 1e-4
    assert np.abs(probs - want_probs).max() < 1e-5


@needs_chromium
def test_int8_web_folder_passes_its_gate(web_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert imagewise.cli.main(["export", str(web_run), "--format", "web", "--int8", "-q"]) == 0
    folder = web_run / "export" / "web.int8"
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"wrote {folder} (") and lines[0].endswith(" MB; web, INT8)")
    assert lines[1].startswith(f"checked on 6 val images by onnxruntime-web {ortweb.VERSION} ")
    assert lines[-1] == f"next: open {folder / 'index.html'} in a browser (or serve {folder})"
    assert files_of(folder) == FOLDER_FILES
    assert read_model(folder)["metadata"]["quantization"].startswith("int8 static QDQ")
    record = parity_of(web_run, "web.int8")
    assert record["runtime"].startswith(f"onnxruntime-web {ortweb.VERSION} (WebAssembly)")
    assert record["passed"] and record["precision"] == "int8"
    assert record["accuracy_drop"] <= 0.01
    assert parity_of(web_run, "web")["passed"]  # the float folder's record is kept


# ---- where onnxruntime-web's files come from ------------------------------------------------


def fake_package(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"package/dist/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@contextmanager
def fake_registry(tarball: bytes, integrity: str) -> Iterator[str]:
    """An npm registry on 127.0.0.1 serving one package version's metadata and tarball."""

    class Registry(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            base = f"http://127.0.0.1:{self.server.server_address[1]}"
            if self.path.endswith(".tgz"):
                body = tarball
            else:
                dist = {"integrity": integrity, "tarball": f"{base}/onnxruntime-web/-/p.tgz"}
                body = json.dumps({"name": "onnxruntime-web", "dist": dist}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Registry)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def test_onnxruntime_web_is_downloaded_once_checked_against_its_integrity(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(ortweb.ENV, raising=False)
    files = {name: f"contents of {name}".encode() for name in ortweb.FILES}
    tarball = fake_package({**files, "ort.webgpu.min.js": b"not needed"})
    good = "sha512-" + base64.b64encode(hashlib.sha512(tarball).digest()).decode()
    with fake_registry(tarball, good) as registry:
        folder = ortweb.onnxruntime_web("0.0.1-test", registry)
    assert folder == tmp_path / "cache" / "imagewise" / "onnxruntime-web" / "0.0.1-test"
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == files
    assert ortweb.onnxruntime_web("0.0.1-test", "http://127.0.0.1:9") == folder  # cached

    bad = "sha512-" + base64.b64encode(hashlib.sha512(b"other").digest()).decode()
    with fake_registry(tarball, bad) as registry, pytest.raises(UserError) as refused:
        ortweb.onnxruntime_web("0.0.2-test", registry)
    assert str(refused.value) == (
        f"the onnxruntime-web 0.0.2-test tarball from {registry} does not match its integrity "
        f"({good[:24]}... instead of {bad[:24]}...); nothing was cached"
    )
    # the pinned version: the registry's integrity must also be the one recorded here
    with fake_registry(tarball, good) as registry, pytest.raises(UserError) as pinned:
        ortweb.onnxruntime_web(ortweb.VERSION, registry)
    assert str(pinned.value) == (
        f"{registry}/onnxruntime-web/{ortweb.VERSION} gives onnxruntime-web {ortweb.VERSION} "
        f"the integrity {good}, not the {ortweb.INTEGRITY} recorded when it was pinned; "
        "nothing was downloaded"
    )
    assert sorted(p.name for p in folder.parent.iterdir()) == ["0.0.1-test"]

    monkeypatch.setenv(ortweb.ENV, str(tmp_path))
    with pytest.raises(UserError) as missing:
        ortweb.onnxruntime_web()
    assert str(missing.value) == (
        f"{ortweb.ENV}='{tmp_path}' has no ort.wasm.min.js, ort-wasm-simd-threaded.mjs, "
        "ort-wasm-simd-threaded.wasm; point it at the dist folder of the onnxruntime-web "
        f"package (npm pack onnxruntime-web@{ortweb.VERSION})"
    )
