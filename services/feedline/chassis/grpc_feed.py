"""The gRPC event feed, ``feedline.feed.v1.EventFeed`` (docs/transports.md).

The same feed as ``GET /events`` (docs/feed-protocol.md), on a port of its own
beside HTTP: ``Subscribe`` streams events from a start position, oldest first,
in batches, then (``follow``) keeps sending new commits; ``Head`` answers the
head. It reuses what the HTTP feed uses: the event store's pages (bounded by
the head read first), its commit signal (fed by the one PostgreSQL listener
per process, so a commit on any replica wakes followers at once; the database
is re-checked every ``FEEDLINE_LONG_POLL_RECHECK_SECONDS`` as a safety net), its
shared reads (followers woken by one commit read the new page once, and each
page's batches are built once for them all),
the feed's limits, and the service's authorizer (the bearer token comes from
the ``authorization`` metadata). The server also serves the standard health
service and server reflection.

Memory per subscriber is bounded: a stream reads its next page from the
store only after gRPC has taken the previous batch (each ``yield`` of the
async generator waits until the message is written, which HTTP/2 flow control
holds back while the reader does not read). So a stream holds at most one
page of ``limit`` events (as read, plus the batch being built, at most
``MAX_BATCH_BYTES`` of events) besides what the transport buffers: the
reader's HTTP/2 window and the sockets' buffers.
"""

from __future__ import annotations

import contextlib
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
import orjson
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from feedline.chassis.auth import FeedAuthError, FeedAuthorizer
from feedline.chassis.eventstore import EventStore, FeedPage
from feedline.chassis.metrics import ServiceMetrics
from feedline.chassis.notifications import CommitWatch
from feedline_contracts.feed import (
    DEFAULT_LIMIT,
    EVENT_NAME_MAX_LENGTH,
    EVENT_NAME_PATTERN,
    GRPC_PORT_SETTING,
    GRPC_SERVICE,
    MAX_BATCH_BYTES,
    MAX_LIMIT,
)
from feedline_contracts.feed_v1 import feed_pb2, feed_pb2_grpc

log = structlog.get_logger("feedline.grpc")

ServicerContext = grpc.aio.ServicerContext[Any, Any]

# Keepalives and limits of the server (docs/transports.md explains each).
SERVER_OPTIONS: Sequence[tuple[str, int]] = (
    # A port taken is an error, as for HTTP (gRPC's default SO_REUSEPORT would
    # let a second service bind it too and share its readers with the first).
    ("grpc.so_reuseport", 0),
    # Ping a connection after 30 s without traffic (a follower waiting for
    # commits is quiet) and drop it when no answer comes within 10 s: a reader
    # that vanished frees its stream within about 40 s.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    # Keep pinging a quiet connection (the default stops after 2 pings without data).
    ("grpc.http2.max_pings_without_data", 0),
    # Readers may ping every 10 s, even with no call open; faster pings get GOAWAY.
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    # Requests are small: refuse anything bigger than 1 MiB.
    ("grpc.max_receive_message_length", 1024 * 1024),
)
# At shutdown, calls get this long to finish; followers never do, so they are cut then.
STOP_GRACE_SECONDS = 5.0


