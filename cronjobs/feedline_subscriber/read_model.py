"""Reaching the read-model database: transient failures are retried with backoff, like the feed.

A read model whose server is not up yet (a pod starting beside it, a restart,
a DNS name not resolvable yet) is retried ``--database-retries`` times,
with exponential backoff and full jitter (0.5 s doubling, at most 10 s a
wait), as the feed is. Then, or at once for what waiting cannot fix (a login
refused, a missing folder), the run fails with one line naming the database
(its password hidden) and what to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Final, TypeVar

import structlog
from sqlalchemy.ext.asyncio import AsyncConnection

from feedline_contracts import subscriber_env as env
from feedline_contracts.database import Database, DatabaseUnavailableError, redacted, unavailable

log = structlog.get_logger("feedline.subscriber")

FIRST_BACKOFF_SECONDS: Final = 0.5
MAX_BACKOFF_SECONDS: Final = 10.0
WHAT: Final = "read-model database"
RETRY_SETTING: Final = f"--database-retries ({env.DATABASE_RETRIES})"

T = TypeVar("T")


def backoff_seconds(retry: int, first: float = FIRST_BACKOFF_SECONDS) -> float:
    """The wait before retry number ``retry`` (1, 2, ...): full jitter under a doubling cap."""
    return random.uniform(0, min(MAX_BACKOFF_SECONDS, first * 2 ** (retry - 1)))


async def connect_with_retries(
    connect: Callable[[], Awaitable[T]],
    url: str,
    *,
    retry_attempts: int,
    stop: asyncio.Event | None = None,
    first_backoff: float = FIRST_BACKOFF_SECONDS,
) -> T:
    """``connect()``, retried while it fails transiently; DatabaseUnavailableError after."""
    retry = 0
    while True:
        try:
            return await connect()
        except Exception as exc:
            problem = unavailable(url, exc, what=WHAT)
            if not problem.transient:
                raise problem from exc
            if retry >= retry_attempts:
                raise DatabaseUnavailableError(
                    f"{problem} (gave up after {retry} retries; {RETRY_SETTING})", transient=True
                ) from exc
            retry += 1
            wait = backoff_seconds(retry, first_backoff)
            log.warning(
                "read-model database unavailable; retrying",
                database=redacted(url),
                error=str(problem),
                retry=retry,
                retries=retry_attempts,
                wait_seconds=round(wait, 3),
            )
            if stop is None:
                await asyncio.sleep(wait)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
            if stop.is_set():
                raise DatabaseUnavailableError(
                    f"{problem} (stopped while waiting to retry)", transient=True
                ) from exc


@asynccontextmanager
async def read_model_connection(
    database: Database, url: str, *, retry_attempts: int, stop: asyncio.Event | None = None
) -> AsyncIterator[AsyncConnection]:
    """One connection to the read model for the whole run, reached with retries."""

    async def connect() -> AsyncConnection:
        return await database.engine.connect()

    connection = await connect_with_retries(connect, url, retry_attempts=retry_attempts, stop=stop)
    try:
        yield connection
    finally:
        await connection.close()
