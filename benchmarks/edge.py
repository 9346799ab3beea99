"""Edge runtime (issue 21): the time and memory of predicting one image with an exported ONNX
file, and of an idle server, without PyTorch.

Each measurement is a fresh process; wall time from start to exit and peak resident memory
(GNU ``/usr/bin/time``'s maximum resident set size). Per model, interleaved, ``--repeats`` rounds
(median reported), after one warm-up round that fills the page cache:

- ``edge``: ``imagewise predict MODEL one.png`` (this install; the ONNX path imports no torch);
- ``runtime venv``: the same command from a virtual environment holding only
  ``pip install "imagewise[runtime]"`` (``--runtime-venv DIR``, made if missing);
- ``torch OnnxClassifier``: ``imagewise.load(MODEL).predict([one.png])``, the path
  ``imagewise predict model.onnx`` took before (PyTorch imported, ONNX Runtime session);
- ``bare onnxruntime``: a script of numpy, Pillow and one ONNX Runtime session, the floor.

Serving: ``imagewise serve MODEL --port 0``, resident memory (``VmRSS``) once ``/readyz``
answers and again after one request, against the same server started after ``import torch``
(what ``serve model.onnx`` held before).

    .venv/bin/python benchmarks/edge.py --runtime-venv /tmp/iw-runtime \\
        runs/edge-bench/fm-fast/model.onnx runs/fm-fast/export/model.int8.onnx \\
        runs/edge-bench/r18/model.onnx runs/r18/export/model.int8.onnx
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import venv
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

OLD_PATH = """
import sys, imagewise
print(imagewise.load(sys.argv[1]).predict([sys.argv[2]], top_k=5)[0])
"""

BARE_ORT = """
import json, sys
import numpy as np, onnxruntime as ort
from PIL import Image
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
meta = session.get_modelmeta().custom_metadata_map
size, channels = int(meta["img_size"]), int(meta["channels"])
img = Image.open(sys.argv[2]).convert("L" if channels == 1 else "RGB").resize((size, size))
x = np.asarray(img, np.float32).reshape(size, size, channels).transpose(2, 0, 1)[None] / 255
mean = np.asarray(json.loads(meta["mean"]), np.float32).reshape(1, -1, 1, 1)
std = np.asarray(json.loads(meta["std"]), np.float32).reshape(1, -1, 1, 1)
probs = session.run(["probabilities"], {session.get_inputs()[0].name: (x - mean) / std})[0]
print(json.loads(meta["classes"])[int(probs.argmax())])
"""


def one_image(model: Path, folder: Path) -> Path:
    """A Fashion-MNIST test image (random pixels without it) as a PNG at the model's size."""
    import onnxruntime as ort

    meta = ort.InferenceSession(str(model)).get_modelmeta().custom_metadata_map
    size, channels = int(meta["img_size"]), int(meta["channels"])
    path = folder / f"one-{size}px-{channels}ch.png"
    if path.exists():
        return path
    try:
        from imagewise.data.builtin import find_fashion_mnist
        from imagewise.data.idx import read_idx

        found = find_fashion_mnist()
        assert found is not None
        pixels = read_idx(next(found.glob("t10k-images*")))[0]
    except Exception:
        pixels = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    img = Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR)
    img.convert("L" if channels == 1 else "RGB").save(path)
    return path


