"""The subscriber's RabbitMQ transport where the stream and the HTTP feed part ways.

Real processes throughout: the session's RabbitMQ node (tests/support/rabbitmq.py),
`feedline serve special-offers` relaying its store to its stream, and `feedline
subscribe` with FEEDLINE_BROKER_URL / FEEDLINE_BROKER_STREAM. What a subscriber read
over HTTP shows in the service's ``feedline_feed_events_served_total``; what it read
from each source, in its own last log line (``events_from_stream``,
``events_from_http``). The audited projection counts every application: nothing
lost, nothing applied twice.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from feedline.chassis.eventstore import EventStore, NewEvent
from feedline_contracts.broker import parse_stream_url
from feedline_contracts.database import connect_database
from feedline_contracts.feed import MAX_WAIT_SECONDS
from tests.support.ports import free_port
from tests.support.rabbitmq import RabbitMQNode, StreamReader
from tests.support.services import running_service
from tests.support.subscriber_broker import (
    STREAM,
    broker_env,
    events_served,
    metric,
    relaying_service,
    wait_relayed,
)
from tests.support.subscriber_oracle import applied_counts, checkpoint_position, oracle, read_offers
from tests.support.subscriber_process import (
    Finished,
    finish,
    run_subscriber,
    start_subscriber,
    subscriber_env,
)
from tests.support.subscriber_workload import append_events_directly, read_feed

pytestmark = pytest.mark.integration


def logs(finished: Finished) -> list[dict[str, Any]]:
    """The subscriber's JSON log lines (stderr)."""
    lines = []
    for line in finished.stderr.splitlines():
        if line.startswith("{"):
            lines.append(orjson.loads(line))
    return lines


def sources(finished: Finished) -> dict[str, int]:
    """How many events the run read from the stream and from the HTTP feed."""
    (closed,) = [line for line in logs(finished) if line["event"] == "broker transport closed"]
    return {"stream": closed["events_from_stream"], "http": closed["events_from_http"]}


async def wait_checkpoint(
    read_model: str, subscription: str, at_least: int, within: float = 60
) -> int:
    deadline = time.monotonic() + within
    while True:
        position = await checkpoint_position(read_model, subscription) or 0
        if position >= at_least:
            return position
        assert time.monotonic() < deadline, f"checkpoint {position}, not {at_least}"
        await asyncio.sleep(0.05)


async def test_what_retention_dropped_is_read_from_the_http_feed_then_the_stream(
    tmp_path: Path, rabbitmq: RabbitMQNode
) -> None:
    """Tiny segments and a tiny length: RabbitMQ drops the stream's first segments, so the
    stream no longer starts at event 1. A new subscriber reads up to the stream's first
    event from the HTTP feed, the rest from the stream."""
    service_db = f"sqlite:///{tmp_path / 'special-offers.db'}"
    read_model = f"sqlite:///{tmp_path / 'read-model.db'}"
    total = 4_000
    with relaying_service(
        service_db,
        rabbitmq,
        FEEDLINE_BROKER_STREAM_MAX_SEGMENT_SIZE_BYTES="100000",
        FEEDLINE_BROKER_STREAM_MAX_LENGTH_BYTES="200000",
    ) as service:
        for first_offer in range(1, total, 500):  # pages apart: segments roll, retention runs
            await append_events_directly(service_db, 500, first_offer=first_offer * 10)
            wait_relayed(service.base_url, first_offer + 499)
        async with StreamReader(rabbitmq, STREAM) as reader:  # from the first message held
            await reader.wait_for_sequence(total)
            first_held = reader.messages[0].sequence_number
        assert 1_000 < first_held < total - 100, f"retention kept the stream from {first_held}"
        served_before = events_served(service.base_url)
        finished = run_subscriber(
            subscriber_env(
                "late-comer",
                service.feed_url,
                read_model,
                FEEDLINE_BATCH_SIZE="300",
                **broker_env(rabbitmq),
            )
        )
        served = events_served(service.base_url) - served_before
        events = await read_feed(service.feed_url)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert finished.summary["outcome"] == "CaughtUp"
    assert finished.summary["position"] == finished.summary["head"] == total
    # 1 .. first_held - 1 over HTTP (and a head read or two), the rest from the stream.
    read = sources(finished)
    assert read == {"stream": total - first_held + 1, "http": first_held - 1}, read
    assert first_held - 1 <= served <= first_held + 1, served
    assert await applied_counts(read_model, "late-comer") == {n: 1 for n in range(1, total + 1)}
    assert await read_offers(read_model) == oracle(events)


