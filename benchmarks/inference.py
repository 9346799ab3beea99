"""Inference speed on the CPU: PyTorch eager vs ONNX Runtime float32 vs ONNX Runtime INT8.

Each run given by --run (e.g. the Fashion-MNIST default, resnet9_tiny at 28 px, and a resnet18
trained at 224 px), exported with ``imagewise.export`` as a user would (float32, then
``int8=True``) from a copy of the run; optionally also a timm resnet18 at 224 px with random
weights (speed does not depend on them; its INT8 version is calibrated on random images).
PyTorch eager is the plain way to run a model: float32, the default (contiguous) memory format,
under ``torch.no_grad``. ONNX Runtime runs the exported files through ``OnnxClassifier``'s
session (CPU provider, all graph optimizations, torch's thread count). Latency is the median
time of one call, throughput the batch over that median; the engines take turns (eager,
float32, INT8, eager, ...) so that a busy moment on the machine hits them alike. Last, what
INT8 costs: accuracy on the run's test split, PyTorch vs ONNX Runtime.

    .venv/bin/python benchmarks/inference.py --run runs/fm runs/r18-224 --no-resnet18

Several runs may be given (each gets speed and accuracy rows); the random-weights resnet18 row is
for when no trained 224 px run is at hand.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from foundation import machine  # benchmarks/foundation.py: cores and CPU model

import imagewise
from imagewise.data.transforms import Preprocessing
from imagewise.export.metadata import build_metadata
from imagewise.export.onnx import INPUT_NAME, to_onnx
from imagewise.export.quantize import quantize_int8
from imagewise.export.verify import parity, run_images
from imagewise.models import create_model
from imagewise.predict.exported import OnnxClassifier
from imagewise.predict.predictor import load_run

ENGINES = ("PyTorch eager", "ORT float32", "ORT INT8")
Engine = tuple[Callable[[Any], Any], Callable[[torch.Tensor], Any]]  # (run, prepare input)


def eager(model: torch.nn.Module) -> Engine:
    model = model.to(memory_format=torch.contiguous_format).eval()

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(x)

    return run, lambda x: x.contiguous()


def onnx_runtime(path: Path) -> Engine:
    clf = OnnxClassifier(path)
    return (
        lambda x: clf.session.run(None, {clf.input_name: x}),
        lambda x: x.numpy(),
    )


def measure(
    engines: dict[str, Engine], x: torch.Tensor, repeats: int, seconds: float
) -> dict[str, float]:
    """Median seconds per call of each engine on batch ``x``, the engines taking turns."""
    inputs = {name: prepare(x) for name, (_, prepare) in engines.items()}
    for name, (run, _) in engines.items():
        for _ in range(3):
            run(inputs[name])
    calls: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(repeats):
        for name, (run, _) in engines.items():
            start = time.perf_counter()
            while time.perf_counter() - start < seconds or len(calls[name]) < 3:
                t = time.perf_counter()
                run(inputs[name])
                calls[name].append(time.perf_counter() - t)
    return {name: statistics.median(times) for name, times in calls.items()}


def run_engines(run: Path, work: Path) -> tuple[dict[str, Engine], dict[str, Path]]:
    """The run's model three ways; the exports come from a copy, so the run stays untouched."""
    copy = work / "run"
    copy.mkdir()
    for name in ("config.yaml", "meta.json", "model.safetensors"):
        shutil.copy(run / name, copy / name)
    files = {
        "ORT float32": imagewise.export(copy).path,
        "ORT INT8": imagewise.export(copy, int8=True).path,
    }
    engines = {"PyTorch eager": eager(load_run(run).model)}
    engines.update({name: onnx_runtime(path) for name, path in files.items()})
    return engines, files


