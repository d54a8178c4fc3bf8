"""The soak's contention figures come from the kernel's scheduler accounting and
see a busy neighbour that a sleeping probe did not (tests/support/contention.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.support.contention import CpuTime, between, cpu_times

pytestmark = pytest.mark.unit

BUSY = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end: pass\n"


def busy(seconds: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", BUSY.format(seconds=seconds)])


def test_stretch_is_one_with_no_waiting_and_counts_the_wait() -> None:
    assert CpuTime(0.5, 0.0).stretch == 1.0
    assert CpuTime(0.5, 1.0).stretch == 3.0
    assert CpuTime(0.0, 0.0).stretch == 1.0  # nothing ran: no contention to report


def test_between_leaves_out_processes_not_sampled_at_both_ends() -> None:
    earlier = {1: CpuTime(1.0, 1.0), 2: CpuTime(5.0, 5.0)}
    later = {1: CpuTime(1.5, 2.0), 3: CpuTime(9.0, 9.0)}
    assert between(earlier, later) == CpuTime(0.5, 1.0)


def test_the_cpu_a_process_used_is_counted() -> None:
    start = cpu_times([os.getpid()])
    end = time.process_time() + 0.2
    while time.process_time() < end:
        pass
    used = between(start, cpu_times([os.getpid()]))
    assert 0.15 <= used.ran < 5, used


def test_a_process_that_exited_is_left_out() -> None:
    finished = busy(0.0)
    finished.wait(timeout=10)
    assert cpu_times([finished.pid]) == {}


def test_busy_neighbours_stretch_a_busy_process() -> None:
    """More busy processes than cores: a busy process waits for a CPU about as long
    as it runs, or longer; the wait shows in its stretch."""
    cores = os.cpu_count() or 1
    subject = busy(1.5)
    neighbours = [busy(1.5) for _ in range(2 * cores)]
    try:
        start = cpu_times([subject.pid])
        time.sleep(1.0)
        stretched = between(start, cpu_times([subject.pid]))
    finally:
        for process in [subject, *neighbours]:
            process.kill()
            process.wait()
    # 2 x cores + 1 busy processes on `cores` CPUs: a fair share is under 1/2 of a
    # CPU, so the stretch is above 2 (1 when alone; over 1.8 leaves room for the
    # other work of this machine being uneven).
    assert stretched.stretch > 1.8, stretched
