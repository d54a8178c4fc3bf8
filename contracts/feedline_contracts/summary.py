"""A subscriber run's summary: its outcomes and where and how big it is written.

The subscriber writes the summary (stdout, the termination-message file, the
Follow-mode status port); the operator and `feedline dev` read it into the
subscription's status. Both sides use these names.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class Outcome(StrEnum):
    CAUGHT_UP = "CaughtUp"  # position reached the head
    PROGRESSED = "Progressed"  # stopped early (max events per run, SIGTERM); lag remains
    HALTED = "Halted"  # a poison event under the Halt policy; position stays before it
    FAILED = "Failed"  # the feed, the database or the configuration failed the run
    LOCKED = "Locked"  # another run of the subscription holds the lock; nothing applied


OUTCOMES: Final = frozenset(Outcome)
# Outcomes that mean the subscription is not moving: a Warning Event, Stalled=True.
STALLED_OUTCOMES: Final = frozenset({Outcome.HALTED, Outcome.FAILED})

# Where a container's termination message is written (Kubernetes' default
# terminationMessagePath) and how many bytes of it Kubernetes keeps.
TERMINATION_MESSAGE_PATH: Final = "/dev/termination-log"
TERMINATION_MESSAGE_LIMIT: Final = 4096
