"""A generic projection: every event, once, in arrival order (a feed's archive).

Import path: ``feedline_subscriber.projections.journal:project_journal``.
Appends one row per event to ``feedline_journal`` (subscription,
sequence_number, event_name, occurred_at, content as JSON text), primary key
(subscription, sequence_number), so several subscriptions can share the table.
For an audit trail or analytics over a service's events, and as the plainest
check of the subscriber's promise: the rows are exactly the feed's events
(those the subscription's filter admits), each once. An event applied twice
would break the primary key and fail its batch, never add a second row.
The reset hook (replay) deletes only this subscription's rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson
from sqlalchemy import BigInteger, Column, MetaData, Table, Text, delete, insert

from feedline_subscriber.projection import Event, ProjectionContext, projection

journal_metadata = MetaData()
journal = Table(
    "feedline_journal",
    journal_metadata,
    Column("subscription", Text, primary_key=True),
    Column("sequence_number", BigInteger, primary_key=True),
    Column("event_name", Text, nullable=False),
    Column("occurred_at", Text, nullable=False),
    Column("content", Text, nullable=False),
)
COLUMNS = ("subscription", "sequence_number", "event_name", "occurred_at", "content")


async def _reset(context: ProjectionContext) -> None:
    await context.connection.execute(
        delete(journal).where(journal.c.subscription == context.subscription)
    )


def journal_rows(
    events: Sequence[Event], subscription: str
) -> list[tuple[str, int, str, str, str]]:
    return [
        (
            subscription,
            event.sequence_number,
            event.name,
            event.occurred_at,
            orjson.dumps(event.content).decode(),
        )
        for event in events
    ]


@projection(tables=[journal], reset=_reset)
async def project_journal(events: Sequence[Event], context: ProjectionContext) -> None:
    rows = journal_rows(events, context.subscription)
    if not rows:
        return
    if context.dialect == "postgresql":
        # COPY: the fastest way in; a duplicate key still fails the batch.
        connection = await context.asyncpg_connection()
        await connection.copy_records_to_table("feedline_journal", records=rows, columns=COLUMNS)
        return
    await context.connection.execute(
        insert(journal), [dict(zip(COLUMNS, row, strict=True)) for row in rows]
    )