async def test_a_broker_down_at_the_start_of_a_run_reads_over_http_exactly_once(
    tmp_path: Path, rabbitmq: RabbitMQNode
) -> None:
    service_db = f"sqlite:///{tmp_path / 'special-offers.db'}"
    read_model = f"sqlite:///{tmp_path / 'read-model.db'}"
    down_url = f"rabbitmq-stream://guest:d0wn-pw@127.0.0.1:{free_port()}/%2F"  # nothing there
    down = parse_stream_url(down_url)
    with relaying_service(service_db, rabbitmq) as service:
        await append_events_directly(service_db, 700, first_offer=1)
        started = time.monotonic()
        first = run_subscriber(
            subscriber_env(
                "no-broker",
                service.feed_url,
                read_model,
                FEEDLINE_BATCH_SIZE="200",
                FEEDLINE_BROKER_URL=down_url,
                FEEDLINE_BROKER_STREAM=STREAM,
            )
        )
        took = time.monotonic() - started
        # The next run, with the broker there, goes on from the stream.
        await append_events_directly(service_db, 300, first_offer=100_000, seed=5)
        wait_relayed(service.base_url, 1_000)
        second = run_subscriber(
            subscriber_env(
                "no-broker",
                service.feed_url,
                read_model,
                FEEDLINE_BATCH_SIZE="200",
                **broker_env(rabbitmq),
            )
        )
        events = await read_feed(service.feed_url)
    assert first.returncode == 0, first.stderr[-3000:]
    assert (first.summary["outcome"], first.summary["position"]) == ("CaughtUp", 700)
    assert sources(first) == {"stream": 0, "http": 700}
    assert took < 20, f"the run took {took:.1f}s: it should not wait for the broker"
    (warning,) = [
        line
        for line in logs(first)
        if line["event"] == "cannot read the broker's stream; reading from the HTTP feed"
    ]
    assert warning["broker"] == down.redacted()
    assert warning["retry"] == "not in this run"
    assert "d0wn-pw" not in first.stdout + first.stderr
    assert second.returncode == 0, second.stderr[-3000:]
    assert (second.summary["processed"], second.summary["position"]) == (300, 1_000)
    assert sources(second) == {"stream": 300, "http": 0}
    assert await applied_counts(read_model, "no-broker") == {n: 1 for n in range(1, 1_001)}
    assert await read_offers(read_model) == oracle(events)


async def append_in_one_commit(database_url: str, count: int) -> None:
    """``count`` offers created, committed at once (the relay then publishes for a while)."""
    database = connect_database(database_url)
    store = EventStore(database)
    try:
        async with store.transaction() as connection:
            await store.append(
                connection,
                [
                    NewEvent("SpecialOfferCreated", {"offerId": n, "description": f"c{n}"})
                    for n in range(1, count + 1)
                ],
            )
    finally:
        await database.dispose()


def restart_in_background(node: RabbitMQNode) -> threading.Thread:
    thread = threading.Thread(target=node.restart, kwargs={"ready_streams": [STREAM]})
    thread.start()
    return thread


