"""Reading the gRPC event feed, ``feedline.feed.v1.EventFeed`` (docs/transports.md).

The gRPC implementation of :class:`~feedline_subscriber.feed_transport.FeedTransport`,
on grpc.aio and the generated stubs (``feedline_contracts.feed_v1``).
``grpc://HOST[:PORT]`` is plaintext HTTP/2 (the port defaults to 9090, the
port a service's pod gives the feed); ``grpcs://HOST[:PORT]`` is TLS (port
443 by default), checked against the system's roots or the file named by
``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH``.

**One stream for the run.** The first ``fetch`` opens ``Subscribe(start,
limit, types, follow)`` (``follow`` in Follow mode) and each batch of it is
one page; the next ``fetch`` from where the last batch ended reads the
stream's next batch. A task reads the stream into a queue of one batch, so
the subscriber is at most that batch (plus what gRPC buffers) ahead of what
it applies, and HTTP/2 flow control holds the server back while it writes.
A ``fetch`` from anywhere else (the run reconnected to its database and read
its checkpoint back), or with another ``limit`` (the last page of
``--max-events-per-run``), ends the stream and opens one from there. So the
page stream asks for one page at a time (``pages_in_flight`` 1): the stream
itself is the read-ahead.

**Follow mode** keeps the stream open: once it has caught up, the server
sends each commit as it happens. A ``fetch`` that waits there answers an
empty page after ``wait`` seconds (the run refreshes its status) and keeps
the stream; cancelling it (SIGTERM) ends the wait at once.

**Errors.** ``UNAVAILABLE``, ``DEADLINE_EXCEEDED``, ``RESOURCE_EXHAUSTED``
and ``CANCELLED`` (a server that stops cuts its streams), and a stream that
sends nothing for ``timeout_seconds`` while it is not caught up, are
transient: the stream is opened again from the page's start after the
feed's retry policy's wait, ``--feed-retry-attempts`` times, then the run
fails. ``UNAUTHENTICATED`` and ``PERMISSION_DENIED`` fail at once as an HTTP
401/403 does (``refused the subscriber``); any other status fails at once
naming the feed. Every batch passes the same checks as an HTTP page.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import grpc
import orjson
import structlog
from httpx_retries import Retry

from feedline_contracts.feed import GRPC_PORT
from feedline_contracts.feed_v1 import feed_pb2, feed_pb2_grpc
from feedline_contracts.subscriber_env import GRPCS_DEFAULT_PORT
from feedline_subscriber.feed_transport import (
    Event,
    FeedProtocolError,
    FeedUnavailableError,
    Page,
    PageWords,
    check_page,
    check_sequence,
    collector_paused,
    feed_retry,
    new_event,
    read_token,
    sequence_is_valid,
)

if TYPE_CHECKING:
    from feedline_contracts.feed_v1.feed_pb2_grpc import EventFeedAsyncStub

log = structlog.get_logger("feedline.subscriber")

StatusCode = grpc.StatusCode
# Retried with the feed's retry policy; CANCELLED is how a stopping server cuts a stream.
TRANSIENT = frozenset(
    {
        StatusCode.UNAVAILABLE,
        StatusCode.DEADLINE_EXCEEDED,
        StatusCode.RESOURCE_EXHAUSTED,
        StatusCode.CANCELLED,
    }
)
# The credential was refused: as HTTP 401/403, the run fails at once.
REFUSED = frozenset({StatusCode.UNAUTHENTICATED, StatusCode.PERMISSION_DENIED})

CHANNEL_OPTIONS: Sequence[tuple[str, int | str]] = (
    # A follower's stream is quiet between commits: ping after 30 s without
    # traffic, give up on the connection when no answer comes within 10 s (the
    # server allows a ping every 10 s), and keep pinging while it stays quiet.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    # Reconnect as the feed's retry policy waits (gRPC's own backoff reaches
    # 120 s, which would outlast --feed-retry-attempts).
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.min_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 10_000),
    # Batches are at most 1 MiB, but one bigger event travels alone: take any
    # size, as the HTTP client takes any page.
    ("grpc.max_receive_message_length", -1),
    ("grpc.primary_user_agent", "feedline-subscriber"),
)

GRPC_WORDS = PageWords("batch", "the batch's next_start", "{}", "the batch's head")


def grpc_target(feed_url: str) -> tuple[str, bool]:
    """``host:port`` to dial, and whether to use TLS, from a checked grpc(s):// URL."""
    parts = urlsplit(feed_url)
    secure = parts.scheme.lower() == "grpcs"
    host = parts.hostname or ""
    port = parts.port or (GRPCS_DEFAULT_PORT if secure else GRPC_PORT)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}", secure


