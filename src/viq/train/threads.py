"""CPU threads for a long job on a shared machine: as many as there are free cores.

torch runs its CPU kernels on one OpenMP thread per core, and those threads wait for each other at
the end of every parallel region. When another process keeps one of the cores busy, the thread on
that core gets a slice of it only now and then, and every region waits for that slice: on a
2-core host the demo's stage 1 ran 3.9× slower beside one busy process, 1.67× with this module
(`viq bench neighbour`; docs/demo.md, "A busy neighbour"), where a fair share would be 2×.

`ThreadGovernor` measures, every few seconds, how many of this process's cores other processes
kept busy (the cores' busy time from ``/proc/stat`` minus this process's own CPU time), and sets
torch's thread count to the cores left free: all of them on a quiet machine, one fewer per busy
neighbour, back up when the neighbour stops. Training (`viq.train.loop`, ``run.threads = 0``,
the default) and the demo's small trainers (`viq.train.checkpoint.Checkpointer.steps`) poll it
once a step, answering questions (`viq.eval.understanding.predict`) once a batch. A fixed
``run.threads = N`` keeps N threads throughout. Where ``/proc/stat`` does not exist (not Linux)
the thread count is left alone. Decisions: docs/design.md C39.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

import torch

_BUSY = (0, 1, 2, 5, 6, 7)  # user nice system irq softirq steal (iowait and idle are not busy)


def _cores() -> list[int]:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def cores() -> int:
    """How many cores this process may run on."""
    return len(_cores())


def _busy_seconds(cores: list[int]) -> float | None:
    """CPU seconds the given cores have spent busy since boot (``/proc/stat``), or None."""
    try:
        lines = open("/proc/stat").read().splitlines()
    except OSError:
        return None
    want, ticks = {f"cpu{c}" for c in cores}, 0
    for line in lines:
        parts = line.split()
        if parts and parts[0] in want:
            ticks += sum(int(parts[1 + i]) for i in _BUSY if 1 + i < len(parts))
    return ticks / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system  # every thread of this process


class ThreadGovernor:
    """torch's intra-op threads = this process's cores minus those other processes keep busy.

    ``poll()`` once a step; it looks at the machine every ``every`` seconds; ``restore()`` at the
    end gives back the count it started with. ``limit`` caps the count (default: torch's count
    when the governor starts, which honours ``OMP_NUM_THREADS`` and ``torch.set_num_threads``)."""

    def __init__(self, every: float = 5.0, limit: int | None = None, adapt: bool = True) -> None:
        self.cores = _cores()
        self.start = torch.get_num_threads()
        self.limit = max(1, limit or self.start)
        if adapt:
            self.limit = min(self.limit, len(self.cores))
        torch.set_num_threads(self.limit)
        self.every = every
        self.others = 0.0  # cores other processes kept busy over the last interval
        self._last = self._sample()
        self.active = adapt and self._last[1] is not None

    def _sample(self) -> tuple[float, float | None, float]:
        return time.monotonic(), _busy_seconds(self.cores), _own_seconds()

    def poll(self) -> int:
        """Re-measure when ``every`` seconds have passed and set the thread count; returns it."""
        now = time.monotonic()
        if not self.active or now - self._last[0] < self.every:
            return torch.get_num_threads()
        sample = self._sample()
        (t0, busy0, own0), (t1, busy1, own1) = self._last, sample
        self._last = sample
        if busy1 is None or t1 <= t0:
            return torch.get_num_threads()
        self.others = max(0.0, (busy1 - busy0) - (own1 - own0)) / (t1 - t0)
        want = threads_for(len(self.cores), self.others, self.limit)
        if want != torch.get_num_threads():
            torch.set_num_threads(want)
        return want


    def restore(self) -> None:
        """torch's thread count as it was when the governor started."""
        torch.set_num_threads(self.start)


def threads_for(cores: int, others: float, limit: int) -> int:
    """The free cores when other processes keep ``others`` cores busy (a neighbour counts from
    half a core on), at least 1 and at most ``limit``."""
    return max(1, min(limit, cores - int(others + 0.5)))


def governor_for(threads: int) -> ThreadGovernor:
    """``run.threads``: 0 → a `ThreadGovernor` that follows the free cores (up to torch's
    count); N → one that keeps N threads. Either gives the count back on ``restore()``."""
    return ThreadGovernor(limit=threads, adapt=False) if threads > 0 else ThreadGovernor()


@contextlib.contextmanager
def free_cores() -> Iterator[ThreadGovernor]:
    """A `ThreadGovernor` for the ``with`` block (``poll()`` it once per unit of work); the
    thread count is given back at its end."""
    threads = ThreadGovernor()
    try:
        yield threads
    finally:
        threads.restore()
