"""Every deployment target of ``imagewise export`` on this CPU: speed, memory, size, agreement.

For each run given (e.g. the default Fashion-MNIST model and a resnet18 at 224 px), a copy is
exported to every format whose converter is installed, float32 and INT8 (and float16 where it
is offered), exactly as a user would (``imagewise.export``, which checks each file against
PyTorch on the run's validation images: the agreement and accuracy columns are that check's).
Then each engine runs in a fresh process of its own (so that peak memory is its own: the
runtime's import, the model, the buffers), loading the file the way ``imagewise predict`` does
(``imagewise.edge.runtimes.load_model``, no PyTorch; the run folder through ``imagewise.load``
for PyTorch) and timing ``scores`` (preprocessed uint8 images in, probabilities out) at batch 1
and batch 64. Engines take turns, round after round, so a busy moment hits them alike; medians
over the rounds.

    .venv/bin/python benchmarks/deploy_targets.py --run runs/fm runs/r18 [--rounds 3]

``--worker`` is the per-engine process (internal).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ENGINES = (
    ("pytorch", "float32"),
    ("onnx", "float32"),
    ("onnx", "int8"),
    ("openvino", "float32"),
    ("openvino", "float16"),
    ("openvino", "int8"),
    ("tflite", "float32"),
    ("tflite", "int8"),
    ("executorch", "float32"),
    ("executorch", "int8"),
    ("web", "float32"),
)
HERE = Path(__file__).resolve().parent


def worker(path: str, batches: list[int], seconds: float, threads: int) -> dict[str, Any]:
    """One engine in this process: load, warm up, time ``scores`` at each batch size."""
    import numpy as np

    start = time.perf_counter()
    if Path(path).is_dir() and (Path(path) / "meta.json").is_file():
        import torch

        import imagewise

        torch.set_num_threads(threads)
        model: Any = imagewise.load(path)
    elif Path(path).is_dir():  # the web folder: the page in headless Chromium
        from imagewise.export.targets import TARGETS

        model = TARGETS["web"].load(Path(path), threads)
    else:
        from imagewise.edge.runtimes import load_model

        model = load_model(path, threads=threads, check=False)
    load_s = time.perf_counter() - start
    pre = model.preprocessing
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {"load_s": load_s}
    for batch in batches:
        images = rng.integers(0, 256, (batch, pre.channels, pre.img_size, pre.img_size), np.uint8)
        model.scores(images)  # warm-up: first-call allocations and kernel choices
        times: list[float] = []
        until = time.perf_counter() + seconds
        while time.perf_counter() < until or len(times) < 3:
            t = time.perf_counter()
            model.scores(images)
            times.append(time.perf_counter() - t)
        out[f"batch{batch}_ms"] = statistics.median(times) * 1000
    out["peak_rss_mb"] = peak_rss_mb()
    out["torch_imported"] = "torch" in sys.modules
    return out


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM). Not ``ru_maxrss``: Linux carries that over
    from the parent through fork and exec, so every worker would report the exporter's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux


def run_worker(path: Path, seconds: float, threads: int) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(path),
           "--seconds", str(seconds), "--threads", str(threads)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def export_all(run: Path, into: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """Every engine's file from a copy of ``run``, with its export check (parity record)."""
    import imagewise
    from imagewise.errors import UserError
    from imagewise.export.targets import TARGETS

    copy = into / run.name
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("export"))
    files: dict[tuple[str, str], dict[str, Any]] = {("pytorch", "float32"): {"path": copy}}
    for fmt, precision in ENGINES[1:]:
        target = TARGETS[fmt]
        if precision not in target.precisions or target.missing():
            continue
        try:
            result = imagewise.export(copy, fmt, precision=precision)
        except UserError as exc:
            files[(fmt, precision)] = {"error": str(exc)}
            continue
        files[(fmt, precision)] = {"path": result.path, "parity": result.parity}
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", nargs="+", default=[])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="runs/deploy-targets.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, [1, 64], args.seconds, args.threads)))
        return
    sys.path.insert(0, str(HERE))
    from foundation import machine  # benchmarks/foundation.py: cores and CPU model

    report: dict[str, Any] = {"machine": machine(), "runs": {}}
    with tempfile.TemporaryDirectory(prefix="deploy-") as tmp:
        for run in map(Path, args.run):
            files = export_all(run, Path(tmp))
            timings: dict[tuple[str, str], list[dict[str, Any]]] = {k: [] for k in files}
            for _ in range(args.rounds):
                for key, info in files.items():
                    if "path" in info:
                        timings[key].append(run_worker(info["path"], args.seconds, args.threads))
            report["runs"][str(run)] = rows = []
            for key, info in files.items():
                rows.append(summarize(key, info, timings[key]))
            print_table(str(run), rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(f"\n{report['machine']}\nfigures: {args.out}")


def summarize(key: tuple[str, str], info: dict[str, Any], runs: list[dict[str, Any]]) -> dict:
    ok = [r for r in runs if "error" not in r]
    row: dict[str, Any] = {"engine": key[0], "precision": key[1]}
    if "error" in info or not ok:
        row["error"] = info.get("error") or (runs[0]["error"] if runs else "not run")
        return row
    path = Path(info["path"])
    if path.is_dir():
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        if key[0] == "pytorch":
            size = (path / "model.safetensors").stat().st_size
    else:
        parts = [path, path.with_suffix(".bin")] if path.suffix == ".xml" else [path]
        size = sum(p.stat().st_size for p in parts)
    b1 = statistics.median(r["batch1_ms"] for r in ok)
    b64 = statistics.median(r["batch64_ms"] for r in ok)
    parity = info.get("parity", {})
    row.update(
        batch1_ms=b1, batch64_img_s=64 / (b64 / 1000),
        peak_rss_mb=max(r["peak_rss_mb"] for r in ok),
        size_mb=size / 1e6, torch_imported=ok[0]["torch_imported"],
        agreement=parity.get("top1_agreement"), accuracy=parity.get("accuracy_exported"),
        accuracy_pytorch=parity.get("accuracy_pytorch"), runtime=parity.get("runtime"),
    )  # fmt: skip
    return row


def print_table(run: str, rows: list[dict[str, Any]]) -> None:
    print(f"\n{run}")
    print("| engine | precision | batch-1 ms | batch-64 img/s | peak RSS MB | file MB | "
          "top-1 agreement | accuracy | torch imported |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['engine']} | {r['precision']} | {r['error'][:90]} | | | | | | |")
            continue
        agree = "-" if r["agreement"] is None else f"{r['agreement']:.2%}"
        acc = "-" if r["accuracy"] is None else f"{r['accuracy']:.2%}"
        print(f"| {r['engine']} | {r['precision']} | {r['batch1_ms']:.2f} | "
              f"{r['batch64_img_s']:,.0f} | {r['peak_rss_mb']:.0f} | {r['size_mb']:.2f} | "
              f"{agree} | {acc} | {'yes' if r['torch_imported'] else 'no'} |")  # fmt: skip


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()
