"""The event store: an append-only, gap-free log of a service's events.

Events are appended inside the caller's own transaction, so a command's data
and its events commit together or not at all. Sequence numbers start at 1 and
follow commit order with no gaps: appends are serialised (PostgreSQL: a
transaction-scoped advisory lock; SQLite: ``BEGIN IMMEDIATE``), so a reader
that has seen sequence K never later finds a new event below K. Readers rely on
that: every event at or below the head is committed and visible.

Appends must run at READ COMMITTED (PostgreSQL's default); the number is taken
after the lock, so it sees the previous writer's commit.

Trace context: each event records the ``traceparent`` of the span that appended
it (inside a request: the request's trace; docs/architecture.md, "Telemetry"),
in the ``traceparent`` column and as the optional ``traceparent`` field of its
rendered JSON, so every transport serves it. An append outside any span (a
start-up seed, a script) records none. With telemetry on, the append runs in a
span of its own (``eventstore.append``, a child of the request's), and that
span's context is the one recorded. Databases made before the column existed
get it at start-up (``upgrade_event_store``); their old events have none.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from opentelemetry.trace import Tracer
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    LargeBinary,
    MetaData,
    Table,
    Text,
    func,
    insert,
    literal_column,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from feedline.chassis.notifications import CommitSignal
from feedline.chassis.shared_reads import SharedReads
from feedline_contracts.database import Database
from feedline_contracts.feed import EVENT_NAME_PATTERN
from feedline_contracts.telemetry import Telemetry, traceparent_of

NOTIFY_CHANNEL = "feedline_events"
# pg_advisory_xact_lock key that serialises appends ("feedline" in ASCII, as a number).
APPEND_LOCK_KEY = 0x666565646C696E65
_APPENDED = "feedline.appended"


# The event store's own metadata: apps share the table definition, never state.
event_store_metadata = MetaData()

events = Table(
    "events",
    event_store_metadata,
    Column("sequence_number", BigInteger, primary_key=True, autoincrement=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("name", Text, nullable=False),
    # The whole event as the feed serves it, rendered once when appended: a
    # page is these values joined, so serving it costs no per-event formatting
    # however many subscribers read (and re-read) the feed.
    Column("event_json", Text, nullable=False),
    # The W3C traceparent of the span that appended the event (NULL: none, or an
    # event older than the column). Also in event_json; kept here for queries.
    Column("traceparent", Text, nullable=True),
    Index("ix_events_name_sequence", "name", "sequence_number"),
)


# The store's own facts, one row each. "service": the service that owns the
# store, recorded at its first start; another service refuses to start on it
# (its feed would serve the owner's events as its own).
event_store_info = Table(
    "event_store_info",
    event_store_metadata,
    Column("key", Text, primary_key=True),
    Column("value", Text, nullable=False),
)
OWNER_KEY = "service"


async def upgrade_event_store(connection: AsyncConnection) -> None:
    """Add what newer versions put in the events table to one made by an older version.

    Runs at every start-up after ``create_all`` (which makes missing tables but
    never changes an existing one). Today: the nullable ``traceparent`` column.
    Adding a nullable column without a default is a catalogue change on both
    databases (no table rewrite). PostgreSQL replicas starting together may race:
    ``ADD COLUMN IF NOT EXISTS`` makes that harmless.
    """
    if connection.dialect.name == "postgresql":
        await connection.execute(
            text("ALTER TABLE events ADD COLUMN IF NOT EXISTS traceparent TEXT")
        )
        return
    columns = (await connection.execute(text("PRAGMA table_info(events)"))).all()
    if "traceparent" not in {row[1] for row in columns}:
        await connection.execute(text("ALTER TABLE events ADD COLUMN traceparent TEXT"))


class EventStoreOwnerError(RuntimeError):
    """The event store belongs to another service."""

    def __init__(self, owner: str, service: str) -> None:
        super().__init__(f"the event store belongs to {owner}, not to {service}")
        self.owner = owner
        self.service = service


async def claim_event_store(connection: AsyncConnection, service: str) -> None:
    """Record ``service`` as the store's owner if none is; raise if another service is."""
    dialect_insert = postgresql_insert if connection.dialect.name == "postgresql" else sqlite_insert
    await connection.execute(
        dialect_insert(event_store_info)
        .values(key=OWNER_KEY, value=service)
        .on_conflict_do_nothing(index_elements=["key"])
    )
    owner = (
        await connection.execute(
            select(event_store_info.c.value).where(event_store_info.c.key == OWNER_KEY)
        )
    ).scalar_one()
    if owner != service:
        raise EventStoreOwnerError(owner, service)


