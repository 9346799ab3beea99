"""Device and numeric precision: resolved once, with a clear answer when the hardware is absent."""

from __future__ import annotations

import contextlib
import copy
import ctypes
import os
import platform
import statistics
import time
from collections.abc import Iterator

import torch
from torch import nn

from imagewise.errors import UserError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> the GPU when there is one, else the CPU; ``cuda`` without a GPU is an error."""
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(
                f"a GPU was asked for (--device {name}) but none is available; "
                "use --device cpu or --device auto"
            )
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise UserError(f"unknown device '{name}'; use cpu, cuda, cuda:N or auto")


def cpu_has_native_bf16() -> bool:
    """True when the CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX).

    Without it oneDNN emulates bf16 and autocast is slower than float32, so ``auto`` keeps
    float32 there without measuring. With it, bf16 is still not always faster (2.6-2.9x faster
    steps on a Zen 4, 1.3x slower on an Intel Xeon without AMX, BENCHMARKS.md), so ``auto``
    measures: ``measure_bf16_speedup``.
    """
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for float32.

    ``auto``: bf16 on GPUs that have it (else fp16), bf16 on CPUs with native bf16 arithmetic
    (a candidate: training keeps it only if ``measure_bf16_speedup`` finds it faster), float32
    on other CPUs.
    """
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else None
    table = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision not in table:
        raise UserError(f"unknown precision '{precision}'; choose auto, fp32, bf16 or fp16")
    if precision == "fp16" and device.type != "cuda":
        raise UserError("fp16 training needs a GPU; use --precision bf16 or fp32 on the CPU")
    return table[precision]


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """Mixed precision when ``dtype`` is set, a no-op otherwise."""
    if dtype is None:
        yield
    else:
        with torch.autocast(device_type=device.type, dtype=dtype):
            yield


# glibc malloc options (malloc.h); mallopt returns 1 on success.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def keep_freed_memory() -> bool:
    """Let glibc keep freed activation buffers for reuse instead of returning them to the OS.

    PyTorch's CPU allocator is plain malloc. By default glibc serves each multi-megabyte
    activation from a fresh ``mmap`` (or trims the heap after freeing it), so every training
    step page-faults its activations in again; keeping freed memory makes a tutorial-CNN step
    markedly faster (BENCHMARKS.md, "Fast training"), the same gain as preloading tcmalloc,
    without a system library.
    Raising the mmap and trim thresholds keeps at most the peak working set resident (so a
    notebook holds on to up to 1 GB of freed memory after training). Returns False (and changes
    nothing) off glibc, or when the environment sets ``IMAGEWISE_KEEP_FREED_MEMORY=0``.
    """
    if os.environ.get("IMAGEWISE_KEEP_FREED_MEMORY", "1") == "0":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    settings = ((_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 1 << 30), (_M_TOP_PAD, 64 << 20))
    return all(libc.mallopt(option, value) == 1 for option, value in settings)


def measure_bf16_speedup(
    model: nn.Module, batch_size: int, channels: int, img_size: int, channels_last: bool
) -> float:
    """Time forward + backward of a copy of ``model`` on one random CPU batch, float32 against
    bf16 autocast, interleaved; return float32 seconds / bf16 seconds (above 1: bf16 faster).

    The copy keeps the model's weights, batch-norm statistics and the global random state
    untouched. About a second for small models; long steps are timed fewer times.
    """
    probe = copy.deepcopy(model).train()
    cpu = torch.device("cpu")
    with torch.random.fork_rng(devices=[]):
        x = torch.randn(batch_size, channels, img_size, img_size)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)

        def step(dtype: torch.dtype | None) -> float:
            start = time.perf_counter()
            with autocast(cpu, dtype):
                out = probe(x)
            (out[0] if isinstance(out, tuple) else out).float().mean().backward()
            probe.zero_grad(set_to_none=True)
            return time.perf_counter() - start

        dtypes = (None, torch.bfloat16)
        for dtype in dtypes:  # first calls build oneDNN primitives
            step(dtype)
        first = step(None)
        repeats = max(1, min(10, int(0.15 / max(first, 1e-6))))
        rounds = 3 if first < 1.0 else 1
        seconds: dict[torch.dtype | None, list[float]] = {d: [] for d in dtypes}
        for _ in range(rounds):
            for dtype in dtypes:
                seconds[dtype].append(sum(step(dtype) for _ in range(repeats)) / repeats)
    return statistics.median(seconds[None]) / statistics.median(seconds[torch.bfloat16])
