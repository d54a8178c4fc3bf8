"""The subscriber's gRPC transport against a scripted EventFeed server on loopback: what
it retries, what fails the run at once and in which words, a stream cut mid-way, a batch
that breaks the protocol, the bearer token, a follower's wait (and a stop ending it), TLS.

The server is a small grpc.aio EventFeed of the test's own (the real service cannot be
made to fail on cue); tests/integration/test_subscriber_transport_contract.py runs the real one.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from feedline_contracts.feed_v1 import feed_pb2, feed_pb2_grpc
from feedline_subscriber.feed_transport import FeedUnavailableError
from feedline_subscriber.grpc_feed_client import GrpcFeedClient
from feedline_subscriber.runner import run_subscription
from feedline_subscriber.settings import load_settings
from feedline_subscriber.summary import Outcome, Summary
from tests.support.ports import free_port
from tests.support.subscriber_oracle import checkpoint_position, read_offers
from tests.support.subscriber_process import LOYALTY

pytestmark = pytest.mark.integration

Code = grpc.StatusCode
ServicerContext = grpc.aio.ServicerContext[Any, Any]


def offer_event(number: int) -> feed_pb2.Event:
    return feed_pb2.Event(
        sequence_number=number,
        occurred_at="2026-11-29T10:00:00.000000Z",
        name="SpecialOfferCreated",
        content=orjson.dumps({"offerId": number, "description": f"offer {number}"}).decode(),
    )


@dataclass(eq=False)
class ScriptedFeed(feed_pb2_grpc.EventFeedServicer):
    """An EventFeed over ``events`` that fails as told.

    ``failures``: each Subscribe or Head call first takes one and aborts with it.
    ``cut_after``: a Subscribe stream aborts with UNAVAILABLE after that many batches (once).
    """

    events: list[feed_pb2.Event]
    failures: list[tuple[grpc.StatusCode, str]] = field(default_factory=list)
    cut_after: int | None = None
    requests: list[feed_pb2.SubscribeRequest] = field(default_factory=list)
    tokens: list[str | None] = field(default_factory=list)
    open_streams: int = 0

    def append(self, count: int) -> None:
        first = len(self.events) + 1
        self.events.extend(offer_event(n) for n in range(first, first + count))

    async def _enter(self, context: ServicerContext) -> None:
        metadata = dict(context.invocation_metadata() or ())
        authorization = metadata.get("authorization")
        self.tokens.append(authorization if isinstance(authorization, str) else None)
        if self.failures:
            code, details = self.failures.pop(0)
            await context.abort(code, details)

    async def Head(  # noqa: N802 (the generated servicer's name)
        self, request: feed_pb2.HeadRequest, context: ServicerContext
    ) -> feed_pb2.HeadResponse:
        await self._enter(context)
        return feed_pb2.HeadResponse(head=len(self.events))

    async def Subscribe(  # noqa: N802 (the generated servicer's name)
        self, request: feed_pb2.SubscribeRequest, context: ServicerContext
    ) -> AsyncIterator[feed_pb2.EventBatch]:
        self.requests.append(request)
        await self._enter(context)
        self.open_streams += 1
        try:
            async for batch in self._batches(request, context):
                yield batch
        finally:
            self.open_streams -= 1

    async def _batches(
        self, request: feed_pb2.SubscribeRequest, context: ServicerContext
    ) -> AsyncIterator[feed_pb2.EventBatch]:
        position = request.start if request.HasField("start") else 1
        limit = request.limit if request.HasField("limit") else 1000
        following, sent = False, 0
        while True:
            head = len(self.events)
            selected = [e for e in self.events if e.sequence_number >= position][:limit]
            full = len(selected) == limit
            next_start = max(selected[-1].sequence_number + 1 if full else head + 1, position)
            if selected or not following:
                yield feed_pb2.EventBatch(events=selected, head=head, next_start=next_start)
                sent += 1
                if self.cut_after is not None and sent >= self.cut_after:
                    self.cut_after = None
                    await context.abort(Code.UNAVAILABLE, "the server went away")
            position = next_start
            if full:
                continue
            if not request.follow:
                return
            following = True
            while len(self.events) == head:  # noqa: ASYNC110 - the test appends from its own task
                await asyncio.sleep(0.01)


@dataclass
class Served:
    feed: ScriptedFeed
    url: str


@contextlib.asynccontextmanager
async def scripted_feed(
    events: int = 20, *, credentials: grpc.ServerCredentials | None = None, host: str = "127.0.0.1"
) -> AsyncIterator[Served]:
    feed = ScriptedFeed([offer_event(n) for n in range(1, events + 1)])
    server = grpc.aio.server()
    feed_pb2_grpc.add_EventFeedServicer_to_server(feed, server)
    if credentials is None:
        port = server.add_insecure_port(f"{host}:0")
        scheme = "grpc"
    else:
        port = server.add_secure_port(f"{host}:0", credentials)
        scheme = "grpcs"
    await server.start()
    try:
        yield Served(feed, f"{scheme}://{host}:{port}")
    finally:
        await server.stop(0)


def settings_for(url: str, read_model: str, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "subscription": "grpc-faults",
        "feed_url": url,
        "database_url": read_model,
        "projection": LOYALTY,
        "batch_size": 10,
        "feed_retry_attempts": 2,
        **overrides,
    }
    return load_settings(**values)


@pytest.mark.parametrize(
    "code", [Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED, Code.RESOURCE_EXHAUSTED, Code.CANCELLED]
)
async def test_transient_statuses_are_retried_then_the_run_succeeds(
    code: grpc.StatusCode, sqlite_url: str
) -> None:
    async with scripted_feed() as served:
        served.feed.failures = [(code, "try later")] * 2
        summary = await run_subscription(
            settings_for(served.url, sqlite_url, feed_retry_attempts=4)
        )
    assert summary.outcome is Outcome.CAUGHT_UP, summary.message
    assert summary.position == 20
    assert len(served.feed.requests) == 3  # two refused, then one stream read to the head
    assert sorted(await read_offers(sqlite_url)) == list(range(1, 21))


async def test_a_feed_that_keeps_failing_fails_the_run_naming_it(sqlite_url: str) -> None:
    async with scripted_feed() as served:
        served.feed.failures = [(Code.UNAVAILABLE, "down for maintenance")] * 10
        summary = await run_subscription(
            settings_for(served.url, sqlite_url, feed_retry_attempts=1)
        )
    assert summary.outcome is Outcome.FAILED
    assert summary.message == (
        f"FeedUnavailableError: feed {served.url} unreachable after 1 retries: "
        "UNAVAILABLE: down for maintenance"
    )
    assert len(served.feed.requests) == 2
    assert await checkpoint_position(sqlite_url, "grpc-faults") == 0


@pytest.mark.parametrize(
    ("code", "details", "says"),
    [
        (Code.UNAUTHENTICATED, "no token", "refused the subscriber (UNAUTHENTICATED): no token"),
        (Code.PERMISSION_DENIED, "not you", "refused the subscriber (PERMISSION_DENIED): not you"),
        (
            Code.INVALID_ARGUMENT,
            "field 'limit': Input should be less than or equal to 10000",
            "answered INVALID_ARGUMENT to Subscribe from start=1: field 'limit': Input should",
        ),
        (Code.UNIMPLEMENTED, "no such method", "answered UNIMPLEMENTED to Subscribe from start=1"),
    ],
)
async def test_what_waiting_cannot_fix_fails_at_once_naming_the_feed(
    code: grpc.StatusCode, details: str, says: str, sqlite_url: str
) -> None:
    async with scripted_feed() as served:
        served.feed.failures = [(code, details)] * 10
        summary = await run_subscription(
            settings_for(served.url, sqlite_url, feed_retry_attempts=5)
        )
    assert summary.outcome is Outcome.FAILED
    assert f"feed {served.url} {says}" in summary.message, summary.message
    assert summary.exit_code == 1
    assert len(served.feed.requests) == 1  # not retried


async def test_connection_refused_is_retried_then_fails(sqlite_url: str) -> None:
    url = f"grpc://127.0.0.1:{free_port()}"
    summary = await run_subscription(settings_for(url, sqlite_url, feed_retry_attempts=2))
    assert summary.outcome is Outcome.FAILED
    assert f"feed {url} unreachable after 2 retries: UNAVAILABLE" in summary.message
    assert await checkpoint_position(sqlite_url, "grpc-faults") == 0


async def test_a_stream_cut_midway_resumes_from_its_next_start(sqlite_url: str) -> None:
    async with scripted_feed(events=30) as served:
        served.feed.cut_after = 2
        summary = await run_subscription(settings_for(served.url, sqlite_url, batch_size=7))
    assert summary.outcome is Outcome.CAUGHT_UP, summary.message
    assert summary.processed == 30
    starts = [request.start for request in served.feed.requests]
    assert starts == [1, 15]  # two batches of 7 arrived; the next stream starts after them
    assert sorted(await read_offers(sqlite_url)) == list(range(1, 31))


async def test_a_batch_that_breaks_the_protocol_fails_the_run_and_the_checkpoint_stays(
    sqlite_url: str,
) -> None:
    async with scripted_feed(events=10) as served:
        served.feed.events.append(offer_event(12))  # 11 is missing: a gap without a filter
        summary = await run_subscription(settings_for(served.url, sqlite_url))
    assert summary.outcome is Outcome.FAILED
    assert "sequence numbers has a gap: expected 11, got 12" in summary.message
    assert await checkpoint_position(sqlite_url, "grpc-faults") == 10
    assert sorted(await read_offers(sqlite_url)) == list(range(1, 11))


async def test_the_token_is_sent_as_bearer_metadata_and_read_again_for_each_call(
    tmp_path: Path,
) -> None:
    token = tmp_path / "token"
    token.write_text("first\n")
    async with scripted_feed() as served:
        client = GrpcFeedClient(served.url, token_file=token)
        try:
            page = await client.fetch(1, 10)
            token.write_text("rotated")  # a projected ServiceAccount token, renewed on disk
            assert await client.head() == 20
            token.unlink()
            with pytest.raises(FeedUnavailableError, match="cannot read the feed token file"):
                await client.head()
        finally:
            await client.aclose()
    assert [e.sequence_number for e in page.events] == list(range(1, 11))
    assert served.feed.tokens == ["Bearer first", "Bearer rotated"]


async def test_a_follower_waits_on_one_stream_and_cancelling_ends_the_wait() -> None:
    async with scripted_feed(events=3) as served:
        client = GrpcFeedClient(served.url, follow=True)
        try:
            first = await client.fetch(1, 10)
            assert ([e.sequence_number for e in first.events], first.next_start) == ([1, 2, 3], 4)
            # Nothing new within `wait`: an empty page, and the stream stays open.
            quiet = await client.fetch(4, 10, wait=0.2)
            assert (quiet.events, quiet.next_start, quiet.head) == ([], 4, 3)
            served.feed.append(2)
            woken = await client.fetch(4, 10, wait=30)
            assert [e.sequence_number for e in woken.events] == [4, 5]
            assert client.streams_opened == 1
            assert served.feed.requests[0].follow is True

            # wait 0: as long as it takes; cancelling (the run's stop) ends it at once.
            waiting = asyncio.create_task(client.fetch(6, 10, wait=0))
            await asyncio.sleep(0.3)
            assert not waiting.done()
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(waiting, timeout=5)
            assert served.feed.open_streams == 1  # a cancelled wait keeps the stream
        finally:
            await client.aclose()
        for _ in range(500):  # the server sees the stream end
            if served.feed.open_streams == 0:
                break
            await asyncio.sleep(0.01)
        assert served.feed.open_streams == 0


async def test_a_stop_ends_a_following_run_that_waits_for_commits(sqlite_url: str) -> None:
    async with scripted_feed(events=5) as served:
        stop = asyncio.Event()
        progress: list[Summary] = []
        run = asyncio.create_task(
            run_subscription(
                settings_for(served.url, sqlite_url, follow=True, feed_wait_seconds=30),
                stop=stop,
                on_progress=progress.append,
            )
        )
        for _ in range(3000):
            if progress and progress[-1].position == 5:
                break
            await asyncio.sleep(0.01)
        served.feed.append(1)  # a commit reaches the follower through its open stream
        for _ in range(3000):
            if progress[-1].position == 6:
                break
            await asyncio.sleep(0.01)
        stop.set()  # SIGTERM: the follower is waiting for the next commit
        summary = await asyncio.wait_for(run, timeout=10)
    assert summary.outcome is Outcome.CAUGHT_UP, summary.message
    assert (summary.position, summary.processed) == (6, 6)
    assert len(served.feed.requests) == 1


def self_signed_certificate(tmp_path: Path) -> tuple[bytes, bytes]:
    """A certificate (PEM) for localhost and 127.0.0.1, and its private key (PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return (
        certificate.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


async def test_grpcs_reads_over_tls_checking_the_server_certificate(tmp_path: Path) -> None:
    certificate, key = self_signed_certificate(tmp_path)
    credentials = grpc.ssl_server_credentials([(key, certificate)])
    async with scripted_feed(credentials=credentials) as served:
        assert served.url.startswith("grpcs://127.0.0.1:")
        trusting = GrpcFeedClient(served.url, root_certificates=certificate)
        try:
            page = await trusting.fetch(1, 5)
            assert [e.sequence_number for e in page.events] == [1, 2, 3, 4, 5]
        finally:
            await trusting.aclose()
        # The system's roots do not know this certificate: the connection is refused.
        doubting = GrpcFeedClient(served.url, retry_attempts=0)
        try:
            with pytest.raises(FeedUnavailableError, match="unreachable after 0 retries"):
                await doubting.fetch(1, 5)
        finally:
            await doubting.aclose()


async def test_a_new_subscription_starting_at_the_head_asks_the_head_rpc(
    sqlite_url: str,
) -> None:
    async with scripted_feed(events=20) as served:
        first = await run_subscription(settings_for(served.url, sqlite_url, start_position="Head"))
        served.feed.append(3)
        second = await run_subscription(settings_for(served.url, sqlite_url, start_position="Head"))
    assert (first.outcome, first.position, first.processed) == (Outcome.CAUGHT_UP, 20, 0)
    assert (second.position, second.processed) == (23, 3)  # the stored position wins now
    assert sorted(await read_offers(sqlite_url)) == [21, 22, 23]
    assert len(served.feed.tokens) == 1 + len(served.feed.requests)  # one Head call
