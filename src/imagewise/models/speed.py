"""Measured speed of models on this machine: training and inference images per second.

A few timed steps per model (forward, backward and a fused AdamW step for training; a forward
under ``no_grad`` for inference), in the layout training uses (channels_last, float32). Results
are cached in a JSON file per machine, ``$IMAGEWISE_HOME`` or ``~/.cache/imagewise``,
``speed-<hash>.json``, the hash over the CPU model, core and thread counts and the torch
version: another machine or torch gets its own table.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from imagewise.errors import UserError
from imagewise.models.factory import create_model


@dataclass(frozen=True)
class Speed:
    """Images per second of one model at one input shape on this machine."""

    train: float
    infer: float


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_key() -> dict[str, str | int]:
    """What the speed of a model depends on besides the model: CPU, usable cores, torch."""
    return {
        "cpu": _cpu_model(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1,
        "torch": torch.__version__,
    }


def cache_path() -> Path:
    """This machine's speed table: ``speed-<hash of machine_key()>.json`` in the cache folder."""
    root = Path(os.environ.get("IMAGEWISE_HOME") or Path.home() / ".cache" / "imagewise")
    digest = hashlib.sha1(json.dumps(machine_key(), sort_keys=True).encode()).hexdigest()[:12]
    return root / f"speed-{digest}.json"


def _batch_for(img_size: int) -> int:
    # big enough to reach steady throughput, small enough to time in about a second at 224 px
    return 64 if img_size <= 64 else 16


def _timed(fn: Callable[[], None], steps: int, pace: Callable[[], object] | None) -> float:
    """Median seconds of ``steps`` calls after an untimed one (allocation, kernel choice): the
    median, because on a shared machine a neighbour's burst lands on single steps."""
    fn()
    times = []
    for _ in range(steps):
        if pace is not None:
            pace()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_speed(
    name: str,
    img_size: int,
    channels: int,
    num_classes: int = 10,
    steps: int = 3,
    pace: Callable[[], object] | None = None,
    bf16: bool = False,
) -> Speed:
    """Time ``steps`` training and inference steps of model ``name`` on random images.

    Args:
        name: a registry or timm model name.
        img_size: square input size in pixels.
        channels: 1 or 3.
        num_classes: size of the head.
        steps: timed steps of each kind, after one untimed step.
        pace: called before each timed step, e.g. ``ThreadGovernor.tick`` so that the thread
            count is the one training would use beside the machine's other work.
        bf16: under bfloat16 autocast, as training runs where it measures that faster.
    """
    batch = _batch_for(img_size)
    with torch.random.fork_rng():  # leave the caller's random stream as it was
        torch.manual_seed(0)
        model = create_model(name, num_classes, channels, img_size)
        model = model.to(memory_format=torch.channels_last)
        x = torch.randn(batch, channels, img_size, img_size)
        x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, num_classes, (batch,))
    opt = torch.optim.AdamW(model.parameters(), 1e-3, fused=True)

    def train_step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def infer_step() -> None:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            model(x)

    model.train()
    train_s = _timed(train_step, steps, pace)
    model.eval()
    infer_s = _timed(infer_step, steps, pace)
    return Speed(train=batch / train_s, infer=batch / infer_s)


def measured_speeds(
    shapes: list[tuple[str, int, int]],
    num_classes: int = 10,
    cache: Path | None = None,
    refresh: bool = False,
    pace: Callable[[], object] | None = None,
    bf16: bool = False,
) -> dict[tuple[str, int, int], Speed]:
    """Speeds of ``(name, img_size, channels)`` shapes: from this machine's cached table, the
    missing ones measured now and added to it.

    Args:
        shapes: the models and input shapes to know.
        num_classes: size of the head when measuring.
        cache: the table's file (default ``cache_path()``); unwritable means not cached.
        refresh: measure every shape again.
        pace: see ``measure_speed``.
        bf16: also time bfloat16 autocast and keep the faster of the two for training (what
            ``--precision auto`` does on CPUs with native bf16).
    """
    path = cache or cache_path()
    table = _read_table(path)
    out, changed = {}, False
    for name, size, channels in shapes:
        key = f"{name}|{channels}x{size}"
        for k, half in [(key, False)] + [(key + "|bf16", True)] * bf16:
            if refresh or k not in table:
                speed = measure_speed(name, size, channels, num_classes, pace=pace, bf16=half)
                table[k], changed = asdict(speed), True
        speeds = [Speed(**table[k]) for k in (key, key + "|bf16")[: 1 + bf16]]
        out[(name, size, channels)] = max(speeds, key=lambda s: s.train)
    if changed:
        _write_table(path, table)
    return out


def _read_table(path: Path) -> dict[str, dict[str, float]]:
    try:
        values = json.loads(path.read_text())
        return {k: v for k, v in values["speeds"].items() if set(v) == {"train", "infer"}}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}  # absent or damaged: measure again


def _write_table(path: Path, table: dict[str, dict[str, float]]) -> None:
    from imagewise.io import atomic_write_text

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"machine": machine_key(), "speeds": table}, indent=1))
    except (OSError, UserError):  # UserError: imagewise.io's disk-full
        pass  # a read-only home: the speeds are still used, only not kept
