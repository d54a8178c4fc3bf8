"""A generic projection: the latest content of each event, keyed by one content field.

Import path: ``feedline_subscriber.projections.upsert:project_documents``.
Writes ``feedline_documents`` (subscription, document_key, event_name, content
as JSON text, last_sequence_number), primary key (subscription, document_key),
so several subscriptions can share the table. Configured by
``UPSERT_KEY_FIELD`` (the content field that keys a row, default ``id``; its
value must be a string or an integer) and ``UPSERT_DELETE_EVENTS``
(comma-separated event names that delete the row instead), set in an
EventSubscription's ``spec.subscriber.env`` (which refuses ``FEEDLINE_*``
names: those are the operator's). The reset hook deletes only this
subscription's rows.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy import BigInteger, Column, MetaData, Table, Text, delete, text

from feedline_subscriber.projection import Event, ProjectionContext, bulk_upsert, projection

KEY_FIELD_VARIABLE = "UPSERT_KEY_FIELD"  # the projection's own settings, not FEEDLINE_*
DELETE_EVENTS_VARIABLE = "UPSERT_DELETE_EVENTS"
DEFAULT_KEY_FIELD = "id"

documents_metadata = MetaData()
documents = Table(
    "feedline_documents",
    documents_metadata,
    Column("subscription", Text, primary_key=True),
    Column("document_key", Text, primary_key=True),
    Column("event_name", Text, nullable=False),
    Column("content", Text, nullable=False),
    Column("last_sequence_number", BigInteger, nullable=False),
)


class InvalidDocumentEventError(ValueError):
    """An event without a usable key (a poison event)."""


def document_key(event: Event, key_field: str) -> str:
    value: Any = event.content.get(key_field)
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        raise InvalidDocumentEventError(
            f"{event.name} {event.sequence_number}: content field {key_field!r} must be a "
            f"non-empty string or an integer, got {value!r:.50}"
        )
    return str(value)


# key -> (event name, content JSON, sequence number), or None when the batch deletes it.
DocumentChanges = dict[str, tuple[str, str, int] | None]


def fold_documents(
    events: Sequence[Event], key_field: str, delete_events: frozenset[str]
) -> DocumentChanges:
    changes: DocumentChanges = {}
    for event in events:
        key = document_key(event, key_field)
        if event.name in delete_events:
            changes[key] = None
        else:
            changes[key] = (event.name, orjson.dumps(event.content).decode(), event.sequence_number)
    return changes


async def _reset(context: ProjectionContext) -> None:
    await context.connection.execute(
        delete(documents).where(documents.c.subscription == context.subscription)
    )


DELETE_POSTGRESQL = (
    "DELETE FROM feedline_documents WHERE subscription = $1 AND document_key = ANY($2::text[])"
)
DELETE_SQLITE = text(
    "DELETE FROM feedline_documents WHERE subscription = :subscription AND document_key = :key"
)
COLUMNS = ("subscription", "document_key", "event_name", "content", "last_sequence_number")


@projection(tables=[documents], reset=_reset)
async def project_documents(events: Sequence[Event], context: ProjectionContext) -> None:
    key_field = os.environ.get(KEY_FIELD_VARIABLE) or DEFAULT_KEY_FIELD
    delete_events = frozenset(
        name.strip()
        for name in os.environ.get(DELETE_EVENTS_VARIABLE, "").split(",")
        if name.strip()
    )
    changes = fold_documents(events, key_field, delete_events)
    subscription = context.subscription
    upserts = [
        (subscription, key, *change) for key, change in changes.items() if change is not None
    ]
    removed = [key for key, change in changes.items() if change is None]
    if removed:
        if context.dialect == "postgresql":
            connection = await context.asyncpg_connection()
            await connection.execute(DELETE_POSTGRESQL, subscription, removed)
        else:
            await context.connection.execute(
                DELETE_SQLITE, [{"subscription": subscription, "key": key} for key in removed]
            )
    await bulk_upsert(
        context, "feedline_documents", COLUMNS, ("subscription", "document_key"), upserts
    )
