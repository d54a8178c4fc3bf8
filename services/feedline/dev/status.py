"""What `feedline dev` knows of each process: services and subscriptions, as JSON or a line.

A subscription's status is its last summary (position, head, lag...) plus
what a developer wants to see locally (state, next run, runs, restarts); a
service's is whether it is up and how often it was restarted. ``table``
renders both for a terminal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any


@dataclass
class SubscriptionStatus:
    name: str
    mode: str
    feed: str
    schedule: str | None
    suspended: bool
    state: str = "Waiting"  # Waiting | Running | Following | Restarting | Suspended | Stopped
    runs: int = 0
    summary: dict[str, Any] = field(default_factory=dict)
    next_run: datetime | None = None
    exit_code: int | None = None
    message: str = ""
    restarts: int = 0  # Follow mode: how often the follower was restarted after exiting
    pid: int | None = None
    # The feed's head as `feedline dev` last read it between runs (``heads``): newer
    # than the summary's, which is as of the run; None until read after that summary.
    feed_head: int | None = None

    def update(self, summary: dict[str, Any]) -> bool:
        """Take a new summary; True when something shown changed."""
        changed = summary != self.summary
        self.summary = summary
        self.message = str(summary.get("message", ""))
        if changed:
            self.feed_head = None  # the summary's head is the newer one now
        return changed

    def set_feed_head(self, head: int) -> bool:
        """The feed's head read just now; True when the head shown changed."""
        before = self.head_and_lag()
        self.feed_head = head
        return self.head_and_lag() != before

    def head_and_lag(self) -> tuple[int | None, int | None]:
        """The head (the feed's, when read since the last summary) and the lag from it."""
        position, head, lag = (self.summary.get(k) for k in ("position", "head", "lag"))
        if self.feed_head is None:
            return head, lag
        if isinstance(position, int):
            return self.feed_head, max(self.feed_head - position, 0)
        return self.feed_head, lag

    @property
    def down_after_crash(self) -> bool:
        """A follower that exited on its own and is not running again (yet)."""
        return self.restarts > 0 and self.state == "Restarting"

    @property
    def failed(self) -> bool:
        return self.summary.get("outcome") in ("Failed", "Halted") or (
            self.exit_code not in (None, 0) and not self.summary
        )

    def to_dict(self) -> dict[str, Any]:
        s = self.summary
        head, lag = self.head_and_lag()
        return {
            "name": self.name,
            "mode": self.mode,
            "feed": self.feed,
            "schedule": self.schedule,
            "suspend": self.suspended,
            "state": self.state,
            "runs": self.runs,
            "restarts": self.restarts,
            "pid": self.pid,
            "outcome": s.get("outcome"),
            "position": s.get("position"),
            "head": head,
            "lag": lag,
            "processed": s.get("processed"),
            "deadLettered": s.get("deadLettered"),
            "startTime": s.get("startTime"),
            "completionTime": s.get("completionTime"),
            "exitCode": self.exit_code,
            "message": self.message,
            "nextRun": self.next_run.isoformat() if self.next_run else None,
        }

    def line(self) -> str:
        """One plain line for logs (no terminal)."""
        d = self.to_dict()
        fields = " ".join(
            f"{key}={'-' if d[key] is None else d[key]}"
            for key in ("outcome", "position", "head", "lag", "processed", "deadLettered")
        )
        return f"{d['name']}: {d['state']} {fields} message={d['message']!r}"


@dataclass
class ServiceStatus:
    """One example service: up (``Ready``) or not, and how often it was restarted."""

    name: str
    url: str
    log: Path
    state: str = "Starting"  # Starting | Ready | Restarting | Stopped
    restarts: int = 0
    pid: int | None = None
    last_exit: str | None = None  # "killed by SIGKILL", "exit code 1"
    grpc_url: str | None = None  # its gRPC feed, grpc://HOST:PORT

    @property
    def down_after_crash(self) -> bool:
        """A service that crashed and does not answer /health/ready again (yet)."""
        return self.restarts > 0 and self.state != "Ready"

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "grpcUrl": self.grpc_url,
            "state": self.state,
            "restarts": self.restarts,
            "pid": self.pid,
            "lastExit": self.last_exit,
            "log": str(self.log),
        }