class InvalidArgumentError(ValueError):
    """A Subscribe argument out of range; the message names the field and what is accepted."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"field '{field}': {message}")
        self.field = field


@dataclass(frozen=True)
class Subscription:
    """A checked SubscribeRequest."""

    start: int
    limit: int
    types: tuple[str, ...] | None
    follow: bool


def subscription_from(request: feed_pb2.SubscribeRequest) -> Subscription:
    """Check a request against the feed's limits (the HTTP feed's wording where it has one).

    ``start`` and ``limit`` left out take the HTTP feed's defaults (1 and
    1000); sent, they must be in range (0 is out of range, as in HTTP).
    """
    start = request.start if request.HasField("start") else 1
    if start < 1:
        raise InvalidArgumentError("start", "Input should be greater than or equal to 1")
    limit = request.limit if request.HasField("limit") else DEFAULT_LIMIT
    if limit < 1:
        raise InvalidArgumentError("limit", "Input should be greater than or equal to 1")
    if limit > MAX_LIMIT:
        raise InvalidArgumentError("limit", f"Input should be less than or equal to {MAX_LIMIT}")
    for name in request.types:
        if not EVENT_NAME_PATTERN.fullmatch(name):
            raise InvalidArgumentError(
                "types",
                f"{name!r:.80} is not an event name: use 1 to {EVENT_NAME_MAX_LENGTH} "
                "letters, digits, '_', '.', ':' or '-'",
            )
    types = tuple(dict.fromkeys(request.types)) or None
    return Subscription(start=start, limit=limit, types=types, follow=request.follow)


def batches(page: FeedPage, max_bytes: int = MAX_BATCH_BYTES) -> Iterator[feed_pb2.EventBatch]:
    """A page as EventBatch messages: one, or more when its events pass ``max_bytes``.

    Every batch but the last ends at its last event (``next_start`` is the
    one after); the last carries the page's ``scanned_to``, which may lie past
    events a type filter left out. A page without events is one empty batch.
    Occurred-at, content and the optional traceparent are the HTTP feed's
    text: the stored event is decoded and its content re-encoded by orjson,
    which keeps every number exactly as appended (int64 included).
    """
    batch = feed_pb2.EventBatch(head=page.head)
    size = 0
    for event in orjson.loads(page.body):
        message = feed_pb2.Event(
            sequence_number=event["sequenceNumber"],
            occurred_at=event["occurredAt"],
            name=event["name"],
            content=orjson.dumps(event["content"]).decode(),
            # Optional: None (an event without one) leaves the field unset.
            traceparent=event.get("traceparent"),
        )
        event_size = message.ByteSize()
        if batch.events and size + event_size > max_bytes:
            batch.next_start = batch.events[-1].sequence_number + 1
            yield batch
            batch = feed_pb2.EventBatch(head=page.head)
            size = 0
        batch.events.append(message)
        size += event_size
    batch.next_start = page.scanned_to
    yield batch


@dataclass(eq=False)
class StreamProgress:
    """Where one Subscribe stream is: what it read from the store, what gRPC has taken.

    ``read_to``: the store has been read up to here (exclusive), set as each
    page comes back. ``sent_to``: every batch below here has been written to
    the transport. ``pages_held``: pages read but not yet all written; the
    stream reads the next page only when this is 0, so it never passes 1.
    Tests read these.
    """

    start: int
    read_to: int
    sent_to: int
    pages_held: int = 0


class EventFeedService(feed_pb2_grpc.EventFeedServicer):
    """``feedline.feed.v1.EventFeed`` over a service's event store."""

    def __init__(
        self,
        store: EventStore,
        authorizer: FeedAuthorizer,
        metrics: ServiceMetrics,
        *,
        recheck_seconds: float,
        max_batch_bytes: int = MAX_BATCH_BYTES,
    ) -> None:
        self._store = store
        self._authorizer = authorizer
        self._metrics = metrics
        self._recheck_seconds = recheck_seconds
        self._max_batch_bytes = max_batch_bytes
        # The open Subscribe streams (for tests and debugging).
        self.streams: list[StreamProgress] = []
        # Pages' batches, kept while some stream holds the page (a shared read's
        # page is held by every stream it woke; messages are never changed once built).
        self._built: weakref.WeakKeyDictionary[FeedPage, list[feed_pb2.EventBatch]] = (
            weakref.WeakKeyDictionary()
        )

    async def _authorize(self, context: ServicerContext) -> None:
        authorization = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization" and isinstance(value, str):
                authorization = value
        try:
            await self._authorizer.check(authorization)
        except FeedAuthError as exc:
            code = grpc.StatusCode.UNAUTHENTICATED
            if exc.unavailable:
                code = grpc.StatusCode.UNAVAILABLE
            elif exc.forbidden:
                code = grpc.StatusCode.PERMISSION_DENIED
            await _abort(context, code, exc.detail)

    async def _read(
        self,
        context: ServicerContext,
        subscription: Subscription,
        start: int,
        progress: StreamProgress,
        commits: CommitWatch,
    ) -> FeedPage:
        try:
            # Shared with every stream (and HTTP long poll) asking for this page now.
            page = await self._store.reads.read(
                commits, start, None, subscription.limit, subscription.types
            )
        except Exception as exc:  # the database: down, restarting, unreachable
            log.warning("grpc feed cannot read the event store", error=str(exc))
            await _abort(context, grpc.StatusCode.UNAVAILABLE, "cannot read the event store")
        progress.read_to = page.scanned_to
        progress.pages_held += 1
        return page

    async def Head(  # noqa: N802 (the generated servicer's name)
        self, request: feed_pb2.HeadRequest, context: ServicerContext
    ) -> feed_pb2.HeadResponse:
        await self._authorize(context)
        try:
            head = await self._store.head()
        except Exception as exc:
            log.warning("grpc feed cannot read the head", error=str(exc))
            await _abort(context, grpc.StatusCode.UNAVAILABLE, "cannot read the event store")
        return feed_pb2.HeadResponse(head=head)

    async def Subscribe(  # noqa: N802 (the generated servicer's name)
        self, request: feed_pb2.SubscribeRequest, context: ServicerContext
    ) -> AsyncIterator[feed_pb2.EventBatch]:
        await self._authorize(context)
        try:
            subscription = subscription_from(request)
        except InvalidArgumentError as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        progress = StreamProgress(subscription.start, subscription.start, subscription.start)
        self.streams.append(progress)
        try:
            async with contextlib.aclosing(self._stream(context, subscription, progress)) as stream:
                async for batch in stream:
                    yield batch
        finally:
            self.streams.remove(progress)

    async def _stream(
        self, context: ServicerContext, subscription: Subscription, progress: StreamProgress
    ) -> AsyncGenerator[feed_pb2.EventBatch, None]:
        """Catch up: every page up to the head, the last one even if empty (it tells the
        reader where the head was and where to resume); without ``follow``, that is all.
        Follow: then only batches that hold events, each as soon as its commit is seen."""
        position = subscription.start
        following = False
        while True:
            # Take hold of the commit signal before reading, so that a commit after the
            # read's head wakes the wait below, not the re-check.
            commits = self._store.commits.watch()
            page = await self._read(context, subscription, position, progress, commits)
            if page.count or not following:
                for batch in self._batches(page):
                    # Resumes once gRPC has written the batch: HTTP/2 flow control
                    # holds it while the reader does not read, and so the next read.
                    yield batch
                    progress.sent_to = batch.next_start
                self._metrics.events_served.inc(page.count)
            progress.pages_held -= 1
            position = page.scanned_to
            if page.count == subscription.limit:
                continue  # more at once
            if not subscription.follow:
                return
            # A commit, or the re-check on a beat shared by every follower (multiples
            # of recheck_seconds on the monotonic clock), so that those reads are
            # shared too.
            beat = self._recheck_seconds - time.monotonic() % self._recheck_seconds
            await commits.wait(beat)
            following = True

    def _batches(self, page: FeedPage) -> list[feed_pb2.EventBatch]:
        """The page's batches, built once for all the streams that share the page."""
        built = self._built.get(page)
        if built is None:
            built = list(batches(page, self._max_batch_bytes))
            self._built[page] = built
        return built


