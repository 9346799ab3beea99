"""Prediction spread over processes and machines with ``torchrun``.

    torchrun --nproc-per-node 2 -m imagewise predict runs/fm photos/ --format csv --out p.csv
    torchrun --nnodes 2 --node-rank 0 --master-addr HOST --nproc-per-node 4 \\
        -m imagewise predict runs/fm /shared/photos/ --out p.csv

Every process lists the same inputs (the same sorted order; across machines the files must be
at the same paths, e.g. a shared file system) and cuts them into the same batches; batch ``i``
goes to rank ``i % world_size``, so each batch holds exactly the images it holds in a single
process and its answers are computed the same way. The answers are gathered over gloo
(``all_gather_object``: every rank learns whether another one failed, so none waits forever)
and rank 0 returns them in the single process's order; the other ranks return nothing, and the
command line lets only rank 0 print or write, so ``--out`` is byte for byte what one process
writes.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from imagewise.edge.model import ImageModel
from imagewise.edge.results import Prediction
from imagewise.errors import UserError
from imagewise.runtime.world import DistInfo, from_env

log = logging.getLogger("imagewise")


def this_shard() -> DistInfo:
    """Where torchrun (``RANK``, ``WORLD_SIZE``, ...) put this process."""
    return from_env()


def is_main_process() -> bool:
    """True in a single process and on rank 0 of a torchrun job (the one that prints)."""
    return this_shard().rank == 0


def refuse_under_torchrun(what: str) -> None:
    """One line for a kind of prediction that runs in one process only."""
    if this_shard().enabled:
        raise UserError(f"{what} runs in one process; run it without torchrun")


def shard_device(device: str) -> str:
    """Each process of a GPU job on its own GPU (``cuda`` -> ``cuda:LOCAL_RANK``)."""
    shard = this_shard()
    if shard.enabled and device in ("cuda", "auto"):
        import torch

        if torch.cuda.is_available():
            return f"cuda:{shard.local_rank}"
    return device


@contextlib.contextmanager
def _process_group(shard: DistInfo) -> Iterator[None]:
    """Join torchrun's gloo group (objects are gathered on the CPU), with this process's share
    of the machine's cores for PyTorch; leave both as they were afterwards."""
    import torch
    import torch.distributed as dist

    from imagewise.runtime.threads import kept_threads

    joined = not dist.is_initialized()
    with kept_threads():
        torch.set_num_threads(shard.cpu_threads())
        if joined:
            dist.init_process_group(backend="gloo")
        try:
            yield
        finally:
            if joined:
                dist.destroy_process_group()


def predict_all(
    model: ImageModel,
    paths: Sequence[str],
    top_k: int = 5,
    batch_size: int = 64,
    skippable: Callable[[str], bool] | None = None,
    min_confidence: float | None = None,
    ood: Any = None,
    sets: Any = None,
) -> list[Prediction]:
    """``model.predict`` over ``paths``; under torchrun, spread over the processes (see the
    module's docstring): rank 0 gets every answer in order, the other ranks an empty list."""
    shard = this_shard()
    if not shard.enabled:
        return model.predict(paths, top_k, batch_size, skippable, min_confidence, ood, sets)
    with _process_group(shard):
        return _gathered(
            shard,
            lambda: model.predict_batches(
                paths,
                top_k,
                batch_size,
                skippable,
                min_confidence,
                select=shard.owns,
                ood=ood,
                sets=sets,
            ),
        )


def _gathered(
    shard: DistInfo, batches: Callable[[], Iterator[tuple[int, list[Prediction]]]]
) -> list[Prediction]:
    import torch.distributed as dist

    mine: list[tuple[int, list[Prediction]]] = []
    failure: BaseException | None = None
    try:
        mine = list(batches())
    except Exception as exc:  # told to every rank below, so that none waits for this one
        failure = exc
    parts: list[Any] = [None] * shard.world_size
    message = None if failure is None else str(failure) or type(failure).__name__
    dist.all_gather_object(parts, (message, mine))
    if failure is not None:
        raise failure
    for rank, (other, _) in enumerate(parts):
        if other is not None:
            raise UserError(f"process {rank} of the torchrun job failed: {other}")
    if shard.rank != 0:
        return []
    merged = sorted((pair for _, part in parts for pair in part), key=lambda pair: pair[0])
    return [p for _, predictions in merged for p in predictions]
