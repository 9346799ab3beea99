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

With --compare-int8 a fourth engine runs the INT8 file made with the settings used before issue
16 (8-bit weights, ``VNNI_ONLY``; same calibration images), so the table states what the
portable 7-bit weights cost on this CPU in speed and accuracy.

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

import onnx
import torch
from foundation import machine  # benchmarks/foundation.py: cores and CPU model

import imagewise
from imagewise.data.transforms import normalize
from imagewise.edge.spec import InputContract
from imagewise.export import calibration_batches
from imagewise.export.metadata import build_metadata
from imagewise.export.onnx import INPUT_NAME, set_metadata, to_onnx
from imagewise.export.quantize import PORTABLE, VNNI_ONLY, Int8Settings, quantize_int8
from imagewise.export.verify import parity, run_images
from imagewise.models import create_model
from imagewise.predict.exported import OnnxClassifier
from imagewise.predict.predictor import load_run

ENGINES = ("PyTorch eager", "ORT float32", "ORT INT8")
OLD_INT8 = "ORT INT8 8-bit"  # --compare-int8: the settings before issue 16
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


def requantized(fp32: Path, out: Path, batches: list[Any], settings: Int8Settings) -> Path:
    """``fp32`` quantized with ``settings``, carrying the float file's metadata (for loading)."""
    quantize_int8(fp32, out, batches, INPUT_NAME, settings)
    graph = onnx.load(str(out))
    set_metadata(graph, {p.key: p.value for p in onnx.load(str(fp32)).metadata_props})
    onnx.save(graph, str(out))
    return out


def run_engines(
    run: Path, work: Path, compare_int8: bool = False
) -> tuple[dict[str, Engine], dict[str, Path]]:
    """The run's model three ways (four with ``compare_int8``); the exports come from a copy,
    so the run stays untouched."""
    copy = work / "run"
    copy.mkdir()
    for name in ("config.yaml", "meta.json", "model.safetensors"):
        shutil.copy(run / name, copy / name)
    files = {
        "ORT float32": imagewise.export(copy).path,
        "ORT INT8": imagewise.export(copy, int8=True).path,
    }
    if compare_int8:  # the same calibration images as the export's own
        batches = calibration_batches(copy, load_run(copy), raw_input=False)
        old = work / "model.int8-8bit.onnx"
        files[OLD_INT8] = requantized(files["ORT float32"], old, batches, VNNI_ONLY)
    engines = {"PyTorch eager": eager(load_run(run).model)}
    engines.update({name: onnx_runtime(path) for name, path in files.items()})
    return engines, files