async def test_the_broker_restarted_during_a_catch_up_loses_nothing_and_applies_nothing_twice(
    tmp_path: Path, rabbitmq: RabbitMQNode
) -> None:
    service_db = f"sqlite:///{tmp_path / 'special-offers.db'}"
    read_model = f"sqlite:///{tmp_path / 'read-model.db'}"
    total = 3_000
    with relaying_service(service_db, rabbitmq) as service:
        await append_events_directly(service_db, total, first_offer=1)
        wait_relayed(service.base_url, total)
        run = start_subscriber(
            subscriber_env(
                "restarted",
                service.feed_url,
                read_model,
                FEEDLINE_BATCH_SIZE="100",
                FEEDLINE_TEST_PROJECTION_DELAY="0.1",  # a catch-up of several seconds
                **broker_env(rabbitmq),
            )
        )
        try:
            cut_at = await wait_checkpoint(read_model, "restarted", 300)
            restart = restart_in_background(rabbitmq)
            await asyncio.to_thread(restart.join)
            done = await asyncio.to_thread(finish, run, 180)
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
        events = await read_feed(service.feed_url)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.summary["outcome"] == "CaughtUp"
    assert cut_at < total
    read = sources(done)
    assert read["stream"] >= cut_at, read  # the stream carried the run until the restart
    assert read["stream"] + read["http"] == total, read
    messages = [line["event"] for line in logs(done)]
    assert "cannot read the broker's stream; reading from the HTTP feed" in messages
    assert await applied_counts(read_model, "restarted") == {n: 1 for n in range(1, total + 1)}
    assert await read_offers(read_model) == oracle(events)


async def test_the_broker_restarted_while_following_loses_nothing_and_the_follower_returns(
    tmp_path: Path, rabbitmq: RabbitMQNode
) -> None:
    service_db = f"sqlite:///{tmp_path / 'special-offers.db'}"
    read_model = f"sqlite:///{tmp_path / 'read-model.db'}"
    with relaying_service(service_db, rabbitmq) as service:
        await append_events_directly(service_db, 1_000, first_offer=1)
        wait_relayed(service.base_url, 1_000)
        follower = start_subscriber(
            subscriber_env(
                "following",
                service.feed_url,
                read_model,
                FEEDLINE_FOLLOW="true",
                FEEDLINE_FEED_WAIT_SECONDS="2",
                FEEDLINE_BATCH_SIZE="100",
                FEEDLINE_TEST_PROJECTION_DELAY="0.05",
                **broker_env(rabbitmq),
            )
        )
        try:
            await wait_checkpoint(read_model, "following", 200)
            restart = restart_in_background(rabbitmq)
            # Commits while the broker is down or coming back.
            await append_events_directly(service_db, 500, first_offer=100_000, seed=3)
            await asyncio.to_thread(restart.join)
            await append_events_directly(service_db, 500, first_offer=200_000, seed=4)
            await wait_checkpoint(read_model, "following", 2_000, within=120)
            # Back on the stream (a follower tries the broker again with backoff): later
            # commits come through it, not the HTTP feed.
            wait_relayed(service.base_url, 2_000)
            await asyncio.sleep(12)  # longer than the backoff's longest wait (10 s)
            served_before = events_served(service.base_url)
            await append_events_directly(service_db, 300, first_offer=300_000, seed=6)
            await wait_checkpoint(read_model, "following", 2_300, within=60)
            served = events_served(service.base_url) - served_before
            follower.send_signal(signal.SIGTERM)
            done = await asyncio.to_thread(finish, follower, 30)
        finally:
            if follower.poll() is None:
                follower.kill()
                follower.wait()
        events = await read_feed(service.feed_url)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.summary["position"] == 2_300
    assert served <= 2, f"{served} of the last 300 events were read over HTTP"
    messages = [line["event"] for line in logs(done)]
    assert "cannot read the broker's stream; reading from the HTTP feed" in messages
    assert await applied_counts(read_model, "following") == {n: 1 for n in range(1, 2_301)}
    assert await read_offers(read_model) == oracle(events)


