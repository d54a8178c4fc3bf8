"""The subscriber's own tables in the read-model database, and its checkpoint store.

- ``feedline_subscriber_checkpoints``: per subscription, the position (the
  last sequence number applied or scanned past) and the replay token the
  position belongs to. Moved only in the transaction that writes the batch's
  read-model rows, with a compare-and-set on the old position.
- ``feedline_subscriber_dead_letters``: events a projection could not apply
  under the DeadLetter policy, with the error and the number of attempts.
- ``feedline_subscriber_locks``: the SQLite lease rows of the per-subscription
  lock (:mod:`feedline_subscriber.lock`); created on PostgreSQL too, unused.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    Table,
    Text,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from feedline_subscriber.feed_transport import Event

subscriber_metadata = MetaData()

checkpoints = Table(
    "feedline_subscriber_checkpoints",
    subscriber_metadata,
    Column("subscription", Text, primary_key=True),
    Column("position", BigInteger, nullable=False),
    Column("replay_token", Text, nullable=False, server_default=""),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

dead_letters = Table(
    "feedline_subscriber_dead_letters",
    subscriber_metadata,
    Column("subscription", Text, primary_key=True),
    Column("sequence_number", BigInteger, primary_key=True),
    Column("event_name", Text, nullable=False),
    Column("occurred_at", Text, nullable=False),
    Column("content", Text, nullable=False),  # the event's content as JSON
    Column("error", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("dead_lettered_at", DateTime(timezone=True), nullable=False),
)

locks = Table(
    "feedline_subscriber_locks",
    subscriber_metadata,
    Column("subscription", Text, primary_key=True),
    Column("owner", Text, nullable=False),
    Column("hostname", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("heartbeat_at", Float, nullable=False),  # epoch seconds
)

# Serialises CREATE TABLE IF NOT EXISTS between runs on PostgreSQL (it races otherwise).
DDL_LOCK_KEY = 0x666C2D646464C
MAX_ERROR_LENGTH = 4000


class CheckpointConflictError(RuntimeError):
    """The checkpoint is not where this run left it: someone else moved it."""


@dataclass(frozen=True)
class Checkpoint:
    position: int
    replay_token: str


async def create_subscriber_tables(connection: AsyncConnection) -> None:
    if connection.dialect.name == "postgresql":
        await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": DDL_LOCK_KEY})
    await connection.run_sync(lambda sync: subscriber_metadata.create_all(sync, checkfirst=True))


class CheckpointStore:
    def __init__(self, subscription: str) -> None:
        self.subscription = subscription

    async def read(self, connection: AsyncConnection) -> Checkpoint | None:
        row = (
            await connection.execute(
                select(checkpoints.c.position, checkpoints.c.replay_token).where(
                    checkpoints.c.subscription == self.subscription
                )
            )
        ).first()
        return None if row is None else Checkpoint(int(row[0]), str(row[1]))

    async def create(self, connection: AsyncConnection, checkpoint: Checkpoint) -> None:
        await connection.execute(
            checkpoints.insert().values(
                subscription=self.subscription,
                position=checkpoint.position,
                replay_token=checkpoint.replay_token,
                updated_at=datetime.now(UTC),
            )
        )

    async def reset(self, connection: AsyncConnection, checkpoint: Checkpoint) -> None:
        await connection.execute(
            update(checkpoints)
            .where(checkpoints.c.subscription == self.subscription)
            .values(
                position=checkpoint.position,
                replay_token=checkpoint.replay_token,
                updated_at=datetime.now(UTC),
            )
        )

    async def advance(self, connection: AsyncConnection, expected: int, position: int) -> None:
        """Move the position from ``expected`` to ``position`` (compare-and-set)."""
        result = await connection.execute(
            update(checkpoints)
            .where(
                checkpoints.c.subscription == self.subscription,
                checkpoints.c.position == expected,
            )
            .values(position=position, updated_at=datetime.now(UTC))
        )
        if result.rowcount != 1:
            raise CheckpointConflictError(
                f"checkpoint of {self.subscription!r} is no longer at {expected}: another run "
                "moved it (the lock should prevent this; is the lock disabled?)"
            )

    async def dead_letter(
        self, connection: AsyncConnection, event: Event, error: str, attempts: int
    ) -> None:
        values: dict[str, Any] = {
            "subscription": self.subscription,
            "sequence_number": event.sequence_number,
            "event_name": event.name,
            "occurred_at": event.occurred_at,
            "content": orjson.dumps(event.content).decode(),
            "error": error[:MAX_ERROR_LENGTH],
            "attempts": attempts,
            "dead_lettered_at": datetime.now(UTC),
        }
        insert = postgresql_insert if connection.dialect.name == "postgresql" else sqlite_insert
        statement = insert(dead_letters).values(**values)
        # A replay can dead-letter the same event again: keep the latest error.
        statement = statement.on_conflict_do_update(
            index_elements=["subscription", "sequence_number"],
            set_={
                key: statement.excluded[key] for key in ("error", "attempts", "dead_lettered_at")
            },
        )
        await connection.execute(statement)
