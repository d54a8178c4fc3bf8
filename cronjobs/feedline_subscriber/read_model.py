"""Reaching the read-model database: transient failures are retried with backoff, like the feed.

A read model whose server is not up yet (a pod starting beside it, a restart,
a DNS name not resolvable yet) is retried ``--database-retries`` times, with
exponential backoff and full jitter (0.5 s doubling, at most 10 s a wait), as
the feed is; the policy is the one services use at start-up
(``feedline_contracts.database_retry``). Then, or at once for what waiting
cannot fix (a login refused, a missing folder), the run fails with one line
naming the database (its password hidden) and what to do. A follower
(``--follow``) passes ``retry_attempts=None``: it waits as long as it takes,
each retry logged, until it is stopped; a long-running process beside a
database that is starting (a fresh ``helm install``) should not crash-loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Final, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection

from feedline_contracts import subscriber_env as env
from feedline_contracts.database import Database, DatabaseUnavailableError, unavailable
from feedline_contracts.database_retry import (
    FIRST_BACKOFF_SECONDS,
    Retries,
    UntilStopped,
    retry_database,
)

WHAT: Final = "read-model database"
RETRY_SETTING: Final = f"--database-retries ({env.DATABASE_RETRIES})"

T = TypeVar("T")


async def connect_with_retries(
    connect: Callable[[], Awaitable[T]],
    url: str,
    *,
    retry_attempts: int | None,
    stop: asyncio.Event | None = None,
    first_backoff: float = FIRST_BACKOFF_SECONDS,
) -> T:
    """``connect()``, retried while it fails transiently (``retry_attempts``
    times, or with None until ``stop`` is set); DatabaseUnavailableError after."""
    limit = UntilStopped() if retry_attempts is None else Retries(retry_attempts, RETRY_SETTING)
    try:
        return await retry_database(
            connect,
            url,
            limit,
            what=WHAT,
            stop=stop,
            first_backoff=first_backoff,
        )
    except DatabaseUnavailableError:
        raise
    except Exception as exc:  # not transient: said in one line at once
        raise unavailable(url, exc, what=WHAT) from exc


@asynccontextmanager
async def read_model_connection(
    database: Database,
    url: str,
    *,
    retry_attempts: int | None,
    stop: asyncio.Event | None = None,
) -> AsyncIterator[AsyncConnection]:
    """One connection to the read model for the whole run, reached with retries."""

    async def connect() -> AsyncConnection:
        return await database.engine.connect()

    connection = await connect_with_retries(connect, url, retry_attempts=retry_attempts, stop=stop)
    try:
        yield connection
    finally:
        await connection.close()
