"""Network faults between a subscriber and its PostgreSQL read model, through a real
fault proxy (toxiproxy-server): added latency on every round trip, and the
connection reset in the middle of a batch's transaction, in either direction: a
reset of what the subscriber sends (the server never sees the COMMIT: the batch
rolls back) and of what the server answers (the COMMIT may have happened, the
subscriber cannot know). The checkpoint lives in the batch's transaction, so a
reconnected run must go on from exactly where the database says it is.

A CronJob-style run and a follower each end with the exactly-once oracle.
Real processes: the special-offers service (`feedline serve`), `feedline
subscribe` with FEEDLINE_DATABASE_URL on the proxy's port, the audited projection.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from feedline_contracts.database import parse_database_url
from tests.faults.helpers import (
    assert_exactly_once,
    host_port,
    position,
    subscriber,
    through,
    wait_for_position,
)
from tests.support.services import running_service
from tests.support.subscriber_databases import read_model_database
from tests.support.subscriber_process import AUDITED, subscriber_env
from tests.support.subscriber_workload import append_events_directly, publish_commands, read_feed
from tests.support.toxiproxy import Toxiproxy

pytestmark = pytest.mark.faults

EVENTS = 2_000
BATCH = "20"
RESETS = 4  # alternately of what the subscriber sends and of what the server answers
LOST = "read-model database connection lost; reconnecting"


async def test_a_cronjob_run_over_a_slow_read_model_link_applies_every_event_once(
    postgres_server_url: str, postgres_url: str, tmp_path: Path, toxiproxy: Toxiproxy
) -> None:
    async with read_model_database("postgresql", postgres_server_url, tmp_path) as read_model:
        proxy = toxiproxy.proxy("read-model", host_port(read_model))
        # 10 ms each way, jittered: every statement of a batch's transaction pays it.
        proxy.add("latency", latency=10, jitter=5)
        proxy.add("latency", stream="upstream", latency=10, jitter=5)
        with running_service("special-offers", postgres_url) as base_url:
            await append_events_directly(postgres_url, EVENTS, first_offer=1)
            environment = subscriber_env(
                "slow",
                f"{base_url}/events",
                through(read_model, proxy.port),
                AUDITED,
                FEEDLINE_BATCH_SIZE=BATCH,
            )
            started = time.monotonic()
            with subscriber(environment, tmp_path / "slow") as run:
                returncode = run.wait(timeout=300)
            elapsed = time.monotonic() - started
            events = await read_feed(f"{base_url}/events")
        assert returncode == 0, run.stderr[-3000:]
        summary = run.summary()
        assert (summary["outcome"], summary["position"]) == ("CaughtUp", EVENTS), summary
        # Each of the 100 batches takes several round trips of at least 10 ms.
        assert elapsed >= EVENTS / int(BATCH) * 2 * 0.010, elapsed
        await assert_exactly_once(read_model, "slow", events)


async def test_a_cronjob_run_whose_read_model_link_is_reset_mid_batch_applies_every_event_once(
    postgres_server_url: str, postgres_url: str, tmp_path: Path, toxiproxy: Toxiproxy
) -> None:
    async with read_model_database("postgresql", postgres_server_url, tmp_path) as read_model:
        proxy = toxiproxy.proxy("read-model", host_port(read_model))
        # A little latency: the batch transaction is open most of the time, so a
        # reset lands inside one.
        proxy.add("latency", stream="upstream", latency=2)
        with running_service("special-offers", postgres_url) as base_url:
            await append_events_directly(postgres_url, EVENTS, first_offer=1)
            environment = subscriber_env(
                "reset",
                f"{base_url}/events",
                through(read_model, proxy.port),
                AUDITED,
                FEEDLINE_BATCH_SIZE=BATCH,
                # Projection work inside the open transaction: 20 ms a batch.
                FEEDLINE_TEST_PROJECTION_DELAY="0.02",
            )
            reset_at: list[int] = []
            with subscriber(environment, tmp_path / "reset") as run:
                deadline = time.monotonic() + 120
                while len(reset_at) < RESETS and time.monotonic() < deadline:
                    at = await position(read_model, "reset")
                    if at >= (len(reset_at) + 1) * EVENTS // (RESETS + 2):
                        stream = "upstream" if len(reset_at) % 2 == 0 else "downstream"
                        # timeout=0: the next bytes the stream carries are dropped
                        # and the connection reset at once.
                        with proxy.toxic("reset_peer", stream=stream, timeout=0):
                            await asyncio.sleep(0.3)
                        reset_at.append(at)
                    await asyncio.sleep(0.02)
                returncode = run.wait(timeout=300)
            events = await read_feed(f"{base_url}/events")
        assert len(reset_at) == RESETS, f"the run ended before the faults: {reset_at}"
        assert max(reset_at) < EVENTS, reset_at
        assert returncode == 0, run.stderr[-3000:]
        summary = run.summary()
        assert (summary["outcome"], summary["position"]) == ("CaughtUp", EVENTS), summary
        assert summary["deadLettered"] == 0, summary
        log = run.stderr
        assert log.count(LOST) >= RESETS, log[-3000:]
        assert "isolating the poison event" not in log
        await assert_exactly_once(read_model, "reset", events)


async def test_a_follower_over_a_faulty_read_model_link_applies_every_event_once(
    postgres_server_url: str, postgres_url: str, tmp_path: Path, toxiproxy: Toxiproxy
) -> None:
    """Follow mode: commands keep coming while the read model's link gets slow and
    is reset (each direction) under the follower's transactions."""
    async with read_model_database("postgresql", postgres_server_url, tmp_path) as read_model:
        database = parse_database_url(read_model).sqlalchemy_url.database
        assert database is not None
        proxy = toxiproxy.proxy("read-model", host_port(read_model))
        with running_service("special-offers", postgres_url) as base_url:
            environment = subscriber_env(
                "follower",
                f"{base_url}/events",
                through(read_model, proxy.port),
                AUDITED,
                FEEDLINE_BATCH_SIZE="10",
                FEEDLINE_FOLLOW="true",
                FEEDLINE_FEED_WAIT_SECONDS="5",
            )
            head = 0
            with subscriber(environment, tmp_path / "follower") as follower:
                with proxy.toxic("latency", latency=20, jitter=10):
                    await publish_commands(base_url, 100, seed=1, concurrency=4)
                    head += 100
                    await wait_for_position(read_model, "follower", head, 120, follower)
                for round_, stream in enumerate(["upstream", "downstream"] * 2):
                    # The commands are applied while the link is reset.
                    load = asyncio.create_task(
                        publish_commands(base_url, 100, seed=2 + round_, concurrency=2)
                    )
                    await asyncio.sleep(0.3)
                    with proxy.toxic("reset_peer", stream=stream, timeout=0):
                        await asyncio.sleep(0.3)
                    await load
                    head += 100
                    await wait_for_position(read_model, "follower", head, 120, follower)
                follower.process.send_signal(signal.SIGTERM)
                assert follower.wait(timeout=30) == 0, follower.stderr[-3000:]
            events = await read_feed(f"{base_url}/events")
        assert len(events) == head
        assert follower.stderr.count(LOST) >= 4, follower.stderr[-3000:]
        await assert_exactly_once(read_model, "follower", events)
