"""The subscriber's own tables in the read-model database, and its per-subscription lock.

- ``feedline_subscriber_checkpoints``: per subscription, the position (the
  last sequence number applied or scanned past) and the replay token the
  position belongs to. Moved only in the transaction that writes the batch's
  read-model rows, with a compare-and-set on the old position.
- ``feedline_subscriber_dead_letters``: events a projection could not apply
  under the DeadLetter policy, with the error and the number of attempts.
- The lock: on PostgreSQL a session-level advisory lock held by the run's
  connection (released by the server when the process dies, however it dies);
  on SQLite a lease row in ``feedline_subscriber_locks`` renewed by the run,
  checked in every batch's transaction (``BEGIN IMMEDIATE`` serialises those),
  and taken over once its holder is gone (its lease expired, or its process on
  this host no longer exists).
"""

from __future__ import annotations

import hashlib
import os
import socket
import sqlite3
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiosqlite
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

from feedline_subscriber.feed_client import Event

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
SQLITE_LEASE_SECONDS = 30.0
MAX_ERROR_LENGTH = 4000


class CheckpointConflictError(RuntimeError):
    """The checkpoint is not where this run left it: someone else moved it."""


class LockLostError(RuntimeError):
    """This run no longer holds the subscription's lock."""


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


def advisory_lock_key(subscription: str) -> int:
    """A signed 64-bit key for pg_advisory_lock, stable across processes."""
    digest = hashlib.blake2b(f"feedline-subscriber\0{subscription}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SubscriptionLock:
    """The per-subscription lock, held through one connection for the whole run."""

    def __init__(self, subscription: str, dialect: str) -> None:
        self.subscription = subscription
        self.dialect = dialect
        self.owner = uuid.uuid4().hex
        self.hostname = socket.gethostname()
        self.holder = ""  # who holds it, when try_acquire fails

    async def try_acquire(self, connection: AsyncConnection) -> bool:
        if self.dialect == "postgresql":
            async with connection.begin():
                acquired = (
                    await connection.execute(
                        text("SELECT pg_try_advisory_lock(:key)"),
                        {"key": advisory_lock_key(self.subscription)},
                    )
                ).scalar_one()
                if not acquired:
                    self.holder = await self._postgresql_holder(connection)
            return bool(acquired)
        # Look first without taking SQLite's write lock: a busy holder writes batch
        # after batch, and BEGIN IMMEDIATE would wait for it to finish them all.
        if await self._sqlite_held_by_another(connection):
            return False
        async with connection.begin():
            await create_subscriber_tables(connection)  # the lease row's table, first time
            return await self._sqlite_try_acquire(connection)

    async def _sqlite_held_by_another(self, connection: AsyncConnection) -> bool:
        path = connection.engine.url.database
        assert path is not None
        async with aiosqlite.connect(path, timeout=30) as reader:
            try:
                cursor = await reader.execute(
                    "SELECT owner, hostname, pid, heartbeat_at FROM feedline_subscriber_locks "
                    "WHERE subscription = ?",
                    (self.subscription,),
                )
            except sqlite3.OperationalError:  # no table yet: nobody ever held it
                return False
            row = await cursor.fetchone()
        if row is None:
            return False
        return self._held_by_another(*row)

    def _held_by_another(self, owner: str, hostname: str, pid: int, heartbeat_at: float) -> bool:
        age = time.time() - heartbeat_at
        gone = age > SQLITE_LEASE_SECONDS or (
            hostname == self.hostname and not _process_exists(int(pid))
        )
        if owner == self.owner or gone:
            return False
        self.holder = f"another run (pid {pid} on {hostname}, lease renewed {age:.0f}s ago)"
        return True

    async def _postgresql_holder(self, connection: AsyncConnection) -> str:
        key = advisory_lock_key(self.subscription) & 0xFFFFFFFFFFFFFFFF
        row = (
            await connection.execute(
                text(
                    "SELECT a.pid, a.client_addr::text, a.backend_start FROM pg_locks l "
                    "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' "
                    "AND l.granted AND l.classid = :high AND l.objid = :low"
                ),
                {"high": key >> 32, "low": key & 0xFFFFFFFF},
            )
        ).first()
        if row is None:
            return "another run"
        return f"another run (database backend pid {row[0]}, client {row[1]}, since {row[2]})"

    async def _sqlite_try_acquire(self, connection: AsyncConnection) -> bool:
        now = time.time()
        row = (
            await connection.execute(
                select(locks.c.owner, locks.c.hostname, locks.c.pid, locks.c.heartbeat_at).where(
                    locks.c.subscription == self.subscription
                )
            )
        ).first()
        mine = {
            "owner": self.owner,
            "hostname": self.hostname,
            "pid": os.getpid(),
            "heartbeat_at": now,
        }
        if row is None:
            await connection.execute(locks.insert().values(subscription=self.subscription, **mine))
            return True
        if self._held_by_another(*row):
            return False
        await connection.execute(
            update(locks).where(locks.c.subscription == self.subscription).values(**mine)
        )
        return True

    async def fence(self, connection: AsyncConnection) -> None:
        """Inside a batch's transaction: fail unless this run still holds the lock.

        PostgreSQL needs nothing: the advisory lock lives exactly as long as the
        connection the transaction runs on. SQLite renews the lease here.
        """
        if self.dialect == "postgresql":
            return
        await self.renew(connection)

    async def renew(self, connection: AsyncConnection) -> None:
        if self.dialect == "postgresql":
            return
        result = await connection.execute(
            update(locks)
            .where(locks.c.subscription == self.subscription, locks.c.owner == self.owner)
            .values(heartbeat_at=time.time())
        )
        if result.rowcount != 1:
            raise LockLostError(
                f"lost the lock of subscription {self.subscription!r} (its lease was taken over)"
            )

    async def release(self, connection: AsyncConnection) -> None:
        if self.dialect == "postgresql":
            async with connection.begin():
                await connection.execute(
                    text("SELECT pg_advisory_unlock(:key)"),
                    {"key": advisory_lock_key(self.subscription)},
                )
            return
        async with connection.begin():
            await connection.execute(
                locks.delete().where(
                    locks.c.subscription == self.subscription, locks.c.owner == self.owner
                )
            )
