"""Thread counts that behave on a shared machine: fewer threads while other processes are busy.

PyTorch's CPU kernels split each operator over ``torch.get_num_threads()`` OpenMP threads and
wait at a barrier for the slowest. When another process keeps one of the cores busy, one of our
threads keeps losing its core to it and every operator waits for that thread: measured on 2
cores, a tutorial-CNN epoch took 13.5 s alone and 58 s beside one busy single-threaded process
(4.3x), against 26 s with one thread (BENCHMARKS.md). No library does this for us: OpenMP's
dynamic adjustment (``OMP_DYNAMIC``) is a no-op in libgomp, and ``OMP_WAIT_POLICY=PASSIVE``
only halves the loss (27 s) and must be set before torch is imported.

``ThreadGovernor`` watches how busy the cores we may run on are with work that is not ours
(``/proc/stat`` minus our own process tree, once a second) and gives torch the cores that are
left: ``cores - round(others)``, at least 1, at most the count it started with. On a quiet
machine it changes nothing. Call ``tick()`` from the thread that runs the model (OpenMP thread
counts belong to the calling thread); ``close()`` puts the original count back. The
environment variable ``IMAGEWISE_ADAPTIVE_THREADS=0`` turns it off (a fixed thread count).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

log = logging.getLogger("imagewise")

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_busy_ticks(cpus: set[int]) -> int | None:
    """Busy clock ticks (all but idle and iowait) summed over ``cpus``, from ``/proc/stat``."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    busy = 0
    for line in lines:
        name, *fields = line.split()
        if not (name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus):
            continue
        values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
        busy += sum(values) - values[3] - values[4]
    return busy


def own_busy_ticks() -> int | None:
    """CPU ticks used by this process and its children (data-loader workers), alive now."""
    total, seen, todo = 0, set(), [os.getpid()]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            total += sum(int(v) for v in stat.rsplit(")", 1)[1].split()[11:13])  # utime stime
            for task in Path(f"/proc/{pid}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except (OSError, ValueError):
            if pid == os.getpid():
                return None
    return total


@contextlib.contextmanager
def kept_threads() -> Iterator[None]:
    """Whatever the body does to torch's intra-op thread count (torchrun's share of the cores,
    the governor, a user's setting), the count is as it was afterwards."""
    before = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


class ThreadGovernor:
    """Keeps torch's thread count to the cores other processes leave free.

    Args:
        interval: seconds between two looks at the machine (each costs well under a millisecond).
        read_busy / read_own: the tick counters (tests pass fakes).
        clock: a monotonic clock in seconds (tests pass a fake).
    """

    def __init__(
        self,
        interval: float = 1.0,
        read_busy: Callable[[set[int]], int | None] = cpu_busy_ticks,
        read_own: Callable[[], int | None] = own_busy_ticks,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
        self.original = torch.get_num_threads()
        self.most = min(self.original, len(self.cpus)) if self.cpus else self.original
        self.interval, self.clock = interval, clock
        self.read_busy, self.read_own = read_busy, read_own
        self.threads = self.original
        # Under torchrun each rank already has its share of the cores, and its siblings (not its
        # children) would count as other work: the governor stays out of it there.
        wanted = os.environ.get("IMAGEWISE_ADAPTIVE_THREADS", "1") != "0"
        wanted = wanted and int(os.environ.get("WORLD_SIZE", "1")) == 1
        self.active = wanted and self.most > 1 and read_busy(self.cpus) is not None
        self.last = self._sample() if self.active else None
        self.others = 0.0  # cores' worth of other processes' work at the last look

    def _sample(self) -> tuple[float, int, int] | None:
        busy, own = self.read_busy(self.cpus), self.read_own()
        return None if busy is None or own is None else (self.clock(), busy, own)

    def tick(self) -> int:
        """Look at the machine if ``interval`` has passed; set and return the thread count."""
        if not self.active or self.last is None:
            return self.threads
        if self.clock() - self.last[0] < self.interval:
            return self.threads
        now = self._sample()
        if now is None:
            return self.threads
        seconds = now[0] - self.last[0]
        others = ((now[1] - self.last[1]) - (now[2] - self.last[2])) / (_TICKS * seconds)
        self.last, self.others = now, max(0.0, others)
        wanted = max(1, min(self.most, len(self.cpus) - math.floor(self.others + 0.5)))
        if wanted != self.threads:
            log.debug(
                "other processes keep %.1f cores busy: %d -> %d threads",
                self.others, self.threads, wanted,
            )  # fmt: skip
            torch.set_num_threads(wanted)
            self.threads = wanted
        return self.threads

    def close(self) -> None:
        """Give torch back the thread count it had."""
        if self.threads != self.original:
            torch.set_num_threads(self.original)
            self.threads = self.original
