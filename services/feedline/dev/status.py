"""What `feedline dev` shows: each subscription's last summary, as a table or JSON.

The columns follow ``kubectl get evsub`` (Feed, Mode, Schedule, Position, Lag)
plus what a developer wants to see locally (state, last outcome, next run).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from rich.table import Table


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

    def update(self, summary: dict[str, Any]) -> bool:
        """Take a new summary; True when something shown changed."""
        changed = summary != self.summary
        self.summary = summary
        self.message = str(summary.get("message", ""))
        return changed

    @property
    def failed(self) -> bool:
        return self.summary.get("outcome") in ("Failed", "Halted") or (
            self.exit_code not in (None, 0) and not self.summary
        )

    def to_dict(self) -> dict[str, Any]:
        s = self.summary
        return {
            "name": self.name,
            "mode": self.mode,
            "feed": self.feed,
            "schedule": self.schedule,
            "suspend": self.suspended,
            "state": self.state,
            "runs": self.runs,
            "outcome": s.get("outcome"),
            "position": s.get("position"),
            "head": s.get("head"),
            "lag": s.get("lag"),
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
            f"{key}={_cell(d[key])}"
            for key in ("outcome", "position", "head", "lag", "processed", "deadLettered")
        )
        return f"{d['name']}: {d['state']} {fields} message={d['message']!r}"


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


def _until(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "-"
    seconds = max(int((moment - now).total_seconds()), 0)
    return f"in {seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"in {seconds}s"


def render_table(
    statuses: list[SubscriptionStatus],
    services: dict[str, str] | None = None,
    now: datetime | None = None,
) -> Table:
    now = now or datetime.now(UTC)
    caption = (
        "services: " + ", ".join(f"{name} {url}" for name, url in services.items())
        if services
        else None
    )
    table = Table(title="feedline dev: subscriptions", caption=caption, caption_justify="left")
    for column in ("NAME", "MODE", "SCHEDULE", "STATE", "OUTCOME"):
        table.add_column(column, no_wrap=True)
    for column in ("POSITION", "HEAD", "LAG", "PROCESSED", "DEAD-LETTERED", "RUNS"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("NEXT RUN", no_wrap=True)
    table.add_column("MESSAGE", overflow="fold")
    for status in statuses:
        d = status.to_dict()
        outcome = d["outcome"] or "-"
        style = "red" if status.failed else ("green" if outcome == "CaughtUp" else None)
        table.add_row(
            d["name"],
            d["mode"],
            d["schedule"] or "-",
            d["state"],
            outcome,
            _cell(d["position"]),
            _cell(d["head"]),
            _cell(d["lag"]),
            _cell(d["processed"]),
            _cell(d["deadLettered"]),
            str(d["runs"]),
            _until(status.next_run, now),
            d["message"],
            style=style,
        )
    return table