def resnet18_float32(work: Path, size: int = 224) -> tuple[torch.nn.Module, Preprocessing, Path]:
    """timm resnet18 with random weights at ``size`` px, 1000 classes, and its float32 ONNX
    file in ``work`` (also used by roofline.py)."""
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=1000, in_chans=3, img_size=size).eval()
    pre = Preprocessing(size, 3, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    meta = {
        "classes": [str(i) for i in range(1000)],
        "model": {"name": "resnet18"},
        "preprocessing": vars(pre),
    }
    fp32 = work / "resnet18.onnx"
    proto = to_onnx(model, pre, 1.0, False, build_metadata(meta, raw_input=False, int8=False))
    fp32.write_bytes(proto.SerializeToString())
    return model, pre, fp32


def resnet18_engines(work: Path, size: int = 224) -> dict[str, Engine]:
    """timm resnet18 with random weights at ``size`` px, 1000 classes."""
    model, pre, fp32 = resnet18_float32(work, size)
    int8 = work / "resnet18.int8.onnx"
    images = torch.randint(0, 256, (32, 3, size, size), dtype=torch.uint8)
    batches = [pre.normalize(chunk).numpy() for chunk in images.split(8)]
    quantize_int8(fp32, int8, batches, INPUT_NAME)
    return {
        "PyTorch eager": eager(model),
        "ORT float32": onnx_runtime(fp32),
        "ORT INT8": onnx_runtime(int8),
    }


def speed_rows(
    label: str, engines: dict[str, Engine], shape: tuple[int, int, int], args: argparse.Namespace
) -> list[str]:
    rows = []
    for batch in args.batch_sizes:
        x = torch.randn(batch, *shape)
        seconds = measure(engines, x, args.repeats, args.seconds)
        base = seconds["PyTorch eager"]
        cells = []
        for name in ENGINES:
            ratio = "" if name == "PyTorch eager" else f" ({base / seconds[name]:.1f}x)"
            cells.append(f"{batch / seconds[name]:,.0f}{ratio}")
        latency = " / ".join(f"{seconds[name] * 1000:.2f}" for name in ENGINES)
        rows.append(f"| {label} | {batch} | {' | '.join(cells)} | {latency} |")
        print(rows[-1], flush=True)
    return rows


def accuracy_row(run: Path, files: dict[str, Path]) -> str:
    """Accuracy on the run's test split: PyTorch, ORT float32 and ORT INT8."""
    reference = load_run(run)
    images, labels, split, source = run_images(
        run, reference.preprocessing, reference.classes, ("test",), 10**9
    )
    fp32 = parity(reference, imagewise.load(files["ORT float32"]), images, labels)
    int8 = parity(reference, imagewise.load(files["ORT INT8"]), images, labels)
    return (
        f"| {run.name} ({reference.meta['model']['name']}) | {len(labels):,} {split} images of "
        f"{source} | {fp32['accuracy_pytorch']:.2%} | {fp32['accuracy_exported']:.2%} | "
        f"{int8['accuracy_exported']:.2%} | {int8['accuracy_drop'] * 100:+.2f} | "
        f"{int8['top1_agreement']:.2%} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, nargs="+",
                        help="trained run folders (e.g. runs/fm runs/r18-224)")  # fmt: skip
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--repeats", type=int, default=5, help="turns per engine (5)")
    parser.add_argument("--seconds", type=float, default=1.0, help="seconds per turn (1.0)")
    parser.add_argument("--no-resnet18", action="store_true",
                        help="skip the random-weights resnet18 at 224 px")  # fmt: skip
    args = parser.parse_args()
    print(f"machine: {machine()}; {torch.get_num_threads()} threads; torch {torch.__version__}\n")
    print("| model | batch | PyTorch eager img/s | ORT float32 img/s | ORT INT8 img/s | "
          "latency ms (eager / float32 / INT8) |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    accuracy = []
    with tempfile.TemporaryDirectory(prefix="imagewise-bench-") as tmp:
        for i, name in enumerate(args.run):
            run, work = Path(name), Path(tmp) / str(i)
            work.mkdir()
            meta = load_run(run).meta
            pre = meta["preprocessing"]
            shape = (pre["channels"], pre["img_size"], pre["img_size"])
            engines, files = run_engines(run, work)
            speed_rows(f"{meta['model']['name']} {pre['img_size']} px", engines, shape, args)
            accuracy.append(accuracy_row(run, files))
        if not args.no_resnet18:
            work = Path(tmp) / "resnet18"
            work.mkdir()
            speed_rows("resnet18 224 px (random weights)", resnet18_engines(work), (3, 224, 224),
                       args)  # fmt: skip
        print("\n| run | images | PyTorch | ORT float32 | ORT INT8 | INT8 cost (points) | "
              "INT8 top-1 agreement |")  # fmt: skip
        print("|---|---|---|---|---|---|---|")
        for row in accuracy:
            print(row, flush=True)


if __name__ == "__main__":
    main()
