"""The broker relay against a real RabbitMQ node (tests/support/rabbitmq.py) and real databases:
every committed event reaches the service's stream in order with its sequence number, new
commits at once (woken, not polled), and after the relay or the broker dies mid-publish the
stream goes on with no gap; consumers read it from offsets of their own."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from fastapi import FastAPI

from feedline.chassis.app import create_app
from feedline.chassis.broker_relay import BrokerRelay
from feedline.chassis.eventstore import EventStore, NewEvent
from feedline.chassis.settings import ServiceSettings
from feedline.services.registry import SERVICES
from feedline_contracts.broker import (
    BROKER_URL_SETTING,
    CONTENT_TYPE,
    parse_stream_url,
    stream_name,
)
from feedline_contracts.database import connect_database
from tests.integration.test_feed import RECHECK_SECONDS, WOKEN_WITHIN, create_offers
from tests.support.ports import free_port
from tests.support.processes import stop
from tests.support.rabbitmq import RabbitMQNode, StreamReader, delete_stream
from tests.support.services import FEEDLINE, serving_in_thread, wait_until_ready

pytestmark = pytest.mark.integration

SERVICE = "special-offers"
STREAM = stream_name(SERVICE)
T = TypeVar("T")


@pytest.fixture
async def broker(rabbitmq: RabbitMQNode) -> AsyncIterator[RabbitMQNode]:
    """The session's node, with no stream for SERVICE: each test starts from an empty one."""
    await delete_stream(rabbitmq, STREAM)
    yield rabbitmq
    if rabbitmq.process is None:  # a test that stopped the node and failed before starting it
        await asyncio.to_thread(rabbitmq.start)
    await delete_stream(rabbitmq, STREAM)


@dataclass
class RelayedService:
    base: str
    app: FastAPI
    loop: asyncio.AbstractEventLoop  # the service's own (uvicorn's thread)

    @property
    def relay(self) -> BrokerRelay:
        relay: BrokerRelay = self.app.state.broker_relay
        return relay

    @property
    def store(self) -> EventStore:
        store: EventStore = self.app.state.context.store
        return store

    async def in_service(self, work: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run ``work`` on the service's own event loop (its store's connections live there)."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(work(), self.loop))

    async def append(self, count: int, *, per_transaction: int = 250) -> None:
        """Append ``count`` events through the service's own event store (its commit signal)."""

        async def append_all() -> None:
            await append_events(self.store, count, per_transaction=per_transaction)

        await self.in_service(append_all)


StartRelayed = Callable[..., RelayedService]


@pytest.fixture
def start_relayed(broker: RabbitMQNode) -> Iterator[StartRelayed]:
    """``start_relayed(database_url, **settings)``: special-offers with its relay, in a thread."""
    with ExitStack() as stack:

        def start(database_url: str, **settings: Any) -> RelayedService:
            app = create_app(
                SERVICES[SERVICE],
                ServiceSettings(
                    database_url=database_url, broker_url=broker.stream_url, **settings
                ),
            )
            base = stack.enter_context(serving_in_thread(app))
            relay: BrokerRelay = app.state.broker_relay
            assert relay._task is not None  # started by the lifespan
            return RelayedService(base, app, relay._task.get_loop())

        yield start


async def append_events(store: EventStore, count: int, *, per_transaction: int = 250) -> None:
    appended = 0
    while appended < count:
        size = min(per_transaction, count - appended)
        async with store.transaction() as connection:
            await store.append(
                connection,
                [
                    NewEvent("TestEvent", {"n": appended + i, "text": "é" * (i % 7)})
                    for i in range(size)
                ],
            )
        appended += size


async def feed_events(client: httpx.AsyncClient, base: str, head: int) -> list[dict[str, Any]]:
    """The HTTP feed's events 1..head, page by page."""
    found: list[dict[str, Any]] = []
    while len(found) < head:
        response = await client.get(
            f"{base}/events", params={"start": len(found) + 1, "limit": 1000}
        )
        assert response.status_code == 200, response.text
        found += response.json()
    return found


