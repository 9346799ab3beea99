"""Scale-out with PyTorch DistributedDataParallel, started by ``torchrun``.

    torchrun --nproc-per-node 2 -m imagewise train DATA --out runs/ddp
    torchrun --nnodes 2 --node-rank 0 --master-addr HOST --nproc-per-node 4 -m imagewise train ...

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; imagewise then joins the process group (NCCL on
GPUs, gloo on CPUs), gives each process its share of every batch, averages gradients, reduces
the metrics across processes, and lets only rank 0 write files and logs. ``--batch-size`` is
per process; the default learning rate scales with the global batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job (a single process is rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the torchrun process group if there is one; return this process's place and device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), device
    info = DistInfo(
        rank=int(os.environ["RANK"]),
        world_size=world,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
    )
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    else:
        # torchrun sets OMP_NUM_THREADS=1; share the machine's cores between its processes.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // info.local_world_size))
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
