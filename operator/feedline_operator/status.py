"""Pure status logic: pod termination messages in, EventSubscription status out.

Status is condition-shaped (metav1.Condition): Ready (the child is in sync with
the spec), CaughtUp (lag 0 at the last run), Stalled (the last run failed or
halted on a poison event). A condition's lastTransitionTime moves only when its
status flips, so writing the same facts twice changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from feedline_contracts.summary import (
    OUTCOMES,
    STALLED_OUTCOMES,
    TERMINATION_MESSAGE_LIMIT,
    Outcome,
)
from feedline_operator import names

Status = dict[str, Any]


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class Run:
    """One finished subscriber run, as its pod reported it."""

    name: str
    outcome: str
    message: str
    start_time: str | None
    completion_time: str | None
    position: int | None = None
    head: int | None = None
    lag: int | None = None
    processed: int = 0
    dead_lettered: int = 0

    def last_run(self) -> Status:
        out: Status = {
            "name": self.name,
            "outcome": self.outcome,
            "processed": self.processed,
            "deadLettered": self.dead_lettered,
            "message": self.message[:TERMINATION_MESSAGE_LIMIT],
        }
        if self.start_time:
            out["startTime"] = self.start_time
        if self.completion_time:
            out["completionTime"] = self.completion_time
        return out


def parse_summary(name: str, text: str) -> Run | None:
    """The subscriber's one-line JSON summary, or None if it is not one."""
    for line in reversed(text.strip().splitlines()):
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if isinstance(data, dict) and data.get("outcome") in OUTCOMES:
            return summary_to_run(name, data)
    return None


def summary_to_run(name: str, data: Mapping[str, Any]) -> Run:
    start = _parse_time(data.get("startTime"))
    end = _parse_time(data.get("completionTime"))
    return Run(
        name=name,
        outcome=str(data["outcome"]),
        message=str(data.get("message") or ""),
        start_time=rfc3339(start) if start else None,
        completion_time=rfc3339(end) if end else None,
        position=_int(data.get("position")),
        head=_int(data.get("head")),
        lag=_int(data.get("lag")),
        processed=_int(data.get("processed")) or 0,
        dead_lettered=_int(data.get("deadLettered")) or 0,
    )


def run_from_pod(pod: Mapping[str, Any]) -> Run | None:
    """A finished subscriber pod's run; None while it has not finished."""
    status = pod.get("status") or {}
    phase = status.get("phase")
    if phase not in ("Succeeded", "Failed"):
        return None
    name = str((pod.get("metadata") or {}).get("name", ""))
    terminated: Mapping[str, Any] = {}
    for container in status.get("containerStatuses") or []:
        if container.get("name") == names.CONTAINER_NAME:
            terminated = (container.get("state") or {}).get("terminated") or {}
    message = str(terminated.get("message") or "")
    run = parse_summary(name, message)
    if run is not None:
        if run.outcome not in STALLED_OUTCOMES and phase == "Failed":
            run = Run(**{**run.__dict__, "outcome": Outcome.FAILED})
        return run
    started = _parse_time(terminated.get("startedAt") or status.get("startTime"))
    finished = _parse_time(terminated.get("finishedAt"))
    if phase == "Succeeded":
        detail = "the subscriber exited 0 without a summary"
    else:
        reason = terminated.get("reason") or status.get("reason") or "Error"
        detail = f"{reason} (exit code {terminated.get('exitCode', '?')})"
        if message:
            detail = f"{detail}: {message.strip()}"
        elif status.get("message"):
            detail = f"{detail}: {status['message']}"
    return Run(
        name=name,
        outcome=Outcome.FAILED if phase == "Failed" else Outcome.PROGRESSED,
        message=detail,
        start_time=rfc3339(started) if started else None,
        completion_time=rfc3339(finished) if finished else None,
    )


