"""What the ``imagewise`` process does around a verb: process-wide tuning, SIGTERM as Ctrl-C,
and the exit code and one line for each way a verb can fail."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Iterator

from imagewise.errors import UserError


def tune_process() -> None:
    """Process-wide tuning the library leaves to its caller: glibc keeps freed activation
    buffers for reuse (``keep_freed_memory``; the step time it saves: see BENCHMARKS.md)."""
    from imagewise.runtime.device import keep_freed_memory

    keep_freed_memory()


# Top-level modules that only `pip install "imagewise[all]"` brings, and those that the
# `imagewise[runtime]` extra brings (predict with and serve an ONNX file, without PyTorch).
FULL_INSTALL_MODULES = frozenset(
    {
        "torch", "torchvision", "timm", "sklearn", "yaml", "safetensors", "matplotlib", "tqdm",
        "tensorboard", "pytorch_grad_cam", "skimage", "onnx", "onnxscript", "optuna",
        "psycopg", "cleanlab", "pyarrow", "av", "scipy",
    }
)  # fmt: skip
RUNTIME_MODULES = frozenset(
    {
        "onnxruntime", "fastapi", "fastapi_offline", "uvicorn", "multipart", "python_multipart",
        "prometheus_client", "starlette", "pydantic",
    }
)  # fmt: skip


def missing_install(exc: ModuleNotFoundError, args: argparse.Namespace) -> str | None:
    """The one line for a verb whose packages this install lacks, or None (a real bug)."""
    module = (exc.name or "").partition(".")[0]
    words = (getattr(args, "verb", None), getattr(args, "data_verb", None))
    verb = " ".join(["imagewise", *(w for w in words if w)])
    if module in RUNTIME_MODULES:
        return f"'{verb}' needs the runtime extra: pip install \"imagewise[runtime]\""
    if module in FULL_INSTALL_MODULES:
        return f"'{verb}' needs the full install: pip install \"imagewise[all]\""
    return None


def run_verb(
    args: argparse.Namespace, debug: bool, main_rank: bool, stopped_by: dict[str, int]
) -> int:
    """Run the verb's handler: its exit code, or 2 with one line for bad input or a missing
    install, or 128 + the signal number after an interruption."""
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        if debug:
            raise
        # Under torchrun every rank hits the same error; one line from rank 0 is clearer than
        # N interleaved copies.
        if main_rank:
            print(f"error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        # A verb run on the small install (numpy, Pillow, maybe the runtime extra): one line
        # naming the install it needs, here for every verb rather than in each of them.
        message = missing_install(exc, args)
        if debug or message is None:
            raise
        if main_rank:
            print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        if debug:
            raise
        if main_rank:
            print(str(exc) or "interrupted", file=sys.stderr)
        return 128 + stopped_by.get("signal", signal.SIGINT)


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[dict[str, int]]:
    """Turn SIGTERM into KeyboardInterrupt, as Ctrl-C is, so training stops the same clean way
    (atomic files, one line with the --resume command); the exit code then says 143.
    Yields a dict that holds the signal number once one came; the old handler comes back."""
    seen: dict[str, int] = {}

    def stop(signum: int, frame: object) -> None:
        seen["signal"] = signum
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield seen  # signal handlers belong to the main thread
        return
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield seen
    finally:
        signal.signal(signal.SIGTERM, previous)
