"""The one-line JSON summary of a run: stdout, the termination-message file, the status port.

The operator reads it from the pod's termination message (CronJob mode) or
from the status port (Follow mode) and copies it into the EventSubscription's
status. Kubernetes keeps at most 4096 bytes of a termination message, so the
message field is shortened to fit. :class:`RunState` is what a run has done
so far; the summary is made from it.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import orjson

from feedline_contracts.summary import TERMINATION_MESSAGE_LIMIT, Outcome

__all__ = ["TERMINATION_MESSAGE_LIMIT", "Outcome", "Summary"]


EXIT_CODES = {
    Outcome.CAUGHT_UP: 0,
    Outcome.PROGRESSED: 0,
    Outcome.LOCKED: 0,
    Outcome.FAILED: 1,
    Outcome.HALTED: 3,
}


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Summary:
    subscription: str
    position: int | None
    head: int | None
    processed: int
    deadLettered: int  # noqa: N815 - the JSON key the operator reads
    outcome: Outcome
    message: str
    startTime: str  # noqa: N815
    completionTime: str | None  # noqa: N815 - None while a follower is running

    @property
    def lag(self) -> int | None:
        if self.position is None or self.head is None:
            return None
        return max(self.head - self.position, 0)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.outcome]

    def to_dict(self) -> dict[str, object]:
        data: dict[str, object] = asdict(self)
        data["outcome"] = self.outcome.value
        data["lag"] = self.lag
        return data

    def to_json(self, limit: int | None = None) -> bytes:
        """One line of JSON; with ``limit``, the message is shortened until it fits."""
        line = orjson.dumps(self.to_dict())
        if limit is None or len(line) <= limit:
            return line
        excess = len(line) - limit + 3
        message = self.message.encode()[: max(len(self.message.encode()) - excess, 0)]
        shortened = replace(self, message=message.decode(errors="ignore") + "...")
        return orjson.dumps(shortened.to_dict())[:limit]


@dataclass
class RunState:
    """What a run has done so far; its summary is made from it at any moment."""

    subscription: str
    start_time: str = field(default_factory=utc_now)
    position: int | None = None
    head: int | None = None
    processed: int = 0
    dead_lettered: int = 0
    message: str = ""

    def summary(self, outcome: Outcome, *, finished: bool = True) -> Summary:
        return Summary(
            subscription=self.subscription,
            position=self.position,
            head=self.head,
            processed=self.processed,
            deadLettered=self.dead_lettered,
            outcome=outcome,
            message=self.message,
            startTime=self.start_time,
            completionTime=utc_now() if finished else None,
        )

    def progress_outcome(self) -> Outcome:
        if self.position is not None and self.head is not None and self.position >= self.head:
            return Outcome.CAUGHT_UP
        return Outcome.PROGRESSED


def write_summary(summary: Summary, termination_log: Path, *, explicit: bool) -> None:
    """Print the summary to stdout and write it to the termination-message file.

    The default path (/dev/termination-log) is only written when it exists,
    i.e. in a Kubernetes container: outside one, writing into /dev is wrong.
    """
    sys.stdout.buffer.write(summary.to_json() + b"\n")
    sys.stdout.flush()
    if not explicit and not termination_log.exists():
        return
    try:
        termination_log.write_bytes(summary.to_json(TERMINATION_MESSAGE_LIMIT))
    except OSError as exc:
        print(f"cannot write the termination message to {termination_log}: {exc}", file=sys.stderr)