def _event(index: int, item: feed_pb2.Event) -> Event:
    number = item.sequence_number
    if number < 1:
        raise FeedProtocolError(f"event #{index}: sequence_number must be >= 1, got {number}")
    if not item.occurred_at:
        raise FeedProtocolError(f"event {number}: occurred_at must be set")
    if not item.name:
        raise FeedProtocolError(f"event {number}: name must be a non-empty string")
    try:
        content = orjson.loads(item.content)
    except orjson.JSONDecodeError as exc:
        raise FeedProtocolError(
            f"event {number}: content is not JSON ({exc}): {item.content[:100]!r}"
        ) from None
    if not isinstance(content, dict):
        raise FeedProtocolError(
            f"event {number}: content must be a JSON object, got {content!r:.50}"
        )
    traceparent = item.traceparent if item.HasField("traceparent") else None
    return Event(number, item.occurred_at, item.name, content, traceparent or None)


def batch_page(batch: feed_pb2.EventBatch, *, start: int, limit: int, filtered: bool) -> Page:
    """Check one EventBatch as the HTTP client checks a page, and make it a Page.

    Column by column first (C-level ``map``/``set``, one ``orjson.loads`` per
    content); only when that fails, event by event, naming the first bad one.
    """
    items = batch.events
    if len(items) > limit:
        raise FeedProtocolError(f"batch has {len(items)} events, more than the limit {limit}")
    if batch.head < 0:
        raise FeedProtocolError(f"the batch's head is negative: {batch.head}")
    with collector_paused():
        numbers = [item.sequence_number for item in items]
        occurred_at = [item.occurred_at for item in items]
        names = [item.name for item in items]
        # Optional: unset (and empty) is None.
        traceparents = [item.traceparent or None for item in items]
        try:
            contents: list[Any] | None = list(map(orjson.loads, [item.content for item in items]))
        except orjson.JSONDecodeError:
            contents = None
        if (
            contents is None
            or set(map(type, contents)) - {dict}
            or "" in names
            or "" in occurred_at
            or not sequence_is_valid(numbers, start, filtered)
        ):
            events = [_event(index, item) for index, item in enumerate(items)]
            check_sequence(events, start, filtered)
        else:
            events = list(
                map(
                    new_event, zip(numbers, occurred_at, names, contents, traceparents, strict=True)
                )
            )
    return check_page(
        events,
        start=start,
        filtered=filtered,
        next_start=batch.next_start,
        head=batch.head,
        words=GRPC_WORDS,
    )


SubscribeCall = grpc.aio.UnaryStreamCall[feed_pb2.SubscribeRequest, feed_pb2.EventBatch]
# What the reading task hands over: a batch, the end of the stream (None), or why it broke.
Item = feed_pb2.EventBatch | BaseException | None


@dataclass(eq=False)
class _Stream:
    """One open ``Subscribe`` call and the task that reads it, a batch ahead at most."""

    call: SubscribeCall
    limit: int
    next_start: int  # where the next batch handed out starts
    head: int | None = None  # the head of the last batch handed out
    batches: int = 0  # batches handed out
    items: asyncio.Queue[Item] = field(default_factory=lambda: asyncio.Queue(maxsize=1))
    reader: asyncio.Task[None] | None = None

    def start_reading(self) -> None:
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                batch = await self.call.read()
                if not isinstance(batch, feed_pb2.EventBatch):  # grpc.aio.EOF: ended with OK
                    await self.items.put(None)
                    return
                await self.items.put(batch)  # waits while the previous one is unread
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # grpc.aio.AioRpcError: the status that ended the stream
            await self.items.put(exc)

    @property
    def caught_up(self) -> bool:
        """The last batch reached the head: nothing more comes until a commit."""
        return self.head is not None and self.next_start > self.head

    async def close(self) -> None:
        self.call.cancel()
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(BaseException):
                await self.reader


