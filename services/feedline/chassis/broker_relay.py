"""The broker relay: the event store, published to a RabbitMQ stream (docs/transports.md).

The event store is the source of truth and the outbox. When a service's
settings name a broker (``FEEDLINE_BROKER_URL=rabbitmq-stream://...``), a
background task publishes its committed events, in sequence order, to the
service's stream (``feedline_contracts.broker.stream_name``), one message per
event: the body is the event as the HTTP feed serves it, the application
properties carry its sequence number and name.

- **Resume point.** Every message's publishing id is its sequence number,
  under one publisher reference (``PUBLISHER_REFERENCE``). On each
  connection the relay asks the broker for the last publishing id it stored
  for that reference and goes on from the next one: the broker's own record
  is the position, nothing is kept beside the event store. Deduplication
  makes the broker drop a message whose id it already holds, so a page sent
  again after a crash or a lost confirm is not stored twice.
- **At least once, in order, no gap.** A page is read from the store (from
  the resume point, oldest first, checked gap-free), sent, and the next page
  is read only when the broker has confirmed every message of this one. Any
  failure (no broker, a lost connection, a refused or unconfirmed message)
  closes the connection; the relay connects again with backoff (0.1 s
  doubling to 5 s, with jitter) and resumes from what the broker holds.
- **Wake-up.** Caught up, it waits for the store's commit signal (the one
  that wakes long polls, fed across replicas by PostgreSQL's NOTIFY), and
  re-reads every ``FEEDLINE_LONG_POLL_RECHECK_SECONDS`` as a safety net.
- **One relay per store.** On PostgreSQL the replicas of a service elect the
  one that relays with a session advisory lock; the others wait for it. (Two
  at once would still store each event once: deduplication.)

The relay never holds up the service: it starts in the background, and a
broker that is down only delays the stream; the HTTP and gRPC feeds serve
from the store as ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog
from prometheus_client import Counter, Gauge
from rstream import (
    AMQPMessage,
    ConfirmationStatus,
    OnClosedErrorInfo,
    Producer,
    Properties,
    RawMessage,
)
from rstream.exceptions import PreconditionFailed
from rstream.recovery import BackOffRecoveryStrategy
from sqlalchemy import select

from feedline.chassis.eventstore import EventStore, events
from feedline.chassis.metrics import ServiceMetrics
from feedline_contracts.broker import (
    CONTENT_TYPE,
    EVENT_NAME_PROPERTY,
    PUBLISHER_REFERENCE,
    SEQUENCE_NUMBER_PROPERTY,
    StreamAddress,
    stream_name,
)

log = structlog.get_logger("feedline.broker")

# Events read from the store per page (one page is sent, then confirmed, then the next).
PAGE_SIZE = 1000
# The largest frame the relay asks for; the broker's `stream.frame_max` (1 MiB by
# default) caps it. A page is sent as as many Publish frames as it takes, and one
# event must fit in one frame.
FRAME_MAX = 64 * 1024 * 1024
_FRAME_OVERHEAD = 13  # a Publish frame's header (rstream: _PUBLISH_FRAME_OVERHEAD)
_MESSAGE_OVERHEAD = 12  # per message: publishing id and length
# The broker must confirm a page within this long, or the connection is given up.
CONFIRM_TIMEOUT_SECONDS = 30.0
CONNECT_TIMEOUT_SECONDS = 10.0
# Reconnecting: the first wait, and the most.
BACKOFF_FIRST_SECONDS = 0.1
BACKOFF_MAX_SECONDS = 5.0
# The advisory lock (session level) held by the replica that relays ("feedrela" in ASCII).
RELAY_LOCK_KEY = 0x6665656472656C61
LOCK_RETRY_SECONDS = 2.0


class RelayError(RuntimeError):
    """The broker refused, did not confirm, or went away; the relay reconnects."""


class EventTooLargeError(RelayError):
    """An event does not fit in one Publish frame: the relay cannot pass it."""


@dataclass(frozen=True)
class StoredEvent:
    sequence_number: int
    name: str
    body: bytes  # the event as the HTTP feed serves it


@dataclass
class RelayProgress:
    """Where the relay is (for tests, logs and metrics)."""

    # The highest sequence number the broker has confirmed (or held when the relay resumed).
    confirmed: int = 0
    connected: bool = False
    # Where each connection resumed (the broker's last stored sequence number + 1), the
    # last 100.
    resumed_from: list[int] = field(default_factory=list)
    # Whether this replica holds the relay's lock (always, on SQLite).
    elected: bool = False


def stream_arguments(
    *, max_age: str | None, max_length_bytes: int | None, max_segment_size_bytes: int | None
) -> dict[str, Any]:
    """The stream's retention, as RabbitMQ's stream arguments (applied when it is created)."""
    arguments: dict[str, Any] = {}
    if max_age:
        arguments["max-age"] = max_age
    if max_length_bytes:
        arguments["max-length-bytes"] = max_length_bytes
    if max_segment_size_bytes:
        arguments["stream-max-segment-size-bytes"] = max_segment_size_bytes
    return arguments


def amqp_message(event: StoredEvent) -> RawMessage:
    """One event as an AMQP 1.0 message, encoded once; its publishing id is its sequence number."""
    message = AMQPMessage(
        body=event.body,
        properties=Properties(content_type=CONTENT_TYPE),
        application_properties={
            SEQUENCE_NUMBER_PROPERTY: event.sequence_number,
            EVENT_NAME_PROPERTY: event.name,
        },
    )
    return RawMessage(bytes(message), publishing_id=event.sequence_number)


def frames(messages: Sequence[RawMessage], frame_max: int) -> list[list[RawMessage]]:
    """Messages grouped into Publish frames of at most ``frame_max`` bytes, in order.

    A message too big for any frame (``too_big``) goes alone, and the broker refuses it.
    """
    groups: list[list[RawMessage]] = []
    size = _FRAME_OVERHEAD
    for message in messages:
        message_size = _MESSAGE_OVERHEAD + len(message.data)
        if not groups or size + message_size > frame_max:
            groups.append([])
            size = _FRAME_OVERHEAD
        groups[-1].append(message)
        size += message_size
    return groups


def too_big(message: RawMessage, frame_max: int) -> bool:
    return _FRAME_OVERHEAD + _MESSAGE_OVERHEAD + len(message.data) > frame_max


class _Confirms:
    """The broker's answers for the messages of one page."""

    def __init__(self, ids: Sequence[int]) -> None:
        self.pending = set(ids)
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def __call__(self, status: ConfirmationStatus) -> None:
        if self.done.done():
            return
        if not status.is_confirmed:
            code = status.response_code
            why = "the connection was lost" if code < 0 else f"response code {code}"
            self.done.set_exception(
                RelayError(f"the broker did not store event {status.message_id} ({why})")
            )
            return
        self.pending.discard(status.message_id)
        if not self.pending:
            self.done.set_result(None)


