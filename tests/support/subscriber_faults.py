"""Crash tests' fault injection: a `feedline subscribe` process SIGKILLs itself at a chosen point.

None of this ships. The crash tests start the subscriber with
``tests/support/crash_site`` first on its ``PYTHONPATH`` (see :func:`crash_env`);
that folder's ``sitecustomize`` calls :func:`install_from_environment`, which
wraps methods the subscriber calls for its own reasons (``PageStream._next_page``,
``BatchApplier.apply``, ``Projection.__call__``, ``CheckpointStore.advance``),
listens to SQLAlchemy's statements, and wraps the drivers' commit (asyncpg,
aiosqlite).

``SUBSCRIBER_CRASH_PLAN=POINT@BATCH[:DELAY_MS]`` picks the point and the batch
(batches count the pages this process takes from the feed, from 1). Just
before the kill, one JSON line saying where it landed is appended to the file
named by ``SUBSCRIBER_CRASH_RECORD`` (``point``, ``batch``, the checkpoint
before the batch ``old`` and the batch's end ``end``, and what the point could
see). Points, in the order a batch passes them:

- ``after-fetch``: ``PageStream._next_page`` returned the batch's page; no
  transaction yet.
- ``during-write``: in the batch's transaction, inside the projection, right
  after its first statement that writes rows (INSERT or UPDATE through
  SQLAlchemy); ``rows`` is how many of the batch's rows the open transaction
  holds at that moment, read back inside it (a second cursor on its connection).
- ``before-commit``: ``CheckpointStore.advance`` returned; ``checkpoint`` is the
  position read back inside the still open transaction. COMMIT is not sent.
- ``during-commit``: the driver has sent COMMIT (asyncpg: written to the
  socket, ``unsentBytes`` 0; aiosqlite: handed to its thread); then the event
  loop stands still for DELAY_MS, so the answer is never read
  (``answerRead`` false), and the process dies. PostgreSQL or SQLite's thread
  may or may not have committed: the test reads the checkpoint back to learn it.
- ``after-commit``: ``BatchApplier.apply`` returned: the batch is committed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import orjson

POINTS = ("after-fetch", "during-write", "before-commit", "during-commit", "after-commit")
PLAN_VARIABLE = "SUBSCRIBER_CRASH_PLAN"
RECORD_VARIABLE = "SUBSCRIBER_CRASH_RECORD"
SITE_DIR = Path(__file__).resolve().with_name("crash_site")
REPO = Path(__file__).resolve().parents[2]
_WRITES = frozenset({"INSERT", "UPDATE"})  # statements that leave rows behind


@dataclass(frozen=True)
class FaultPlan:
    point: str
    batch: int
    delay_ms: float = 0.0


def parse_fault_plan(value: str) -> FaultPlan:
    point, _, rest = value.partition("@")
    batch_text, _, delay_text = rest.partition(":")
    if point not in POINTS or not batch_text.isdigit():
        raise ValueError(
            f"{PLAN_VARIABLE}={value!r}: expected POINT@BATCH[:DELAY_MS] with POINT one of "
            f"{', '.join(POINTS)}"
        )
    return FaultPlan(point, int(batch_text), float(delay_text) if delay_text else 0.0)


def crash_env(plan: str, record: Path) -> dict[str, str]:
    """Extra variables for ``subscriber_env``: load this module, follow ``plan``."""
    parse_fault_plan(plan)
    return {
        "PYTHONPATH": os.pathsep.join([str(SITE_DIR), str(REPO)]),
        PLAN_VARIABLE: plan,
        RECORD_VARIABLE: str(record),
    }


def read_landings(record: Path) -> list[dict[str, Any]]:
    """The kills written to ``record``, oldest first."""
    if not record.exists():
        return []
    return [orjson.loads(line) for line in record.read_bytes().splitlines() if line.strip()]


class _Faults:
    """What the wrappers share: the plan, the current batch and how far it got."""

    def __init__(self, plan: FaultPlan, record: Path) -> None:
        self.plan = plan
        self.record = record
        self.batch = 0
        self.old: int | None = None
        self.end: int | None = None
        self.phase = "idle"  # fetched, writing, advanced, committed
        self.projecting = 0  # depth: a projection may call another (audited -> loyalty)

    def due(self, point: str) -> bool:
        return self.plan.point == point and self.batch == self.plan.batch

    def kill(self, **facts: Any) -> NoReturn:
        landing = {"point": self.plan.point, "batch": self.batch, "old": self.old, "end": self.end}
        line = orjson.dumps({**landing, **facts}) + b"\n"
        descriptor = os.open(self.record, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(descriptor, line)  # in the page cache before the kill: it survives it
        finally:
            os.close(descriptor)
        os.kill(os.getpid(), signal.SIGKILL)
        raise SystemExit("unreachable: SIGKILL")

    async def kill_during_commit(
        self, committing: Coroutine[Any, Any, Any], unsent_bytes: Callable[[], int | None]
    ) -> NoReturn:
        task = asyncio.ensure_future(committing)
        # One turn of the loop: the task sends COMMIT and waits for the answer.
        await asyncio.sleep(0)
        # Block the loop itself, so the answer (if one comes) is never read.
        time.sleep(self.plan.delay_ms / 1000)  # noqa: ASYNC251 - blocking on purpose
        self.kill(commitSent=True, answerRead=task.done(), unsentBytes=unsent_bytes())

    def count_rows(self, dbapi_connection: Any) -> dict[str, int] | None:
        """The batch's rows the open transaction holds (audited projection's tables)."""
        first, last = int(self.old or 0) + 1, int(self.end or 0)
        sql = (
            "SELECT (SELECT count(*) FROM subscriber_test_applied "  # noqa: S608 - integers
            f"WHERE sequence_number BETWEEN {first} AND {last}), "
            "(SELECT count(*) FROM loyalty_special_offers "
            f"WHERE last_sequence_number BETWEEN {first} AND {last})"
        )
        try:
            cursor = dbapi_connection.cursor()
            cursor.execute(sql)
            applied, offers = cursor.fetchone()
            cursor.close()
        except Exception:  # another projection's tables: say so, the test decides
            return None
        return {"subscriber_test_applied": int(applied), "loyalty_special_offers": int(offers)}


def _patch(owner: Any, name: str, replacement: Any) -> None:
    setattr(owner, name, replacement)


def install(plan: FaultPlan, record: Path) -> None:
    """Wrap the subscriber's own steps so that the process dies at ``plan``."""
    import aiosqlite
    import asyncpg.transaction
    from sqlalchemy import event, select
    from sqlalchemy.engine import Engine
    from sqlalchemy.ext.asyncio import AsyncConnection

    from feedline_subscriber.batch_applier import BatchApplier
    from feedline_subscriber.checkpoint import CheckpointStore, checkpoints
    from feedline_subscriber.feed_client import Event, Page
    from feedline_subscriber.page_stream import PageStream
    from feedline_subscriber.projection import Projection, ProjectionContext

    faults = _Faults(plan, record)

    next_page = PageStream._next_page

    async def _next_page(self: PageStream, fetch: asyncio.Task[Page]) -> Page | None:
        page = await next_page(self, fetch)
        if page is not None:
            faults.batch += 1
            faults.old, faults.end = self.position, page.next_start - 1
            faults.phase = "fetched"
            if faults.due("after-fetch"):
                faults.kill()
        return page

    apply = BatchApplier.apply

    async def _apply(self: BatchApplier, events: Sequence[Event], old: int, new: int) -> None:
        faults.old, faults.end, faults.phase = old, new, "writing"
        await apply(self, events, old, new)
        faults.phase = "committed"
        if faults.due("after-commit"):
            faults.kill()

    project = Projection.__call__

    async def _project(
        self: Projection, events: Sequence[Event], context: ProjectionContext
    ) -> None:
        faults.projecting += 1
        try:
            await project(self, events, context)
        finally:
            faults.projecting -= 1

    def _after_statement(
        connection: Any, _cursor: Any, statement: str, *_args: Any, **_kwargs: Any
    ) -> None:
        if not (faults.projecting and faults.due("during-write")):
            return
        words = statement.split(None, 1)
        if not words or words[0].upper() not in _WRITES:
            return
        faults.projecting = 0  # the read-back below is not the projection's
        rows = faults.count_rows(connection.connection.dbapi_connection)
        faults.kill(statement=" ".join(statement.split())[:80], rows=rows)

    advance = CheckpointStore.advance

    async def _advance(
        self: CheckpointStore, connection: AsyncConnection, expected: int, position: int
    ) -> None:
        await advance(self, connection, expected, position)
        if faults.phase != "writing":
            return
        faults.phase = "advanced"
        if faults.due("before-commit"):
            stored = await connection.scalar(
                select(checkpoints.c.position).where(
                    checkpoints.c.subscription == self.subscription
                )
            )
            faults.kill(checkpoint=stored)

    def committing_batch() -> bool:
        return faults.phase == "advanced" and faults.due("during-commit")

    asyncpg_commit = asyncpg.transaction.Transaction.commit

    async def _asyncpg_commit(self: Any) -> None:
        if committing_batch() and not self._nested:
            transport = self._connection._transport
            await faults.kill_during_commit(asyncpg_commit(self), transport.get_write_buffer_size)
        await asyncpg_commit(self)

    aiosqlite_commit = aiosqlite.Connection.commit

    async def _aiosqlite_commit(self: aiosqlite.Connection) -> None:
        if committing_batch():
            await faults.kill_during_commit(aiosqlite_commit(self), lambda: None)
        await aiosqlite_commit(self)

    _patch(PageStream, "_next_page", _next_page)
    _patch(BatchApplier, "apply", _apply)
    _patch(Projection, "__call__", _project)
    _patch(CheckpointStore, "advance", _advance)
    _patch(asyncpg.transaction.Transaction, "commit", _asyncpg_commit)
    _patch(aiosqlite.Connection, "commit", _aiosqlite_commit)
    event.listen(Engine, "after_cursor_execute", _after_statement)


def install_from_environment() -> None:
    """Called by tests/support/crash_site/sitecustomize.py at interpreter start."""
    value = os.environ.get(PLAN_VARIABLE)
    if not value:
        return
    install(parse_fault_plan(value), Path(os.environ[RECORD_VARIABLE]))
