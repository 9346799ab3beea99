"""``torch.compile`` where it pays, with a fallback to eager where it fails.

Measured (BENCHMARKS.md): on 2 CPU cores inductor made every small-image model slower to train
(resnet9_tiny 203 -> 227 ms per batch-256 step, the tutorial CNN 2x slower, plus 12-35 s of
compiling), because oneDNN's own convolution kernels beat the generated ones there. On a GPU the
fused kernels usually pay. So ``auto`` compiles on CUDA only; ``on`` and ``off`` force it.

Compilation happens at the first call, so a failure (no C++ compiler, an operator inductor cannot
lower) shows up there; the wrapper then logs one warning and runs eager from that call on.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch._dynamo.exc import TorchDynamoException

from imagewise.errors import UserError

log = logging.getLogger("imagewise")

COMPILE_MODES = ("auto", "on", "off")


def wants_compile(mode: str, device: torch.device) -> bool:
    """Whether ``--compile MODE`` compiles on ``device`` (``auto``: on CUDA only)."""
    if mode not in COMPILE_MODES:
        raise UserError(f"unknown compile setting '{mode}'; choose {', '.join(COMPILE_MODES)}")
    return mode == "on" or (mode == "auto" and device.type == "cuda")


class CompiledWithFallback(nn.Module):
    """Runs ``module`` through ``torch.compile``; on a compile error, eager for good.

    ``module`` stays the registered child, so parameters and ``state_dict`` are the module's own
    and ``imagewise.train.loop.unwrap`` finds it.
    """

    def __init__(self, module: nn.Module, compiler: Callable[..., Any] | None = None) -> None:
        super().__init__()
        self.module = module
        # The compiled callable is kept out of the module tree (a function, not a child module)
        # so that nothing is saved or counted twice.
        self._compiled: Callable[..., Any] | None = (compiler or torch.compile)(module.forward)

    @property
    def compiled(self) -> bool:
        """False once compilation has failed and the wrapper runs eager."""
        return self._compiled is not None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self._compiled is not None:
            try:
                with _backward_compiled_with_forward():
                    return self._compiled(*args, **kwargs)
            except TorchDynamoException as exc:  # inductor's errors too; not OOM or model bugs
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                log.warning("torch.compile failed (%s); training on without it", first[:200])
                self._compiled = None
        return self.module(*args, **kwargs)


def _backward_compiled_with_forward() -> contextlib.AbstractContextManager[Any]:
    """Compile the backward graph during the forward call, where a failure is caught.

    By default AOTAutograd lowers the backward lazily, at the first ``loss.backward()``, outside
    the wrapper's reach; this (private, hence looked up with care) switch makes it eager.
    """
    try:
        from torch._functorch import config
    except ImportError:
        return contextlib.nullcontext()
    if not hasattr(config, "force_non_lazy_backward_lowering"):
        return contextlib.nullcontext()
    return config.patch(force_non_lazy_backward_lowering=True)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DistributedDataParallel and ``CompiledWithFallback`` wrappers."""
    while isinstance(model, nn.parallel.DistributedDataParallel | CompiledWithFallback):
        model = model.module
    return model
