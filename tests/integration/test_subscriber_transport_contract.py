"""One subscriber, three transports: the same scenarios over HTTP, gRPC and RabbitMQ.

Each test runs a real special-offers service (`feedline serve`, its gRPC feed on
FEEDLINE_GRPC_PORT beside HTTP, its relay publishing to the session's RabbitMQ node)
and real `feedline subscribe` processes: with ``--feed-url http://HOST:PORT/events``,
with ``grpc://HOST:GRPC_PORT``, and with the HTTP URL plus ``FEEDLINE_BROKER_URL`` and
``FEEDLINE_BROKER_STREAM`` (the service's stream); nothing else differs. Order and
batching over 2,500 events (the audited projection: each event applied once, the read
model equal to the oracle), the type filter, Token auth, a follower woken by each
commit, SIGKILLs mid-run then a clean run, a replay, and poison events dead-lettered
or halting the run. The broker subscriber is checked to have read its events from the
stream: the service's feeds served it (almost) none.
"""

from __future__ import annotations

import contextlib
import functools
import random
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from feedline.chassis.eventstore import EventStore, NewEvent
from feedline_contracts.database import connect_database
from tests.integration.test_feed import RECHECK_SECONDS, WOKEN_WITHIN
from tests.integration.test_subscriber_behaviour import POISON, offer_events
from tests.integration.test_subscriber_crash import where_it_landed
from tests.integration.test_subscriber_follow import offer_is_in, wait_for
from tests.support.ports import free_port
from tests.support.rabbitmq import RabbitMQNode
from tests.support.services import running_service
from tests.support.subscriber_broker import broker_env, events_served, fresh_stream, wait_relayed
from tests.support.subscriber_databases import read_model_database
from tests.support.subscriber_faults import POINTS, crash_env, read_landings
from tests.support.subscriber_oracle import (
    applied_counts,
    checkpoint_position,
    oracle,
    query,
    read_offers,
)
from tests.support.subscriber_process import (
    AUDITED,
    LOYALTY,
    finish,
    run_subscriber,
    start_subscriber,
    subscriber_env,
)
from tests.support.subscriber_workload import append_events_directly, publish_commands, read_feed

pytestmark = pytest.mark.integration

TRANSPORTS = ["http", "grpc", "rabbitmq"]
# How each transport says that the feed refused the subscriber's credential (a broker
# subscriber reads the head from the HTTP feed first: its 401).
REFUSED = {"http": "401", "grpc": "UNAUTHENTICATED", "rabbitmq": "401"}
# A broker subscriber reads the HTTP feed's head at the start and end of a run: a page
# of at most one event each time. Reading its events over HTTP would serve them all.
HEAD_READS_PER_RUN = 2


@dataclass(frozen=True)
class Feed:
    """A running service and how a subscriber reads it over each transport."""

    base_url: str
    urls: dict[str, str]
    broker: dict[str, str]  # a broker subscriber's extra variables

    def env(
        self,
        transport: str,
        subscription: str,
        read_model: str,
        projection: str = AUDITED,
        **extra: str,
    ) -> dict[str, str]:
        """``subscriber_env`` for ``transport``."""
        broker = self.broker if transport == "rabbitmq" else {}
        url = self.urls[transport]
        return subscriber_env(subscription, url, read_model, projection, **broker, **extra)

    def relayed(self, head: int) -> None:
        """Until the relay has published up to ``head`` (the stream holds it)."""
        wait_relayed(self.base_url, head)

    def served(self) -> int:
        return events_served(self.base_url)


@contextlib.contextmanager
def feed_service(database_url: str, broker: RabbitMQNode, **env: str) -> Iterator[Feed]:
    """special-offers serving its feed over HTTP and gRPC (FEEDLINE_GRPC_PORT), and relaying
    it to ``broker``'s stream (FEEDLINE_BROKER_URL), created afresh for the test."""
    grpc_port = free_port()
    fresh_stream(broker)
    with running_service(
        "special-offers",
        database_url,
        cwd=None,
        FEEDLINE_GRPC_PORT=str(grpc_port),
        FEEDLINE_BROKER_URL=broker.stream_url,
        **env,
    ) as base_url:
        yield Feed(
            base_url,
            {
                "http": f"{base_url}/events",
                "grpc": f"grpc://127.0.0.1:{grpc_port}",
                "rabbitmq": f"{base_url}/events",
            },
            broker_env(broker),
        )