async def until(probe: Callable[[], bool], *, what: str, within: float = 60) -> None:
    """Check ``probe`` every 5 ms (a page is published in about 10 ms) until it holds."""
    deadline = time.monotonic() + within
    while not probe():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {within:.0f}s")
        await asyncio.sleep(0.005)


def check_no_gap(numbers: Sequence[int], head: int) -> list[int]:
    """Every sequence number 1..head at least once, in order; a repeat only where a relay
    resumed (the run goes back, then on one by one). Returns where repeats began."""
    assert numbers, "the stream holds nothing"
    assert numbers[0] == 1, f"the stream starts at {numbers[0]}, not 1"
    resumes = []
    highest = numbers[0]
    for previous, number in itertools.pairwise(numbers):
        if number == previous + 1:
            highest = max(highest, number)
            continue
        assert number <= highest, f"gap: {number} follows {previous} (highest so far {highest})"
        resumes.append(number)
    assert highest == head, f"the stream reaches {highest}, the store {head}"
    return resumes


async def test_the_relay_publishes_every_event_in_order_with_its_sequence_number(
    database_url: str, start_relayed: StartRelayed, broker: RabbitMQNode
) -> None:
    service = start_relayed(database_url)
    total = 2_600
    started = time.monotonic()
    await service.append(total)
    async with StreamReader(broker, STREAM) as reader:
        messages = await reader.wait_for_sequence(total)
    took = time.monotonic() - started
    assert [m.sequence_number for m in messages] == list(range(1, total + 1))
    # Stream offsets from 0, one per event: sequence number N is at offset N-1.
    assert [m.offset for m in messages] == list(range(total))
    async with httpx.AsyncClient(timeout=30) as client:
        served = await feed_events(client, service.base, total)
    # The body is the HTTP feed's event, byte for byte the same fields and values.
    assert [m.event for m in messages] == served
    assert all(m.content_type == CONTENT_TYPE for m in messages)
    assert all(m.name == m.event["name"] == "TestEvent" for m in messages)
    assert all(m.sequence_number == m.event["sequenceNumber"] for m in messages)
    assert service.relay.progress.confirmed == total
    assert service.relay.progress.resumed_from == [1]
    print(f"{total} events appended and read back from the stream in {took:.2f}s")


async def test_new_commits_reach_the_stream_at_once(
    database_url: str, start_relayed: StartRelayed, broker: RabbitMQNode
) -> None:
    # The relay re-checks the store only every 60 s: in time means woken by the commit.
    service = start_relayed(database_url, long_poll_recheck_seconds=RECHECK_SECONDS)
    async with httpx.AsyncClient(timeout=30) as client, StreamReader(broker, STREAM) as reader:
        await create_offers(client, service.base, 1)
        await reader.wait_for_sequence(1, within=30)
        for expected in (2, 3, 4):
            await asyncio.sleep(0.3)  # the relay is caught up and waiting
            committing = time.monotonic()
            await create_offers(client, service.base, 1)
            await reader.wait_for_sequence(expected, within=WOKEN_WITHIN)
            took = time.monotonic() - committing
            assert took < WOKEN_WITHIN, f"event {expected} reached the stream after {took:.1f}s"
        assert reader.sequence_numbers == [1, 2, 3, 4]
        assert reader.messages[-1].name == "SpecialOfferCreated"


