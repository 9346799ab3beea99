"""Device and numeric precision: resolved once, with a clear answer when the hardware is absent."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

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
    float32 there. Measured in BENCHMARKS.md: 2.6-2.9x faster training steps on a Zen 4 CPU.
    """
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for float32.

    ``auto``: bf16 on GPUs that have it (else fp16), bf16 on CPUs with native bf16 arithmetic,
    float32 on other CPUs.
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
