"""Status from termination messages: parsing, ordering, conditions."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from feedline_operator import status

pytestmark = pytest.mark.unit

T0 = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)


def _summary(**overrides: Any) -> str:
    data = {
        "subscription": "s",
        "position": 42,
        "head": 42,
        "lag": 0,
        "processed": 10,
        "deadLettered": 1,
        "outcome": "CaughtUp",
        "message": "",
        "startTime": "2024-05-01T10:00:00Z",
        "completionTime": "2024-05-01T10:00:03.250000+00:00",
    }
    data.update(overrides)
    return json.dumps(data)


def _pod(phase: str, message: str, name: str = "s-1-abc", **terminated: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "status": {
            "phase": phase,
            "containerStatuses": [
                {
                    "name": "subscriber",
                    "state": {"terminated": {"message": message, **terminated}},
                }
            ],
        },
    }


def test_summary_becomes_a_run() -> None:
    run = status.parse_summary("p", "log line\n" + _summary())
    assert run is not None
    assert (run.position, run.head, run.lag, run.processed, run.dead_lettered) == (42, 42, 0, 10, 1)
    assert run.completion_time == "2024-05-01T10:00:03Z"


def test_not_a_summary() -> None:
    assert status.parse_summary("p", "Traceback ...") is None
    assert status.parse_summary("p", json.dumps({"outcome": "Weird"})) is None


def test_running_pod_is_no_run() -> None:
    assert status.run_from_pod({"metadata": {"name": "p"}, "status": {"phase": "Running"}}) is None


def test_failed_pod_without_summary_is_a_failed_run() -> None:
    run = status.run_from_pod(
        _pod("Failed", "", exitCode=1, reason="Error", finishedAt="2024-05-01T10:01:00Z")
    )
    assert run is not None
    assert run.outcome == "Failed"
    assert "exit code 1" in run.message
    assert run.completion_time == "2024-05-01T10:01:00Z"


def test_failed_pod_with_a_success_summary_counts_as_failed() -> None:
    run = status.run_from_pod(_pod("Failed", _summary(outcome="Progressed")))
    assert run is not None
    assert run.outcome == "Failed"


def test_only_newer_runs_count() -> None:
    first = status.parse_summary("a", _summary())
    older = status.parse_summary("b", _summary(completionTime="2024-05-01T09:00:00Z"))
    assert first is not None
    assert older is not None
    current = status.with_run({}, first, generation=1, now=T0)
    assert not status.is_newer(first, current)  # the same pod again (a restart)
    assert not status.is_newer(older, current)
    later = status.parse_summary("c", _summary(completionTime="2024-05-01T11:00:00Z"))
    assert later is not None
    assert status.is_newer(later, current)


def test_a_run_that_found_the_lock_held_does_not_hide_the_run_that_held_it() -> None:
    """A run-now Job that overlaps the scheduled run exits Locked; lastRun stays the worker's."""
    worker = status.parse_summary("s-29936671-abc", _summary(processed=3))
    assert worker is not None
    current = status.with_run({}, worker, generation=1, now=T0)
    locked = status.parse_summary(
        "s-now-1-def",
        _summary(
            outcome="Locked",
            position=None,
            head=None,
            lag=None,
            processed=0,
            completionTime="2024-05-01T10:00:05Z",  # finished after the worker
        ),
    )
    assert locked is not None
    assert not status.is_newer(locked, current)
    assert not status.is_newer(locked, {})


def test_a_running_followers_reports_keep_moving_the_status() -> None:
    """A follower never completes: each report from its pod is news, until it finishes."""
    running = {"completionTime": None, "outcome": "CaughtUp"}
    first = status.parse_summary("f-1", _summary(position=3, head=3, **running))
    moved = status.parse_summary("f-1", _summary(position=4, head=4, **running))
    assert first is not None
    assert moved is not None
    current = status.with_run({}, first, generation=1, now=T0)
    assert status.is_newer(moved, current)
    updated = status.with_run(current, moved, generation=1, now=T0)
    assert (updated["position"], updated["head"]) == (4, 4)
    finished = status.parse_summary("f-1", _summary(position=4, head=4))
    assert finished is not None
    done = status.with_run(updated, finished, generation=1, now=T0)
    assert not status.is_newer(moved, done)  # a running report after the pod finished


def test_caught_up_run() -> None:
    run = status.parse_summary("p", _summary())
    assert run is not None
    new = status.with_run({}, run, generation=2, now=T0)
    assert (new["position"], new["head"], new["lag"]) == (42, 42, 0)
    assert new["lastRun"]["outcome"] == "CaughtUp"
    conditions = {c["type"]: c for c in new["conditions"]}
    assert conditions["CaughtUp"]["status"] == "True"
    assert conditions["Stalled"]["status"] == "False"
    assert conditions["CaughtUp"]["observedGeneration"] == 2


def test_halted_run_stalls_with_its_message() -> None:
    run = status.parse_summary(
        "p", _summary(outcome="Halted", lag=5, head=47, message="event 43: KeyError 'id'")
    )
    assert run is not None
    new = status.with_run({}, run, generation=1, now=T0)
    conditions = {c["type"]: c for c in new["conditions"]}
    assert conditions["Stalled"]["status"] == "True"
    assert conditions["Stalled"]["reason"] == "Halted"
    assert "KeyError" in conditions["Stalled"]["message"]
    assert conditions["CaughtUp"]["status"] == "False"


def test_reconcile_status_is_stable_when_nothing_changed() -> None:
    kwargs: dict[str, Any] = {
        "generation": 1,
        "ready": True,
        "reason": "ChildInSync",
        "message": "ok",
        "child_kind": "CronJob",
        "child_name": "s",
    }
    first = status.with_reconcile({}, now=T0, **kwargs)
    again = status.with_reconcile(first, now=T0 + timedelta(minutes=5), **kwargs)
    assert status.same_status(first, again)
    assert [c["type"] for c in first["conditions"]] == ["Ready", "CaughtUp", "Stalled"]
    assert first["observedGeneration"] == 1


def test_condition_transition_time_moves_only_on_a_flip() -> None:
    kwargs: dict[str, Any] = {"generation": 1, "child_kind": "CronJob", "child_name": "s"}
    ready = status.with_reconcile(
        {}, ready=True, reason="ChildInSync", message="", now=T0, **kwargs
    )
    later = T0 + timedelta(minutes=1)
    broken = status.with_reconcile(
        ready,
        ready=False,
        reason="SecretNotFound",
        message="readModel.databaseSecretRef: Secret x not found",
        now=later,
        **kwargs,
    )
    condition = broken["conditions"][0]
    assert (condition["status"], condition["reason"]) == ("False", "SecretNotFound")
    assert condition["lastTransitionTime"] == "2024-05-01T10:01:00Z"
    caught_up = broken["conditions"][1]
    assert caught_up["lastTransitionTime"] == "2024-05-01T10:00:00Z"