def assert_read_from_the_stream(transport: str, feed: Feed, served_before: int, runs: int) -> None:
    """A broker subscriber's events came over the stream: the feeds served only head reads."""
    if transport == "rabbitmq":
        served = feed.served() - served_before
        assert served <= HEAD_READS_PER_RUN * runs, f"{served} events read over HTTP"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_order_and_batching_every_event_once(
    transport: str,
    postgres_server_url: str,
    postgres_url: str,
    tmp_path: Path,
    rabbitmq: RabbitMQNode,
) -> None:
    """2,500 events in runs cut short by maxEventsPerRun and in pages of two sizes."""
    async with read_model_database("postgresql", postgres_server_url, tmp_path) as read_model:
        with feed_service(postgres_url, rabbitmq) as feed:
            await append_events_directly(postgres_url, 2_300, first_offer=1_000_000)
            await publish_commands(feed.base_url, 200)
            feed.relayed(2_500)
            served_before = feed.served()
            positions = []
            for batch_size, budget in (("300", "700"), ("300", "1000"), ("450", "0")):
                finished = run_subscriber(
                    feed.env(
                        transport,
                        "contract",
                        read_model,
                        FEEDLINE_BATCH_SIZE=batch_size,
                        FEEDLINE_MAX_EVENTS_PER_RUN=budget,
                    )
                )
                assert finished.returncode == 0, finished.stderr[-3000:]
                positions.append(finished.summary["position"])
            assert_read_from_the_stream(transport, feed, served_before, runs=3)
            events = await read_feed(feed.urls["http"])
        assert len(events) == 2_500
        assert positions == [700, 1_700, 2_500]
        summary = finished.summary
        assert summary["outcome"] == "CaughtUp"
        assert summary["position"] == summary["head"] == 2_500
        assert (summary["processed"], summary["lag"]) == (800, 0)
        assert await applied_counts(read_model, "contract") == {n: 1 for n in range(1, 2_501)}
        assert await read_offers(read_model) == oracle(events)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_the_type_filter_applies_only_those_events_and_moves_past_the_rest(
    transport: str, tmp_path: Path, rabbitmq: RabbitMQNode
) -> None:
    service_db = f"sqlite:///{tmp_path / 'special-offers.db'}"
    read_model = f"sqlite:///{tmp_path / 'read-model.db'}"
    kept = ("SpecialOfferCreated", "SpecialOfferUpdated")
    with feed_service(service_db, rabbitmq) as feed:
        await append_events_directly(service_db, 900, first_offer=1)
        feed.relayed(900)
        served_before = feed.served()
        finished = run_subscriber(
            feed.env(
                transport,
                "filtered",
                read_model,
                FEEDLINE_BATCH_SIZE="100",
                FEEDLINE_EVENT_TYPES=",".join(kept),
            )
        )
        assert_read_from_the_stream(transport, feed, served_before, runs=1)
        events = await read_feed(feed.urls["http"])
    assert finished.returncode == 0, finished.stderr[-3000:]
    selected = [e for e in events if e["name"] in kept]
    assert 0 < len(selected) < len(events)
    assert finished.summary["outcome"] == "CaughtUp"
    assert finished.summary["position"] == finished.summary["head"] == 900  # scanned past the rest
    assert finished.summary["processed"] == len(selected)
    assert await applied_counts(read_model, "filtered") == {
        e["sequenceNumber"]: 1 for e in selected
    }
    assert await read_offers(read_model) == oracle(selected)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_token_auth_refuses_a_missing_or_wrong_token_and_reads_with_the_right_one(
    transport: str, tmp_path: Path, rabbitmq: RabbitMQNode
) -> None:
    service_db = f"sqlite:///{tmp_path / 'special-offers.db'}"
    read_model = f"sqlite:///{tmp_path / 'read-model.db'}"
    right, wrong = tmp_path / "right-token", tmp_path / "wrong-token"
    right.write_text("s3cret\n")
    wrong.write_text("guess\n")
    with feed_service(
        service_db, rabbitmq, FEEDLINE_FEED_AUTH="Token", FEEDLINE_FEED_TOKEN="s3cret"
    ) as feed:
        await append_events_directly(service_db, 40, first_offer=1)
        feed.relayed(40)
        url = feed.urls[transport]
        missing = run_subscriber(feed.env(transport, "auth", read_model))
        refused = run_subscriber(
            feed.env(
                transport,
                "auth",
                read_model,
                FEEDLINE_FEED_AUTH="Token",
                FEEDLINE_FEED_TOKEN_FILE=str(wrong),
            )
        )
        accepted = run_subscriber(
            feed.env(
                transport,
                "auth",
                read_model,
                FEEDLINE_FEED_AUTH="Token",
                FEEDLINE_FEED_TOKEN_FILE=str(right),
            )
        )
    for finished, detail in (
        (missing, "this feed needs an Authorization: Bearer token"),
        (refused, "the bearer token is not valid for this feed"),
    ):
        assert finished.returncode == 1, finished.stderr[-3000:]
        assert finished.summary["outcome"] == "Failed"
        assert finished.summary["message"] == (
            f"FeedUnavailableError: feed {url} refused the subscriber "
            f"({REFUSED[transport]}): {detail}"
        )
    assert accepted.returncode == 0, accepted.stderr[-3000:]
    assert (accepted.summary["outcome"], accepted.summary["processed"]) == ("CaughtUp", 40)
    assert await applied_counts(read_model, "auth") == {n: 1 for n in range(1, 41)}


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_follower_is_woken_by_each_commit_and_stops_at_once(
    transport: str, tmp_path: Path, rabbitmq: RabbitMQNode
) -> None:
    read_model = f"sqlite:///{tmp_path / 'loyalty.db'}"
    status_port = free_port()
    # The service re-checks its database only every RECHECK_SECONDS (its feeds and its
    # relay) and the follower waits 20 s per long poll: an event applied within
    # WOKEN_WITHIN of its command was announced by the commit's signal (HTTP: the long
    # poll answered; gRPC: the stream; RabbitMQ: the relay published, the broker pushed).
    with feed_service(
        f"sqlite:///{tmp_path / 'offers.db'}",
        rabbitmq,
        FEEDLINE_LONG_POLL_RECHECK_SECONDS=str(RECHECK_SECONDS),
    ) as feed:
        feed.relayed(0)  # the relay has created the stream
        served_before = feed.served()
        follower = start_subscriber(
            feed.env(
                transport,
                "follower",
                read_model,
                LOYALTY,
                FEEDLINE_FOLLOW="true",
                FEEDLINE_STATUS_PORT=str(status_port),
                FEEDLINE_FEED_WAIT_SECONDS="20",
            )
        )
        status = f"http://127.0.0.1:{status_port}"
        try:

            def caught_up() -> bool:
                try:
                    summary = httpx.get(f"{status}/summary", timeout=1).json()
                except httpx.HTTPError:
                    return False
                return bool(summary["position"] == 0 and summary["head"] == 0)

            wait_for(caught_up)  # waiting for the first commit
            latencies = []
            for number in range(5):
                offer = httpx.post(
                    f"{feed.base_url}/offers", json={"description": f"flash {number}"}
                )
                assert offer.status_code == 201
                offer_id = offer.json()["id"]
                latencies.append(
                    wait_for(functools.partial(offer_is_in, read_model, offer_id), timeout=30)
                )
            assert max(latencies) < WOKEN_WITHIN, latencies
            # Over RabbitMQ each commit came through the stream (an HTTP read would count).
            assert_read_from_the_stream(transport, feed, served_before, runs=0)

            stopping = time.monotonic()
            follower.send_signal(signal.SIGTERM)  # it is waiting for the next commit
            done = finish(follower, timeout=30)
            assert time.monotonic() - stopping < 5
        finally:
            if follower.poll() is None:
                follower.kill()
                follower.wait()
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.summary["outcome"] == "CaughtUp"
    assert (done.summary["position"], done.summary["processed"]) == (5, 5)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_sigkills_mid_run_then_a_clean_run_apply_every_event_once(
    transport: str, tmp_path: Path, rabbitmq: RabbitMQNode
) -> None:
    """Each kill point once (tests/integration/test_subscriber_crash.py has many more, over
    HTTP): where the kill landed agrees with the checkpoint read back; afterwards every
    event is applied exactly once."""
    rng = random.Random(17)
    batch_size, max_batch = 40, 3
    total = len(POINTS) * max_batch * batch_size  # no run can reach the head before its kill
    service_db = f"sqlite:///{tmp_path / 'special-offers.db'}"
    read_model = f"sqlite:///{tmp_path / 'read-model.db'}"
    with feed_service(service_db, rabbitmq) as feed:
        await append_events_directly(service_db, total, first_offer=1)
        feed.relayed(total)
        served_before = feed.served()
        landed = []
        for attempt, point in enumerate(POINTS):
            plan = f"{point}@{rng.randint(1, max_batch)}:{rng.uniform(0, 4):.2f}"
            record = tmp_path / f"kill-{attempt}.jsonl"
            killed = run_subscriber(
                feed.env(
                    transport,
                    "crashy",
                    read_model,
                    FEEDLINE_BATCH_SIZE=str(batch_size),
                    **crash_env(plan, record),
                )
            )
            assert killed.returncode == -signal.SIGKILL, (
                f"{plan}: exit {killed.returncode}, not killed\n{killed.stderr[-3000:]}"
            )
            (landing,) = read_landings(record)
            position = await checkpoint_position(read_model, "crashy") or 0
            landed.append(where_it_landed(plan, landing, position))
            counts = await applied_counts(read_model, "crashy")
            assert counts == {n: 1 for n in range(1, position + 1)}, f"after {plan}"

        final = run_subscriber(feed.env(transport, "crashy", read_model))
        assert_read_from_the_stream(transport, feed, served_before, runs=len(POINTS) + 1)
        events = await read_feed(feed.urls["http"])
    assert final.returncode == 0, final.stderr[-3000:]
    assert final.summary["outcome"] == "CaughtUp"
    assert {label.split(" ")[0] for label in landed} == set(POINTS), landed
    assert await applied_counts(read_model, "crashy") == {n: 1 for n in range(1, total + 1)}
    assert await read_offers(read_model) == oracle(events)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_new_replay_token_rebuilds_the_read_model(
    transport: str, tmp_path: Path, rabbitmq: RabbitMQNode
) -> None:
    service_db = f"sqlite:///{tmp_path / 'special-offers.db'}"
    read_model = f"sqlite:///{tmp_path / 'read-model.db'}"
    with feed_service(service_db, rabbitmq) as feed:
        await append_events_directly(service_db, 500, first_offer=1)
        feed.relayed(500)
        served_before = feed.served()
        first = run_subscriber(
            feed.env(transport, "replayed", read_model, FEEDLINE_BATCH_SIZE="200")
        )
        assert first.returncode == 0, first.stderr[-3000:]
        await append_events_directly(service_db, 100, first_offer=10_000, seed=3)
        feed.relayed(600)
        replayed = run_subscriber(
            feed.env(
                transport,
                "replayed",
                read_model,
                FEEDLINE_BATCH_SIZE="200",
                FEEDLINE_REPLAY_TOKEN="v2",
            )
        )
        again = run_subscriber(
            feed.env(transport, "replayed", read_model, FEEDLINE_REPLAY_TOKEN="v2")
        )
        assert_read_from_the_stream(transport, feed, served_before, runs=3)
        events = await read_feed(feed.urls["http"])
    assert first.summary["processed"] == 500
    assert replayed.returncode == 0, replayed.stderr[-3000:]
    # The reset emptied the read model (audit rows included) and every event came again.
    assert (replayed.summary["outcome"], replayed.summary["processed"]) == ("CaughtUp", 600)
    assert again.summary["processed"] == 0  # the same token: nothing to rebuild
    assert await applied_counts(read_model, "replayed") == {n: 1 for n in range(1, 601)}
    assert await read_offers(read_model) == oracle(events)
    assert await checkpoint_position(read_model, "replayed") == 600


