"""The gRPC feed (feedline.feed.v1.EventFeed) of a real special-offers service, on loopback,
over PostgreSQL and SQLite: order and batching, the type filter, following (woken by
commits, across replicas too; followers woken together share one read of the store),
Head, auth, argument errors, health, reflection, and the memory bound for a slow reader."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import orjson
import pytest
from fastapi import FastAPI
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from feedline.chassis.app import create_app, create_tables
from feedline.chassis.auth import KubernetesTokenReview
from feedline.chassis.eventstore import EventStore, FeedPage, NewEvent
from feedline.chassis.grpc_feed import EventFeedService, GrpcFeedServer
from feedline.chassis.metrics import ServiceMetrics
from feedline.chassis.settings import ServiceSettings
from feedline.chassis.shared_reads import SharedReads
from feedline.services.registry import SERVICES
from feedline_contracts.database import connect_database
from feedline_contracts.feed import GRPC_SERVICE
from feedline_contracts.feed_v1 import feed_pb2, feed_pb2_grpc
from tests.integration.test_feed import RECHECK_SECONDS, WOKEN_WITHIN, create_offers
from tests.support.ports import free_port
from tests.support.services import FEEDLINE, running_service, serving_in_thread

pytestmark = pytest.mark.integration

# Every call has a deadline, so a broken server fails a test instead of hanging it.
DEADLINE = 30.0


@dataclass
class GrpcService:
    base: str  # the HTTP base URL
    target: str  # host:port of the gRPC feed
    app: FastAPI

    @property
    def feed(self) -> EventFeedService:
        server: GrpcFeedServer = self.app.state.grpc_feed
        return server.feed


StartGrpcService = Callable[..., GrpcService]


@pytest.fixture
def start_grpc_service() -> Iterator[StartGrpcService]:
    """``start(name, database_url, **settings)``: the service with its gRPC feed on a free port."""
    with ExitStack() as stack:

        def start(name: str, database_url: str, **settings: Any) -> GrpcService:
            app = create_app(
                SERVICES[name], ServiceSettings(database_url=database_url, grpc_port=0, **settings)
            )
            base = stack.enter_context(serving_in_thread(app))
            return GrpcService(base, f"127.0.0.1:{app.state.grpc_feed.port}", app)

        yield start


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as http:
        yield http


async def append(database_url: str, events: Sequence[NewEvent]) -> None:
    """Commit ``events`` from a connection of the test's own (not through the service)."""
    database = connect_database(database_url)
    try:
        store = EventStore(database)
        async with store.transaction() as connection:
            await store.append(connection, events)
    finally:
        await database.dispose()


