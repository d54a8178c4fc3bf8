"""The seam between a follower and the operator: the operator reads what it serves.

A real `feedline subscribe --follow` process serves its summary; the
operator's own follower read (the code its Follow timer runs, given the pod
as the API server lists it) must find it there and turn it into the run it
writes into the subscription's status. The real-node tier covers the same
read over a pod IP.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from feedline_operator import status
from feedline_operator.observation import first_follower_run
from feedline_operator.status import Run
from tests.support.ports import free_port
from tests.support.services import running_service
from tests.support.subscriber_process import LOYALTY, start_subscriber, subscriber_env
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_the_operator_reads_a_real_followers_summary(tmp_path: Path) -> None:
    read_model = f"sqlite:///{tmp_path / 'loyalty.db'}"
    status_port = free_port()
    with running_service("special-offers", f"sqlite:///{tmp_path / 'offers.db'}") as base_url:
        for number in range(3):
            created = httpx.post(f"{base_url}/offers", json={"description": f"offer {number}"})
            assert created.status_code == 201
        follower = start_subscriber(
            subscriber_env(
                "seam",
                f"{base_url}/events",
                read_model,
                LOYALTY,
                FEEDLINE_FOLLOW="true",
                FEEDLINE_STATUS_PORT=str(status_port),
            )
        )
        pod = {
            "metadata": {"name": "seam-7d9f-x2"},
            "status": {"phase": "Running", "podIP": "127.0.0.1"},
        }
        try:

            def reported_at(position: int) -> Run | None:
                run = first_follower_run([pod], port=status_port, timeout=1)
                return run if run is not None and run.position == position else None

            run = wait_for(lambda: reported_at(3), what="the operator to read position 3")
            assert run.name == "seam-7d9f-x2"
            assert (run.position, run.head, run.lag) == (3, 3, 0)
            assert run.outcome == "CaughtUp"
            # What the operator writes into status from it.
            current = status.with_run({}, run, generation=1, now=NOW)
            assert current["position"] == 3

            # Each new event moves the status on, while the same pod keeps running.
            for position in (4, 5):
                created = httpx.post(f"{base_url}/offers", json={"description": f"#{position}"})
                assert created.status_code == 201
                run = wait_for(
                    functools.partial(reported_at, position),
                    what=f"the operator to read {position}",
                )
                assert (run.head, run.lag, run.processed) == (position, 0, position)
                assert run.completion_time is None  # a follower never completes
                assert status.is_newer(run, current), "a running follower's report is news"
                current = status.with_run(current, run, generation=1, now=NOW)
                assert (current["position"], current["lag"]) == (position, 0)
        finally:
            follower.kill()
            follower.wait()