class RelayMetrics:
    def __init__(self, metrics: ServiceMetrics) -> None:
        registry = metrics.registry
        self.confirmed = Gauge(
            "feedline_broker_relay_confirmed_sequence",
            "The highest sequence number the broker has confirmed",
            registry=registry,
        )
        self.connected = Gauge(
            "feedline_broker_relay_connected",
            "1 while the relay is connected to the broker",
            registry=registry,
        )
        self.published = Counter(
            "feedline_broker_relay_events_published",
            "Events sent to the broker (and confirmed); a resend counts again",
            registry=registry,
        )
        self.failures = Counter(
            "feedline_broker_relay_failures",
            "Connections to the broker that failed or were lost",
            registry=registry,
        )


class BrokerRelay:
    """Publishes ``store``'s committed events to ``service``'s stream, at least once."""

    def __init__(
        self,
        store: EventStore,
        service: str,
        address: StreamAddress,
        *,
        recheck_seconds: float,
        arguments: Mapping[str, Any] | None = None,
        metrics: ServiceMetrics | None = None,
        page_size: int = PAGE_SIZE,
        lock_dsn: str | None = None,
    ) -> None:
        self._store = store
        self._address = address
        self._recheck_seconds = recheck_seconds
        self._arguments = dict(arguments or {})
        self._page_size = page_size
        self._lock_dsn = lock_dsn
        self._metrics = RelayMetrics(metrics) if metrics is not None else None
        self.service = service
        self.stream = stream_name(service)
        self.progress = RelayProgress()
        self._task: asyncio.Task[None] | None = None
        self._retention_warned = False

    async def start(self) -> None:
        """Start relaying in the background; does not wait for the broker."""
        self._task = asyncio.create_task(self._run(), name=f"feedline-broker-relay-{self.service}")

    async def stop(self) -> None:
        """Stop at once; the next relay resumes from what the broker stored."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._set_connected(False)

    async def _run(self) -> None:
        if self._lock_dsn is None:
            self.progress.elected = True
            await self._relay()
        else:
            await self._elected(self._relay)

    async def _elected(self, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``work`` while this replica holds the relay's advisory lock; wait for it else.

        The lock is a session lock on a connection of its own: it goes with the
        connection (a replica that dies or loses its database frees it), and
        losing it stops ``work``.
        """
        assert self._lock_dsn is not None
        waiting_logged = False
        while True:
            try:
                connection = await asyncpg.connect(self._lock_dsn, timeout=CONNECT_TIMEOUT_SECONDS)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                log.warning("broker relay cannot reach the database for its lock", error=str(exc))
                await asyncio.sleep(LOCK_RETRY_SECONDS)
                continue
            try:
                lost = asyncio.Event()
                connection.add_termination_listener(lambda _conn, lost=lost: lost.set())
                lock = "SELECT pg_try_advisory_lock($1)"
                while not await connection.fetchval(lock, RELAY_LOCK_KEY):
                    if not waiting_logged:
                        log.info("broker relay: another replica relays; this one waits")
                        waiting_logged = True
                    await asyncio.sleep(LOCK_RETRY_SECONDS)
                waiting_logged = False
                self.progress.elected = True
                log.info("broker relay: this replica relays", stream=self.stream)
                working = asyncio.create_task(work())
                losing = asyncio.create_task(lost.wait())
                try:
                    await asyncio.wait({working, losing}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for task in (working, losing):
                        task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await working
                    self.progress.elected = False
                    self._set_connected(False)
                log.warning("broker relay lost its database lock; waiting to be elected again")
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("broker relay's lock connection failed", error=str(exc))
                await asyncio.sleep(LOCK_RETRY_SECONDS)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(connection.close(), 2)

    async def _relay(self) -> None:
        """Connections, one after another: each resumes where the broker's stream ends."""
        failures = 0
        while True:
            confirmed_before = self.progress.confirmed
            try:
                await self._connection()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._set_connected(False)
                if self._metrics is not None:
                    self._metrics.failures.inc()
                if self.progress.confirmed > confirmed_before:
                    failures = 0  # it got on: start the backoff again
                delay = min(BACKOFF_MAX_SECONDS, BACKOFF_FIRST_SECONDS * 2**failures)
                delay *= random.uniform(0.5, 1.0)
                failures += 1
                (log.error if isinstance(exc, EventTooLargeError) else log.warning)(
                    "broker relay: cannot publish; retrying",
                    broker=self._address.redacted(),
                    stream=self.stream,
                    error=f"{type(exc).__name__}: {exc}",
                    confirmed=self.progress.confirmed,
                    delay=round(delay, 2),
                )
                await asyncio.sleep(delay)

    def _producer(self, lost: asyncio.Event) -> Producer:
        def on_close(info: OnClosedErrorInfo) -> None:
            lost.set()

        address = self._address
        return Producer(
            address.host,
            address.port,
            ssl_context=ssl.create_default_context() if address.tls else None,
            vhost=address.vhost,
            username=address.username,
            password=address.password,
            frame_max=FRAME_MAX,
            connection_name=f"feedline-relay {self.service}",
            on_close_handler=on_close,
            # This relay reconnects itself, from the broker's record: no recovery of rstream's.
            recovery_strategy=BackOffRecoveryStrategy(enable=False),
        )

    async def _connection(self) -> None:
        """One connection: create the stream if need be, resume, publish until it fails."""
        lost = asyncio.Event()
        producer = self._producer(lost)
        try:
            await asyncio.wait_for(producer.start(), CONNECT_TIMEOUT_SECONDS)
            await self._create_stream(producer)
            client = await producer.default_client
            # As negotiated with the broker: the smaller of ours and its stream.frame_max.
            frame_max = client.frame_max if 0 < client.frame_max <= FRAME_MAX else FRAME_MAX
            stored = await asyncio.wait_for(
                client.query_publisher_sequence(self.stream, PUBLISHER_REFERENCE),
                CONNECT_TIMEOUT_SECONDS,
            )
            position = stored + 1
            self.progress.resumed_from = [*self.progress.resumed_from[-99:], position]
            self._set_confirmed(stored)
            self._set_connected(True)
            head = await self._store.head()
            log.info(
                "broker relay connected",
                broker=self._address.redacted(),
                stream=self.stream,
                resume_from=position,
                head=head,
            )
            if stored > head:
                log.error(
                    "broker relay: the stream holds events past this event store's head; the "
                    "broker drops events it already holds, so events up to the stream's last "
                    "one are not published again. Was the database restored or replaced? "
                    "Delete the stream to publish this store afresh.",
                    stream=self.stream,
                    stream_last=stored,
                    head=head,
                )
            await self._publish_from(producer, position, lost, frame_max)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.close(), 5)

    async def _create_stream(self, producer: Producer) -> None:
        """Create the stream with the settings' retention, unless it exists (with any)."""
        try:
            await asyncio.wait_for(
                producer.create_stream(self.stream, self._arguments, exists_ok=True),
                CONNECT_TIMEOUT_SECONDS,
            )
        except PreconditionFailed:
            # It exists with other arguments: the retention it was created with (or a
            # policy) rules; the settings apply to a stream the relay creates.
            if not self._retention_warned:
                log.warning(
                    "broker relay: the stream exists with another retention than the settings "
                    "give; it keeps its own (change it with a RabbitMQ policy)",
                    stream=self.stream,
                    settings=self._arguments,
                )
                self._retention_warned = True

    async def _publish_from(
        self, producer: Producer, position: int, lost: asyncio.Event, frame_max: int
    ) -> None:
        while True:
            if lost.is_set():
                raise RelayError("the connection to the broker was lost")
            # Take hold of the commit signal before reading: a commit after the
            # read wakes the wait below, not the re-check.
            woken = asyncio.create_task(self._store.commits.wait(self._recheck_seconds))
            losing = asyncio.create_task(lost.wait())
            await asyncio.sleep(0)
            try:
                page = await self._read(position)
                if page:
                    position = await self._publish(producer, page, lost, frame_max) + 1
                    continue
                await asyncio.wait({woken, losing}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                woken.cancel()
                losing.cancel()

    async def _read(self, position: int) -> list[StoredEvent]:
        """Up to a page of events from ``position``, oldest first, stopping at any gap.

        Appends are serialised and numbered in commit order, so what a read sees
        from ``position`` is gap-free; the check keeps a gap from ever reaching
        the stream should that change.
        """
        column = events.c
        query = (
            select(column.sequence_number, column.name, column.event_json)
            .where(column.sequence_number >= position)
            .order_by(column.sequence_number)
            .limit(self._page_size)
        )
        async with self._store.database.engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        page = []
        expected = position
        for number, name, body in rows:
            if number != expected:
                break
            page.append(StoredEvent(number, name, body.encode()))
            expected += 1
        return page

    async def _publish(
        self, producer: Producer, page: Sequence[StoredEvent], lost: asyncio.Event, frame_max: int
    ) -> int:
        """Send a page and wait until the broker has confirmed all of it; the last one sent.

        The page is cut before an event bigger than a frame (which goes nowhere)."""
        messages = [amqp_message(event) for event in page]
        # One event bigger than a frame stops the relay there: the events before it go.
        fits = next((i for i, m in enumerate(messages) if too_big(m, frame_max)), len(messages))
        if fits == 0:
            raise EventTooLargeError(
                f"event {page[0].sequence_number} takes {len(messages[0].data)} bytes, more "
                f"than a frame holds ({frame_max} bytes, the broker's stream.frame_max): the "
                "relay cannot publish it, nor any event after it, until stream.frame_max is raised"
            )
        page, messages = page[:fits], messages[:fits]
        confirms = _Confirms([event.sequence_number for event in page])
        started = time.monotonic()
        for frame in frames(messages, frame_max):
            await producer.send_batch(
                self.stream, frame, publisher_name=PUBLISHER_REFERENCE, on_publish_confirm=confirms
            )
        losing: asyncio.Future[Any] = asyncio.create_task(lost.wait())
        try:
            await asyncio.wait(
                {confirms.done, losing},
                timeout=CONFIRM_TIMEOUT_SECONDS,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            losing.cancel()
        if not confirms.done.done():
            confirms.done.cancel()
            if lost.is_set():
                raise RelayError("the connection to the broker was lost before it confirmed")
            raise RelayError(
                f"the broker confirmed no page within {CONFIRM_TIMEOUT_SECONDS:.0f}s "
                f"({len(confirms.pending)} of {len(page)} events unconfirmed)"
            )
        confirms.done.result()  # raises if the broker refused one
        self._set_confirmed(page[-1].sequence_number)
        if self._metrics is not None:
            self._metrics.published.inc(len(page))
        log.debug(
            "broker relay published",
            first=page[0].sequence_number,
            last=page[-1].sequence_number,
            seconds=round(time.monotonic() - started, 3),
        )
        return page[-1].sequence_number

    def _set_confirmed(self, sequence_number: int) -> None:
        self.progress.confirmed = sequence_number
        if self._metrics is not None:
            self._metrics.confirmed.set(sequence_number)

    def _set_connected(self, connected: bool) -> None:
        self.progress.connected = connected
        if self._metrics is not None:
            self._metrics.connected.set(1 if connected else 0)