def measure(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak resident MB of one run of ``cmd`` (must exit 0).

    The peak comes from GNU time, a small process that forks the command: a child forked from
    this (large) process would report this process's size as its own peak (Linux keeps the
    larger of the two in ``ru_maxrss`` across fork and exec).
    """
    with tempfile.NamedTemporaryFile("r") as peak, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        done = subprocess.run(
            ["/usr/bin/time", "-f", "%M", "-o", peak.name, *cmd],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        wall = time.perf_counter() - start
        err.seek(0)
        assert done.returncode == 0, f"{cmd} exited {done.returncode}: {err.read().decode()}"
        return wall, int(peak.read().split()[-1]) / 1024  # KiB


def runtime_venv(folder: Path) -> Path:
    """A virtual environment with only imagewise[runtime] (made on first use)."""
    if not (folder / "bin" / "imagewise").exists():
        source = folder.with_name(folder.name + "-src")
        shutil.rmtree(source, ignore_errors=True)
        shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__"))
        for name in ("pyproject.toml", "README.md"):
            shutil.copy(REPO / name, source / name)
        venv.create(folder, with_pip=True)
        pip = [str(folder / "bin" / "python"), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, f"{source}[runtime]"], check=True)
    gone = subprocess.run(
        [str(folder / "bin" / "python"), "-c", "import torch"], capture_output=True
    )
    assert gone.returncode != 0, "the runtime venv has torch"
    return folder


def predict_commands(model: Path, image: Path, small: Path | None) -> dict[str, list[str]]:
    py = sys.executable
    commands = {
        "edge": [str(BIN / "imagewise"), "predict", str(model), str(image)],
        "torch OnnxClassifier": [py, "-c", OLD_PATH, str(model), str(image)],
        "bare onnxruntime": [py, "-c", BARE_ORT, str(model), str(image)],
    }
    if small:
        commands["runtime venv"] = [str(small / "bin" / "imagewise"), *commands["edge"][1:]]
    return commands


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status)[1]) / 1024


def serve_memory(model: Path, image: Path, torch_first: bool) -> tuple[float, float]:
    """Resident MB of ``imagewise serve MODEL`` once ready, and after one request."""
    main = "import imagewise.cli, sys; sys.exit(imagewise.cli.main(sys.argv[1:]))"
    code = ("import torch; " if torch_first else "") + main
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "serve", str(model), "--port", "0", "-q"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        while not (found := re.search(r" at (http://\S+)/ ", proc.stderr.readline())):
            assert proc.poll() is None, "the server exited"
        url = found[1]
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(url + "/readyz", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "the server did not get ready"
                time.sleep(0.1)
        time.sleep(1.0)  # idle
        idle = rss_mb(proc.pid)
        request = urllib.request.Request(
            url + "/v1/predict", data=image.read_bytes(), headers={"Content-Type": "image/png"}
        )
        urllib.request.urlopen(request, timeout=30).read()
        return idle, rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)


def machine() -> dict[str, Any]:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    name = re.search(r"Model name:\s+(.*)", lscpu)
    return {
        "cpu": name[1].strip() if name else "?",
        "cpus": len(os.sched_getaffinity(0)),
        "loadavg": os.getloadavg(),
        "python": sys.version.split()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--runtime-venv", type=Path, help="venv with only imagewise[runtime]")
    parser.add_argument("--work", type=Path, default=Path("/tmp/edge-bench"))
    parser.add_argument("--out", type=Path, default=Path("runs/edge-bench/results.json"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    small = runtime_venv(args.runtime_venv) if args.runtime_venv else None
    results: dict[str, Any] = {"before": machine(), "predict": {}, "serve": {}}
    for model in args.models:
        image = one_image(model, args.work)
        commands = predict_commands(model, image, small)
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
        for round_ in range(args.repeats + 1):  # round 0 warms the page cache
            for name, cmd in commands.items():
                wall, peak = measure(cmd)
                if round_:
                    runs[name].append((wall, peak))
        serve: dict[str, list[tuple[float, float]]] = {"edge": [], "torch imported": []}
        for _ in range(args.repeats):
            serve["edge"].append(serve_memory(model, image, torch_first=False))
            serve["torch imported"].append(serve_memory(model, image, torch_first=True))
        key = str(model)
        results["predict"][key] = {
            name: {
                "wall_s": statistics.median(w for w, _ in values),
                "peak_rss_mb": statistics.median(m for _, m in values),
                "runs": values,
            }
            for name, values in runs.items()
        }
        results["serve"][key] = {
            name: {
                "idle_rss_mb": statistics.median(i for i, _ in values),
                "after_request_rss_mb": statistics.median(a for _, a in values),
            }
            for name, values in serve.items()
        }
        print(json.dumps({key: results["predict"][key], "serve": results["serve"][key]}))
    results["after"] = machine()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(table(results))


def table(results: dict[str, Any]) -> str:
    """The results as the Markdown rows BENCHMARKS.md shows."""
    lines = [
        "| model | command | wall (median) | peak RSS (median) |",
        "|---|---|---:|---:|",
    ]
    for model, by_command in results["predict"].items():
        for name, r in by_command.items():
            lines.append(f"| {model} | {name} | {r['wall_s']:.2f} s | {r['peak_rss_mb']:.0f} MB |")
    lines += ["", "| model | server | idle RSS | after one request |", "|---|---|---:|---:|"]
    for model, by_server in results["serve"].items():
        for name, r in by_server.items():
            lines.append(
                f"| {model} | {name} | {r['idle_rss_mb']:.0f} MB | "
                f"{r['after_request_rss_mb']:.0f} MB |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