class GrpcFeedClient:
    """Reads pages from one gRPC feed, e.g. ``grpc://special-offers:9090``."""

    pages_in_flight = 1

    def __init__(
        self,
        feed_url: str,
        *,
        event_types: Sequence[str] = (),
        token_file: Path | None = None,
        retry_attempts: int = 8,
        follow: bool = False,
        timeout_seconds: float = 30.0,
        root_certificates: bytes | None = None,
    ) -> None:
        self.url = feed_url
        self.event_types = tuple(event_types)
        self.token_file = token_file
        self.retry_attempts = retry_attempts
        self.follow = follow
        self.timeout_seconds = timeout_seconds
        self.target, self.secure = grpc_target(feed_url)
        self._root_certificates = root_certificates  # grpcs: None is the system's roots
        self._channel: grpc.aio.Channel | None = None
        self._stub: EventFeedAsyncStub | None = None
        self._stream: _Stream | None = None
        self._lock = asyncio.Lock()  # one fetch at a time reads the stream
        self.streams_opened = 0  # Subscribe calls made (tests read it)

    def _feed(self) -> EventFeedAsyncStub:
        if self._stub is None:
            if self.secure:
                credentials = grpc.ssl_channel_credentials(self._root_certificates)
                self._channel = grpc.aio.secure_channel(
                    self.target, credentials, options=CHANNEL_OPTIONS
                )
            else:
                self._channel = grpc.aio.insecure_channel(self.target, options=CHANNEL_OPTIONS)
            self._stub = feed_pb2_grpc.EventFeedStub(self._channel)
        return self._stub

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        token = read_token(self.token_file)  # read again for each call: rotated tokens
        return () if token is None else (("authorization", f"Bearer {token}"),)

    async def aclose(self) -> None:
        await self._drop_stream()
        if self._channel is not None:
            await self._channel.close()
        self._channel = self._stub = None

    async def head(self) -> int:
        retry = feed_retry(self.retry_attempts)
        while True:
            try:
                answer = await self._feed().Head(
                    feed_pb2.HeadRequest(), metadata=self._metadata(), timeout=self.timeout_seconds
                )
            except grpc.aio.AioRpcError as exc:
                retry = await self._retry(exc.code(), exc.details() or "", retry, "Head")
                continue
            if answer.head < 0:
                raise FeedProtocolError(f"feed {self.url} answered a negative head {answer.head}")
            return answer.head

    async def fetch(self, start: int, limit: int, *, wait: float = 0) -> Page:
        """The next batch of the stream from ``start`` (opening one from there if need be)."""
        async with self._lock:
            retry = feed_retry(self.retry_attempts)
            while True:
                stream = await self._stream_from(start, limit)
                # Caught up on a follow stream, nothing comes before a commit: wait
                # `wait` (0: as long as it takes). Else a batch is due at once.
                waiting = self.follow and stream.caught_up
                try:
                    async with asyncio.timeout((wait or None) if waiting else self.timeout_seconds):
                        item = await stream.items.get()
                except TimeoutError:
                    if waiting:
                        assert stream.head is not None
                        return Page(start=start, events=[], next_start=start, head=stream.head)
                    await self._drop_stream()
                    retry = await self._retry(
                        StatusCode.DEADLINE_EXCEEDED,
                        f"no batch within {self.timeout_seconds:g} s",
                        retry,
                        f"Subscribe from start={start}",
                    )
                    continue
                if isinstance(item, feed_pb2.EventBatch):
                    try:
                        page = batch_page(
                            item, start=start, limit=limit, filtered=bool(self.event_types)
                        )
                    except FeedProtocolError:
                        await self._drop_stream()  # its next batch would not start at `start`
                        raise
                    stream.next_start, stream.head = page.next_start, page.head
                    stream.batches += 1
                    return page
                await self._drop_stream()
                if item is None:  # the stream ended (at the head, without follow)
                    if stream.batches == 0:
                        raise FeedProtocolError(
                            f"feed {self.url} ended a Subscribe stream from start={start} "
                            "without a batch"
                        )
                    continue  # asked for more: a new stream from here
                if not isinstance(item, grpc.aio.AioRpcError):
                    raise FeedProtocolError(
                        f"feed {self.url}: cannot read the stream: {type(item).__name__}: {item}"
                    )
                retry = await self._retry(
                    item.code(), item.details() or "", retry, f"Subscribe from start={start}"
                )

    async def _stream_from(self, start: int, limit: int) -> _Stream:
        stream = self._stream
        if stream is not None and (stream.next_start != start or stream.limit != limit):
            await self._drop_stream()
            stream = None
        if stream is None:
            request = feed_pb2.SubscribeRequest(
                start=start, limit=limit, types=self.event_types, follow=self.follow
            )
            # No deadline: a follow stream is meant to stay open; a stream that
            # goes quiet while it owes a batch is timed out by fetch.
            call = self._feed().Subscribe(request, metadata=self._metadata())
            stream = _Stream(call, limit, start)
            stream.start_reading()
            self._stream = stream
            self.streams_opened += 1
        return stream

    async def _drop_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            await stream.close()

    async def _retry(self, code: StatusCode, details: str, retry: Retry, call: str) -> Retry:
        """Wait before trying again (the policy's next wait), or raise what the status means."""
        if code in REFUSED:
            raise FeedUnavailableError(
                f"feed {self.url} refused the subscriber ({code.name}): {details}"
            )
        if code not in TRANSIENT:
            raise FeedProtocolError(f"feed {self.url} answered {code.name} to {call}: {details}")
        if retry.is_exhausted():
            raise FeedUnavailableError(
                f"feed {self.url} unreachable after {retry.total} retries: {code.name}: {details}"
            )
        retry = retry.increment()
        log.warning(
            "feed call failed; retrying",
            feed=self.url,
            call=call,
            status=code.name,
            details=details[:200],
            retry=retry.attempts_made,
            retries_allowed=retry.total,
        )
        await retry.asleep(FeedUnavailableError(details))
        return retry
