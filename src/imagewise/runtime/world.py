"""Where this process stands in a ``torchrun`` job, read from the environment torchrun sets
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``).

Torch-free, so that prediction decides whether it is sharded before it imports anything heavy;
training (``imagewise.train.distributed``) and prediction (``imagewise.predict.sharding``) both
start from it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


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

    def owns(self, batch: int) -> bool:
        """Whether this process takes batch ``batch`` (batch i -> rank i % world size)."""
        return batch % self.world_size == self.rank

    def cpu_threads(self) -> int:
        """This process's share of the machine's cores (torchrun sets OMP_NUM_THREADS=1)."""
        return max(1, (os.cpu_count() or 1) // self.local_world_size)


def from_env() -> DistInfo:
    """This process's place, as torchrun set it (rank 0 of 1 without torchrun)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    return DistInfo(
        rank=int(os.environ.get("RANK", "0")),
        world_size=world,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
    )
