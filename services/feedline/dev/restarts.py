"""Pure: how `feedline dev` restarts a process that exits on its own, and how it says so.

A service or a Follow-mode subscriber that exits while `feedline dev` runs
has crashed: it is restarted after a back-off that starts at 1 s and doubles
up to 30 s, and starts again from 1 s once the process has stayed up for
``STABLE_SECONDS`` (docs/local-mode.md, "Crashes and restarts").
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path

FIRST_DELAY_SECONDS = 1.0
MAX_DELAY_SECONDS = 30.0
STABLE_SECONDS = 30.0


@dataclass
class Backoff:
    """The delay before each restart: doubling, capped, reset by a long enough run."""

    first: float = FIRST_DELAY_SECONDS
    cap: float = MAX_DELAY_SECONDS
    stable: float = STABLE_SECONDS
    _next: float = 0.0

    def delay(self, uptime: float) -> float:
        """The delay before restarting a process that exited after ``uptime`` seconds."""
        if self._next == 0.0 or uptime >= self.stable:
            self._next = self.first
        delay = self._next
        self._next = min(self._next * 2, self.cap)
        return delay


def describe_exit(returncode: int) -> str:
    """``exit code 2``, or ``killed by SIGKILL`` (asyncio gives a signal as ``-N``)."""
    if returncode >= 0:
        return f"exit code {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    return f"killed by {name}"


def crash_line(kind: str, name: str, returncode: int, log: Path, delay: float, restart: int) -> str:
    """The one line that reports an exit: what, how it ended, its log, when it restarts."""
    how = "exited" if returncode == 0 else "crashed"
    return (
        f"{kind} {name} {how} ({describe_exit(returncode)}); log: {log}; "
        f"restart {restart} in {delay:g}s"
    )
