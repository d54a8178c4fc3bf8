"""Reading a service's RabbitMQ stream, with its HTTP feed beside it (docs/transports.md).

The RabbitMQ implementation of :class:`~feedline_subscriber.feed_transport.FeedTransport`,
on rstream (the stream protocol). A service's relay publishes every committed
event, in order, to the stream ``feedline.events.SERVICE``, one message per
event: the body is the event as the HTTP feed serves it, the application
properties repeat its sequence number and name, and stream offset =
sequence number - 1. The run's ``--feed-url`` is then the service's **HTTP
feed**, for two things the stream cannot give:

- **The head.** A page's head is the highest of what the stream has shown
  and the HTTP feed's ``Feed-Head``. The HTTP head is read at the start and
  whenever the stream seems caught up (one request), not per page.
- **What the stream no longer holds.** Retention drops whole segments from
  the old end (and a stream deleted and re-created starts again). When the
  first message the stream gives is above the page's start, the missing
  part is read from the HTTP feed, then the stream goes on.

**One subscription for the run.** The first ``fetch`` subscribes at offset
``start - 1``; later fetches from where the last page ended read on. A
``fetch`` from before the subscription's position (the run reconnected to
its database and read its checkpoint back) subscribes again; messages below
the asked-for start (a chunk may begin before the asked-for offset; a
duplicate) are skipped. The broker sends chunks on credit: ``CREDIT``
chunks ahead, and the callback holds at most ``BUFFER_MESSAGES`` decoded
messages, so a slow projection bounds what is held. Nothing is acknowledged
and no offset is stored: the checkpoint stays the only position.

**Every run progresses while the HTTP feed is up.** A catch-up page that
the stream does not start within ``STALL_SECONDS`` although the head says
it exists (the relay behind, the broker hanging) is read from the HTTP
feed; a broker that cannot be reached at the start of a run is logged and
the run reads over HTTP (a follower tries the broker again with backoff); a
connection lost mid-run reads over HTTP until the broker is back. Wrong
broker credentials fail the run at once, as a 401 does.

**Follow mode**: caught up, a ``fetch`` waits on the stream for up to
``wait`` seconds (the relay pushes each commit within milliseconds), then
reads the HTTP head once and answers an empty page; cancelling it ends the
wait at once. The type filter is applied here, by each message's
``feedline-event-name`` property: the stream holds every event.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import ssl
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import orjson
import structlog
from rstream import (
    AMQPMessage,
    Consumer,
    ConsumerOffsetSpecification,
    MessageContext,
    OffsetType,
    OnClosedErrorInfo,
    amqp_decoder,
)
from rstream import exceptions as rstream_errors
from rstream.recovery import BackOffRecoveryStrategy

from feedline_contracts.broker import EVENT_NAME_PROPERTY, SEQUENCE_NUMBER_PROPERTY, StreamAddress
from feedline_subscriber.feed_client import HttpFeedClient, checked_events
from feedline_subscriber.feed_transport import (
    FIRST_BACKOFF_SECONDS,
    MAX_BACKOFF_SECONDS,
    FeedProtocolError,
    FeedUnavailableError,
    Page,
    PageWords,
    check_page,
    collector_paused,
)

log = structlog.get_logger("feedline.subscriber")

# A page the head says exists but the stream does not start within this long (the
# relay behind, a broker that hangs) is read from the HTTP feed instead.
STALL_SECONDS = 2.0
# Connecting (TCP, authentication, the locator) and subscribing, each.
CONNECT_TIMEOUT_SECONDS = 5.0
# Chunks the broker may send ahead of the one being handed over (stream credit).
CREDIT = 2
# Decoded messages held ahead of the page being built; the broker's delivery waits beyond.
BUFFER_MESSAGES = 1000
# A start this far past the subscription's position subscribes again rather than
# reading (and dropping) every message in between.
SKIP_AHEAD_MAX = 10_000

BROKER_WORDS = PageWords("stream page", "the page's next start", "{}", "the head")

# The broker refused the credential (or the vhost, or reading the stream): fail at once.
REFUSED: tuple[type[Exception], ...] = (
    rstream_errors.AuthenticationFailure,
    rstream_errors.SASLAuthenticationFailureLoopback,
    rstream_errors.SASLError,
    rstream_errors.VirtualHostAccessFailure,
    rstream_errors.AccessRefused,
)


class _Message(NamedTuple):
    offset: int
    sequence_number: int
    name: str
    body: bytes


class _StreamLostError(Exception):
    """The subscription ended (connection lost, stream deleted or moved)."""


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def decode_message(offset: int, message: AMQPMessage) -> _Message:
    """One stream message as the relay writes it; FeedProtocolError if it is not one."""
    properties = {
        _text(key): value for key, value in (message.application_properties or {}).items()
    }
    number = properties.get(SEQUENCE_NUMBER_PROPERTY)
    name = _text(properties.get(EVENT_NAME_PROPERTY))
    if not isinstance(number, int) or isinstance(number, bool) or number < 1:
        raise FeedProtocolError(
            f"the stream's message at offset {offset} has no {SEQUENCE_NUMBER_PROPERTY} "
            f"property that is an integer >= 1 (got {number!r:.50})"
        )
    if not isinstance(name, str) or not name:
        raise FeedProtocolError(
            f"the stream's message at offset {offset} (event {number}) has no "
            f"{EVENT_NAME_PROPERTY} property"
        )
    body = message.body
    if isinstance(body, list):  # one data section per element
        body = b"".join(body)
    if not isinstance(body, bytes | bytearray | memoryview):
        raise FeedProtocolError(
            f"the stream's message at offset {offset} (event {number}) has no data body"
        )
    return _Message(offset, number, name, bytes(body))


@dataclass(eq=False)
class _Subscription:
    """One subscription's messages: decoded by rstream's delivery task, taken by fetch."""

    start: int  # the sequence number it was asked to start at
    position: int  # every sequence number below it has been handed out or skipped
    buffer: deque[_Message | FeedProtocolError] = field(default_factory=deque)
    held: deque[_Message] = field(default_factory=deque)  # taken from buffer, not handed out
    changed: asyncio.Event = field(default_factory=asyncio.Event)  # a message, or the end
    space: asyncio.Event = field(default_factory=asyncio.Event)
    lost: str | None = None  # why it ended
    closed: bool = False
    subscriber_id: int | None = None


class BrokerFeedClient:
    """Reads one service's RabbitMQ stream, with its HTTP feed (``feed_url``) beside it."""

    pages_in_flight = 1

    def __init__(
        self,
        feed_url: str,
        *,
        broker: StreamAddress,
        stream: str,
        event_types: Sequence[str] = (),
        token_file: Path | None = None,
        retry_attempts: int = 8,
        follow: bool = False,
        stall_seconds: float = STALL_SECONDS,
        http: HttpFeedClient | None = None,
    ) -> None:
        self.url = feed_url
        self.broker = broker
        self.stream = stream
        self.event_types = frozenset(event_types)
        self.follow = follow
        self.stall_seconds = stall_seconds
        self.http = http or HttpFeedClient(
            feed_url, event_types=event_types, token_file=token_file, retry_attempts=retry_attempts
        )
        self._consumer: Consumer | None = None
        self._subscription: _Subscription | None = None
        self._lock = asyncio.Lock()  # one fetch at a time reads the subscription
        self._http_head: int | None = None  # the HTTP feed's Feed-Head, last read
        self._stream_high = 0  # the highest sequence number the stream has given
        self._failures = 0  # broker failures in a row (the backoff's exponent)
        self._retry_at = 0.0  # monotonic time before which the broker is not tried again
        self._source: str | None = None  # "stream" or "http": the last page's, for logs
        self._answered = False  # a page was answered (Follow mode waits from then on)
        self._closed = False
        # Events handed out from each source (logged at the end; tests read them).
        self.events_from = {"stream": 0, "http": 0}
        self.subscriptions = 0  # Subscribe requests made (tests read it)

    # -- the transport interface -------------------------------------------------

    async def head(self) -> int:
        async with self._lock:
            await self._refresh_head()
            return self._head_now()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._disconnect()
        await self.http.aclose()
        log.info(
            "broker transport closed",
            broker=self.broker.redacted(),
            stream=self.stream,
            events_from_stream=self.events_from["stream"],
            events_from_http=self.events_from["http"],
            subscriptions=self.subscriptions,
        )

    async def fetch(self, start: int, limit: int, *, wait: float = 0) -> Page:
        """The page of up to ``limit`` events from ``start``: from the stream, or the HTTP feed."""
        async with self._lock:
            fresh = self._http_head is None
            if fresh:
                await self._refresh_head()
            try:
                page = await self._fetch(start, limit, wait, fresh_head=fresh)
            except _StreamLostError as exc:
                await self._broker_failed(f"the subscription ended: {exc}", connecting=False)
                page = await self._over_http(
                    start, limit, wait if start > self._head_now() else 0, "the broker was lost"
                )
            self._answered = True
            return page

    # -- reading -------------------------------------------------------------------

    async def _fetch(self, start: int, limit: int, wait: float, *, fresh_head: bool) -> Page:
        # Follow mode, caught up: the next commit comes through the stream.
        following = wait > 0 or (self.follow and self._answered)
        if not following and start > self._head_now():
            if not fresh_head:  # one head read, unless one was just made
                await self._refresh_head()
            if start > self._head_now():  # caught up: no need of the broker
                return Page(start=start, events=[], next_start=start, head=self._head_now())
        subscription = await self._subscribed_at(start)
        if subscription is None:
            # No broker for now: the HTTP feed (a long poll in Follow mode).
            return await self._over_http(start, limit, wait, "the broker is unavailable")
        if following and start > self._head_now():
            if await self._next_at_or_after(subscription, start, wait or None):
                return await self._from_stream(subscription, start, limit)
            await self._refresh_head()
            if start > self._head_now():
                return Page(start=start, events=[], next_start=start, head=self._head_now())
        # The head says the page exists: the stream gives it within the stall bound, or
        # the HTTP feed does.
        return await self._from_stream(subscription, start, limit)

    async def _from_stream(self, subscription: _Subscription, start: int, limit: int) -> Page:
        """A page from the held messages, reading on while the stream owes more."""
        filtered = bool(self.event_types)
        held = subscription.held
        taken: list[_Message] = []
        scanned = start - 1  # every sequence number up to it was read (kept or left out)
        consumed = 0  # held messages this page uses or skips
        gap: _Message | None = None
        while len(taken) < limit:
            if consumed == len(held) and not subscription.buffer and scanned >= self._head_now():
                break  # at the head: the page ends here
            message = await self._peek(subscription, consumed, self.stall_seconds)
            if message is None:
                break  # the stream gave nothing more within the stall bound
            if message.sequence_number <= scanned:
                consumed += 1  # below the start (a chunk's beginning) or a duplicate
                continue
            if message.sequence_number > scanned + 1:
                gap = message  # the stream no longer holds scanned + 1 (retention)
                break
            consumed += 1
            scanned = message.sequence_number
            if not filtered or message.name in self.event_types:
                taken.append(message)
        if scanned < start:
            for _ in range(consumed):
                held.popleft()
            subscription.position = max(subscription.position, start)
            if gap is not None:
                log.info(
                    "the stream no longer holds these events; reading them from the HTTP feed",
                    stream=self.stream,
                    start=start,
                    stream_resumes_at=gap.sequence_number,
                )
                return await self._over_http(
                    start, min(limit, gap.sequence_number - start), 0, "retention"
                )
            # The relay is behind, or the broker hangs: this page, and the pages until the
            # broker is tried again (the retry policy's backoff), come from the HTTP feed.
            await self._broker_failed(
                f"the stream gave nothing from {start} within {self.stall_seconds:g} s "
                f"although the head is {self._head_now()}",
                connecting=False,
            )
            return await self._over_http(start, limit, 0, "the stream is behind the feed")
        page = self._page(taken, start=start, scanned=scanned)
        for _ in range(consumed):
            held.popleft()
        subscription.position = scanned + 1
        self._count("stream", len(page.events))
        return page

    def _page(self, messages: list[_Message], *, start: int, scanned: int) -> Page:
        filtered = bool(self.event_types)
        with collector_paused():
            try:
                body = [orjson.loads(message.body) for message in messages]
            except orjson.JSONDecodeError as exc:
                raise FeedProtocolError(f"a stream message's body is not JSON ({exc})") from None
            events = checked_events(body, start, filtered)
        for message, event in zip(messages, events, strict=True):
            if (event.sequence_number, event.name) != (message.sequence_number, message.name):
                raise FeedProtocolError(
                    f"the stream's message at offset {message.offset} says event "
                    f"{message.sequence_number} ({message.name}) in its properties but holds "
                    f"event {event.sequence_number} ({event.name})"
                )
        return check_page(
            events,
            start=start,
            filtered=filtered,
            next_start=scanned + 1,
            head=self._head_now(),
            words=BROKER_WORDS,
        )

    async def _next_at_or_after(
        self, subscription: _Subscription, start: int, wait: float | None
    ) -> bool:
        """Wait up to ``wait`` seconds (None: no limit) for a message at or after ``start``."""
        deadline = None if wait is None else time.monotonic() + wait
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            message = await self._peek(subscription, 0, remaining)
            if message is None:
                return False
            if message.sequence_number >= start:
                return True
            subscription.held.popleft()  # below the start: read before, or a duplicate

    async def _peek(
        self, subscription: _Subscription, index: int, within: float | None
    ) -> _Message | None:
        """The ``index``-th held message, waiting up to ``within`` s for it (None: no limit)."""
        deadline = None if within is None else time.monotonic() + within
        held, buffer = subscription.held, subscription.buffer
        while len(held) <= index:
            if buffer:
                item = buffer.popleft()
                subscription.space.set()
                if isinstance(item, FeedProtocolError):
                    raise item
                held.append(item)
                continue
            if subscription.lost is not None:
                raise _StreamLostError(subscription.lost)
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            subscription.changed.clear()
            try:
                async with asyncio.timeout(remaining):
                    await subscription.changed.wait()
            except TimeoutError:
                if not buffer and subscription.lost is None:
                    return None
        return held[index]

    async def _over_http(self, start: int, limit: int, wait: float, reason: str) -> Page:
        if self._source != "http":
            log.warning(
                "reading from the HTTP feed",
                feed=self.url,
                reason=reason,
                start=start,
                broker=self.broker.redacted(),
            )
            self._source = "http"
        page = await self.http.fetch(start, limit, wait=self._until_broker_retry(wait))
        self._http_head = max(self._http_head or 0, page.head)
        self._count("http", len(page.events))
        head = self._head_now()
        if head == page.head:
            return page
        return Page(start=page.start, events=page.events, next_start=page.next_start, head=head)

    def _until_broker_retry(self, wait: float) -> float:
        """A long poll over HTTP ends when the broker is due to be tried again: the
        retry the warning announced happens then, not after the whole ``wait`` (a
        follower that started before the relay created the stream would otherwise
        long-poll the HTTP feed for ``--feed-wait-seconds`` at a time)."""
        if not math.isfinite(self._retry_at):
            return wait
        return min(wait, max(self._retry_at - time.monotonic(), 0.0))

    def _count(self, source: str, events: int) -> None:
        self.events_from[source] += events
        if source == "stream" and self._source != "stream":
            log.info("reading from the stream", stream=self.stream, broker=self.broker.redacted())
            self._source = "stream"

    def _head_now(self) -> int:
        return max(self._http_head or 0, self._stream_high)

    async def _refresh_head(self) -> None:
        """The HTTP feed's head, in one request (a page of at most one event from the last
        head on: it serves an event only when there are new ones)."""
        known = self._http_head or 0
        try:
            page = await self.http.fetch(known + 1, 1)
        except FeedProtocolError:
            if known == 0:
                raise
            page = await self.http.fetch(1, 1)  # the feed's head went back (another store?)
        self._http_head = page.head

    # -- the broker ------------------------------------------------------------------

    async def _subscribed_at(self, start: int) -> _Subscription | None:
        """The subscription to read ``start`` from (subscribing if need be); None: no broker."""
        subscription = self._subscription
        if subscription is not None and (
            start < subscription.position or start - subscription.position > SKIP_AHEAD_MAX
        ):
            await self._unsubscribe()
            subscription = None
        if subscription is not None:
            return subscription
        if time.monotonic() < self._retry_at:
            return None
        connecting = self._consumer is None
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
                if self._consumer is None:
                    self._consumer = self._new_consumer()
                    await self._consumer.start()
                subscription = await self._subscribe(self._consumer, start)
        except REFUSED as exc:
            await self._disconnect()
            raise FeedUnavailableError(
                f"broker {self.broker.redacted()} refused the subscriber "
                f"({type(exc).__name__}): {self._refusal(exc)} "
                "(--broker-url, FEEDLINE_BROKER_URL)"
            ) from None
        except Exception as exc:  # unreachable, stream missing or recovering, timed out
            await self._broker_failed(f"{type(exc).__name__}: {exc}", connecting=connecting)
            return None
        self._failures = 0
        return subscription

    def _refusal(self, exc: Exception) -> str:
        if isinstance(exc, rstream_errors.VirtualHostAccessFailure):
            return f"the user {self.broker.username!r} may not use the vhost {self.broker.vhost!r}"
        if isinstance(exc, rstream_errors.AccessRefused):
            return f"the user {self.broker.username!r} may not read the stream {self.stream}"
        return f"the user {self.broker.username!r} or its password was not accepted"

    def _new_consumer(self) -> Consumer:
        address = self.broker

        async def on_close(info: OnClosedErrorInfo) -> None:
            subscription = self._subscription
            if subscription is not None and self.stream in (info.streams or [self.stream]):
                subscription.lost = info.reason or "closed"
                subscription.changed.set()

        return Consumer(
            address.host,
            address.port,
            username=address.username,
            password=address.password,
            vhost=address.vhost,
            ssl_context=ssl.create_default_context() if address.tls else None,
            connection_name="feedline-subscriber",
            on_close_handler=on_close,
            # A lost subscription is this client's to resume, from the run's own position.
            recovery_strategy=BackOffRecoveryStrategy(enable=False),
        )

    async def _subscribe(self, consumer: Consumer, start: int) -> _Subscription:
        subscription = _Subscription(start=start, position=start)

        async def on_message(message: AMQPMessage, context: MessageContext) -> None:
            if subscription.closed:
                return
            item: _Message | FeedProtocolError
            try:
                decoded = decode_message(context.offset, message)
            except FeedProtocolError as exc:
                item = exc
            else:
                self._stream_high = max(self._stream_high, decoded.sequence_number)
                item = decoded
            while len(subscription.buffer) >= BUFFER_MESSAGES and not subscription.closed:
                subscription.space.clear()
                await subscription.space.wait()  # the broker's next chunk waits for credit
            subscription.buffer.append(item)
            subscription.changed.set()

        self._subscription = subscription
        self.subscriptions += 1
        subscription.subscriber_id = await consumer.subscribe(
            self.stream,
            on_message,
            decoder=amqp_decoder,
            offset_specification=ConsumerOffsetSpecification(OffsetType.OFFSET, start - 1),
            initial_credit=CREDIT,
        )
        return subscription

    async def _unsubscribe(self) -> None:
        subscription, self._subscription = self._subscription, None
        if subscription is None:
            return
        subscription.closed = True
        subscription.space.set()
        consumer = self._consumer
        if consumer is None or subscription.subscriber_id is None or subscription.lost:
            await self._disconnect()
            return
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
                await consumer.unsubscribe(subscription.subscriber_id)
        except Exception:  # a consumer that cannot unsubscribe is replaced
            await self._disconnect()

    async def _disconnect(self) -> None:
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            subscription.closed = True
            subscription.space.set()
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(consumer.close(), CONNECT_TIMEOUT_SECONDS)

    async def _broker_failed(self, error: str, *, connecting: bool) -> None:
        """Read over HTTP until the broker is tried again: not in this run when a CronJob
        run cannot connect; else after the retry policy's backoff."""
        await self._disconnect()
        if connecting and not self.follow:
            self._retry_at = math.inf
            retry = "not in this run"
        else:
            delay = min(MAX_BACKOFF_SECONDS, FIRST_BACKOFF_SECONDS * 2**self._failures)
            delay *= random.uniform(0.5, 1.0)  # jitter
            self._failures += 1
            self._retry_at = time.monotonic() + delay
            retry = f"in {delay:.1f} s"
        log.warning(
            "cannot read the broker's stream; reading from the HTTP feed",
            broker=self.broker.redacted(),
            stream=self.stream,
            feed=self.url,
            error=error[:300],
            retry=retry,
        )
        self._source = "http"