async def test_a_commit_by_another_replica_wakes_the_relay(
    postgres_url: str, start_relayed: StartRelayed, broker: RabbitMQNode
) -> None:
    """PostgreSQL: a commit from another process wakes the relay through LISTEN/NOTIFY."""
    service = start_relayed(postgres_url, long_poll_recheck_seconds=RECHECK_SECONDS)
    other = connect_database(postgres_url)  # another replica's store: its own commit signal
    try:
        store = EventStore(other)
        async with StreamReader(broker, STREAM) as reader:
            await append_events(store, 1)
            await reader.wait_for_sequence(1, within=30)
            for expected in (2, 3):
                await asyncio.sleep(0.3)
                committing = time.monotonic()
                await append_events(store, 1)
                await reader.wait_for_sequence(expected, within=WOKEN_WITHIN)
                assert time.monotonic() - committing < WOKEN_WITHIN
            assert reader.sequence_numbers == [1, 2, 3]
    finally:
        await other.dispose()
    assert service.relay.progress.confirmed == 3


async def test_a_relay_cancelled_mid_publish_is_resumed_by_the_next_one(
    postgres_url: str, start_relayed: StartRelayed, broker: RabbitMQNode
) -> None:
    service = start_relayed(postgres_url)
    total = 20_000
    await service.append(total, per_transaction=total)  # one commit: a long publish
    # Stop the relay as soon as the broker has confirmed part of it: a page is in flight.
    await until(lambda: service.relay.progress.confirmed > 0, what="a first confirmed page")
    await service.in_service(service.relay.stop)
    cut_at = service.relay.progress.confirmed
    assert cut_at < total, "the relay published everything before it could be stopped"
    # A new relay on the same store (as a restarted service runs) goes on from the broker's record.
    relay = BrokerRelay(
        service.store,
        SERVICE,
        parse_stream_url(broker.stream_url),
        recheck_seconds=1.0,
    )
    await service.in_service(relay.start)
    try:
        async with StreamReader(broker, STREAM) as reader:
            messages = await reader.wait_for_sequence(total, within=120)
        resumes = check_no_gap([m.sequence_number for m in messages], total)
        assert all(resume >= cut_at for resume in resumes)
        # Stronger than at least once: the broker dropped what was sent again (deduplication).
        assert resumes == []
        assert relay.progress.resumed_from[0] > cut_at
    finally:
        await service.in_service(relay.stop)


@dataclass
class ServiceProcess:
    base: str
    process: subprocess.Popen[bytes]
    log: Path


