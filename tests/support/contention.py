"""How contended the machine's CPUs are, over time, seen by a probe process.

The probe does a fixed piece of pure CPU work every EVERY_SECONDS and records
its stretch: wall time over the CPU time it got. On a core of its own the
stretch is 1; when more processes want to run than there are cores, the probe
waits for a core like everything else, and its stretch is about the number of
runnable processes per core. A test that judges latency over time (the soak)
scales its bound by the stretch, so that another job starting on a shared
machine is told apart from the system under test slowing down by itself.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

EVERY_SECONDS = 0.05
WORK_UNIT = 50_000  # additions: ~2 ms on an idle core here, ~4% of one core in all

_PROBE = """
import sys, time
unit, every = int(sys.argv[1]), float(sys.argv[2])
while True:
    wall, cpu = time.monotonic(), time.process_time()
    total = 0
    for n in range(unit):
        total += n
    took_wall, took_cpu = time.monotonic() - wall, time.process_time() - cpu
    print(wall, took_wall / max(took_cpu, 1e-6), flush=True)
    time.sleep(every)
"""


@dataclass
class Probe:
    output: Path

    def readings(self, since: float) -> list[tuple[float, float]]:
        """(seconds since ``since`` (a time.monotonic()), stretch) for each piece of work."""
        found = []
        for line in self.output.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2:  # a line cut short by the probe's end is left out
                found.append((float(parts[0]) - since, float(parts[1])))
        return found


@contextmanager
def contention_probe(output: Path) -> Iterator[Probe]:
    """The probe running (CLOCK_MONOTONIC is one clock for every process on Linux, so
    its times compare with this process's time.monotonic()); stopped at the end."""
    with open(output, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", _PROBE, str(WORK_UNIT), str(EVERY_SECONDS)], stdout=out
        )
    try:
        deadline = time.monotonic() + 10
        while not output.read_text() and time.monotonic() < deadline:
            time.sleep(0.01)  # the interpreter has started and measures
        yield Probe(output)
    finally:
        process.terminate()
        process.wait(timeout=10)
