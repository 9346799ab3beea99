"""How close to the machine's arithmetic limit two of the benchmarked workloads already run.

The CPU's float32 peak is measured as the throughput of a large matrix product (MKL sgemm,
2048 x 2048, torch's thread count). Against it:

1. **The Keras tutorial CNN's training step** (batch 64, channels_last, fused Adam, as
   ``imagewise train --model tutorial_cnn`` runs it): the whole step, and each convolution's
   forward + backward alone (oneDNN), with its arithmetic rate. ``--keras-epoch`` (seconds per
   epoch measured by ``keras_vs_pytorch.py``) turns the "2x Keras" target into a step budget.
2. **resnet18 at 224 px, batch 1, in ONNX Runtime float32**: every node's kernel time from ONNX
   Runtime's own profiler, the convolutions' arithmetic rate, and PyTorch eager's time, which
   sets the latency ONNX Runtime must reach for a given ratio.

    .venv/bin/python benchmarks/roofline.py --keras-epoch 10.70
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from foundation import machine  # benchmarks/foundation.py: cores and CPU model
from inference import resnet18_float32  # benchmarks/inference.py: the same export

from imagewise.models import create_model
from imagewise.runtime.device import keep_freed_memory

STEPS_PER_EPOCH = 938  # 60,000 training images at batch 64, as keras_vs_pytorch.py runs it


def median_ms(fn: Callable[[], object], calls: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def peak_gflops(size: int = 2048) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    return 2 * size**3 / median_ms(lambda: a @ b, 15) / 1e6


def conv_flops(out_shape: list[int], weight_shape: list[int]) -> float:
    """Multiply-adds x 2 of one convolution: every output value sums Cin/groups x kh x kw."""
    return 2.0 * float(np.prod(out_shape)) * float(np.prod(weight_shape[1:]))


def tutorial_step(peak: float, keras_epoch: float | None) -> None:
    torch.manual_seed(0)
    model = create_model("tutorial_cnn", 10, 1, 28).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), 1e-3, fused=True)
    x = torch.randn(64, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (64,))

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    whole = median_ms(step, 300, warmup=30)
    print("\n| tutorial CNN, batch 64 | MFLOP (fwd + bwd) | ms | GFLOP/s | share of peak |")
    print("|---|---|---|---|---|")
    total_flops, total_ms = 0.0, 0.0
    for name, conv, size in (
        ("conv1 1->32 @ 28 px", model.features.conv1, 28),
        ("conv2 32->64 @ 13 px", model.features.conv2, 13),
        ("conv3 64->64 @ 5 px", model.features.conv3, 5),
    ):
        inp = torch.randn(64, conv.in_channels, size, size)
        inp = inp.contiguous(memory_format=torch.channels_last).requires_grad_(conv.in_channels > 1)
        out = conv(inp)
        grad = torch.ones_like(out)
        # Forward, weight gradient, and (except for the input layer) the input gradient.
        passes = 3 if inp.requires_grad else 2
        flops = passes * conv_flops(list(out.shape), list(conv.weight.shape))
        ms = median_ms(lambda c=conv, i=inp, g=grad: c(i).backward(g), 200, warmup=20)
        total_flops, total_ms = total_flops + flops, total_ms + ms
        rate = flops / ms / 1e6
        print(f"| {name} | {flops / 1e6:.0f} | {ms:.2f} | {rate:.0f} | {rate / peak:.0%} |")
    print(f"| the three convolutions | {total_flops / 1e6:.0f} | {total_ms:.2f} | "
          f"{total_flops / total_ms / 1e6:.0f} | |")  # fmt: skip
    print(f"| whole training step (incl. pooling, dense, loss, Adam) | | {whole:.2f} | | |")
    print(f"\nall the step's convolution arithmetic at the measured peak: "
          f"{total_flops / peak / 1e6:.2f} ms")  # fmt: skip
    if keras_epoch:
        budget = keras_epoch / 2 / STEPS_PER_EPOCH * 1e3
        print(f"2x Keras ({keras_epoch:.2f} s an epoch) leaves {budget:.2f} ms a step; the "
              f"convolutions alone take {total_ms:.2f} ms ({total_ms / budget:.0%} of it), "
              f"the whole step {whole:.2f} ms ({keras_epoch / STEPS_PER_EPOCH * 1e3 / whole:.2f}x "
              f"Keras)")  # fmt: skip


def resnet18_onnx(peak: float) -> None:
    import onnxruntime as ort

    x = torch.randn(1, 3, 224, 224)
    with tempfile.TemporaryDirectory(prefix="imagewise-roofline-") as tmp:
        model, _, path = resnet18_float32(Path(tmp))
        with torch.no_grad():
            eager = median_ms(lambda: model(x), 60)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x.numpy()}
        plain = median_ms(lambda: session.run(None, feed), 60)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "profile")
        profiled = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for _ in range(40):
            profiled.run(None, feed)
        events = json.loads(Path(profiled.end_profiling()).read_text())
    kernel: dict[str, list[float]] = defaultdict(list)
    flops: dict[str, float] = {}
    for event in events:
        args = event.get("args", {})
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        kernel[event["name"]].append(event["dur"] / 1e3)
        if args.get("op_name") == "Conv":
            weight = args["input_type_shape"][1]["float"]
            flops[event["name"]] = conv_flops(args["output_type_shape"][0]["float"], weight)
    conv_ms = sum(statistics.median(kernel[name]) for name in flops)
    other_ms = sum(statistics.median(v) for name, v in kernel.items() if name not in flops)
    print("\n| resnet18 224 px, batch 1, ORT float32 convolutions | MFLOP | ms | GFLOP/s |")
    print("|---|---|---|---|")
    for name, f in flops.items():
        ms = statistics.median(kernel[name])
        print(f"| {name.removesuffix('_kernel_time')} | {f / 1e6:.0f} | {ms:.3f} | "
              f"{f / ms / 1e6:.0f} |")  # fmt: skip
    all_flops = sum(flops.values())
    print(f"\nconvolutions: {all_flops / 1e9:.2f} GFLOP in {conv_ms:.2f} ms = "
          f"{all_flops / conv_ms / 1e6:.0f} GFLOP/s ({all_flops / conv_ms / 1e6 / peak:.0%} of "
          f"peak); other nodes {other_ms:.2f} ms")  # fmt: skip
    print(f"ONNX Runtime float32 {plain:.2f} ms, PyTorch eager {eager:.2f} ms: "
          f"{eager / plain:.2f}x; 2.0x needs {eager / 2:.2f} ms, i.e. the convolutions at "
          f"{all_flops / (eager / 2 - other_ms) / 1e6:.0f} GFLOP/s")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keras-epoch", type=float, default=None,
                        help="Keras seconds per epoch from keras_vs_pytorch.py")  # fmt: skip
    args = parser.parse_args()
    keep_freed_memory()
    print(f"machine: {machine()}; {torch.get_num_threads()} threads; torch {torch.__version__}")
    peak = peak_gflops()
    print(f"float32 peak (sgemm 2048^3): {peak:.0f} GFLOP/s")
    tutorial_step(peak, args.keras_epoch)
    resnet18_onnx(peak)


if __name__ == "__main__":
    main()
