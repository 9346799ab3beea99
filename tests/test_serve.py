"""Serving: the HTTP API of a real uvicorn process, micro-batching, limits, token and metrics."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import re
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

import imagewise
from imagewise.edge.model import ImageModel
from imagewise.edge.spec import InputContract, ModelSpec
from imagewise.errors import UserError
from imagewise.serve import ServeSettings, create_app
from imagewise.serve.images import safe_name

from conftest import CLASSES, run_cli, serve_process, served_copy

TOKEN = "s3cret-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def server(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The trained run behind a real server with a token, a 1 MB body limit and 4 images/request."""
    folder = tmp_path_factory.mktemp("serve")
    run = served_copy(trained_run, folder)
    flags = ("--token", TOKEN, "--max-body-mb", "1", "--max-images", "4", "--top-k", "3", "-q")
    with serve_process(run, folder / "server.log", *flags, headers=AUTH) as url:
        yield url


@pytest.fixture(scope="module")
def client(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, headers=AUTH, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def images(folder_data: Path) -> list[Path]:
    """Two images of each class, PNG and JPEG, in a mixed order."""
    chosen = [sorted((folder_data / kind).glob(f"*{ext}"))[0] for ext in (".png", ".jpg")
              for kind in CLASSES]  # fmt: skip
    return chosen[::2] + chosen[1::2]


def png_bytes(img: Image.Image, **options: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **options)
    return buf.getvalue()


def assert_json_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert list(body) == ["error"] and body["error"]
    return body["error"]


# --- the API of a real server ----------------------------------------------------------------


def test_one_image_gives_top_k_classes_and_labels_lists_them(
    client: httpx.Client, images: list[Path], trained_run: Path
) -> None:
    r = client.post("/v1/predict", files={"file": (images[0].name, images[0].read_bytes())})
    assert r.status_code == 200, r.text
    [pred] = r.json()["predictions"]
    assert pred["source"] == images[0].name
    probs = [c["probability"] for c in pred["top_k"]]
    assert len(probs) == 3 and probs == sorted(probs, reverse=True) and 0.99 < sum(probs) <= 1.0001
    assert not {"gradcam_png", "answer", "ood_score"} & set(pred)  # none asked for
    classes = imagewise.load(trained_run).classes
    assert client.get("/v1/labels").json() == {"classes": classes}
    info = client.get("/v1/info").json()
    assert info["classes"] == classes and info["gradcam"] is True and info["backend"] == "pytorch"
    assert not {"min_confidence", "ood_score"} & set(info)


def test_several_images_keep_their_order_and_match_predict(
    client: httpx.Client, images: list[Path], trained_run: Path
) -> None:
    sent = images[:4]
    files = [("file", (p.name, p.read_bytes())) for p in sent]
    r = client.post("/v1/predict", files=files, params={"top_k": 2})
    assert r.status_code == 200, r.text
    got = r.json()["predictions"]
    expected = imagewise.load(trained_run).predict(sent, top_k=2)
    assert [p["source"] for p in got] == [p.name for p in sent]
    assert [p["top_k"][0]["class"] for p in got] == [e.label for e in expected]
    for p, e in zip(got, expected, strict=True):
        assert [c["probability"] for c in p["top_k"]] == pytest.approx(e.probabilities, abs=1e-5)


def test_raw_image_bytes_as_the_body(
    client: httpx.Client, images: list[Path], trained_run: Path
) -> None:
    jpeg = next(p for p in images if p.suffix == ".jpg")
    r = client.post(
        "/v1/predict", content=jpeg.read_bytes(), headers={"Content-Type": "image/jpeg"}
    )
    assert r.status_code == 200, r.text
    [pred] = r.json()["predictions"]
    expected = imagewise.load(trained_run).predict([jpeg], top_k=3)[0]
    assert pred["source"] == "<body>"
    assert pred["top_k"][0]["class"] == expected.label
    assert pred["top_k"][0]["probability"] == pytest.approx(expected.confidence, abs=1e-5)


def _truncated_jpeg(images: list[Path]) -> bytes:
    data = next(p for p in images if p.suffix == ".jpg").read_bytes()
    return data[: len(data) // 2]


@pytest.fixture(scope="module")
def huge_png() -> bytes:
    """A 20000 x 20000 image (400 megapixels) in a file of a few tens of KB."""
    data = png_bytes(Image.new("1", (20000, 20000)), optimize=True)
    assert len(data) < 100_000
    return data


@pytest.mark.parametrize(
    ("case", "status", "says"),
    [
        ("truncated", 400, "truncated"),
        ("empty", 400, "empty"),
        ("text named .png", 415, "not an image"),
        ("20000x20000", 413, "pixels"),
        ("../ in the name", 415, "not an image"),
    ],
)
def test_bad_uploads_get_a_json_error_and_the_server_lives_on(
    client: httpx.Client, images: list[Path], huge_png: bytes, case: str, status: int, says: str
) -> None:
    name, data = {
        "truncated": ("photo.jpg", _truncated_jpeg(images)),
        "empty": ("empty.png", b""),
        "text named .png": ("notes.png", b"just some text, not pixels\n" * 20),
        "20000x20000": ("huge.png", huge_png),
        "../ in the name": ("../../../etc/passwd", b"root:x:0:0:root:/root:/bin/bash\n"),
    }[case]
    r = client.post("/v1/predict", files={"file": (name, data, "image/png")})
    message = assert_json_error(r, status)
    assert says in message
    assert "../" not in message and "/etc" not in message
    assert client.get("/healthz").json() == {"status": "ok"}


def test_a_file_name_is_echoed_without_its_folders(
    client: httpx.Client, images: list[Path]
) -> None:
    r = client.post("/v1/predict", files={"file": ("..\\../x/shape.png", images[0].read_bytes())})
    assert r.status_code == 200, r.text
    assert r.json()["predictions"][0]["source"] == "shape.png"
    assert safe_name("a\x01b\x7f.png", "<file 1>") == "ab.png"
    assert safe_name("../..", "<file 1>") == safe_name(None, "<file 1>") == "<file 1>"


def test_requests_over_the_limits_are_refused(client: httpx.Client, images: list[Path]) -> None:
    big = np.random.default_rng(0).integers(0, 255, 1_500_000, dtype=np.uint8).tobytes()
    message = assert_json_error(client.post("/v1/predict", files={"file": ("big.png", big)}), 413)
    assert "larger than 1048576 bytes" in message

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams in
        for _ in range(20):
            yield b"\0" * 100_000

    r = client.post("/v1/predict", content=chunks(), headers={"Content-Type": "image/png"})
    assert_json_error(r, 413)
    five = [("file", (p.name, p.read_bytes())) for p in images[:5]]
    assert "at most 4 images" in assert_json_error(client.post("/v1/predict", files=five), 413)
    r = client.post("/v1/predict", content=b"{}", headers={"Content-Type": "application/json"})
    assert "multipart/form-data" in assert_json_error(r, 415)
    assert_json_error(client.post("/v1/predict", files={"other": ("a.png", b"x")}), 400)
    one = {"file": ("a.png", images[0].read_bytes())}
    assert "top_k" in assert_json_error(client.post("/v1/predict?top_k=0", files=one), 422)
    assert_json_error(client.get("/v1/nothing-here"), 404)
    assert_json_error(client.delete("/v1/labels"), 405)
    assert client.get("/healthz").status_code == 200


def test_token_is_required_except_for_liveness_and_the_page(server: str) -> None:
    for path in ("/v1/labels", "/v1/info", "/readyz", "/metrics", "/docs", "/no-such-page"):
        r = httpx.get(server + path)
        assert_json_error(r, 401)
        assert r.headers["www-authenticate"] == "Bearer"
        wrong = httpx.get(server + path, headers={"Authorization": "Bearer s3cret-test-tokeN"})
        assert_json_error(wrong, 401)
    assert_json_error(httpx.post(server + "/v1/predict", files={"file": ("a.png", b"x")}), 401)
    assert httpx.get(server + "/v1/labels", headers=AUTH).status_code == 200
    assert httpx.get(server + "/healthz").status_code == 200
    page = httpx.get(server + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "http://" not in page.text and "https://" not in page.text  # no CDN
    assert "default-src 'none'" in page.headers["content-security-policy"]


def _samples(client: httpx.Client) -> dict[tuple[str, tuple], float]:
    text = client.get("/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_count_requests_batches_and_the_queue(
    client: httpx.Client, images: list[Path]
) -> None:
    ok = ("imagewise_http_requests_total", (("endpoint", "/v1/predict"), ("status", "200")))
    bad = ("imagewise_http_requests_total", (("endpoint", "/v1/predict"), ("status", "415")))
    batches = ("imagewise_batch_size_count", ())
    classified = ("imagewise_images_total", ())
    before = _samples(client)
    files = [("file", (p.name, p.read_bytes())) for p in images[:3]]
    for _ in range(2):
        assert client.post("/v1/predict", files=files).status_code == 200
    assert client.post("/v1/predict", files={"file": ("t.png", b"text")}).status_code == 415
    after = _samples(client)
    assert after[ok] - before.get(ok, 0) == 2
    assert after[bad] - before.get(bad, 0) == 1
    assert after[classified] - before[classified] == 6
    assert 1 <= after[batches] - before[batches] <= 6
    assert after[("imagewise_queue_depth", ())] == 0
    latency = ("imagewise_http_request_duration_seconds_count", (("endpoint", "/v1/predict"),))
    assert after[latency] - before[latency] == 3


def test_gradcam_returns_a_png_overlay_per_image(client: httpx.Client, images: list[Path]) -> None:
    files = [("file", (p.name, p.read_bytes())) for p in images[:2]]
    r = client.post("/v1/predict", files=files, params={"gradcam": "true"})
    assert r.status_code == 200, r.text
    size = client.get("/v1/info").json()["img_size"]
    side = size * max(1, math.ceil(224 / size))  # the overlay enlarges small inputs
    for pred in r.json()["predictions"]:
        picture = Image.open(io.BytesIO(base64.b64decode(pred["gradcam_png"])))
        assert picture.format == "PNG" and picture.size == (side, side)
        colours = np.unique(np.asarray(picture).reshape(-1, 3), axis=0)
        assert picture.mode == "RGB" and len(colours) > 10  # a heat map, not a blank picture


# --- the app over a stand-in classifier, in this process ------------------------------------


class SlowClassifier(ImageModel):
    """Stands in for a model without PyTorch weights (as an ONNX one): slow, counting batches."""

    def __init__(self, seconds: float) -> None:
        pre = InputContract(img_size=8, channels=1, mean=[0.5], std=[0.5])
        super().__init__(ModelSpec(classes=("yes", "no"), input=pre, model="slow"))
        self.seconds = seconds
        self.batches: list[int] = []

    def scores(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        time.sleep(self.seconds)
        self.batches.append(len(images))
        probs = np.tile(np.array([[0.75, 0.25]], np.float32), (len(images), 1))
        return np.log(probs), probs


@contextmanager
def running(
    app: object, http: type | None = None, settings: ServeSettings | None = None
) -> Iterator[tuple[str, object]]:
    """uvicorn serving ``app`` on a thread of this process, set up as ``imagewise serve`` sets
    it up (its socket, its HTTP protocol; ``http`` to choose another; ``settings``: the
    connection limits, as the app's)."""
    import uvicorn

    from imagewise.serve.server import listen_socket, url_of, uvicorn_config

    sock = listen_socket("127.0.0.1", 0)
    config = uvicorn_config(app, settings or ServeSettings(access_log=False), http)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield url_of(sock), server
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


TINY_PNG = png_bytes(Image.new("L", (8, 8), 128))


async def _post_many(url: str, n: int, delay: float = 0.0) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:

        async def one(i: int) -> httpx.Response:
            await asyncio.sleep(delay * i)
            return await c.post("/v1/predict", files={"file": (f"{i}.png", TINY_PNG)})

        return await asyncio.gather(*(one(i) for i in range(n)))


def test_concurrent_requests_share_model_calls() -> None:
    model = SlowClassifier(0.05)
    app = create_app(model, ServeSettings(max_batch=8, max_wait_ms=100))
    with running(app) as (url, _):
        responses = asyncio.run(_post_many(url, 8))
    assert [r.status_code for r in responses] == [200] * 8
    assert [r.json()["predictions"][0]["source"] for r in responses] == [
        f"{i}.png" for i in range(8)
    ]
    assert sum(model.batches) == 8 and max(model.batches) > 1 and len(model.batches) < 8


def test_a_full_queue_answers_503_with_retry_after() -> None:
    model = SlowClassifier(0.3)
    settings = ServeSettings(batching=False, queue_size=2, max_images=2)
    with running(create_app(model, settings)) as (url, _):
        responses = asyncio.run(_post_many(url, 8))
        assert httpx.get(url + "/healthz").status_code == 200
    codes = sorted(r.status_code for r in responses)
    assert set(codes) == {200, 503} and 2 <= codes.count(200) <= 4, codes
    for r in responses:
        if r.status_code == 503:
            assert_json_error(r, 503)
            assert r.headers["retry-after"] == "1"
    assert set(model.batches) == {1}


def test_a_slow_model_answers_504_after_the_timeout() -> None:
    model = SlowClassifier(1.0)
    with running(create_app(model, ServeSettings(timeout_s=0.2))) as (url, _):
        r = httpx.post(url + "/v1/predict", files={"file": ("a.png", TINY_PNG)})
    assert "0.2 s" in assert_json_error(r, 504)


def test_shutdown_lets_requests_in_flight_finish() -> None:
    model = SlowClassifier(0.2)
    with running(create_app(model, ServeSettings(batching=False))) as (url, server):

        async def load_then_stop() -> list[httpx.Response]:
            task = asyncio.ensure_future(_post_many(url, 4))
            state = server.server_state  # type: ignore[attr-defined]
            for _ in range(2000):  # until uvicorn has taken all four requests (bounded)
                if state.total_requests + len(state.tasks) >= 4:  # answered + in flight
                    break
                await asyncio.sleep(0.005)
            assert state.total_requests < 4  # some still in flight when the stop comes
            server.should_exit = True  # type: ignore[attr-defined]
            return await task

        responses = asyncio.run(load_then_stop())
    assert [r.status_code for r in responses] == [200] * 4
    assert len(model.batches) == 4


def test_gradcam_on_a_model_without_pytorch_weights_is_a_400() -> None:
    app = create_app(SlowClassifier(0.0), ServeSettings())
    with running(app) as (url, _):
        info = httpx.get(url + "/v1/info").json()
        r = httpx.post(url + "/v1/predict?gradcam=true", files={"file": ("a.png", TINY_PNG)})
    assert info["gradcam"] is False and info["backend"] == "onnx"
    assert "Grad-CAM needs a PyTorch network" in assert_json_error(r, 400)


def test_settings_refuse_nonsense_and_warn_about_an_open_unguarded_host() -> None:
    from imagewise.errors import UserError

    with pytest.raises(UserError, match="max-batch"):
        ServeSettings(max_batch=0)
    with pytest.raises(UserError, match="queue-size"):
        ServeSettings(max_images=64, queue_size=8)
    assert ServeSettings().exposure_warning() is None
    assert ServeSettings(host="::1").exposure_warning() is None
    assert ServeSettings(host="0.0.0.0", token="t").exposure_warning() is None
    assert "without a token" in ServeSettings(host="0.0.0.0").exposure_warning()


def test_an_onnx_export_is_served_like_its_run_without_gradcam(
    trained_run: Path, tmp_path: Path, images: list[Path]
) -> None:
    run = served_copy(trained_run, tmp_path)
    onnx = imagewise.export(run).path
    files = [("file", (p.name, p.read_bytes())) for p in images[:4]]
    with running(create_app(imagewise.load(onnx), ServeSettings())) as (url, _):
        info = httpx.get(url + "/v1/info").json()
        r = httpx.post(url + "/v1/predict", files=files, params={"top_k": 2})
        cam = httpx.post(url + "/v1/predict?gradcam=true", files=files[:1])
    assert info["backend"] == "onnx" and info["gradcam"] is False
    assert r.status_code == 200, r.text
    expected = imagewise.load(run).predict(images[:4], top_k=2)
    for got, e in zip(r.json()["predictions"], expected, strict=True):
        assert [c["class"] for c in got["top_k"]] == e.classes
        assert [c["probability"] for c in got["top_k"]] == pytest.approx(e.probabilities, abs=1e-4)
    assert "runs an ONNX model" in assert_json_error(cam, 400)


# --- unknown answers and out-of-distribution scores -----------------------------------------


def test_answers_below_min_confidence_are_unknown_with_the_energy_of_predict(
    trained_run: Path, images: list[Path], tmp_path: Path
) -> None:
    run = served_copy(trained_run, tmp_path)
    expected = imagewise.predict(run, [str(p) for p in images], top_k=2, ood="energy")
    confidences = sorted(e.confidence for e in expected)
    assert confidences[-1] - confidences[0] > 1e-3, confidences  # some above P, some below
    threshold = round((confidences[0] + confidences[-1]) / 2, 6)
    flags = ("--min-confidence", str(threshold), "--ood", "energy", "-q")
    with serve_process(run, tmp_path / "server.log", *flags) as url:
        info = httpx.get(url + "/v1/info").json()
        files = [("file", (p.name, p.read_bytes())) for p in images]
        r = httpx.post(url + "/v1/predict", files=files, params={"top_k": 2}, timeout=30)
    assert info["min_confidence"] == threshold and info["ood_score"] == "energy"
    assert r.status_code == 200, r.text
    got = r.json()["predictions"]
    answers = [e.label if e.confidence >= threshold else "unknown" for e in expected]
    assert [p["answer"] for p in got] == answers and "unknown" in answers
    assert any(a != "unknown" for a in answers)
    for p, e in zip(got, expected, strict=True):
        assert p["ood_score"] == pytest.approx(e.ood_score, abs=1e-5)
        assert [c["class"] for c in p["top_k"]] == e.classes  # the top-k stay as they were


def test_a_bad_min_confidence_is_one_line_and_exit_2(
    trained_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["serve", str(trained_run), "--port", "0", "--min-confidence", "1.5"]
    code, out, err = run_cli(args, capsys)
    assert (code, out) == (2, "")
    assert len(err.strip().splitlines()) == 1 and "--min-confidence" in err and "1.5" in err


def test_an_onnx_server_with_unknown_answers_and_energy_imports_no_torch(
    trained_run: Path, tmp_path: Path, images: list[Path]
) -> None:
    from imagewise.edge import load_model
    from test_edge import HEAVY, SERVE_ONE_REQUEST

    onnx = imagewise.export(served_copy(trained_run, tmp_path)).path
    flags = '"--threads", "1", "--min-confidence", "0.5", "--ood", "energy"]'
    script = SERVE_ONE_REQUEST.replace('"--threads", "1"]', flags)
    assert script != SERVE_ONE_REQUEST
    image, out = next(str(p) for p in images if p.suffix == ".png"), tmp_path / "served.json"
    cmd = [sys.executable, "-c", script, str(onnx), image, str(out), *HEAVY]
    subprocess.run(cmd, capture_output=True, timeout=120)
    served = json.loads(out.read_text())
    assert served["heavy"] == []
    assert served["info"]["min_confidence"] == 0.5 and served["info"]["ood_score"] == "energy"
    (got,) = served["answer"]["predictions"]
    (expected,) = load_model(onnx).predict([image], top_k=2, min_confidence=0.5, ood="energy")
    assert got["answer"] == expected.answer
    assert got["ood_score"] == pytest.approx(expected.ood_score, abs=1e-5)


# --- the address, slow and malformed requests, the docs -------------------------------------


def test_a_busy_port_or_a_bad_host_is_one_line_and_exit_2_before_the_model_loads(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        # A folder that holds no run: the port is refused before the model would be read.
        for run in (trained_run, tmp_path / "not-a-run"):
            code, out, err = run_cli(["serve", str(run), "--port", str(port)], capsys)
            assert (code, out) == (2, "")
            assert err.count("\n") == 1, err
            assert f"port {port} on 127.0.0.1 is already in use" in err and "--port" in err
    for host, says in (
        ("192.0.2.1", "not an address of this machine"),  # TEST-NET-1: nobody's address
        ("no-such-host.invalid", "not an IP address or a known host name"),
    ):
        code, out, err = run_cli(["serve", str(tmp_path), "--host", host], capsys)
        assert (code, out) == (2, "") and err.count("\n") == 1, err
        assert says in err and "--host 127.0.0.1" in err


def test_an_ipv6_loopback_host_gets_a_bracketed_url() -> None:
    from imagewise.serve.server import listen_socket, url_of

    try:
        sock = listen_socket("::1", 0)
    except UserError:
        pytest.skip("this machine has no IPv6 loopback")
    with sock:
        assert sock.family == socket.AF_INET6
        assert url_of(sock) == f"http://[::1]:{sock.getsockname()[1]}"


def _answer_of(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of the one answer on ``sock`` (its Content-Length bytes)."""
    data = b""
    while b"\r\n\r\n" not in data and (chunk := sock.recv(65536)):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines)}
    while len(body) < int(headers["content-length"]) and (chunk := sock.recv(65536)):
        body += chunk
    return int(status_line.split()[1]), headers, body


def _closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closes the connection now (uvicorn keeps an idle one 5 s)."""
    sock.settimeout(2)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False


def _json_error_of(answer: tuple[int, dict[str, str], bytes], status: int) -> str:
    code, headers, body = answer
    assert code == status, answer
    assert headers["content-type"] == "application/json" and headers["connection"] == "close"
    error = json.loads(body)
    assert list(error) == ["error"] and error["error"]
    return error["error"]


def _send_slowly(
    url: str, body_bytes: int, chunk: bytes, pause: float, keep_alive: bool = True
) -> tuple[int, tuple, bool]:
    """POST a raw image body of ``body_bytes``: ``chunk`` with the headers, then one every
    ``pause`` s until the server answers; returns the bytes sent, the answer and whether the
    server then closed the connection."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    close = "" if keep_alive else "Connection: close\r\n"
    head = (
        f"POST /v1/predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/png\r\n"
        f"Content-Length: {body_bytes}\r\n{close}\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head.encode() + chunk)
        sent = len(chunk)
        while sent < body_bytes and not select.select([sock], [], [], pause)[0]:
            sock.sendall(chunk[: body_bytes - sent])
            sent += len(chunk)
        answer = _answer_of(sock)
        return sent, answer, _closed_by_server(sock)


def test_a_body_sent_byte_by_byte_is_cut_off_with_408_and_the_connection_closed() -> None:
    with running(create_app(SlowClassifier(0.0), ServeSettings(body_timeout_s=1.0))) as (url, _):
        sent, answer, closed = _send_slowly(url, 10_000, b"x", pause=0.25)
        assert "too slowly" in _json_error_of(answer, 408)
        assert closed and sent < 100  # cut off after about a second, not after 10000 bytes
        # a steady slow upload earns time (1 s per 500 bytes): it is read whole, then judged
        sent, answer, _ = _send_slowly(url, 2_000, b"y" * 500, pause=0.4, keep_alive=False)
        assert sent == 2_000 and answer[0] == 415, answer
        ok = httpx.post(url + "/v1/predict", files={"file": ("a.png", TINY_PNG)})
    assert ok.status_code == 200, ok.text


MALFORMED = b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n"


def _send_raw(url: str, request: bytes) -> tuple[tuple[int, dict[str, str], bytes], bool]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(request)
        return _answer_of(sock), _closed_by_server(sock)


def test_a_malformed_request_gets_a_json_400(server: str, client: httpx.Client) -> None:
    answer, closed = _send_raw(server, MALFORMED)
    assert "not valid HTTP" in _json_error_of(answer, 400) and closed
    assert client.get("/healthz").status_code == 200


def test_the_h11_protocol_answers_malformed_requests_in_json_too() -> None:
    from imagewise.serve.server import JsonH11Protocol

    with running(create_app(SlowClassifier(0.0)), http=JsonH11Protocol) as (url, _):
        answer, closed = _send_raw(url, MALFORMED)
        assert httpx.get(url + "/healthz").status_code == 200
    assert "not valid HTTP" in _json_error_of(answer, 400) and closed


def test_docs_use_only_assets_of_this_server(client: httpx.Client) -> None:
    docs = client.get("/docs")
    assert docs.status_code == 200 and docs.headers["content-type"].startswith("text/html")
    assert "http://" not in docs.text and "https://" not in docs.text and "//" not in docs.text
    assets = re.findall(r"(?:src|href)=\"([^\"]+)\"", docs.text)
    kinds = {".js": "javascript", ".css": "text/css", ".png": "image/png"}
    assert sorted(Path(a).suffix for a in assets) == sorted(kinds)
    for asset in assets:
        assert asset.startswith("/"), asset
        r = client.get(asset)
        assert r.status_code == 200 and len(r.content) > 1000
        assert kinds[Path(asset).suffix] in r.headers["content-type"]


def test_openapi_asks_for_at_least_one_file(client: httpx.Client) -> None:
    body = client.get("/openapi.json").json()["paths"]["/v1/predict"]["post"]["requestBody"]
    field = body["content"]["multipart/form-data"]["schema"]["properties"]["file"]
    assert field["type"] == "array" and field["minItems"] == 1


class NaNClassifier(SlowClassifier):
    """A model that loaded fine but answers NaN for the images it is sent."""

    def scores(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        nan = np.full((len(images), 2), np.nan, np.float32)
        return nan, nan


def test_outputs_that_are_not_finite_get_a_json_500_not_null_probabilities() -> None:
    with running(create_app(NaNClassifier(0.0), ServeSettings())) as (url, _):
        r = httpx.post(url + "/v1/predict", files={"file": ("a.png", TINY_PNG)})
    assert "not finite" in assert_json_error(r, 500)
