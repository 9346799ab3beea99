"""Serve drift: how soon the alarm fires on a shifted stream, how often it fires on an
in-distribution one, and what the checks cost per request.

A copy of the run is served on loopback (``imagewise serve RUN --drift on``: the reference is
fitted on its validation split at start); a client sends one image per request over a
keep-alive connection:

- requests until the alarm: 500 Fashion-MNIST test images fill the window, then a shifted
  stream (scikit-learn's digits resized to 28 px; Fashion-MNIST test images blurred or
  darkened) runs until ``/v1/drift`` shows an alarm; the count is from the first shifted
  request to the image count at which the first check's alarm started. Then test images again
  until the alarm is over.
- false alarms per 10,000 in-distribution requests: Fashion-MNIST test images drawn with
  replacement, through the server (``--requests``), and the same monitor on the same images'
  answers offline for a tighter estimate (``--simulated``).
- cost per request: median latency of a server with and without drift checks, in interleaved
  blocks, and the monitor's own time per image.

    nice .venv/bin/python benchmarks/serve_drift.py --run runs/fm-fast --requests 20000
"""

from __future__ import annotations

import argparse
import io
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
from PIL import Image, ImageFilter

SERVING = re.compile(r" at (http://\S+)/ \(API docs at /docs\)")


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def fashion_test() -> np.ndarray:
    from imagewise.data.builtin import find_fashion_mnist
    from imagewise.data.idx import read_idx

    return read_idx(find_fashion_mnist() / "t10k-images-idx3-ubyte.gz")


def streams(test: np.ndarray, n: int) -> dict[str, list[bytes]]:
    """The shifted streams, ``n`` images each, as PNGs."""
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(1)
    digits = (load_digits().images * (255 / 16)).astype(np.uint8)
    pick = rng.integers(0, len(test), n)
    return {
        "digits (8 px, resized to 28)": [
            png(np.asarray(Image.fromarray(d).resize((28, 28), Image.BILINEAR)))
            for d in digits[rng.integers(0, len(digits), n)]
        ],
        "blurred (Gaussian, radius 1.5)": [
            png(np.asarray(Image.fromarray(a).filter(ImageFilter.GaussianBlur(1.5))))
            for a in test[pick]
        ],
        "darkened (pixels x 0.5)": [png((a * 0.5).astype(np.uint8)) for a in test[pick]],
    }


@contextmanager
def server(run: Path, log: Path, *flags: str) -> Iterator[str]:
    cmd = [sys.executable, "-m", "imagewise", "serve", str(run), "--port", "0", *flags]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while not (found := SERVING.search(log.read_text())):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start:\n{log.read_text()}")
            time.sleep(0.2)
        url = found[1]
        while True:
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(15)


def send(client: httpx.Client, body: bytes) -> None:
    r = client.post("/v1/predict", content=body, headers={"content-type": "image/png"})
    assert r.status_code == 200, r.text


def drift(client: httpx.Client) -> dict:
    return client.get("/v1/drift").json()


def until_alarm(client: httpx.Client, images: list[bytes], alarm: bool) -> tuple[int, list[str]]:
    """Send images until the alarm is on (``alarm``) or over; the requests it took (from the
    first image sent to the image count the first alarm started at) and the checks on."""
    start = drift(client)["images_seen"]
    for i, body in enumerate(images, 1):
        send(client, body)
        if i % 10 == 0:
            state = drift(client)
            if state["alarm"] == alarm:
                on = [c for c in state["checks"] if c["alarm"]]
                if not alarm:
                    return state["checked_at"] - start, []
                first = min(c["since_image"] for c in on)
                return first - start, [c["name"] for c in on if c["since_image"] == first]
    return -1, []


def false_alarms_served(client: httpx.Client, test: list[bytes], n: int) -> tuple[int, int]:
    rng = np.random.default_rng(2)
    before = sum(c["alarms"] for c in drift(client)["checks"])
    for i in rng.integers(0, len(test), n):
        send(client, test[i])
    return sum(c["alarms"] for c in drift(client)["checks"]) - before, n