async def subscribe(
    target: str, metadata: Sequence[tuple[str, str]] = (), **request: Any
) -> list[feed_pb2.EventBatch]:
    """Every batch of a Subscribe without follow (the stream ends at the head)."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = feed_pb2_grpc.EventFeedStub(channel)
        call = stub.Subscribe(
            feed_pb2.SubscribeRequest(**request), metadata=metadata, timeout=DEADLINE
        )
        return [batch async for batch in call]


async def head(target: str, metadata: Sequence[tuple[str, str]] = ()) -> int:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = feed_pb2_grpc.EventFeedStub(channel)
        response = await stub.Head(feed_pb2.HeadRequest(), metadata=metadata, timeout=DEADLINE)
        return response.head


FeedCall = grpc.aio.UnaryStreamCall[feed_pb2.SubscribeRequest, feed_pb2.EventBatch]


async def read_batch(call: FeedCall) -> feed_pb2.EventBatch:
    batch = await call.read()
    assert isinstance(batch, feed_pb2.EventBatch), "the stream ended"
    return batch


def numbers(batches: Sequence[feed_pb2.EventBatch]) -> list[list[int]]:
    return [[event.sequence_number for event in batch.events] for batch in batches]


NAMES = ("SpecialOfferCreated", "SpecialOfferUpdated", "SpecialOfferRemoved")


async def test_events_come_in_order_in_batches_as_the_http_feed_serves_them(
    start_grpc_service: StartGrpcService, database_url: str, client: httpx.AsyncClient
) -> None:
    service = start_grpc_service("special-offers", database_url)
    total = 2_600
    await append(
        database_url,
        [
            NewEvent(NAMES[n % 3], {"offerId": n, "description": f"offer {n}", "big": 2**62 + n})
            for n in range(1, total + 1)
        ],
    )

    batches = await subscribe(service.target, limit=1000)
    assert [len(batch.events) for batch in batches] == [1000, 1000, 600]
    assert [batch.next_start for batch in batches] == [1001, 2001, 2601]
    assert {batch.head for batch in batches} == {total}
    events = [event for batch in batches for event in batch.events]
    assert [event.sequence_number for event in events] == list(range(1, total + 1))
    # The same events as GET /events, field for field (content: the same JSON, int64 exact).
    http_events = (await client.get(f"{service.base}/events", params={"limit": 10_000})).json()
    assert len(http_events) == total
    for event, http_event in zip(events, http_events, strict=True):
        assert event.sequence_number == http_event["sequenceNumber"]
        assert event.occurred_at == http_event["occurredAt"]
        assert event.name == http_event["name"]
        assert orjson.loads(event.content) == http_event["content"]
    assert orjson.loads(events[-1].content)["big"] == 2**62 + total

    # Left out, start and limit are the HTTP feed's defaults (1 and 1000).
    assert numbers(await subscribe(service.target)) == numbers(batches)
    tail = await subscribe(service.target, start=2501, limit=40)
    assert [len(batch.events) for batch in tail] == [40, 40, 20]
    assert tail[0].events[0].sequence_number == 2501
    assert tail[-1].next_start == 2601
    # A last page that is full is followed by an empty batch at the head.
    exact = await subscribe(service.target, start=2001, limit=600)
    assert [len(batch.events) for batch in exact] == [600, 0]
    assert exact[-1].next_start == 2601
    # At or past the head: one empty batch; next_start is where the reader asked.
    for start in (2601, 5000):
        [empty] = await subscribe(service.target, start=start)
        assert (list(empty.events), empty.head, empty.next_start) == ([], total, start)


async def test_the_type_filter_keeps_only_those_names_and_moves_past_the_rest(
    start_grpc_service: StartGrpcService, database_url: str
) -> None:
    service = start_grpc_service("special-offers", database_url)
    removed = {7, 11}
    await append(
        database_url,
        [
            NewEvent("SpecialOfferRemoved" if n in removed else "SpecialOfferCreated", {"n": n})
            for n in range(1, 14)
        ],
    )
    batches = await subscribe(service.target, types=["SpecialOfferRemoved"])
    assert numbers(batches) == [[7, 11]]
    assert batches[0].next_start == 14  # scanned to the head, past the filtered-out tail

    batches = await subscribe(service.target, types=["SpecialOfferRemoved"], limit=1)
    assert numbers(batches) == [[7], [11], []]
    assert [batch.next_start for batch in batches] == [8, 12, 14]

    [batch] = await subscribe(service.target, types=["NoSuchEvent"])
    assert (list(batch.events), batch.next_start) == ([], 14)
    both = await subscribe(
        service.target, types=["SpecialOfferRemoved", "SpecialOfferCreated"], start=6
    )
    assert numbers(both) == [list(range(6, 14))]


async def test_following_sends_each_commit_as_soon_as_it_is_made(
    start_grpc_service: StartGrpcService, database_url: str, client: httpx.AsyncClient
) -> None:
    service = start_grpc_service(
        "special-offers", database_url, long_poll_recheck_seconds=RECHECK_SECONDS
    )
    await create_offers(client, service.base, 2)
    async with grpc.aio.insecure_channel(service.target) as channel:
        stub = feed_pb2_grpc.EventFeedStub(channel)
        call = stub.Subscribe(feed_pb2.SubscribeRequest(start=1, follow=True), timeout=DEADLINE)
        caught_up = await read_batch(call)
        assert (numbers([caught_up]), caught_up.next_start) == ([[1, 2]], 3)
        for expected in ([3], [4]):
            following = asyncio.create_task(read_batch(call))
            await asyncio.sleep(0.5)
            assert not following.done(), "a batch came before anything was committed"
            committing = time.monotonic()
            await create_offers(client, service.base, 1)
            batch = await following
            woken_after = time.monotonic() - committing
            assert numbers([batch]) == [expected]
            assert batch.next_start == expected[-1] + 1
            # Woken by the commit: the re-check (60 s) is far off.
            assert woken_after < WOKEN_WITHIN, f"sent {woken_after:.1f}s after the commit"
        call.cancel()


async def test_following_with_a_type_filter_waits_for_a_kept_event(
    start_grpc_service: StartGrpcService, database_url: str, client: httpx.AsyncClient
) -> None:
    service = start_grpc_service(
        "special-offers", database_url, long_poll_recheck_seconds=RECHECK_SECONDS
    )
    async with grpc.aio.insecure_channel(service.target) as channel:
        stub = feed_pb2_grpc.EventFeedStub(channel)
        call = stub.Subscribe(
            feed_pb2.SubscribeRequest(types=["SpecialOfferRemoved"], follow=True),
            timeout=DEADLINE,
        )
        caught_up = await read_batch(call)
        assert (list(caught_up.events), caught_up.head, caught_up.next_start) == ([], 0, 1)
        following = asyncio.create_task(read_batch(call))
        [offer] = await create_offers(client, service.base, 1)  # 1: left out
        await asyncio.sleep(0.5)
        assert not following.done(), "an event the filter leaves out was sent"
        committing = time.monotonic()
        await client.delete(f"{service.base}/offers/{offer}")  # 2: kept
        batch = await following
        assert time.monotonic() - committing < WOKEN_WITHIN
        assert [(event.sequence_number, event.name) for event in batch.events] == [
            (2, "SpecialOfferRemoved")
        ]
        assert orjson.loads(batch.events[0].content) == {"offerId": offer}
        call.cancel()


async def test_following_is_woken_by_a_commit_on_another_replica(
    start_grpc_service: StartGrpcService, postgres_url: str, client: httpx.AsyncClient
) -> None:
    """Two replicas on one PostgreSQL: a write on B wakes a follower of A (LISTEN/NOTIFY)."""
    replica_a = start_grpc_service(
        "special-offers", postgres_url, long_poll_recheck_seconds=RECHECK_SECONDS
    )
    replica_b = start_grpc_service(
        "special-offers", postgres_url, long_poll_recheck_seconds=RECHECK_SECONDS
    )
    async with grpc.aio.insecure_channel(replica_a.target) as channel:
        stub = feed_pb2_grpc.EventFeedStub(channel)
        call = stub.Subscribe(feed_pb2.SubscribeRequest(follow=True), timeout=DEADLINE)
        assert numbers([await read_batch(call)]) == [[]]
        following = asyncio.create_task(read_batch(call))
        await asyncio.sleep(0.5)
        assert not following.done()
        committing = time.monotonic()
        await create_offers(client, replica_b.base, 1)
        batch = await following
        woken_after = time.monotonic() - committing
        assert numbers([batch]) == [[1]]
        # Only A's LISTEN can wake it this soon: A re-checks every 60 s.
        assert woken_after < WOKEN_WITHIN, f"sent {woken_after:.1f}s after the commit"
        # A commit from a connection of no service at all wakes it too.
        following = asyncio.create_task(read_batch(call))
        committing = time.monotonic()
        await append(postgres_url, [NewEvent("SpecialOfferCreated", {"offerId": 99})])
        batch = await following
        assert numbers([batch]) == [[2]]
        assert time.monotonic() - committing < WOKEN_WITHIN
        call.cancel()


class CountedReads:
    """The store's read_page, counting the reads that reach the database."""

    def __init__(self, store: EventStore) -> None:
        self._read_page = store.read_page
        self.starts: list[int] = []

    async def __call__(
        self, start: int, end: int | None, limit: int, types: Sequence[str] | None
    ) -> FeedPage:
        self.starts.append(start)
        return await self._read_page(start, end, limit, types)


