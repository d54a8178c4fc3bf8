"""The Projection API: how a subscriber turns a batch of events into read-model rows.

A projection is an ``async`` callable named by an import path
(``package.module:function``). The subscriber calls it with a batch of events
(oldest first) and a :class:`ProjectionContext` whose connection is inside the
batch's transaction: the rows it writes commit together with the checkpoint, or
not at all. It must write in bulk (never one round trip per event) and must
raise on an event it cannot apply (a poison event): the subscriber then rolls
back, isolates the event, retries it, and dead-letters it or halts.

A projection may declare the tables it writes (created at start if missing)
and a reset hook (called on replay, in the transaction that rewinds the
checkpoint). Use the :func:`projection` decorator::

    @projection(tables=[my_table], reset=clear_my_table)
    async def project_things(events: Sequence[Event], context: ProjectionContext) -> None: ...

A plain async function works too; it then declares no tables and has no reset.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from sqlalchemy import Connection, Table, delete, text
from sqlalchemy.ext.asyncio import AsyncConnection

from feedline_subscriber.feed_transport import Event

__all__ = [
    "Event",
    "Projection",
    "ProjectionContext",
    "ProjectionLoadError",
    "bulk_upsert",
    "load_projection",
    "projection",
]


@dataclass
class ProjectionContext:
    """What a projection gets besides the events: the open transaction and who is asking."""

    connection: AsyncConnection
    subscription: str

    @property
    def dialect(self) -> str:
        """``postgresql`` or ``sqlite``."""
        return self.connection.dialect.name

    async def asyncpg_connection(self) -> Any:
        """The raw asyncpg connection of this transaction (PostgreSQL only).

        For bulk writes: ``executemany``, ``copy_records_to_table``, or one
        statement over arrays (``unnest``). It is in the same transaction.
        """
        if self.dialect != "postgresql":
            raise RuntimeError("asyncpg_connection() is only available on PostgreSQL")
        raw: Any = (await self.connection.get_raw_connection()).driver_connection
        if not raw.is_in_transaction():
            # SQLAlchemy sends BEGIN lazily, with its first statement: without one,
            # raw writes would autocommit outside the batch's transaction.
            await self.connection.execute(text("SELECT 1"))
            if not raw.is_in_transaction():
                raise RuntimeError("the batch's transaction did not begin on the server")
        return raw


ApplyFunction = Callable[[Sequence[Event], ProjectionContext], Awaitable[None]]
ResetFunction = Callable[[ProjectionContext], Awaitable[None]]


@dataclass(frozen=True)
class Projection:
    """A projection with its declarations; calling it applies a batch."""

    apply: ApplyFunction
    tables: tuple[Table, ...] = ()
    reset_hook: ResetFunction | None = None
    name: str = field(default="")

    async def __call__(self, events: Sequence[Event], context: ProjectionContext) -> None:
        await self.apply(events, context)

    async def create_tables(self, connection: AsyncConnection) -> None:
        def create(sync: Connection) -> None:
            for table in self.tables:
                table.create(sync, checkfirst=True)

        await connection.run_sync(create)

    async def reset(self, context: ProjectionContext) -> None:
        """Forget everything projected so far (replay): the hook, or empty the declared tables."""
        if self.reset_hook is not None:
            await self.reset_hook(context)
            return
        for table in self.tables:
            await context.connection.execute(delete(table))


def projection(
    *, tables: Sequence[Table] = (), reset: ResetFunction | None = None
) -> Callable[[ApplyFunction], Projection]:
    """Declare a projection's tables and reset hook."""

    def wrap(apply: ApplyFunction) -> Projection:
        name = f"{apply.__module__}:{getattr(apply, '__qualname__', repr(apply))}"
        return Projection(apply=apply, tables=tuple(tables), reset_hook=reset, name=name)

    return wrap


_SQL_TYPE = re.compile(r"[a-z][a-z0-9_ ]*")


class ProjectionLoadError(ValueError):
    """The import path does not name a usable projection."""


