"""The event store: an append-only, gap-free log of a service's events.

Events are appended inside the caller's own transaction, so a command's data
and its events commit together or not at all. Sequence numbers start at 1 and
follow commit order with no gaps: appends are serialised (PostgreSQL: a
transaction-scoped advisory lock; SQLite: ``BEGIN IMMEDIATE``), so a reader
that has seen sequence K never later finds a new event below K. Readers rely on
that: every event at or below the head is committed and visible.

Appends must run at READ COMMITTED (PostgreSQL's default); the number is taken
after the lock, so it sees the previous writer's commit.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    MetaData,
    Table,
    Text,
    func,
    insert,
    literal_column,
    select,
    text,
)
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from feedline.chassis.database import Database
from feedline.chassis.notifications import CommitSignal

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
    # The content as JSON text: the feed splices it into pages without
    # decoding and re-encoding every event.
    Column("content", Text, nullable=False),
    Index("ix_events_name_sequence", "name", "sequence_number"),
)


@dataclass(frozen=True)
class NewEvent:
    name: str
    content: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StoredEvent:
    sequence_number: int
    name: str
    # The whole event as the feed serves it: one element of the page's JSON array.
    json: bytes

    @property
    def as_dict(self) -> dict[str, Any]:
        decoded: dict[str, Any] = orjson.loads(self.json)
        return decoded


@dataclass(frozen=True)
class FeedPage:
    """One read of the feed: the events, the head, and how far the read looked.

    ``scanned_to`` is exclusive: every sequence number below it (and at or above
    the requested start) was examined, whether or not a type filter kept it.
    """

    events: list[StoredEvent]
    head: int
    scanned_to: int


def _rendered_event(dialect: str) -> ColumnElement[str]:
    """SQL that renders each row as the feed's JSON object.

    The database formats the rows it already holds; Python only joins them.
    That halves the cost of a page compared with decoding rows into Python
    objects and encoding them again.
    """
    if dialect == "postgresql":
        occurred_at = "to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
        quoted_name = "to_json(name)::text"
    else:  # SQLite keeps SQLAlchemy's 'YYYY-MM-DD HH:MM:SS.ffffff' text, in UTC
        occurred_at = "replace(occurred_at, ' ', 'T') || 'Z'"
        quoted_name = "json_quote(name)"
    return literal_column(
        "'{\"sequenceNumber\":' || sequence_number"
        f' || \',"occurredAt":"\' || {occurred_at}'
        f' || \'","name":\' || {quoted_name}'
        " || ',\"content\":' || content || '}'",
        Text,
    )


class EventStore:
    def __init__(self, database: Database) -> None:
        self.database = database
        self.table = events
        self.commits = CommitSignal()

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
        if self.database.dialect == "postgresql":
            await connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": APPEND_LOCK_KEY}
            )
        last = (
            await connection.execute(
                select(func.coalesce(func.max(self.table.c.sequence_number), 0))
            )
        ).scalar_one()
        now = datetime.now(UTC)
        numbers = list(range(last + 1, last + 1 + len(events)))
        await connection.execute(
            insert(self.table),
            [
                {
                    "sequence_number": number,
                    "occurred_at": now,
                    "name": new.name,
                    "content": orjson.dumps(new.content).decode(),
                }
                for number, new in zip(numbers, events, strict=True)
            ],
        )
        if self.database.dialect == "postgresql":
            # Delivered at commit to every replica's listener (and dropped on rollback).
            await connection.execute(
                text("SELECT pg_notify(:channel, :head)"),
                {"channel": NOTIFY_CHANNEL, "head": str(numbers[-1])},
            )
        connection.info[_APPENDED] = True
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
        async with self.database.engine.connect() as connection:
            # Bound the read by the head read first: everything at or below it is
            # committed, so the page and `scanned_to` describe a settled range.
            head = await self._head(connection)
            upper = head + 1 if end is None else min(end, head + 1)
            if upper <= start:
                return FeedPage(events=[], head=head, scanned_to=max(start, upper))
            column = self.table.c
            query = (
                select(column.sequence_number, column.name, _rendered_event(self.database.dialect))
                .where(column.sequence_number >= start, column.sequence_number < upper)
                .order_by(column.sequence_number)
                .limit(limit)
            )
            if types:
                query = query.where(column.name.in_(list(types)))
            rows = (await connection.execute(query)).all()
        events = [StoredEvent(row[0], row[1], row[2].encode()) for row in rows]
        scanned_to = events[-1].sequence_number + 1 if len(events) == limit else upper
        return FeedPage(events=events, head=head, scanned_to=scanned_to)


def encode_page(events: Sequence[StoredEvent]) -> bytes:
    """The feed's JSON array of already-rendered events."""
    return b"[" + b",".join(event.json for event in events) + b"]"