async def test_followers_woken_by_one_commit_share_one_read_of_the_store(
    start_grpc_service: StartGrpcService, database_url: str, client: httpx.AsyncClient
) -> None:
    """20 gRPC follow streams and 20 HTTP long polls wait at the head; one commit wakes
    them all, and they read the new page from the database a few times, not 40."""
    service = start_grpc_service(
        "special-offers", database_url, long_poll_recheck_seconds=RECHECK_SECONDS
    )
    store: EventStore = service.app.state.context.store
    counted = CountedReads(store)
    store.reads = SharedReads(counted)
    followers = 20
    async with grpc.aio.insecure_channel(service.target) as channel:
        stub = feed_pb2_grpc.EventFeedStub(channel)
        calls = [
            stub.Subscribe(feed_pb2.SubscribeRequest(follow=True), timeout=DEADLINE)
            for _ in range(followers)
        ]
        for call in calls:
            assert numbers([await read_batch(call)]) == [[]]
        streams = [asyncio.create_task(read_batch(call)) for call in calls]
        polls = [
            asyncio.create_task(client.get(f"{service.base}/events", params={"wait": 30}))
            for _ in range(followers)
        ]
        await asyncio.sleep(1.0)
        assert not any(task.done() for task in streams + polls), "answered before a commit"
        waiting_reads = len(counted.starts)
        await create_offers(client, service.base, 1)
        for batch in await asyncio.gather(*streams):
            assert numbers([batch]) == [[1]]
        for response in await asyncio.gather(*polls):
            assert [event["sequenceNumber"] for event in response.json()] == [1]
        woken_reads = counted.starts[waiting_reads:]
        # One shared read of the new page; a second commit signal (PostgreSQL's NOTIFY
        # after the in-process one) may add a shared read or two. Unshared: 40.
        assert woken_reads.count(1) <= 3, woken_reads
        for call in calls:
            call.cancel()


