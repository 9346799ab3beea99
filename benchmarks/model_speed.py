"""Training throughput of models at a small input size: seconds per Fashion-MNIST epoch.

One step = forward, backward and AdamW at batch 128; the mean of 20 steps after 3 warm-up
steps, with and without channels_last, interleaved per model. ``--bf16`` adds channels_last
under bfloat16 autocast (worth it only on some CPUs with AVX512-BF16 or AMX). glibc keeps
freed memory for reuse, as ``imagewise train`` has it (``keep_freed_memory``).

    .venv/bin/python benchmarks/model_speed.py tutorial_cnn resnet9_tiny resnet9_slim
    .venv/bin/python benchmarks/model_speed.py resnet9_tiny --bf16 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from imagewise.models import count_flops, create_model
from imagewise.runtime.device import keep_freed_memory

EPOCH_IMAGES = 54_000  # Fashion-MNIST training split after the 10% validation hold-out


def step_seconds(
    name: str, channels_last: bool, size: int, batch: int, steps: int = 20, bf16: bool = False
) -> float:
    torch.manual_seed(0)
    model = create_model(name, 10, 1, size)
    x = torch.randn(batch, 1, size, size)
    y = torch.randint(0, 10, (batch,))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    model.train()
    for i in range(steps + 3):
        if i == 3:
            start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--img-size", type=int, default=28)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--bf16", action="store_true", help="also time bfloat16 autocast")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved rounds; medians")
    args = parser.parse_args()
    keep_freed_memory()
    head = "| model | MFLOPs / image | channels_last | default (NCHW) | speed-up |"
    print(head + (" channels_last + bf16 | bf16 speed-up |" if args.bf16 else ""))
    print("|---" * (7 if args.bf16 else 5) + "|")
    per_epoch = EPOCH_IMAGES / args.batch_size
    for name in args.models:
        flops = count_flops(create_model(name, 10, 1, args.img_size), 1, args.img_size)
        fast, plain, half = [], [], []
        for _ in range(args.repeats):
            fast.append(step_seconds(name, True, args.img_size, args.batch_size))
            plain.append(step_seconds(name, False, args.img_size, args.batch_size))
            if args.bf16:
                half.append(step_seconds(name, True, args.img_size, args.batch_size, bf16=True))
        f, p = statistics.median(fast), statistics.median(plain)
        row = (
            f"| {name} | {flops / 1e6:.1f} | {f * per_epoch:.1f} s | "
            f"{p * per_epoch:.1f} s | {p / f:.2f}x |"
        )
        if args.bf16:
            h = statistics.median(half)
            row += f" {h * per_epoch:.1f} s | {f / h:.2f}x |"
        print(row, flush=True)


if __name__ == "__main__":
    main()
