"""Commit notifications that wake long polls (``GET /events?wait=``).

In one process, the event store fires a ``CommitSignal`` after each committed
append. Across replicas (PostgreSQL), appends ``NOTIFY`` at commit and every
replica's ``PostgresCommitListener`` fires its local signal. Waiters re-check
the database on a short timer too, so a lost notification delays an answer by
at most that interval instead of losing it.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import asyncpg
import structlog

log = structlog.get_logger("feedline.notifications")


class CommitWatch:
    """The commit signal as taken hold of at one moment: any fire since then wakes it."""

    def __init__(self, fired: asyncio.Event, generation: int) -> None:
        self._fired = fired
        # How many times the signal had fired when the watch was taken.
        self.generation = generation

    async def wait(self, seconds: float) -> bool:
        """True when fired since the watch was taken (at once if already), within ``seconds``."""
        try:
            await asyncio.wait_for(self._fired.wait(), seconds)
        except TimeoutError:
            return False
        return True


class CommitSignal:
    """A broadcast "something was committed": each fire wakes every current waiter."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.fires = 0

    def fire(self) -> None:
        self.fires += 1
        self._event.set()
        self._event = asyncio.Event()

    def watch(self) -> CommitWatch:
        """Take hold of the signal now, before reading: a fire between this call and the
        watch's ``wait`` (a commit while the reader reads) still wakes that wait."""
        return CommitWatch(self._event, self.fires)

    async def wait(self, seconds: float) -> bool:
        """True when fired within ``seconds`` (from when the wait starts)."""
        return await self.watch().wait(seconds)


class PostgresCommitListener:
    """LISTENs on a channel and fires ``signal`` per notification; reconnects if dropped."""

    def __init__(self, dsn: str, channel: str, signal: CommitSignal) -> None:
        self._dsn = dsn
        self._channel = channel
        self._signal = signal
        self._task: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="feedline-commit-listener")
        await asyncio.wait_for(self._listening.wait(), timeout=30)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _on_notify(self, *_args: Any) -> None:
        self._signal.fire()

    async def _run(self) -> None:
        delay = 0.1
        while True:
            lost = asyncio.Event()
            try:
                connection = await asyncpg.connect(self._dsn)
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("commit listener cannot connect; retrying", error=str(exc), delay=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            try:
                connection.add_termination_listener(lambda _conn, lost=lost: lost.set())
                await connection.add_listener(self._channel, self._on_notify)
                delay = 0.1
                self._listening.set()
                # Anything committed while we were not listening: wake waiters to re-check.
                self._signal.fire()
                await lost.wait()
                log.warning("commit listener connection lost; reconnecting")
            finally:
                with contextlib.suppress(Exception):
                    await connection.close(timeout=2)