def serve(database_url: str, broker: RabbitMQNode, **env: str) -> ServiceProcess:
    """``feedline serve special-offers`` with its relay, as its own process."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    folder = Path(tempfile.mkdtemp(prefix="feedline-relay-"))
    log = folder / "service.log"
    environment = {
        **os.environ,
        **env,
        BROKER_URL_SETTING: broker.stream_url,
        "FEEDLINE_HTTP_CACHE_DIR": str(folder),
    }
    argv = [FEEDLINE, "serve", SERVICE, "--port", str(port), "--database-url", database_url]
    with open(log, "wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=environment)
    wait_until_ready(base, process, log)
    return ServiceProcess(base, process, log)


def confirmed(base: str) -> int:
    """The relay's confirmed sequence number, from the service's /metrics."""
    text = httpx.get(f"{base}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith("feedline_broker_relay_confirmed_sequence "):
            return int(float(line.split()[1]))
    raise AssertionError("no feedline_broker_relay_confirmed_sequence in /metrics")


async def test_a_service_killed_mid_publish_resumes_with_no_gap(
    broker: RabbitMQNode, postgres_url: str
) -> None:
    database = connect_database(postgres_url)
    total = 30_000
    first = serve(postgres_url, broker)
    try:
        await append_events(EventStore(database), total, per_transaction=total)
        cut_at = 0
        while cut_at == 0:
            cut_at = await asyncio.to_thread(confirmed, first.base)
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(timeout=10)
        assert cut_at < total, "the relay published everything before it could be killed"
        # Commits while no relay runs are published by the next one.
        await append_events(EventStore(database), 500)
        second = serve(postgres_url, broker)
        try:
            async with StreamReader(broker, STREAM) as reader:
                messages = await reader.wait_for_sequence(total + 500, within=120)
            resumes = check_no_gap([m.sequence_number for m in messages], total + 500)
            assert all(resume >= cut_at for resume in resumes), resumes
            assert resumes == []  # deduplication
            assert confirmed(second.base) == total + 500
        finally:
            stop(second.process)
    finally:
        if first.process.poll() is None:
            stop(first.process)
        await database.dispose()


async def test_the_relay_reconnects_after_the_broker_restarts_mid_publish(
    postgres_url: str, start_relayed: StartRelayed, broker: RabbitMQNode
) -> None:
    service = start_relayed(postgres_url)
    total = 30_000
    await service.append(total, per_transaction=total)  # one commit: a long publish
    await until(lambda: service.relay.progress.confirmed > 0, what="a first confirmed page")
    # The broker dies (SIGKILL) mid-publish, stays down while more is committed, comes back.
    await asyncio.to_thread(broker.stop, kill=True)
    cut_at = service.relay.progress.confirmed
    assert cut_at < total, "the relay published everything before the broker could be stopped"
    await service.append(500)
    await asyncio.sleep(1)
    assert not service.relay.progress.connected
    await asyncio.to_thread(broker.start, ready_streams=[STREAM])
    async with StreamReader(broker, STREAM) as reader:
        messages = await reader.wait_for_sequence(total + 500, within=120)
        assert check_no_gap([m.sequence_number for m in messages], total + 500) == []
        # And it goes on: a commit after the restart arrives as usual.
        await service.append(1)
        await reader.wait_for_sequence(total + 501, within=30)
    assert len(service.relay.progress.resumed_from) >= 2
    assert service.relay.progress.connected


async def test_consumers_read_the_stream_from_offsets_of_their_own(
    postgres_url: str, start_relayed: StartRelayed, broker: RabbitMQNode
) -> None:
    service = start_relayed(postgres_url)
    await service.append(3_000)
    async with (
        StreamReader(broker, STREAM) as replay,
        StreamReader(broker, STREAM, offset=2_000) as tail,
    ):
        await replay.wait_for_sequence(3_000)
        await tail.wait_for_sequence(3_000)
        assert replay.sequence_numbers == list(range(1, 3_001))
        # Offset 2000 is sequence number 2001: each reader at its own position.
        assert tail.sequence_numbers == list(range(2_001, 3_001))
        await service.append(10)  # fan-out: both get the new events
        await replay.wait_for_sequence(3_010)
        await tail.wait_for_sequence(3_010)
    assert replay.sequence_numbers[-10:] == tail.sequence_numbers[-10:] == list(range(3_001, 3_011))


async def test_one_replica_relays_and_another_takes_over(
    postgres_url: str, start_relayed: StartRelayed, broker: RabbitMQNode
) -> None:
    """Replicas on one database elect one relay (an advisory lock); when it stops, another
    takes over from the broker's record."""
    replicas = [start_relayed(postgres_url), start_relayed(postgres_url)]
    await replicas[0].append(1_000)
    async with StreamReader(broker, STREAM) as reader:
        await reader.wait_for_sequence(1_000)
        elected = [replica for replica in replicas if replica.relay.progress.elected]
        assert len(elected) == 1, "not exactly one replica relays"
        (waiting,) = (replica for replica in replicas if replica is not elected[0])
        assert waiting.relay.progress.resumed_from == []  # never connected to the broker
        await elected[0].in_service(elected[0].relay.stop)
        await waiting.append(1_000)
        await reader.wait_for_sequence(2_000, within=30)
        assert waiting.relay.progress.elected
        assert waiting.relay.progress.resumed_from == [1_001]
        assert reader.sequence_numbers == list(range(1, 2_001))


async def append_contents(store: EventStore, contents: Sequence[dict[str, Any]]) -> None:
    async with store.transaction() as connection:
        await store.append(connection, [NewEvent("Big", content) for content in contents])


