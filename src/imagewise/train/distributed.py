"""Scale-out with PyTorch DistributedDataParallel, started by ``torchrun``.

    torchrun --nproc-per-node 2 -m imagewise train DATA --out runs/ddp
    torchrun --nnodes 2 --node-rank 0 --master-addr HOST --nproc-per-node 4 -m imagewise train ...

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; imagewise then joins the process group (NCCL on
GPUs, gloo on CPUs), gives each process its share of every batch, averages gradients, reduces
the metrics across processes, and lets only rank 0 write files and logs. ``--batch-size`` is
per process; the default learning rate scales with the global batch.
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from imagewise.runtime.world import DistInfo, from_env

T = TypeVar("T")


def init_distributed(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the torchrun process group if there is one; return this process's place and device."""
    info = from_env()
    if not info.enabled:
        return info, device
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(info.cpu_threads())
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return info, device


def dist_enabled() -> bool:
    """True in a process of a torchrun job (a process group of more than one)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few numbers over all processes (a no-op in a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def gather_arrays(values: np.ndarray) -> np.ndarray:
    """Every process's rows, concatenated in rank order (the array itself in one process):
    for measures that do not add up over processes, such as average precision."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, values)
    return np.concatenate([p for p in parts if len(p)]) if any(len(p) for p in parts) else values


def broadcast_from_main(value: T) -> T:
    """Rank 0's ``value`` on every process (``value`` itself in a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait for every process (a no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