def load_projection(import_path: str) -> Projection:
    """Import ``package.module:function`` and return it as a Projection."""
    module_name, _, attribute = import_path.partition(":")
    if not module_name or not attribute:
        raise ProjectionLoadError(f"{import_path!r} is not an import path package.module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ProjectionLoadError(f"cannot import module {module_name!r}: {exc}") from exc
    target = getattr(module, attribute, None)
    if target is None:
        raise ProjectionLoadError(f"module {module_name!r} has no attribute {attribute!r}")
    if isinstance(target, Projection):
        return target
    if callable(target):
        return Projection(apply=target, name=import_path)
    raise ProjectionLoadError(f"{import_path!r} is not callable")


async def _any_key_exists(
    connection: Any, table: str, key: str, key_type: str, keys: list[Any]
) -> bool:
    """Whether ``table`` has a row with one of ``keys`` (index probes only).

    Integer keys are probed as one range first (new rows usually get keys
    above every existing one, so the range is empty), which spares sending
    and probing each key; only a range that holds rows is probed key by key.
    """
    if set(map(type, keys)) == {int}:
        in_range = await connection.fetchval(
            f"SELECT EXISTS (SELECT FROM {table} WHERE {key} BETWEEN $1 AND $2)",  # noqa: S608
            min(keys),
            max(keys),
        )
        if not in_range:
            return False
    return bool(
        await connection.fetchval(
            f"SELECT EXISTS (SELECT FROM {table} WHERE {key} = ANY($1::{key_type}[]))",  # noqa: S608
            keys,
        )
    )


async def bulk_upsert(
    context: ProjectionContext,
    table: str,
    columns: Sequence[str],
    key_columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    key_type: str | None = None,
) -> None:
    """Insert or update ``rows`` in ``table`` with one round trip's worth of statements.

    PostgreSQL: COPY into a temporary staging table (emptied at commit), then
    one ``INSERT ... SELECT ... ON CONFLICT DO UPDATE``: COPY is the fastest way
    in, and measured several times faster than one INSERT over ``unnest`` arrays.
    With ``key_type`` (the SQL type of a single key column, e.g. ``bigint``),
    an index probe first asks whether any of the keys is in the table; when
    none is (a catch-up into a new read model, mostly), the rows are COPied
    straight into the table instead, in a savepoint: should a key have been
    written meanwhile, the savepoint rolls back and the upsert runs. Measured
    on 200,000 rows in batches of 10,000: ~0.3 s of server CPU against ~0.6 s
    for staging + upsert.
    SQLite: one ``executemany`` of an ``INSERT ... ON CONFLICT DO UPDATE``.
    Names and types are the caller's constants, never data.
    """
    if not rows:
        return
    column_list = ", ".join(columns)
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in key_columns)
    conflict = f"ON CONFLICT ({', '.join(key_columns)}) DO UPDATE SET {updates}"
    if context.dialect == "postgresql":
        connection = await context.asyncpg_connection()
        if key_type is not None and len(key_columns) == 1:
            if not _SQL_TYPE.fullmatch(key_type):
                raise ValueError(f"key_type {key_type!r} is not an SQL type name")
            position = list(columns).index(key_columns[0])
            keys = [row[position] for row in rows]
            if not await _any_key_exists(connection, table, key_columns[0], key_type, keys):
                try:
                    async with connection.transaction():  # a savepoint
                        await connection.copy_records_to_table(
                            table, records=rows, columns=list(columns)
                        )
                except asyncpg.UniqueViolationError:
                    pass  # a key appeared since the probe: the upsert below handles it
                else:
                    return
        staging = f"feedline_staging_{table}"
        await connection.execute(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {staging} "
            f"(LIKE {table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        await connection.copy_records_to_table(staging, records=rows, columns=list(columns))
        await connection.execute(
            f"INSERT INTO {table} ({column_list}) SELECT {column_list} FROM {staging} {conflict}"  # noqa: S608
        )
        return
    placeholders = ", ".join(f":{c}" for c in columns)
    await context.connection.execute(
        text(f"INSERT INTO {table} ({column_list}) VALUES ({placeholders}) {conflict}"),  # noqa: S608
        [dict(zip(columns, row, strict=True)) for row in rows],
    )