async def test_a_page_bigger_than_a_frame_goes_as_several_frames(
    postgres_url: str, start_relayed: StartRelayed, broker: RabbitMQNode
) -> None:
    """The broker takes frames of 1 MiB (stream.frame_max): 3 MB of events in one page."""
    service = start_relayed(postgres_url)
    contents = [{"blob": f"{i}" * 400_000, "i": i} for i in range(8)]

    async def append() -> None:
        await append_contents(service.store, contents)

    await service.in_service(append)
    async with StreamReader(broker, STREAM) as reader:
        messages = await reader.wait_for_sequence(8)
    assert [m.sequence_number for m in messages] == list(range(1, 9))
    assert [m.event["content"] for m in messages] == contents


async def test_an_event_bigger_than_a_frame_stops_the_relay_before_it(
    postgres_url: str, start_relayed: StartRelayed, broker: RabbitMQNode
) -> None:
    """No gap: an event the broker cannot take holds back the ones after it (logged)."""
    service = start_relayed(postgres_url)
    contents: list[dict[str, Any]] = [{"i": 1}, {"i": 2}, {"blob": "x" * 1_100_000}, {"i": 4}]

    async def append() -> None:
        await append_contents(service.store, contents)

    await service.in_service(append)
    async with StreamReader(broker, STREAM) as reader:
        await reader.wait_for_sequence(2)
        await service.in_service(append)  # 5 to 8: held back too
        await asyncio.sleep(1.5)
        assert reader.sequence_numbers == [1, 2]
    assert service.relay.progress.confirmed == 2


def test_the_broker_url_names_a_stream_endpoint() -> None:
    address = parse_stream_url(
        "rabbitmq-stream://feed%40line:p%2Fw@broker.example:5553/events%2Fv1"
    )
    assert (address.host, address.port, address.username, address.password, address.vhost) == (
        "broker.example",
        5553,
        "feed@line",
        "p/w",
        "events/v1",
    )
    assert not address.tls
    assert "p/w" not in address.redacted()
    assert "p%2Fw" not in address.redacted()
    default = parse_stream_url("rabbitmq-stream+tls://u:p@broker")
    assert (default.port, default.vhost, default.tls) == (5551, "/", True)
    assert parse_stream_url("rabbitmq-stream://u:p@broker/%2F").port == 5552
    assert parse_stream_url("rabbitmq-stream://u:p@broker/%2F").vhost == "/"
    for wrong, says in [
        ("amqp://u:p@broker:5672/", "must start with rabbitmq-stream://"),
        ("rabbitmq-stream://broker:5552/", "needs a user and a password"),
        ("rabbitmq-stream://u:p@:5552/", "names no host"),
    ]:
        with pytest.raises(ValueError, match=says):
            parse_stream_url(wrong)
        with pytest.raises(ValueError, match=says):
            ServiceSettings(broker_url=wrong)
    assert ServiceSettings().broker_address() is None  # off by default
    assert stream_name("special-offers") == "feedline.events.special-offers"


async def test_two_relays_at_once_store_each_event_once(
    postgres_url: str, start_relayed: StartRelayed, broker: RabbitMQNode
) -> None:
    """Without the lock (say, two replicas on a split database connection), the broker's
    deduplication still keeps each event once, in order."""
    service = start_relayed(postgres_url)
    rivals = [
        BrokerRelay(service.store, SERVICE, parse_stream_url(broker.stream_url), recheck_seconds=1)
        for _ in range(2)
    ]
    for rival in rivals:
        await service.in_service(rival.start)
    try:
        for _ in range(10):
            await service.append(1_000, per_transaction=1_000)
        async with StreamReader(broker, STREAM) as reader:
            await reader.wait_for_sequence(10_000)
            await asyncio.sleep(0.5)  # anything sent twice would be here by now
            assert reader.sequence_numbers == list(range(1, 10_001))
    finally:
        for rival in rivals:
            await service.in_service(rival.stop)