def is_newer(run: Run, status: Mapping[str, Any]) -> bool:
    """Pods arrive in any order (a restart lists them all); only a later run counts.

    A follower's pod reports again and again under one name while it runs
    (no completionTime): each report is news until that pod has finished (the
    status write itself is skipped when nothing changed). A finished pod's
    report is newer with a later completionTime. A different pod counts
    unless it finished earlier.

    A ``Locked`` run is never news: it found another run of the subscription
    holding the lock and applied nothing, and that other run reports its own
    outcome. (A run-now Job can overlap the CronJob's scheduled run; the one
    that lost the race would otherwise hide the one that did the work.)
    """
    if run.outcome == Outcome.LOCKED:
        return False
    last = status.get("lastRun") or {}
    if not last:
        return True
    previous = _parse_time(last.get("completionTime"))
    current = _parse_time(run.completion_time)
    if last.get("name") == run.name:
        if current is None:
            return previous is None
        return previous is None or current > previous
    if previous is None or current is None:
        return True
    return current >= previous


def set_condition(
    status: Status,
    type_: str,
    value: str,
    reason: str,
    message: str,
    generation: int,
    now: datetime,
) -> None:
    conditions: list[Status] = list(status.get("conditions") or [])
    previous = next((c for c in conditions if c.get("type") == type_), None)
    transition = rfc3339(now)
    if previous is not None and previous.get("status") == value:
        transition = previous.get("lastTransitionTime") or transition
    new = {
        "type": type_,
        "status": value,
        "reason": reason,
        "message": message[:TERMINATION_MESSAGE_LIMIT],
        "lastTransitionTime": transition,
        "observedGeneration": generation,
    }
    conditions = [c for c in conditions if c.get("type") != type_] + [new]
    conditions.sort(
        key=lambda c: (
            ("Ready", "CaughtUp", "Stalled").index(c["type"])
            if c["type"] in ("Ready", "CaughtUp", "Stalled")
            else 99
        )
    )
    status["conditions"] = conditions


def with_reconcile(
    status: Mapping[str, Any],
    *,
    generation: int,
    ready: bool,
    reason: str,
    message: str,
    child_kind: str | None,
    child_name: str | None,
    now: datetime,
) -> Status:
    """The status after a reconcile: Ready, the child, and placeholders before any run."""
    out: Status = json.loads(json.dumps(dict(status)))
    out["observedGeneration"] = generation
    if child_kind and child_name:
        out["childKind"] = child_kind
        out["childName"] = child_name
    set_condition(out, "Ready", "True" if ready else "False", reason, message, generation, now)
    types = {c["type"] for c in out["conditions"]}
    if "CaughtUp" not in types:
        set_condition(
            out, "CaughtUp", "Unknown", "NoRunYet", "no run has finished yet", generation, now
        )
    if "Stalled" not in types:
        set_condition(
            out, "Stalled", "False", "NoRunYet", "no run has finished yet", generation, now
        )
    for condition in out["conditions"]:
        condition["observedGeneration"] = generation
    return out


def with_run(status: Mapping[str, Any], run: Run, *, generation: int, now: datetime) -> Status:
    """The status after a finished run: position, head, lag, lastRun, CaughtUp, Stalled."""
    out: Status = json.loads(json.dumps(dict(status)))
    for key, value in (("position", run.position), ("head", run.head), ("lag", run.lag)):
        if value is not None:
            out[key] = value
    if run.lag is None and run.position is not None and run.head is not None:
        out["lag"] = max(run.head - run.position, 0)
    out["lastRun"] = run.last_run()
    lag = out.get("lag")
    if run.outcome == Outcome.FAILED and run.lag is None:
        set_condition(out, "CaughtUp", "Unknown", "RunFailed", run.message, generation, now)
    elif lag == 0:
        set_condition(out, "CaughtUp", "True", "CaughtUp", "lag 0 at the last run", generation, now)
    elif lag is not None:
        set_condition(
            out, "CaughtUp", "False", "Behind", f"lag {lag} at the last run", generation, now
        )
    if run.outcome in STALLED_OUTCOMES:
        set_condition(
            out, "Stalled", "True", run.outcome, run.message or run.outcome, generation, now
        )
    else:
        set_condition(
            out,
            "Stalled",
            "False",
            run.outcome,
            run.message or f"last run: {run.outcome}",
            generation,
            now,
        )
    return out


def same_status(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return json.dumps(dict(a), sort_keys=True) == json.dumps(dict(b), sort_keys=True)
