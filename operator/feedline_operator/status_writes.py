"""Writes to an EventSubscription's status: read-modify-write, once per change.

Both the reconcile (the Ready condition, the child) and run observation
(position, lag, last run) write here; the pure shaping of the status lives in
`feedline_operator.status`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from feedline_contracts.eventsubscription import EventSubscription
from feedline_operator import metrics, names, status
from feedline_operator.kube import ApiError, Kube, object_path

_ATTEMPTS = 5


def now() -> datetime:
    return datetime.now(UTC)


def write_status(
    kube: Kube,
    namespace: str,
    name: str,
    change: Callable[[Mapping[str, Any], int], dict[str, Any] | None],
) -> bool:
    """Read-modify-write the status; writes only when it changed. True if written.

    `change(current_status, generation)` returns the new status (or None to leave
    it). The resourceVersion makes a concurrent writer's change win a retry
    instead of being overwritten.
    """
    path = object_path(names.API_VERSION, names.KIND, namespace, name)
    for _ in range(_ATTEMPTS):
        body = kube.get(path)
        if body is None:
            return False
        current = body.get("status") or {}
        new = change(current, int(body["metadata"].get("generation", 1)))
        if new is None or status.same_status(current, new):
            return False
        patch = {
            "metadata": {"resourceVersion": body["metadata"]["resourceVersion"]},
            "status": new,
        }
        try:
            kube.merge_patch(f"{path}/status", patch)
        except ApiError as error:
            if error.status == 409:
                continue
            if error.status == 404:
                return False
            raise
        return True
    raise RuntimeError(f"status of {namespace}/{name} kept changing; will retry")


def write_ready(
    kube: Kube,
    sub: EventSubscription,
    ready: bool,
    reason: str,
    message: str,
    child_kind: str | None,
    child_name: str | None,
) -> None:
    """The reconcile's result: the Ready condition and the child, for this generation."""

    def change(current: Mapping[str, Any], generation: int) -> dict[str, Any] | None:
        if generation != sub.generation:
            return None  # a newer spec is on its way through the handlers
        return status.with_reconcile(
            current,
            generation=generation,
            ready=ready,
            reason=reason,
            message=message,
            child_kind=child_kind,
            child_name=child_name,
            now=now(),
        )

    if write_status(kube, sub.namespace, sub.name, change):
        metrics.STATUS_WRITES.labels(cause="reconcile").inc()


def record_run(kube: Kube, namespace: str, name: str, run: status.Run) -> bool:
    """Write a finished (or following) run into its subscription's status, if it is news."""

    def change(current: Mapping[str, Any], generation: int) -> dict[str, Any] | None:
        if not status.is_newer(run, current):
            return None
        observed = int(current.get("observedGeneration") or generation)
        return status.with_run(current, run, generation=observed, now=now())

    written = write_status(kube, namespace, name, change)
    if written:
        metrics.STATUS_WRITES.labels(cause="run").inc()
    return written
