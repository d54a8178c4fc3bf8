"""Fault injection for crash tests: the process SIGKILLs itself at a chosen point.

Enabled only when ``FEEDLINE_SUBSCRIBER_FAULT`` is set (tests set it; the
operator never renders it). The value is ``POINT@BATCH`` or
``POINT@BATCH:DELAY_MS``: batch numbers count the batches this process tries
to write, from 1. Points, in the order a batch passes them:

- ``after-fetch``: the page is read, nothing written yet;
- ``during-write``: a timer kills the process DELAY_MS after the batch's
  transaction begins (while the projection writes);
- ``before-commit``: read-model rows and checkpoint written, not committed;
- ``during-commit``: a timer kills the process DELAY_MS after COMMIT is sent;
- ``after-commit``: committed, before the next batch.
"""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass

from feedline_subscriber import environment as env

POINTS = ("after-fetch", "during-write", "before-commit", "during-commit", "after-commit")
TIMED_POINTS = ("during-write", "during-commit")


def _kill_now() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class FaultPlan:
    point: str
    batch: int
    delay_ms: float = 0.0

    def reached(self, point: str, batch: int) -> None:
        """Called by the runner at every point; kills the process when this is the one."""
        if point != self.point or batch != self.batch:
            return
        if point in TIMED_POINTS:
            timer = threading.Timer(self.delay_ms / 1000.0, _kill_now)
            timer.daemon = True
            timer.start()
            return
        _kill_now()


def parse_fault_plan(value: str) -> FaultPlan:
    point, _, rest = value.partition("@")
    batch_text, _, delay_text = rest.partition(":")
    if point not in POINTS or not batch_text.isdigit():
        raise ValueError(
            f"{env.FAULT_INJECTION}={value!r}: expected POINT@BATCH[:DELAY_MS] with POINT one of "
            f"{', '.join(POINTS)}"
        )
    return FaultPlan(point, int(batch_text), float(delay_text) if delay_text else 0.0)


def fault_plan_from_environment() -> FaultPlan | None:
    value = os.environ.get(env.FAULT_INJECTION)
    return parse_fault_plan(value) if value else None