@dataclass(frozen=True)
class NewEvent:
    name: str
    content: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not EVENT_NAME_PATTERN.fullmatch(self.name):
            raise ValueError(
                f"event name {self.name!r:.80} is not accepted: use 1 to 200 letters, "
                "digits, '_', '.', ':' or '-'"
            )


@dataclass(frozen=True)
class FeedPage:
    """One read of the feed: the page's JSON body, the head, and how far the read looked.

    ``body`` is the page exactly as the feed serves it (a JSON array, oldest
    first) and ``count`` the number of events in it. ``scanned_to`` is
    exclusive: every sequence number below it (and at or above the requested
    start) was examined, whether or not a type filter kept it.
    """

    body: bytes
    count: int
    head: int
    scanned_to: int

    @property
    def events(self) -> list[dict[str, Any]]:
        """The page's events, decoded (for tests and tools; the feed serves ``body``)."""
        decoded: list[dict[str, Any]] = orjson.loads(self.body)
        return decoded


def render_event(
    sequence_number: int, occurred_at: str, event: NewEvent, traceparent: str | None = None
) -> str:
    """The event as one element of a feed page (names need no escaping: see NewEvent).

    ``traceparent`` (a valid W3C value, as ``traceparent_of`` writes it: hex and
    dashes, no escaping needed) is added as the optional last field.
    """
    return (
        f"{EVENT_JSON_START}{sequence_number}{render_event_rest(occurred_at, event, traceparent)}"
    )


# An event's JSON is this, its sequence number, then render_event_rest's text: PostgreSQL
# appends join the three in the INSERT that numbers the events (_APPEND_POSTGRESQL).
EVENT_JSON_START = '{"sequenceNumber":'


def render_event_rest(occurred_at: str, event: NewEvent, traceparent: str | None = None) -> str:
    """Everything of an event's JSON after its sequence number."""
    content = orjson.dumps(event.content).decode()
    trace = f',"traceparent":"{traceparent}"' if traceparent else ""
    return f',"occurredAt":"{occurred_at}","name":"{event.name}","content":{content}{trace}}}'


# One statement numbers, renders and inserts an append's events after the last one
# and notifies the listeners (at commit). It runs after the lock, as a statement of
# its own: at READ COMMITTED each statement sees what was committed before it
# began, so max() sees the previous appender's events. Fewer statements is fewer
# round trips while the lock is held (bench/bench_appends.py measures it).
_APPEND_POSTGRESQL = text(
    """
    WITH last AS (SELECT coalesce(max(sequence_number), 0) AS number FROM events),
    inserted AS (
        INSERT INTO events (sequence_number, occurred_at, name, event_json, traceparent)
        SELECT last.number + new.position, CAST(:occurred_at AS timestamptz), new.name,
               CAST(:json_start AS text) || (last.number + new.position) || new.rest,
               CAST(:traceparent AS text)
        FROM last, unnest(CAST(:names AS text[]), CAST(:rests AS text[]))
            WITH ORDINALITY AS new(name, rest, position)
        RETURNING sequence_number
    )
    SELECT min(sequence_number), max(sequence_number),
           pg_notify(CAST(:channel AS text), CAST(max(sequence_number) AS text))
    FROM inserted
    """
)


@dataclass(frozen=True)
class _Stamp:
    """What every event of one append shares: when, as a timestamp and as its JSON text,
    and the trace it was made in."""

    now: datetime
    occurred_at: str
    traceparent: str | None

    @classmethod
    def taken_now(cls) -> _Stamp:
        now = datetime.now(UTC)
        traceparent = traceparent_of()  # the append span's, or the request's, or None
        return cls(now, now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), traceparent)


