"""Applies one batch of events to the read model and moves the checkpoint, in one transaction.

The fast path runs the projection over the whole batch. When it fails, the
transaction rolls back and the slow path bisects the batch in savepoints to
find the poison events; each is retried with backoff, then dead-lettered or,
under the Halt policy, the events before it are committed with the
checkpoint just before it and :class:`PoisonEventHaltError` ends the run.

A lost database connection is never taken for a poison event: it ends the
batch at once (nothing of it committed) for the run to reconnect and go on
from the checkpoint (:mod:`feedline_subscriber.runner`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import structlog
from sqlalchemy.ext.asyncio import AsyncConnection

from feedline_contracts.database import connection_lost
from feedline_subscriber.checkpoint import CheckpointStore
from feedline_subscriber.feed_transport import Event
from feedline_subscriber.lock import SubscriptionLock
from feedline_subscriber.projection import Projection, ProjectionContext
from feedline_subscriber.settings import PoisonPolicy, SubscriberSettings
from feedline_subscriber.summary import RunState

log = structlog.get_logger("feedline.subscriber")

MAX_POISON_BACKOFF_SECONDS = 60.0


def describe(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class PoisonEventHaltError(Exception):
    """A poison event under the Halt policy; the checkpoint stays just before it."""

    def __init__(self, sequence_number: int, event_name: str, attempts: int, error: str) -> None:
        self.sequence_number = sequence_number
        self.event_name = event_name
        self.attempts = attempts
        self.error = error
        super().__init__(
            f"halted at event {sequence_number} ({event_name}) after {attempts} attempts: "
            f"{error}; the position stays at {self.position}"
        )

    @property
    def position(self) -> int:
        """Where the checkpoint stays: the last sequence number before the poison event."""
        return self.sequence_number - 1


class _ProjectionFailedError(Exception):
    """Carries a projection's exception out of the batch transaction (so it rolls back)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class BatchApplier:
    """Applies batches on the run's connection (the one holding the lock), counting in ``state``."""

    def __init__(
        self,
        connection: AsyncConnection,
        *,
        settings: SubscriberSettings,
        projection: Projection,
        checkpoints: CheckpointStore,
        lock: SubscriptionLock,
        state: RunState,
    ) -> None:
        self.connection = connection
        self.settings = settings
        self.projection = projection
        self.checkpoints = checkpoints
        self.lock = lock
        self.state = state

    def _context(self) -> ProjectionContext:
        return ProjectionContext(
            connection=self.connection, subscription=self.settings.subscription
        )

    async def apply(self, events: Sequence[Event], old: int, new: int) -> None:
        """Apply one batch and move the checkpoint from ``old`` to ``new``, in one transaction."""
        connection = self.connection
        context = self._context()
        try:
            async with connection.begin():
                await self.lock.fence(connection)
                if events:
                    try:
                        await self.projection(events, context)
                    except Exception as exc:
                        raise _ProjectionFailedError(exc) from exc
                await self.checkpoints.advance(connection, old, new)
            self.state.processed += len(events)
        except _ProjectionFailedError as failed:
            if connection_lost(failed.error):
                raise failed.error from None
            log.warning(
                "batch failed; isolating the poison event",
                first=events[0].sequence_number,
                last=events[-1].sequence_number,
                error=describe(failed.error),
            )
            await self._apply_isolating(events, old, new)

    async def _apply_isolating(self, events: Sequence[Event], old: int, new: int) -> None:
        """The slow path: bisect the batch in savepoints to find and handle poison events."""
        connection = self.connection
        context = self._context()
        halted: PoisonEventHaltError | None = None
        counts = (self.state.processed, self.state.dead_lettered)
        try:
            async with connection.begin():
                await self.lock.fence(connection)
                try:
                    await self._apply_range(context, events)
                    await self.checkpoints.advance(connection, old, new)
                except PoisonEventHaltError as exc:
                    halted = exc
                    if exc.position > old:
                        await self.checkpoints.advance(connection, old, exc.position)
        except BaseException:
            self.state.processed, self.state.dead_lettered = counts  # nothing was committed
            raise
        if halted is not None:
            self.state.position = max(old, halted.position)
            raise halted

    async def _apply_range(self, context: ProjectionContext, events: Sequence[Event]) -> None:
        if not events:
            return
        if len(events) > 1:
            try:
                async with context.connection.begin_nested():
                    await self.projection(events, context)
                self.state.processed += len(events)
                return
            except Exception as exc:
                if connection_lost(exc):
                    raise
                middle = len(events) // 2
                await self._apply_range(context, events[:middle])
                await self._apply_range(context, events[middle:])
                return
        await self._apply_one(context, events[0])

    async def _apply_one(self, context: ProjectionContext, event: Event) -> None:
        settings = self.settings
        error: BaseException | None = None
        for attempt in range(1, settings.retry_max_attempts + 1):
            if attempt > 1:
                await asyncio.sleep(
                    min(
                        settings.retry_backoff_seconds * 2 ** (attempt - 2),
                        MAX_POISON_BACKOFF_SECONDS,
                    )
                )
            try:
                async with context.connection.begin_nested():
                    await self.projection([event], context)
            except Exception as exc:
                if connection_lost(exc):
                    raise
                error = exc
                log.warning(
                    "event failed",
                    sequence_number=event.sequence_number,
                    attempt=attempt,
                    error=describe(exc),
                )
                continue
            self.state.processed += 1
            return
        assert error is not None
        attempts = settings.retry_max_attempts
        if settings.on_poison_event is PoisonPolicy.DEAD_LETTER:
            await self.checkpoints.dead_letter(context.connection, event, describe(error), attempts)
            self.state.dead_lettered += 1
            log.warning(
                "dead-lettered", sequence_number=event.sequence_number, error=describe(error)
            )
            return
        raise PoisonEventHaltError(event.sequence_number, event.name, attempts, describe(error))