def resnet18_float32(work: Path, size: int = 224) -> tuple[torch.nn.Module, InputContract, Path]:
    """timm resnet18 with random weights at ``size`` px, 1000 classes, and its float32 ONNX
    file in ``work`` (also used by roofline.py)."""
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=1000, in_chans=3, img_size=size).eval()
    pre = InputContract(size, 3, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    classes = [str(i) for i in range(1000)]
    metadata = build_metadata("resnet18", classes, pre, 1.0, {}, raw_input=False, int8=False)
    fp32 = work / "resnet18.onnx"
    proto = to_onnx(model, pre, 1.0, False, metadata)
    fp32.write_bytes(proto.SerializeToString())
    return model, pre, fp32


def resnet18_engines(work: Path, size: int = 224, compare_int8: bool = False) -> dict[str, Engine]:
    """timm resnet18 with random weights at ``size`` px, 1000 classes."""
    model, pre, fp32 = resnet18_float32(work, size)
    images = torch.randint(0, 256, (32, 3, size, size), dtype=torch.uint8)
    batches = [normalize(pre, chunk).numpy() for chunk in images.split(8)]
    engines = {
        "PyTorch eager": eager(model),
        "ORT float32": onnx_runtime(fp32),
        "ORT INT8": onnx_runtime(requantized(fp32, work / "int8.onnx", batches, PORTABLE)),
    }
    if compare_int8:
        engines[OLD_INT8] = onnx_runtime(requantized(fp32, work / "old.onnx", batches, VNNI_ONLY))
    return engines


def speed_rows(
    label: str, engines: dict[str, Engine], shape: tuple[int, int, int], args: argparse.Namespace
) -> list[str]:
    rows = []
    for batch in args.batch_sizes:
        x = torch.randn(batch, *shape)
        seconds = measure(engines, x, args.repeats, args.seconds)
        base = seconds["PyTorch eager"]
        cells = []
        for name in engines:
            ratio = "" if name == "PyTorch eager" else f" ({base / seconds[name]:.1f}x)"
            cells.append(f"{batch / seconds[name]:,.0f}{ratio}")
        latency = " / ".join(f"{seconds[name] * 1000:.2f}" for name in engines)
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
    cells = [
        f"{run.name} ({reference.name})", f"{len(labels):,} {split} images of "
        f"{source}", f"{fp32['accuracy_pytorch']:.2%}", f"{fp32['accuracy_exported']:.2%}",
    ]  # fmt: skip
    for name in ("ORT INT8", OLD_INT8)[: len(files) - 1]:
        int8 = parity(reference, imagewise.load(files[name]), images, labels)
        cells += [f"{int8['accuracy_exported']:.2%}", f"{int8['accuracy_drop'] * 100:+.2f}",
                  f"{int8['top1_agreement']:.2%}"]  # fmt: skip
    return f"| {' | '.join(cells)} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, nargs="+",
                        help="trained run folders (e.g. runs/fm runs/r18-224)")  # fmt: skip
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--repeats", type=int, default=5, help="turns per engine (5)")
    parser.add_argument("--seconds", type=float, default=1.0, help="seconds per turn (1.0)")
    parser.add_argument("--no-resnet18", action="store_true",
                        help="skip the random-weights resnet18 at 224 px")  # fmt: skip
    parser.add_argument("--compare-int8", action="store_true",
                        help="also INT8 with 8-bit weights (as before issue 16)")  # fmt: skip
    args = parser.parse_args()
    print(f"machine: {machine()}; {torch.get_num_threads()} threads; torch {torch.__version__}\n")
    names = [*ENGINES, *([OLD_INT8] if args.compare_int8 else [])]
    print(f"| model | batch | {' | '.join(f'{n} img/s' for n in names)} | latency ms "
          f"({' / '.join(n.removeprefix('ORT ') for n in names)}) |")  # fmt: skip
    print("|---" * (len(names) + 3) + "|")
    accuracy = []
    with tempfile.TemporaryDirectory(prefix="imagewise-bench-") as tmp:
        for i, name in enumerate(args.run):
            run, work = Path(name), Path(tmp) / str(i)
            work.mkdir()
            clf = load_run(run)
            pre = clf.preprocessing
            shape = (pre.channels, pre.img_size, pre.img_size)
            engines, files = run_engines(run, work, args.compare_int8)
            speed_rows(f"{clf.name} {pre.img_size} px", engines, shape, args)
            accuracy.append(accuracy_row(run, files))
        if not args.no_resnet18:
            work = Path(tmp) / "resnet18"
            work.mkdir()
            engines = resnet18_engines(work, compare_int8=args.compare_int8)
            speed_rows("resnet18 224 px (random weights)", engines, (3, 224, 224), args)
        int8 = ["ORT INT8", *(["ORT INT8 8-bit"] if args.compare_int8 else [])]
        print("\n| run | images | PyTorch | ORT float32 | " + " | ".join(
            f"{n} | {n} cost (points) | {n} top-1 agreement" for n in int8) + " |")  # fmt: skip
        print("|---" * (4 + 3 * len(int8)) + "|")
        for row in accuracy:
            print(row, flush=True)


if __name__ == "__main__":
    main()
