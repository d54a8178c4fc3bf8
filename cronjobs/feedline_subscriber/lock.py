"""The per-subscription lock: one run at a time applies a subscription's feed.

- PostgreSQL: a session-level advisory lock held by the run's connection
  (released by the server when the process dies, however it dies).
- SQLite: a lease row in ``feedline_subscriber_locks`` renewed by the run
  (every ``SQLITE_LEASE_SECONDS / 3`` in the background, and in every batch's
  transaction, where ``BEGIN IMMEDIATE`` serialises the check), and taken over
  once its holder is gone (its lease expired, or its process on this host no
  longer exists).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator

import aiosqlite
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from feedline_contracts.database import Database
from feedline_subscriber.checkpoint import create_subscriber_tables, locks

SQLITE_LEASE_SECONDS = 30.0


class LockLostError(RuntimeError):
    """This run no longer holds the subscription's lock."""


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

    @contextlib.asynccontextmanager
    async def held(self, connection: AsyncConnection, database: Database) -> AsyncIterator[None]:
        """Once acquired: keep the SQLite lease renewed meanwhile, release the lock after."""
        heartbeat = (
            asyncio.create_task(self._heartbeat(database)) if self.dialect == "sqlite" else None
        )
        try:
            yield
        finally:
            if heartbeat is not None:
                heartbeat.cancel()
                with contextlib.suppress(BaseException):
                    await heartbeat
            with contextlib.suppress(Exception):
                await self.release(connection)

    async def _heartbeat(self, database: Database) -> None:
        """SQLite: renew the lease while the run waits on the feed or a long batch."""
        while True:
            await asyncio.sleep(SQLITE_LEASE_SECONDS / 3)
            async with database.transaction() as connection:
                await self.renew(connection)

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
        await self.renew(connection)

    async def renew(self, connection: AsyncConnection) -> None:
        """SQLite: move the lease on (LockLostError if it was taken over); PostgreSQL: nothing."""
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