async def _abort(context: ServicerContext, code: grpc.StatusCode, details: str) -> NoReturn:
    await context.abort(code, details)
    raise AssertionError("context.abort returned")  # it raises


@dataclass
class GrpcFeedServer:
    """The service's gRPC server: the feed, health and reflection on ``host:port``."""

    feed: EventFeedService
    host: str
    port: int
    _server: grpc.aio.Server | None = None
    _health: health.aio.HealthServicer | None = None

    async def start(self) -> None:
        """Listen (port 0: a free port, then ``port`` says which); raises OSError if it cannot."""
        server = grpc.aio.server(options=SERVER_OPTIONS)
        feed_pb2_grpc.add_EventFeedServicer_to_server(self.feed, server)
        checks = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(checks, server)
        names = (GRPC_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, server)
        address = f"{self.host}:{self.port}"
        cannot = (
            f"cannot listen for gRPC on {address}: the port is in use or the address is not "
            f"this machine's; choose another with --grpc-port ({GRPC_PORT_SETTING})"
        )
        try:
            port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError(cannot) from exc
        if port == 0:  # how older grpcio said it
            raise OSError(cannot)
        await server.start()
        for service in (health.OVERALL_HEALTH, GRPC_SERVICE):
            await checks.set(service, health_pb2.HealthCheckResponse.SERVING)
        self.port, self._server, self._health = port, server, checks
        log.info("grpc feed listening", host=self.host, port=port, service=GRPC_SERVICE)

    async def stop(self) -> None:
        """NOT_SERVING, then stop: calls get STOP_GRACE_SECONDS, followers are cut then."""
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        if self._server is not None:
            started = time.monotonic()
            await self._server.stop(STOP_GRACE_SECONDS)
            log.info("grpc feed stopped", seconds=round(time.monotonic() - started, 3))
        self._server = self._health = None


def create_grpc_feed(
    store: EventStore,
    authorizer: FeedAuthorizer,
    metrics: ServiceMetrics,
    *,
    host: str,
    port: int,
    recheck_seconds: float,
) -> GrpcFeedServer:
    service = EventFeedService(store, authorizer, metrics, recheck_seconds=recheck_seconds)
    return GrpcFeedServer(service, host, port)
