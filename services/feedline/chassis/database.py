"""Database URLs and engines: one API over PostgreSQL (asyncpg) and SQLite (aiosqlite).

Users write plain URLs (``postgresql://user@host/db``, ``sqlite:///path``); this
module maps them to SQLAlchemy's async drivers and sets each dialect up the way
Feedline relies on (SQLite: WAL, a busy timeout, and ``BEGIN IMMEDIATE`` so
writers serialise at the start of a transaction instead of failing midway).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import AfterValidator
from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

Dialect = Literal["postgresql", "sqlite"]

ACCEPTED_URLS = "postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE or sqlite:///PATH"


class DatabaseUrlError(ValueError):
    """A database URL Feedline cannot use; the message says what is accepted."""


@dataclass(frozen=True)
class ParsedDatabaseUrl:
    dialect: Dialect
    sqlalchemy_url: URL

    @property
    def asyncpg_dsn(self) -> str:
        """The URL without SQLAlchemy's driver suffix, as asyncpg wants it."""
        return self.sqlalchemy_url.set(drivername="postgresql").render_as_string(
            hide_password=False
        )


def parse_database_url(url: str) -> ParsedDatabaseUrl:
    """Validate ``url`` and pick the async driver for it."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise DatabaseUrlError(f"invalid database URL {url!r}: expected {ACCEPTED_URLS}") from exc
    backend = parsed.get_backend_name()
    if backend in ("postgresql", "postgres"):
        if not parsed.database:
            raise DatabaseUrlError(
                f"database URL {url!r} names no database: expected {ACCEPTED_URLS}"
            )
        return ParsedDatabaseUrl("postgresql", parsed.set(drivername="postgresql+asyncpg"))
    if backend == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise DatabaseUrlError(
                f"database URL {url!r} needs a file path (an in-memory SQLite database is not "
                f"shared between connections): expected {ACCEPTED_URLS}"
            )
        return ParsedDatabaseUrl("sqlite", parsed.set(drivername="sqlite+aiosqlite"))
    raise DatabaseUrlError(f"unsupported database URL scheme {backend!r}: expected {ACCEPTED_URLS}")


def _usable_database_url(url: str) -> str:
    try:
        parse_database_url(url)
    except DatabaseUrlError as exc:
        # pydantic reports ValueErrors as validation errors naming the field.
        raise ValueError(str(exc)) from exc
    return url


# A settings field holding a database URL that Feedline can use.
DatabaseUrl = Annotated[str, AfterValidator(_usable_database_url)]


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def on_begin(connection: Any) -> None:
        # Take the write lock up front: a deferred transaction that later tries
        # to write can fail with SQLITE_BUSY instead of waiting its turn.
        connection.exec_driver_sql("BEGIN IMMEDIATE")


@dataclass
class Database:
    """An engine plus the facts about it that Feedline code branches on."""

    url: ParsedDatabaseUrl
    engine: AsyncEngine

    @property
    def dialect(self) -> Dialect:
        return self.url.dialect

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """One transaction: committed when the block ends, rolled back on error."""
        async with self.engine.begin() as connection:
            yield connection

    async def dispose(self) -> None:
        await self.engine.dispose()


def connect_database(url: str, *, pool_size: int = 10) -> Database:
    """Create an engine for ``url`` (no connection is opened yet)."""
    parsed = parse_database_url(url)
    if parsed.dialect == "sqlite":
        # One file, many short connections; pooling buys nothing and holds locks.
        engine = create_async_engine(parsed.sqlalchemy_url, poolclass=NullPool)
        _configure_sqlite(engine)
    else:
        engine = create_async_engine(
            parsed.sqlalchemy_url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True
        )
    return Database(url=parsed, engine=engine)
