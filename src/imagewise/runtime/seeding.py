"""The global random generators: seeding them for a run, and leaving the caller's as they were.

A run seeds Python's ``random``, NumPy's global ``np.random`` and torch's generators
(``seed_everything``) so that the same seed gives the same weights. A library call must not
leave them seeded: a user's script that draws after ``imagewise.train(...)`` would draw the
run's numbers. ``kept_random_state`` puts the caller's streams back when the call returns.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch's (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def kept_random_state() -> Iterator[None]:
    """Whatever the body seeds or draws from the global generators, the caller's streams go on
    afterwards as if it had not run: Python's ``random``, NumPy's ``np.random``, torch's CPU
    generator, and torch's CUDA generators (their states when CUDA had started; else what
    ``torch.manual_seed`` queues for CUDA's start, from torch's seed on entry)."""
    python, numpy, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    seed = torch.initial_seed()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(python)
        np.random.set_state(numpy)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        else:  # queued until CUDA starts, as torch.manual_seed queues it
            torch.cuda.manual_seed_all(seed)