def false_alarms_simulated(run: Path, n: int) -> tuple[int, int, float]:
    """The monitor offline on the test images' answers, drawn with replacement, one per call:
    (alarms, images, microseconds per image)."""
    import imagewise
    from imagewise.edge.drift import DriftMonitor
    from imagewise.predict.drift import run_drift_reference

    model = imagewise.load(run)
    test = fashion_test()
    logits, probs = model.scores(test[:, None])
    starts: list[str] = []
    monitor = DriftMonitor(
        run_drift_reference(model, run), on_change=lambda c: c.alarm and starts.append(c.name)
    )
    pick = np.random.default_rng(3).integers(0, len(test), n)
    t = time.perf_counter()
    for i in pick:
        monitor.observe(logits[i : i + 1], probs[i : i + 1])
    return len(starts), n, (time.perf_counter() - t) / n * 1e6


def latency(urls: dict[str, str], test: list[bytes], blocks: int, per_block: int) -> dict:
    """Median ms per request for each server, in interleaved blocks (the order alternating)."""
    times: dict[str, list[float]] = {k: [] for k in urls}
    clients = {k: httpx.Client(base_url=u, timeout=30) for k, u in urls.items()}
    for b in range(blocks):
        for name, client in list(clients.items())[:: 1 if b % 2 else -1]:
            for body in test[b * per_block : (b + 1) * per_block]:
                t = time.perf_counter()
                send(client, body)
                times[name].append(time.perf_counter() - t)
    return {k: 1000 * float(np.median(v)) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--simulated", type=int, default=1_000_000)
    ap.add_argument("--latency-only", action="store_true", help="only the cost per request")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp())
    run = work / "run"
    shutil.copytree(args.run, run, ignore=shutil.ignore_patterns("tensorboard", "last.ckpt"))
    test = fashion_test()
    test_png = [png(a) for a in test]
    results: dict = {}
    if not args.latency_only:
        results.update(alarms(run, work, test, test_png, args))
    with (
        server(run, work / "on.log", "--drift", "on", "-q") as on,
        server(run, work / "off.log", "--drift", "off", "-q") as off,
    ):
        results["latency_ms"] = latency({"drift on": on, "drift off": off}, test_png, 40, 200)
    print(json.dumps(results, indent=1))
    shutil.rmtree(work)


def alarms(
    run: Path, work: Path, test: np.ndarray, test_png: list[bytes], args: argparse.Namespace
) -> dict:
    """Requests until the alarm per shifted stream, false alarms served and simulated."""
    results: dict = {}
    t = time.perf_counter()
    with server(run, work / "drift.log", "--drift", "on", "-q") as url:
        results["start_with_fit_s"] = round(time.perf_counter() - t, 1)
        with httpx.Client(base_url=url, timeout=30) as client:
            for i in range(500):
                send(client, test_png[i])
            results["streams"] = {}
            for name, images in streams(test, 3000).items():
                n, checks = until_alarm(client, images, True)
                clear, _ = until_alarm(client, test_png[1000:4000], False)
                results["streams"][name] = {"requests": n, "first": checks, "clear": clear}
                print(name, results["streams"][name], flush=True)
            alarms, n = false_alarms_served(client, test_png, args.requests)
            results["served"] = {"alarms": alarms, "requests": n, "per_10k": alarms / n * 1e4}
            print(results["served"], flush=True)
        results["log"] = [
            line for line in (work / "drift.log").read_text().splitlines() if "drift alarm" in line
        ][:6]
    alarms, n, us = false_alarms_simulated(run, args.simulated)
    results["simulated"] = {"alarms": alarms, "images": n, "per_10k": alarms / n * 1e4}
    results["observe_us_per_image"] = round(us, 1)
    print(results["simulated"], us, flush=True)
    return results


if __name__ == "__main__":
    main()
