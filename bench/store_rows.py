"""Filling a service's event store fast, in the store's exact format.

The store's table (``feedline.chassis.eventstore.events``) holds, per event,
its sequence number, ``occurred_at``, its name and ``event_json``: the event
as the feed serves it, rendered once at append by ``render_event``. The
benchmarks need hundreds of thousands (or millions) of events before their
clocks start; appending them through ``EventStore.append`` costs more time
than the measures themselves. So:

- :func:`copy_events` renders the rows with the store's own ``render_event``
  and COPies them in (any names and contents);
- :func:`generate_offer_events` has PostgreSQL make ``SpecialOfferCreated``
  events with ``generate_series`` (the 10,000,000-event feed), and
  :func:`generated_format_problems` compares some of them with what
  ``render_event`` makes of the same event: a feed in another format is not
  the store's feed.

Both write into a store the service created (its tables exist) and that is
empty, so the numbers are 1..N with no gaps, as appends would have made them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from bench.checks import count_problems
from feedline.chassis.eventstore import NewEvent, render_event

# The events' occurred_at: one millisecond apart from here (any fixed moment will do).
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
COLUMNS = ("sequence_number", "occurred_at", "name", "event_json")
PRIMARY_KEY = "events_pkey"
NAME_INDEX = "ix_events_name_sequence"


def occurred_at(number: int) -> datetime:
    return EPOCH + timedelta(milliseconds=number)


def store_row(number: int, name: str, content: Mapping[str, Any]) -> tuple[int, datetime, str, str]:
    """The store's row for event ``number``, as ``EventStore.append`` writes it."""
    moment = occurred_at(number)
    rendered = render_event(
        number, moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), NewEvent(name, content)
    )
    return (number, moment, name, rendered)


async def copy_events(
    store_url: str, events: Iterable[tuple[str, Mapping[str, Any]]], *, chunk: int = 50_000
) -> int:
    """COPY ``(name, content)`` events into the empty store at ``store_url`` as 1..N."""
    connection = await asyncpg.connect(store_url)
    count = 0
    try:
        existing = await connection.fetchval("SELECT count(*) FROM events")
        if existing:
            raise RuntimeError(f"the event store already holds {existing:,} events")
        rows: list[tuple[int, datetime, str, str]] = []
        for name, content in events:
            count += 1
            rows.append(store_row(count, name, content))
            if len(rows) == chunk:
                await connection.copy_records_to_table("events", records=rows, columns=COLUMNS)
                rows = []
        if rows:
            await connection.copy_records_to_table("events", records=rows, columns=COLUMNS)
        await connection.execute("ANALYZE events")
    finally:
        await connection.close()
    return count


def offer_description(offer: int) -> str:
    """As ``bench.harness.description``: the generated feed's contents."""
    return f"special offer number {offer}: 10% off"


# The row render_event makes of SpecialOfferCreated {"offerId": n, "description":
# offer_description(n)} at occurred_at(n), made by PostgreSQL.
GENERATE = """
INSERT INTO events (sequence_number, occurred_at, name, event_json)
SELECT n, moment, 'SpecialOfferCreated',
       '{"sequenceNumber":' || n || ',"occurredAt":"'
       || to_char(moment AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
       || '","name":"SpecialOfferCreated","content":{"offerId":' || n
       || ',"description":"special offer number ' || n || ': 10% off"}}'
FROM (SELECT n, $3::timestamptz + n * interval '1 millisecond' AS moment
      FROM generate_series($1::bigint, $2::bigint) AS n) AS numbered
"""

INDEX_DEFINITIONS = (
    "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'events' ORDER BY indexname"
)


@dataclass(frozen=True)
class Generation:
    events: int
    insert_seconds: float  # rows in, without the indexes
    index_seconds: float  # primary key and name index built again
    vacuum_seconds: float  # VACUUM (ANALYZE): hint bits, visibility map, statistics

    @property
    def seconds(self) -> float:
        return self.insert_seconds + self.index_seconds + self.vacuum_seconds


async def generate_offer_events(
    store_url: str, count: int, *, chunk: int = 500_000, parallel: int = 2
) -> Generation:
    """``count`` SpecialOfferCreated events in the empty store, made by PostgreSQL.

    The primary key and the name index are dropped first and built again
    after (in the same names and definitions, checked), ``parallel``
    connections insert chunks of ``chunk`` numbers, each its own commit.
    """
    admin = await asyncpg.connect(store_url)
    try:
        existing = await admin.fetchval("SELECT count(*) FROM events")
        if existing:
            raise RuntimeError(f"the event store already holds {existing:,} events")
        before = await admin.fetch(INDEX_DEFINITIONS)
        await admin.execute(f"ALTER TABLE events DROP CONSTRAINT {PRIMARY_KEY}")
        await admin.execute(f"DROP INDEX {NAME_INDEX}")
        started = time.perf_counter()
        chunks = asyncio.Queue[tuple[int, int]]()
        for low in range(1, count + 1, chunk):
            chunks.put_nowait((low, min(low + chunk - 1, count)))

        async def insert() -> None:
            connection = await asyncpg.connect(store_url)
            try:
                while not chunks.empty():
                    low, high = chunks.get_nowait()
                    await connection.execute(GENERATE, low, high, EPOCH)
            finally:
                await connection.close()

        await asyncio.gather(*(insert() for _ in range(parallel)))
        inserted = time.perf_counter()
        await admin.execute("SET maintenance_work_mem = '512MB'")
        for definition in (row["indexdef"] for row in before):
            if f" {PRIMARY_KEY} " in definition:
                await admin.execute(
                    f"ALTER TABLE events ADD CONSTRAINT {PRIMARY_KEY} PRIMARY KEY (sequence_number)"
                )
            else:
                await admin.execute(definition)
        indexed = time.perf_counter()
        await admin.execute("VACUUM (ANALYZE) events")
        vacuumed = time.perf_counter()
        after = await admin.fetch(INDEX_DEFINITIONS)
        if [tuple(row) for row in after] != [tuple(row) for row in before]:
            raise RuntimeError(f"indexes differ after the load: {before} != {after}")
    finally:
        await admin.close()
    return Generation(count, inserted - started, indexed - inserted, vacuumed - indexed)


async def generated_format_problems(store_url: str, numbers: Sequence[int]) -> list[str]:
    """Generated rows that differ from what the store's own render_event makes of them."""
    connection = await asyncpg.connect(store_url)
    try:
        rows = await connection.fetch(
            "SELECT sequence_number, occurred_at, name, event_json FROM events "
            "WHERE sequence_number = ANY($1::bigint[]) ORDER BY sequence_number",
            list(numbers),
        )
    finally:
        await connection.close()
    problems = count_problems("sampled events", len(rows), len(set(numbers)))
    for row in rows:
        number = row["sequence_number"]
        expected = store_row(
            number,
            "SpecialOfferCreated",
            {"offerId": number, "description": offer_description(number)},
        )
        if tuple(row) != expected:
            problems.append(f"event {number}: {tuple(row)!r} instead of {expected!r}")
    return problems