async def test_head(
    start_grpc_service: StartGrpcService, database_url: str, client: httpx.AsyncClient
) -> None:
    service = start_grpc_service("special-offers", database_url)
    assert await head(service.target) == 0
    await create_offers(client, service.base, 4)
    assert await head(service.target) == 4


async def test_token_auth_guards_the_feed_but_not_health_or_reflection(
    start_grpc_service: StartGrpcService, sqlite_url: str, client: httpx.AsyncClient
) -> None:
    service = start_grpc_service(
        "special-offers", sqlite_url, feed_auth="token", feed_token="s3cret"
    )
    await client.post(f"{service.base}/offers", json={"description": "x"})  # commands stay open
    for metadata, says in (
        ((), "this feed needs an Authorization: Bearer token"),
        ((("authorization", "Bearer nope"),), "the bearer token is not valid for this feed"),
        ((("authorization", "Basic s3cret"),), "this feed needs an Authorization: Bearer token"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await subscribe(service.target, metadata)
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error.value.details() == says
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await head(service.target, metadata)
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
    right = (("authorization", "Bearer s3cret"),)
    assert numbers(await subscribe(service.target, right)) == [[1]]
    assert await head(service.target, right) == 1
    # Health and reflection stay open, as /health does over HTTP.
    assert await health_status(service.target, "") == health_pb2.HealthCheckResponse.SERVING
    assert GRPC_SERVICE in await reflected_services(service.target)


async def test_service_account_tokens_are_checked_by_token_review_over_grpc(
    sqlite_url: str, tmp_path: Path
) -> None:
    """The authorizer of ServiceAccountToken mode, fed from metadata: accepted, refused
    (UNAUTHENTICATED), not among the readers (PERMISSION_DENIED), failed (UNAVAILABLE)."""
    own = tmp_path / "token"
    own.write_text("own-sa-token")

    def token_review(request: httpx.Request) -> httpx.Response:
        token = orjson.loads(request.content)["spec"]["token"]
        if token == "broken":
            return httpx.Response(500)
        user = {"subscriber-token": "subscriber", "other-token": "other"}.get(token)
        status = {
            "authenticated": user is not None,
            "audiences": ["feedline"],
            "user": {"username": f"system:serviceaccount:shop:{user}"},
        }
        return httpx.Response(201, json={"status": status})

    database = connect_database(sqlite_url)
    await create_tables(database, [])
    api = httpx.AsyncClient(base_url="https://api", transport=httpx.MockTransport(token_review))
    # Authorisation too: only the subscriber's ServiceAccount may read (FEEDLINE_FEED_READERS).
    authorizer = KubernetesTokenReview(
        api, own, "feedline", readers=frozenset({"system:serviceaccount:shop:subscriber"})
    )
    feed = EventFeedService(
        EventStore(database), authorizer, ServiceMetrics("special-offers"), recheck_seconds=1
    )
    server = GrpcFeedServer(feed, "127.0.0.1", 0)
    await server.start()
    try:
        target = f"127.0.0.1:{server.port}"
        await append(sqlite_url, [NewEvent("SpecialOfferCreated")])
        accepted = (("authorization", "Bearer subscriber-token"),)
        assert await head(target, accepted) == 1
        for token, code in (
            ("someone-else", grpc.StatusCode.UNAUTHENTICATED),
            ("broken", grpc.StatusCode.UNAVAILABLE),
            ("other-token", grpc.StatusCode.PERMISSION_DENIED),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await head(target, (("authorization", f"Bearer {token}"),))
            assert error.value.code() == code
        assert await refused_with(target, "someone-else") == (
            "the ServiceAccount token was not accepted for audience 'feedline'"
        )
        assert await refused_with(target, "broken") == "cannot check the token: TokenReview failed"
        assert await refused_with(target, "other-token") == (
            "system:serviceaccount:shop:other may not read this feed: "
            "it is not among the feed's readers"
        )
    finally:
        await server.stop()
        await api.aclose()
        await database.dispose()


async def refused_with(target: str, token: str) -> str | None:
    try:
        await subscribe(target, (("authorization", f"Bearer {token}"),))
    except grpc.aio.AioRpcError as error:
        return error.details()
    return None


@pytest.mark.parametrize(
    ("request_fields", "details"),
    [
        ({"start": 0}, "field 'start': Input should be greater than or equal to 1"),
        ({"limit": 0}, "field 'limit': Input should be greater than or equal to 1"),
        ({"limit": 10_001}, "field 'limit': Input should be less than or equal to 10000"),
        (
            {"types": ["has space"]},
            "field 'types': 'has space' is not an event name: use 1 to 200 letters, digits, "
            "'_', '.', ':' or '-'",
        ),
        ({"types": ["A", ""]}, "field 'types': '' is not an event name: use 1 to 200 letters, "),
    ],
)
async def test_bad_arguments_are_invalid_argument_naming_the_field(
    start_grpc_service: StartGrpcService,
    sqlite_url: str,
    request_fields: dict[str, Any],
    details: str,
) -> None:
    service = start_grpc_service("special-offers", sqlite_url)
    for follow in (False, True):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await subscribe(service.target, follow=follow, **request_fields)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (error.value.details() or "").startswith(details)


# The standard services' stubs have no asyncio types: these callables are typed by hand.
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
REFLECTION_INFO = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"


async def health_status(target: str, service: str) -> int:
    async with grpc.aio.insecure_channel(target) as channel:
        check = channel.unary_unary(
            HEALTH_CHECK,
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        response = await check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        return int(response.status)


async def reflect(
    target: str, request: reflection_pb2.ServerReflectionRequest
) -> list[reflection_pb2.ServerReflectionResponse]:
    async with grpc.aio.insecure_channel(target) as channel:
        info = channel.stream_stream(
            REFLECTION_INFO,
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        return [response async for response in info(iter([request]), timeout=5)]


async def reflected_services(target: str) -> set[str]:
    [response] = await reflect(target, reflection_pb2.ServerReflectionRequest(list_services=""))
    return {each.name for each in response.list_services_response.service}


async def test_health_serves_and_reflection_describes_the_feed(
    start_grpc_service: StartGrpcService, sqlite_url: str
) -> None:
    service = start_grpc_service("special-offers", sqlite_url)
    for name in ("", GRPC_SERVICE):
        assert await health_status(service.target, name) == health_pb2.HealthCheckResponse.SERVING
    assert await reflected_services(service.target) == {
        GRPC_SERVICE,
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    # Reflection also gives the proto itself (what grpcurl needs to call the feed).
    [response] = await reflect(
        service.target, reflection_pb2.ServerReflectionRequest(file_containing_symbol=GRPC_SERVICE)
    )
    [proto] = response.file_descriptor_response.file_descriptor_proto
    assert b"feedline/feed/v1/feed.proto" in proto


async def test_a_slow_reader_holds_the_server_to_one_batch_ahead(
    start_grpc_service: StartGrpcService, database_url: str
) -> None:
    """A reader that stops reading stops the server's reads: it stays one batch ahead of
    what the transport has taken, and the transport (the reader's HTTP/2 window, here
    without BDP growth) takes one more. The feed holds ~3 MB; the server stops far
    before it."""
    service = start_grpc_service("special-offers", database_url)
    total, limit = 3_000, 100
    await append(
        database_url,
        [NewEvent("SpecialOfferCreated", {"n": n, "pad": "x" * 1000}) for n in range(total)],
    )
    fixed_window = [("grpc.http2.bdp_probe", 0)]
    async with grpc.aio.insecure_channel(service.target, options=fixed_window) as channel:
        stub = feed_pb2_grpc.EventFeedStub(channel)
        call = stub.Subscribe(feed_pb2.SubscribeRequest(limit=limit), timeout=DEADLINE)
        consumed = 1
        received: list[int] = []
        for pause in range(3):
            for _ in range(pause + 1):  # read a batch or more, then stop reading
                batch = await read_batch(call)
                received += [event.sequence_number for event in batch.events]
                consumed = batch.next_start
            await asyncio.sleep(1.0)  # the server goes as far as it can meanwhile
            [stream] = service.feed.streams
            read_to, sent_to, held = stream.read_to, stream.sent_to, stream.pages_held
            await asyncio.sleep(0.5)
            assert (stream.read_to, stream.sent_to) == (read_to, sent_to), "still reading"
            assert held == 1  # the page it cannot send yet; no other
            assert read_to - sent_to <= limit, "more than one batch in hand"
            assert read_to - consumed <= 2 * limit, f"read to {read_to}, consumed {consumed}"
        while (rest := await call.read()) != grpc.aio.EOF:  # then everything comes, in order
            assert isinstance(rest, feed_pb2.EventBatch)
            received += [event.sequence_number for event in rest.events]
        assert received == list(range(1, total + 1))
    assert service.feed.streams == []


async def test_feedline_serve_runs_the_grpc_feed_beside_http(
    sqlite_url: str, client: httpx.AsyncClient
) -> None:
    """As deployed: `feedline serve` with FEEDLINE_GRPC_PORT, Token auth from the environment."""
    port = free_port()
    with running_service(
        "special-offers",
        sqlite_url,
        FEEDLINE_GRPC_PORT=str(port),
        FEEDLINE_FEED_AUTH="Token",
        FEEDLINE_FEED_TOKEN="s3cret",
    ) as base:
        await create_offers(client, base, 3)
        target = f"127.0.0.1:{port}"
        token = (("authorization", "Bearer s3cret"),)
        assert await head(target, token) == 3
        assert numbers(await subscribe(target, token, limit=2)) == [[1, 2], [3]]
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await head(target)
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_feedline_serve_exits_1_when_the_grpc_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [FEEDLINE, "serve", "special-offers", "--port", str(free_port())],
            env={"PATH": "/usr/bin:/bin", "FEEDLINE_GRPC_PORT": str(port)},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line == (
        f"feedline serve: cannot listen for gRPC on 127.0.0.1:{port}: the port is in use or "
        "the address is not this machine's; choose another with --grpc-port (FEEDLINE_GRPC_PORT)"
    )


def test_feedline_serve_exits_1_when_the_http_port_is_taken(tmp_path: Path) -> None:
    """Not 3 (uvicorn's start-up failure), which `feedline serve` means as
    "database unusable": a taken port is "could not listen", as for gRPC."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [FEEDLINE, "serve", "special-offers", "--port", str(port)],
            env={"PATH": "/usr/bin:/bin"},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"feedline serve: cannot listen on 127.0.0.1:{port}: the port is in use or the "
        "address is not this machine's; choose another with --port"
    )
