"""Serving throughput: requests/s and latency of `imagewise serve`, with and without micro-batching.

The server runs as a subprocess on loopback; a separate client process (bare asyncio streams,
keep-alive HTTP/1.1) keeps C requests in flight for a fixed time, C = 1, 8 and 32, each request
one Fashion-MNIST test image (a PNG at the model's input size) sent as the raw body. Reported per
concurrency: requests/s, p50 and p99 latency, 5xx answers, the mean images per model call (from
/metrics) and the ratio batching / no batching. The client shares the machine's cores with the
server, so on a small machine it takes CPU the server would otherwise have: the figures are a
lower bound.

    .venv/bin/python benchmarks/serve_load.py --run runs/fm --seconds 5 --repeats 3
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import resource
import socket
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np


def test_images(run: Path, n: int = 256) -> list[bytes]:
    """PNGs of Fashion-MNIST test images at the run's input size (random pixels without them)."""
    from PIL import Image

    pre = json.loads((run / "meta.json").read_text())["preprocessing"]
    size, mode = pre["img_size"], "L" if pre["channels"] == 1 else "RGB"
    try:
        from imagewise.data.builtin import find_fashion_mnist
        from imagewise.data.idx import read_idx

        folder = find_fashion_mnist()
        pixels = read_idx(folder / "t10k-images-idx3-ubyte.gz")[:n]
    except Exception:  # no dataset here: noise of the right shape serves as well for timing
        pixels = np.random.default_rng(0).integers(0, 255, (n, size, size), dtype=np.uint8)
    out = []
    for arr in pixels:
        buf = io.BytesIO()
        Image.fromarray(arr).convert(mode).resize((size, size)).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


# --- the client process ----------------------------------------------------------------------


class Connection:
    """One keep-alive HTTP/1.1 connection on bare asyncio streams.

    The load generator shares the cores with the server; httpx costs about a millisecond of CPU
    per request, enough to make the client the bottleneck. This client only writes a prepared
    request and reads the status line, headers and body, at a small fraction of that cost.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, content_type: str) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        lines = (await self.reader.readuntil(b"\r\n\r\n")).split(b"\r\n")
        status = int(lines[0].split()[1])
        length, close = 0, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        await self.reader.readexactly(length)
        if close:
            self.writer.close()
            self.writer = None
        return status


async def load(url: str, images: list[bytes], concurrency: int, seconds: float, warmup: float):
    """Keep ``concurrency`` requests in flight; latencies of those sent after the warm-up."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + seconds

    async def user(i: int) -> None:
        conn, n = Connection(host, int(port)), i
        while (sent := time.perf_counter()) < stop_at:
            status = await conn.post("/v1/predict", images[n % len(images)], "image/png")
            n += concurrency
            if sent >= measure_from:
                latencies.append(time.perf_counter() - sent)
                statuses[status] = statuses.get(status, 0) + 1

    await asyncio.gather(*(user(i) for i in range(concurrency)))
    return latencies, statuses, time.perf_counter() - measure_from


def client_main(args: argparse.Namespace) -> None:
    images = test_images(Path(args.run))
    latencies, statuses, elapsed = asyncio.run(
        load(args.url, images, args.concurrency, args.seconds, args.warmup)
    )
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    print(
        json.dumps(
            {
                "latencies": latencies,
                "statuses": statuses,
                "seconds": elapsed,
                "client_cpu_s": cpu.ru_utime + cpu.ru_stime,
            }
        )
    )


# --- the parent: servers and the table -------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(run: str, flags: list[str]):
    port = free_port()
    cmd = [sys.executable, "-m", "imagewise", "serve", run, "--port", str(port), "-q", *flags]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            if proc.poll() is not None:
                raise SystemExit(f"the server exited:\n{proc.stderr.read()}")
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def batch_stats(url: str) -> tuple[float, float]:
    """(model calls, images) so far, from the server's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    values = {
        s.name: s.value
        for family in text_string_to_metric_families(httpx.get(url + "/metrics").text)
        for s in family.samples
    }
    return values["imagewise_batch_size_count"], values["imagewise_batch_size_sum"]


def measure(url: str, args: argparse.Namespace, concurrency: int) -> dict[str, Any]:
    calls0, images0 = batch_stats(url)
    cmd = [
        sys.executable, __file__, "client", "--url", url, "--run", args.run,
        "--concurrency", str(concurrency), "--seconds", str(args.seconds),
        "--warmup", str(args.warmup),
    ]  # fmt: skip
    result = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    calls1, images1 = batch_stats(url)
    lat = np.array(result["latencies"]) * 1000
    statuses = {int(k): v for k, v in result["statuses"].items()}
    ok = statuses.get(200, 0)
    return {
        "rps": ok / result["seconds"],
        "p50": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
        "p99": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
        "5xx": sum(v for k, v in statuses.items() if k >= 500),
        "other": sum(v for k, v in statuses.items() if k != 200 and k < 500),
        "batch": (images1 - images0) / max(calls1 - calls0, 1),
        "client_cpu": result["client_cpu_s"],
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the repeats of one level; error counts are summed."""
    out = {k: float(np.median([r[k] for r in runs])) for k in ("rps", "p50", "p99", "batch")}
    out.update({k: sum(r[k] for r in runs) for k in ("5xx", "other")})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", nargs="?", default="bench", choices=("bench", "client"))
    parser.add_argument("--run", default="/tmp/iw/fm", help="a trained run folder")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time per level")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--repeats", type=int, default=3, help="turns per level; medians (3)")
    parser.add_argument("--url", help="(client mode) the server")
    parser.add_argument("--server-flags", default="", help="extra flags for imagewise serve")
    args = parser.parse_args()
    if args.mode == "client":
        args.concurrency = args.concurrency[0]
        client_main(args)
        return

    # Both servers stay up (the idle one costs nothing) and take turns level by level, repeat by
    # repeat, so that a busy moment on the shared machine hits both alike; medians are reported.
    setups = {"batching": [], "one at a time": ["--no-batching"]}
    samples: dict[str, dict[int, list[dict[str, Any]]]] = {
        name: {c: [] for c in args.concurrency} for name in setups
    }
    with ExitStack() as stack:
        urls = {
            name: stack.enter_context(server(args.run, flags + args.server_flags.split()))
            for name, flags in setups.items()
        }
        for _ in range(args.repeats):
            for c in args.concurrency:
                for name, url in urls.items():
                    samples[name][c].append(measure(url, args, c))
                    print(f"{name:>14}  c={c:<3} {samples[name][c][-1]}", file=sys.stderr,
                          flush=True)  # fmt: skip
    rows = {
        name: {c: summarize(runs) for c, runs in levels.items()} for name, levels in samples.items()
    }

    print(
        f"{os.cpu_count()} CPU cores; {args.repeats} x {args.seconds:g} s per level after "
        f"{args.warmup:g} s warm-up each; medians (server and client on one machine).\n"
    )
    print(
        "| concurrency | micro-batching req/s | p50 ms | p99 ms | 5xx | images / call "
        "| one at a time req/s | p50 ms | p99 ms | 5xx | batching / one at a time |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in args.concurrency:
        b, o = rows["batching"][c], rows["one at a time"][c]
        print(
            f"| {c} | {b['rps']:.0f} | {b['p50']:.1f} | {b['p99']:.1f} | {b['5xx']} "
            f"| {b['batch']:.1f} | {o['rps']:.0f} | {o['p50']:.1f} | {o['p99']:.1f} | {o['5xx']} "
            f"| {b['rps'] / o['rps']:.2f}x |"
        )


if __name__ == "__main__":
    main()
