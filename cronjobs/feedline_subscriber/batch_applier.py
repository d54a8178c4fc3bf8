"""Applies one batch of events to the read model and moves the checkpoint, in one transaction.

The fast path runs the projection over the whole batch. When it fails, the
transaction rolls back and the slow path bisects the batch in savepoints to
find the poison events; each is retried with backoff, then dead-lettered or,
under the Halt policy, the events before it are committed with the
checkpoint just before it and :class:`PoisonEventHaltError` ends the run.

A lost database connection is never taken for a poison event: it ends the
batch at once (nothing of it committed) for the run to reconnect and go on
from the checkpoint (:mod:`feedline_subscriber.runner`).

Telemetry on (docs/subscriber.md, "Spans and links"): each batch is applied
inside a ``subscriber.batch`` span, the read-model write and the checkpoint's
transaction. It LINKS to the span that appended each of its events (the
events' ``traceparent``: the request that raised them), distinct contexts
only, at most ``MAX_LINKS_PER_SPAN`` (128); ``feedline.links.dropped`` counts
the rest. Off, nothing of this runs: no event's traceparent is even parsed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import structlog
from opentelemetry.trace import Link, Tracer
from sqlalchemy.ext.asyncio import AsyncConnection

from feedline_contracts.database import connection_lost
from feedline_contracts.telemetry import MAX_LINKS_PER_SPAN, Telemetry, span_context_of
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


def batch_links(
    events: Sequence[Event], max_links: int = MAX_LINKS_PER_SPAN
) -> tuple[list[Link], int]:
    """Links to the spans that appended ``events`` (first ``max_links`` distinct), and how
    many more distinct ones were left out. Events without a valid traceparent add none."""
    seen: set[str] = set()
    links: list[Link] = []
    dropped = 0
    for event in events:
        traceparent = event.traceparent
        if not traceparent or traceparent in seen:
            continue
        seen.add(traceparent)
        if len(links) >= max_links:
            dropped += 1
            continue
        span_context = span_context_of(traceparent)
        if span_context is not None:
            links.append(Link(span_context, {"feedline.sequence_number": event.sequence_number}))
    return links, dropped


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
        telemetry: Telemetry | None = None,
    ) -> None:
        self.connection = connection
        self.settings = settings
        self.projection = projection
        self.checkpoints = checkpoints
        self.lock = lock
        self.state = state
        self._tracer = telemetry.tracer if telemetry is not None else None
        self._applied = (
            telemetry.meter.create_counter(
                "feedline.events.applied",
                unit="{event}",
                description="Events applied to the read model (dead-lettered ones not counted).",
            )
            if telemetry is not None and telemetry.meter is not None
            else None
        )

    def _context(self) -> ProjectionContext:
        return ProjectionContext(
            connection=self.connection, subscription=self.settings.subscription
        )

    async def apply(self, events: Sequence[Event], old: int, new: int) -> None:
        """Apply one batch and move the checkpoint from ``old`` to ``new``, in one transaction."""
        processed = self.state.processed
        try:
            if self._tracer is None:
                await self._apply(events, old, new)
            else:
                await self._traced_apply(self._tracer, events, old, new)
        finally:
            if self._applied is not None and self.state.processed > processed:
                self._applied.add(
                    self.state.processed - processed,
                    {"feedline.subscription": self.settings.subscription},
                )

    async def _traced_apply(
        self, tracer: Tracer, events: Sequence[Event], old: int, new: int
    ) -> None:
        links, dropped = batch_links(events)
        attributes: dict[str, str | int] = {
            "feedline.subscription": self.settings.subscription,
            "feedline.events.count": len(events),
            "feedline.checkpoint.old": old,
            "feedline.checkpoint.new": new,
            "feedline.links.dropped": dropped,
        }
        if events:
            attributes["feedline.sequence_number.first"] = events[0].sequence_number
            attributes["feedline.sequence_number.last"] = events[-1].sequence_number
        with tracer.start_as_current_span("subscriber.batch", links=links, attributes=attributes):
            await self._apply(events, old, new)

    async def _apply(self, events: Sequence[Event], old: int, new: int) -> None:
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
