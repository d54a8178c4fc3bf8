"""Database URLs and engines: one API over PostgreSQL (asyncpg) and SQLite (aiosqlite).

Users write plain URLs (``postgresql://user@host/db``, ``sqlite:///path``); this
module maps them to SQLAlchemy's async drivers and sets each dialect up the way
Feedline relies on (SQLite: WAL, a busy timeout, and ``BEGIN IMMEDIATE`` so
writers serialise at the start of a transaction instead of failing midway).
"""

from __future__ import annotations

import socket
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import asyncpg
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
    """Validate ``url`` and pick the async driver for it; errors show it ``redacted``."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        # Not quoted: what cannot be parsed cannot have its password hidden.
        raise DatabaseUrlError(
            f"invalid database URL (it cannot be parsed): expected {ACCEPTED_URLS}"
        ) from exc
    backend = parsed.get_backend_name()
    if backend in ("postgresql", "postgres"):
        if not parsed.database:
            raise DatabaseUrlError(
                f"database URL {redacted(url)!r} names no database: expected {ACCEPTED_URLS}"
            )
        return ParsedDatabaseUrl("postgresql", parsed.set(drivername="postgresql+asyncpg"))
    if backend == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise DatabaseUrlError(
                f"database URL {redacted(url)!r} needs a file path (an in-memory SQLite "
                f"database is not shared between connections): expected {ACCEPTED_URLS}"
            )
        return ParsedDatabaseUrl("sqlite", parsed.set(drivername="sqlite+aiosqlite"))
    raise DatabaseUrlError(f"unsupported database URL scheme {backend!r}: expected {ACCEPTED_URLS}")


def redacted(url: str) -> str:
    """The URL as messages and logs may show it: the password replaced by ``***``."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(a database URL that cannot be parsed)"


# Where a service (`feedline serve`) and a subscriber (`feedline subscribe`) take it.
DATABASE_URL_SETTING = "--database-url (FEEDLINE_DATABASE_URL)"


class DatabaseUnavailableError(RuntimeError):
    """A database that cannot be used; the one-line message names it and says what to do."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        # Whether waiting may help (a server not up yet), or only a change of setting.
        self.transient = transient


def _causes(error: BaseException) -> list[BaseException]:
    """The error and what it wraps (SQLAlchemy's ``orig``, then ``__cause__``)."""
    found: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in found and len(found) < 10:
        found.append(current)
        wrapped = getattr(current, "orig", None)
        current = wrapped if isinstance(wrapped, BaseException) else current.__cause__
    return found


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__


# A diagnosis: what went wrong, what to do, and whether waiting (a retry) may help.
Diagnosis = tuple[str, str, bool]


def _sqlite_diagnosis(path: str, error: BaseException) -> Diagnosis:
    folder = Path(path).parent
    if not folder.is_dir():
        return (
            f"folder {folder} does not exist",
            f"create it, or pass another path in {DATABASE_URL_SETTING}",
            False,
        )
    return (
        f"cannot open {path}: {_one_line(error)}",
        f"check that the file and its folder are writable, or fix {DATABASE_URL_SETTING}",
        False,
    )


def _diagnose(url: URL, error: BaseException) -> Diagnosis:
    where = f"{url.host or 'localhost'}:{url.port or 5432}"
    fix = f"or fix {DATABASE_URL_SETTING}"
    # The first rule that matches the error, or what it wraps, wins; OSError last.
    rules: list[tuple[type[BaseException] | tuple[type[BaseException], ...], str | None, str, bool]]
    rules = [
        (
            ConnectionRefusedError,
            f"connection refused at {where}",
            f"start the database server, {fix}",
            True,
        ),
        (
            socket.gaierror,
            f"host {url.host!r} not found",
            f"fix the host in {DATABASE_URL_SETTING}",
            True,
        ),
        (TimeoutError, f"no answer from {where}", f"check the server is reachable, {fix}", True),
        (
            asyncpg.InvalidAuthorizationSpecificationError,
            None,
            f"fix the user or password in {DATABASE_URL_SETTING}",
            False,
        ),
        (asyncpg.InvalidCatalogNameError, None, f"create it (createdb), {fix}", False),
        (
            (asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError),
            None,
            f"wait for the server, {fix}",
            True,
        ),
        (OSError, None, f"check the server is reachable, {fix}", True),
    ]
    for cause in _causes(error):
        if isinstance(cause, sqlite3.OperationalError) and url.database:
            return _sqlite_diagnosis(url.database, cause)
        for kinds, reason, advice, transient in rules:
            if isinstance(cause, kinds):
                return reason or _one_line(cause), advice, transient
    return f"{type(error).__name__}: {_one_line(error)}", f"check {DATABASE_URL_SETTING}", False


def unavailable(
    url: str, error: BaseException, *, what: str = "database"
) -> DatabaseUnavailableError:
    """``error`` met while connecting to ``url``, said in one line (the password hidden)."""
    return _said(url, _diagnose(make_url(url), error), what)


# The server went away under an open connection: restarted, crashed, shut
# down, or the network between dropped it (SQLAlchemy marks what it detects as
# a disconnect with ``connection_invalidated``).
_LOST_CONNECTION = (
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.CannotConnectNowError,
    ConnectionError,
)


def connection_lost(error: BaseException) -> bool:
    """Whether ``error`` means the connection itself was lost, not that what was sent failed.

    Work in a transaction on a lost connection did not commit (or, lost during
    COMMIT, its outcome is whatever the database now holds): it may be redone
    on a new connection once the state is read back.
    """
    for cause in _causes(error):
        if getattr(cause, "connection_invalidated", False):
            return True
        if isinstance(cause, _LOST_CONNECTION):
            return True
        if isinstance(cause, asyncpg.InterfaceError) and "closed" in str(cause):
            return True
    return False


def _said(url: str, diagnosis: Diagnosis, what: str = "database") -> DatabaseUnavailableError:
    reason, advice, transient = diagnosis
    return DatabaseUnavailableError(
        f"cannot use the {what} {redacted(url)}: {reason}; {advice}", transient=transient
    )


def missing_sqlite_folder(url: str) -> DatabaseUnavailableError | None:
    """A SQLite URL whose folder does not exist, said before any driver thread starts.

    Checked up front because a failed aiosqlite connect can leave its worker
    thread to print at interpreter exit, which would muddle a one-line error.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    if Path(parsed.database).parent.is_dir():
        return None
    return _said(url, _sqlite_diagnosis(parsed.database, FileNotFoundError()))


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
