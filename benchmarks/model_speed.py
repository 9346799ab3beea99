"""Training throughput of models at a small input size: seconds per Fashion-MNIST epoch.

One step = forward, backward and AdamW at batch 128; the mean of 20 steps after 3 warm-up
steps, with and without channels_last, interleaved per model.

    .venv/bin/python benchmarks/model_speed.py tutorial_cnn resnet9_tiny resnet9_slim
"""

from __future__ import annotations

import argparse
import time

import torch

from imagewise.models import count_flops, create_model

EPOCH_IMAGES = 54_000  # Fashion-MNIST training split after the 10% validation hold-out


def step_seconds(name: str, channels_last: bool, size: int, batch: int, steps: int = 20) -> float:
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
    args = parser.parse_args()
    print("| model | MFLOPs / image | channels_last | default (NCHW) | speed-up |")
    print("|---|---|---|---|---|")
    for name in args.models:
        flops = count_flops(create_model(name, 10, 1, args.img_size), 1, args.img_size)
        fast = step_seconds(name, True, args.img_size, args.batch_size)
        plain = step_seconds(name, False, args.img_size, args.batch_size)
        per_epoch = EPOCH_IMAGES / args.batch_size
        print(
            f"| {name} | {flops / 1e6:.1f} | {fast * per_epoch:.1f} s | "
            f"{plain * per_epoch:.1f} s | {plain / fast:.2f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()
