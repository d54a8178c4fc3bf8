"""Follow mode: a published event reaches the read model at once, without a schedule.

A real special-offers service and a `feedline subscribe --follow` process that
long-polls its feed and serves its latest summary on the status port (what the
operator reads in Follow mode). SIGTERM stops it promptly, even mid-poll.
"""

from __future__ import annotations

import asyncio
import functools
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.support.ports import free_port
from tests.support.services import running_service
from tests.support.subscriber_oracle import read_offers
from tests.support.subscriber_process import LOYALTY, finish, start_subscriber, subscriber_env

pytestmark = pytest.mark.integration


def wait_for(condition: Callable[[], bool], timeout: float = 30) -> float:
    """Seconds until ``condition()`` is true."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, "timed out"
        time.sleep(0.01)
    return time.monotonic() - started


def offer_is_in(read_model: str, offer_id: int) -> bool:
    return offer_id in asyncio.run(read_offers(read_model))


def test_a_follower_applies_new_events_within_a_second(tmp_path: Path) -> None:
    read_model = f"sqlite:///{tmp_path / 'loyalty.db'}"
    status_port = free_port()
    # The service re-checks only every 60 s and the follower's long poll waits 20 s:
    # an event applied within 1.5 s was announced by the commit's notification.
    with running_service(
        "special-offers",
        f"sqlite:///{tmp_path / 'offers.db'}",
        FEEDLINE_LONG_POLL_RECHECK_SECONDS="60",
    ) as base_url:
        follower = start_subscriber(
            subscriber_env(
                "follower",
                f"{base_url}/events",
                read_model,
                LOYALTY,
                FEEDLINE_FOLLOW="true",
                FEEDLINE_STATUS_PORT=str(status_port),
                FEEDLINE_FEED_WAIT_SECONDS="20",
            )
        )
        status = f"http://127.0.0.1:{status_port}"
        try:

            def status_up() -> bool:
                try:
                    return httpx.get(f"{status}/healthz", timeout=1).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_for(status_up)
            latencies = []
            for number in range(5):
                offer = httpx.post(f"{base_url}/offers", json={"description": f"flash {number}"})
                assert offer.status_code == 201
                offer_id = offer.json()["id"]
                latencies.append(
                    wait_for(functools.partial(offer_is_in, read_model, offer_id), timeout=10)
                )
            assert max(latencies) < 1.5, latencies

            summary = httpx.get(f"{status}/summary").json()
            assert summary["subscription"] == "follower"
            assert summary["position"] == summary["head"] == 5
            assert summary["lag"] == 0
            assert summary["completionTime"] is None  # still running

            stopping = time.monotonic()
            follower.send_signal(signal.SIGTERM)  # it is long-polling right now
            done = finish(follower, timeout=15)
            assert time.monotonic() - stopping < 5
        finally:
            if follower.poll() is None:
                follower.kill()
                follower.wait()
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.summary["outcome"] == "CaughtUp"
    assert done.summary["position"] == 5
    assert done.summary["processed"] == 5