async def append_offer_events(database_url: str, events: list[dict[str, Any]]) -> None:
    """Append these events (name and content; numbered from 1 in order) to the service's
    store in one transaction, as the service's own append does."""
    database = connect_database(database_url)
    store = EventStore(database)
    try:
        async with store.transaction() as connection:
            await store.append(
                connection, [NewEvent(event["name"], event["content"]) for event in events]
            )
    finally:
        await database.dispose()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_poison_event_is_dead_lettered_and_the_run_goes_on(
    transport: str, tmp_path: Path, rabbitmq: RabbitMQNode
) -> None:
    service_db = f"sqlite:///{tmp_path / 'special-offers.db'}"
    read_model = f"sqlite:///{tmp_path / 'read-model.db'}"
    events = offer_events(40, poison=POISON)
    with feed_service(service_db, rabbitmq) as feed:
        await append_offer_events(service_db, events)
        feed.relayed(40)
        served_before = feed.served()
        finished = run_subscriber(
            feed.env(
                transport,
                "poisoned",
                read_model,
                FEEDLINE_BATCH_SIZE="10",
                FEEDLINE_ON_POISON_EVENT="DeadLetter",
                FEEDLINE_RETRY_MAX_ATTEMPTS="3",
                FEEDLINE_RETRY_BACKOFF_SECONDS="0.01",
            )
        )
        assert_read_from_the_stream(transport, feed, served_before, runs=1)
    assert finished.returncode == 0, finished.stderr[-3000:]
    summary = finished.summary
    assert summary["outcome"] == "CaughtUp", summary["message"]
    assert (summary["position"], summary["processed"], summary["deadLettered"]) == (40, 39, 1)
    rows = await query(
        read_model,
        "SELECT subscription, sequence_number, event_name, content, error, attempts "
        "FROM feedline_subscriber_dead_letters",
    )
    assert len(rows) == 1
    subscription, sequence, name, content, error, attempts = rows[0]
    assert (subscription, sequence, name, attempts) == (
        "poisoned",
        POISON,
        "SpecialOfferCreated",
        3,
    )
    assert content == '{"description":"no id"}'
    assert "offerId must be an integer" in error
    good = [event for event in events if event["sequenceNumber"] != POISON]
    assert await read_offers(read_model) == oracle(good)
    assert await applied_counts(read_model, "poisoned") == {
        n: 1 for n in range(1, 41) if n != POISON
    }


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_poison_event_halts_the_run_before_it(
    transport: str, tmp_path: Path, rabbitmq: RabbitMQNode
) -> None:
    service_db = f"sqlite:///{tmp_path / 'special-offers.db'}"
    read_model = f"sqlite:///{tmp_path / 'read-model.db'}"
    events = offer_events(40, poison=POISON)
    with feed_service(service_db, rabbitmq) as feed:
        await append_offer_events(service_db, events)
        feed.relayed(40)
        served_before = feed.served()
        halted = [
            run_subscriber(
                feed.env(
                    transport,
                    "halting",
                    read_model,
                    FEEDLINE_BATCH_SIZE="10",
                    FEEDLINE_ON_POISON_EVENT="Halt",
                    FEEDLINE_RETRY_MAX_ATTEMPTS=attempts,
                    FEEDLINE_RETRY_BACKOFF_SECONDS="0.01",
                )
            )
            for attempts in ("2", "1")  # the next run halts at the same event
        ]
        assert_read_from_the_stream(transport, feed, served_before, runs=2)
    first, again = halted
    for done in halted:
        assert done.returncode == 3, done.stderr[-3000:]
        assert done.summary["outcome"] == "Halted"
        assert done.summary["position"] == POISON - 1
        assert "offerId must be an integer" in done.summary["message"]
    assert (
        f"halted at event {POISON} (SpecialOfferCreated) after 2 attempts"
        in first.summary["message"]
    )
    assert first.summary["processed"] == POISON - 1
    assert again.summary["processed"] == 0  # nothing moves past it
    assert await checkpoint_position(read_model, "halting") == POISON - 1
    assert await read_offers(read_model) == oracle(events[: POISON - 1])
    assert await applied_counts(read_model, "halting") == {n: 1 for n in range(1, POISON)}
