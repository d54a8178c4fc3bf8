"""How long processes waited for a CPU, from the kernel's own scheduler accounting.

Linux keeps, for every thread, the time it ran on a CPU and the time it sat
runnable on a run queue waiting for one (``/proc/<pid>/task/<tid>/schedstat``,
first two fields, nanoseconds). Summed over the processes that serve a request,
their *stretch* over an interval, (ran + waited) / ran, says how much longer
their work took than it would have on CPUs of their own. A test that judges
latency over time (the soak) scales its bound by how that stretch changed, so
that another job taking the CPUs is told apart from the system under test
slowing down by itself.

Why not a probe process that times a fixed piece of work (what the soak used
before): the scheduler wakes a process that mostly sleeps ahead of ones that
keep running. Beside three busy-looping processes on an otherwise idle 2-core
machine such a probe's median stretch stayed 1.00; in a soak that three busy
loops and a disk writer joined after its first third, the probe's median went
2.32 -> 2.55 while command latency went 13.5 -> 271.8 ms. The processes under
test see every competitor (docs/benchmarks.md, the soak).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class CpuTime:
    """Seconds on a CPU and seconds waiting on a run queue, summed over threads."""

    ran: float
    waited: float

    def __sub__(self, earlier: CpuTime) -> CpuTime:
        return CpuTime(self.ran - earlier.ran, self.waited - earlier.waited)

    def __add__(self, other: CpuTime) -> CpuTime:
        return CpuTime(self.ran + other.ran, self.waited + other.waited)

    @property
    def stretch(self) -> float:
        """(ran + waited) / ran: 1 when every thread had a CPU whenever it could run."""
        return (self.ran + self.waited) / self.ran if self.ran > 0 else 1.0


def cpu_times(pids: Iterable[int]) -> dict[int, CpuTime]:
    """Per process of ``pids`` still running: the run and run-queue time of all its
    threads so far (threads that exited are not counted)."""
    found = {}
    for pid in pids:
        ran = waited = 0
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            for tid in os.listdir(f"/proc/{pid}/task"):
                with (
                    contextlib.suppress(FileNotFoundError, ProcessLookupError),
                    open(f"/proc/{pid}/task/{tid}/schedstat") as stats,
                ):
                    on_cpu, on_queue, _ = stats.read().split()
                    ran += int(on_cpu)
                    waited += int(on_queue)
            found[pid] = CpuTime(ran / 1e9, waited / 1e9)
    return found


def between(earlier: dict[int, CpuTime], later: dict[int, CpuTime]) -> CpuTime:
    """What the processes sampled at both ends did in between (one that started or
    ended in between is left out: its counters do not span the interval)."""
    total = CpuTime(0.0, 0.0)
    for pid in earlier.keys() & later.keys():
        total += later[pid] - earlier[pid]
    return total