async def test_a_relay_killed_mid_publish_and_restarted_while_a_follower_reads(
    postgres_url: str, tmp_path: Path, rabbitmq: RabbitMQNode
) -> None:
    """The service (its relay) is SIGKILLed while it publishes 30,000 events committed at
    once; more are committed while it is down; it is started again on the same port. The
    follower reads on through it all: every event exactly once."""
    read_model = f"sqlite:///{tmp_path / 'read-model.db'}"
    total = 30_000
    with relaying_service(postgres_url, rabbitmq) as service:
        wait_relayed(service.base_url, 0)
        follower = start_subscriber(
            subscriber_env(
                "through-it-all",
                service.feed_url,
                read_model,
                FEEDLINE_FOLLOW="true",
                FEEDLINE_FEED_WAIT_SECONDS="2",
                FEEDLINE_BATCH_SIZE="500",
                **broker_env(rabbitmq),
            )
        )
        try:
            await append_in_one_commit(postgres_url, total)  # one long publish
            cut_at = 0
            while cut_at == 0:  # the relay has published a first page of it
                cut_at = int(metric(service.base_url, "feedline_broker_relay_confirmed_sequence"))
            service.kill()  # mid-publish
            assert cut_at < total, "the relay published everything before it was killed"
            await append_events_directly(postgres_url, 500, first_offer=100_000, seed=9)
            await asyncio.sleep(1)  # the follower reads the stream while the service is down
            service.start()
            await wait_checkpoint(read_model, "through-it-all", total + 500, within=180)
            follower.send_signal(signal.SIGTERM)
            done = await asyncio.to_thread(finish, follower, 30)
        finally:
            if follower.poll() is None:
                follower.kill()
                follower.wait()
        events = await read_feed(service.feed_url)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.summary["position"] == total + 500
    assert sources(done)["stream"] > 0
    counts = await applied_counts(read_model, "through-it-all")
    assert counts == {n: 1 for n in range(1, total + 501)}
    assert await read_offers(read_model) == oracle(events)


async def test_a_follower_started_before_its_stream_exists_tries_the_broker_when_it_said(
    tmp_path: Path, rabbitmq: RabbitMQNode
) -> None:
    """The stream is missing (no relay has created it yet): the follower reads over
    HTTP, and its long poll ends when the broker is due again ("retry in N s", at
    most MAX_BACKOFF_SECONDS), not after the whole --feed-wait-seconds."""
    from feedline_subscriber.broker_feed_client import BrokerFeedClient
    from feedline_subscriber.feed_transport import MAX_BACKOFF_SECONDS

    service_db = f"sqlite:///{tmp_path / 'special-offers.db'}"
    wait = MAX_WAIT_SECONDS  # the longest long poll the feed allows
    with running_service("special-offers", service_db) as base_url:
        client = BrokerFeedClient(
            f"{base_url}/events",
            broker=parse_stream_url(rabbitmq.stream_url),
            stream="feedline.events.no-such-stream",
            follow=True,
        )
        try:
            began = time.monotonic()
            page = await client.fetch(1, 10, wait=wait)
            took = time.monotonic() - began
        finally:
            await client.aclose()
    assert page.events == []
    # Without the cap the empty feed's long poll lasts until the feed ends it.
    assert took < MAX_BACKOFF_SECONDS + 5 < wait, f"the long poll lasted {took:.1f} s"
    assert client.events_from == {"stream": 0, "http": 0}


async def test_wrong_broker_credentials_are_refused_at_once_naming_the_broker(
    tmp_path: Path, rabbitmq: RabbitMQNode
) -> None:
    service_db = f"sqlite:///{tmp_path / 'special-offers.db'}"
    read_model = f"sqlite:///{tmp_path / 'read-model.db'}"
    wrong = rabbitmq.stream_url.replace("guest:guest@", "guest:n0t-the-passw0rd@")
    with relaying_service(service_db, rabbitmq) as service:
        await append_events_directly(service_db, 50, first_offer=1)
        wait_relayed(service.base_url, 50)
        started = time.monotonic()
        refused = run_subscriber(
            subscriber_env(
                "refused",
                service.feed_url,
                read_model,
                FEEDLINE_BROKER_URL=wrong,
                FEEDLINE_BROKER_STREAM=STREAM,
            )
        )
        took = time.monotonic() - started
    assert refused.returncode == 1, refused.stderr[-3000:]
    assert refused.summary["outcome"] == "Failed"
    redacted = parse_stream_url(wrong).redacted()
    assert refused.summary["message"] == (
        f"FeedUnavailableError: broker {redacted} refused the subscriber (AuthenticationFailure): "
        "the user 'guest' or its password was not accepted (--broker-url, FEEDLINE_BROKER_URL)"
    )
    assert "n0t-the-passw0rd" not in refused.stdout + refused.stderr
    assert took < 15, f"refused after {took:.1f}s: not at once"
    assert refused.summary["processed"] == 0
    assert await applied_counts(read_model, "refused") == {}