class EventStore:
    def __init__(self, database: Database, *, telemetry: Telemetry | None = None) -> None:
        self.database = database
        self.table = events
        self.commits = CommitSignal()
        # Both feeds read pages through this, so readers woken together read once.
        self.reads: SharedReads[FeedPage] = SharedReads(self.read_page)
        self._tracer = telemetry.tracer if telemetry is not None else None
        self._appended = (
            telemetry.meter.create_counter(
                "feedline.events.appended", unit="{event}", description="Events appended."
            )
            if telemetry is not None and telemetry.meter is not None
            else None
        )

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """A transaction for a command; wakes this process's long polls if it appended."""
        async with self.database.transaction() as connection:
            yield connection
            appended = connection.info.pop(_APPENDED, False)
        if appended:
            self.commits.fire()

    async def append(self, connection: AsyncConnection, events: Sequence[NewEvent]) -> list[int]:
        """Append ``events`` in ``connection``'s transaction; returns their sequence numbers."""
        if not events:
            return []
        if self._tracer is None:
            numbers = await self._append(connection, events)
        else:
            numbers = await self._traced_append(self._tracer, connection, events)
        if self._appended is not None:
            self._appended.add(len(events))
        return numbers

    async def _traced_append(
        self, tracer: Tracer, connection: AsyncConnection, events: Sequence[NewEvent]
    ) -> list[int]:
        with tracer.start_as_current_span(
            "eventstore.append",
            attributes={
                "feedline.events.count": len(events),
                "feedline.events.names": sorted({event.name for event in events}),
            },
        ) as span:
            numbers = await self._append(connection, events)
            span.set_attribute("feedline.sequence_number.first", numbers[0])
            span.set_attribute("feedline.sequence_number.last", numbers[-1])
        return numbers

    async def _append(self, connection: AsyncConnection, events: Sequence[NewEvent]) -> list[int]:
        stamp = _Stamp.taken_now()
        if self.database.dialect == "postgresql":
            numbers = await self._append_postgresql(connection, events, stamp)
        else:
            numbers = await self._append_sqlite(connection, events, stamp)
        connection.info[_APPENDED] = True
        return numbers

    async def _append_postgresql(
        self, connection: AsyncConnection, events: Sequence[NewEvent], stamp: _Stamp
    ) -> list[int]:
        await connection.execute(
            text("SELECT pg_advisory_xact_lock(:key)"), {"key": APPEND_LOCK_KEY}
        )
        first, last, _ = (
            await connection.execute(
                _APPEND_POSTGRESQL,
                {
                    "occurred_at": stamp.now,
                    "json_start": EVENT_JSON_START,
                    "traceparent": stamp.traceparent,
                    "names": [event.name for event in events],
                    "rests": [
                        render_event_rest(stamp.occurred_at, event, stamp.traceparent)
                        for event in events
                    ],
                    # Delivered at commit to every replica's listener (dropped on rollback).
                    "channel": NOTIFY_CHANNEL,
                },
            )
        ).one()
        return list(range(first, last + 1))

    async def _append_sqlite(
        self, connection: AsyncConnection, events: Sequence[NewEvent], stamp: _Stamp
    ) -> list[int]:
        # The transaction began with BEGIN IMMEDIATE: no other writer until it ends.
        last = (
            await connection.execute(
                select(func.coalesce(func.max(self.table.c.sequence_number), 0))
            )
        ).scalar_one()
        numbers = list(range(last + 1, last + 1 + len(events)))
        await connection.execute(
            insert(self.table),
            [
                {
                    "sequence_number": number,
                    "occurred_at": stamp.now,
                    "name": new.name,
                    "event_json": render_event(number, stamp.occurred_at, new, stamp.traceparent),
                    "traceparent": stamp.traceparent,
                }
                for number, new in zip(numbers, events, strict=True)
            ],
        )
        return numbers

    async def head(self) -> int:
        async with self.database.engine.connect() as connection:
            return await self._head(connection)

    async def _head(self, connection: AsyncConnection) -> int:
        result = await connection.execute(
            select(func.coalesce(func.max(self.table.c.sequence_number), 0))
        )
        return int(result.scalar_one())

    async def read_page(
        self, start: int, end: int | None, limit: int, types: Sequence[str] | None
    ) -> FeedPage:
        """Events with ``start <= sequence < end`` (and a name in ``types``), oldest first."""
        dialect = self.database.dialect
        async with self.database.engine.connect() as connection:
            # Bound the read by the head read first: everything at or below it is
            # committed, so the page and `scanned_to` describe a settled range.
            head = await self._head(connection)
            upper = head + 1 if end is None else min(end, head + 1)
            if upper <= start:
                return FeedPage(body=b"[]", count=0, head=head, scanned_to=max(start, upper))
            column = self.table.c
            rows = (
                select(column.sequence_number, column.event_json)
                .where(column.sequence_number >= start, column.sequence_number < upper)
                .order_by(column.sequence_number)
                .limit(limit)
            )
            if types:
                rows = rows.where(column.name.in_(list(types)))
            if dialect == "postgresql":
                # The database also joins the page: one row holding the whole body
                # (as bytes) comes back instead of `limit` rows to make objects of.
                page = rows.subquery()
                joined = literal_column(
                    "convert_to('[' || coalesce(string_agg(event_json, ',' "
                    "ORDER BY sequence_number), '') || ']', 'UTF8')",
                    LargeBinary,
                )
                query = select(
                    func.count(), func.coalesce(func.max(page.c.sequence_number), 0), joined
                ).select_from(page)
                count, last, body = (await connection.execute(query)).one()
                body = bytes(body)
            else:
                found = (await connection.execute(rows)).all()
                count = len(found)
                last = found[-1][0] if found else 0
                body = b"[" + ",".join(row[1] for row in found).encode() + b"]"
        scanned_to = last + 1 if count == limit else upper
        return FeedPage(body=body, count=count, head=head, scanned_to=scanned_to)
