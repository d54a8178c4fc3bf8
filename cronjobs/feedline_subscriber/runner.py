"""One subscriber run: lock, checkpoint, read pages, apply them, summarise.

Effectively-once: each batch's read-model writes and the new checkpoint are
committed in one transaction, on the one connection that also holds the
subscription's lock. A crash at any point leaves either the old checkpoint
and none of the batch, or the new checkpoint and all of it; the next run
starts after the checkpoint.

Throughput: the next page is fetched while the current one is written, so
the feed's latency and the database's overlap; pages are large and the
built-in projections write a batch in one or two statements.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog
from sqlalchemy.ext.asyncio import AsyncConnection

from feedline_contracts.database import Database, DatabaseUnavailableError, connect_database
from feedline_subscriber.checkpoint import (
    SQLITE_LEASE_SECONDS,
    Checkpoint,
    CheckpointStore,
    SubscriptionLock,
    create_subscriber_tables,
)
from feedline_subscriber.feed_client import Event, FeedClient, FeedProtocolError, Page
from feedline_subscriber.projection import Projection, ProjectionContext, load_projection
from feedline_subscriber.read_model import read_model_connection
from feedline_subscriber.settings import PoisonPolicy, SubscriberSettings
from feedline_subscriber.summary import Outcome, Summary, utc_now

log = structlog.get_logger("feedline.subscriber")

LOCK_POLL_SECONDS = 1.0  # follow mode: how often a standby follower tries the lock
MAX_POISON_BACKOFF_SECONDS = 60.0


# Catch-up: how many pages may be on their way at once (see _prefetch).
PREFETCH_PAGES = 2


@dataclass(frozen=True)
class _Fetch:
    start: int
    task: asyncio.Task[Page]


async def _drop_all(pending: deque[_Fetch]) -> None:
    """Cancel the fetches still on their way and wait until they have stopped."""
    for fetch in pending:
        fetch.task.cancel()
    for fetch in pending:
        with contextlib.suppress(BaseException):
            await fetch.task
    pending.clear()


class HaltedError(Exception):
    """A poison event under the Halt policy; the checkpoint stays before it."""


class _ProjectionFailedError(Exception):
    """Carries a projection's exception out of the batch transaction (so it rolls back)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass
class RunState:
    subscription: str
    start_time: str = field(default_factory=utc_now)
    position: int | None = None
    head: int | None = None
    processed: int = 0
    dead_lettered: int = 0
    message: str = ""

    def summary(self, outcome: Outcome, *, finished: bool = True) -> Summary:
        return Summary(
            subscription=self.subscription,
            position=self.position,
            head=self.head,
            processed=self.processed,
            deadLettered=self.dead_lettered,
            outcome=outcome,
            message=self.message,
            startTime=self.start_time,
            completionTime=utc_now() if finished else None,
        )

    def progress_outcome(self) -> Outcome:
        if self.position is not None and self.head is not None and self.position >= self.head:
            return Outcome.CAUGHT_UP
        return Outcome.PROGRESSED


def describe(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class SubscriberRun:
    def __init__(
        self,
        settings: SubscriberSettings,
        *,
        stop: asyncio.Event,
        on_progress: Callable[[Summary], None] | None = None,
    ) -> None:
        self.settings = settings
        self.stop = stop
        self.on_progress = on_progress
        self.state = RunState(settings.subscription)
        self.checkpoints = CheckpointStore(settings.subscription)
        self.projection: Projection
        self.database: Database
        self.lock: SubscriptionLock
        self.feed = FeedClient(
            settings.feed_url,
            event_types=settings.event_types,
            token_file=settings.token_file(),
            retry_attempts=settings.feed_retry_attempts,
        )

    def _report(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.state.summary(self.state.progress_outcome(), finished=False))

    async def execute(self) -> Summary:
        """The whole run; never raises (the summary says what happened)."""
        try:
            self.projection = load_projection(self.settings.projection)
            self.database = connect_database(self.settings.database_url, pool_size=2)
        except Exception as exc:
            self.state.message = f"{describe(exc)} (--projection / --database-url)"
            await self.feed.aclose()
            return self.state.summary(Outcome.FAILED)
        try:
            return await self._locked_run()
        except HaltedError as exc:
            self.state.message = str(exc)
            return self.state.summary(Outcome.HALTED)
        except DatabaseUnavailableError as exc:  # says which database and what to do
            log.error("run failed", error=str(exc))
            self.state.message = str(exc)
            return self.state.summary(Outcome.FAILED)
        except Exception as exc:
            log.error("run failed", error=describe(exc), traceback=traceback.format_exc())
            self.state.message = describe(exc)
            return self.state.summary(Outcome.FAILED)
        finally:
            await self.feed.aclose()
            await self.database.dispose()

    async def _locked_run(self) -> Summary:
        dialect = self.database.dialect
        self.lock = SubscriptionLock(self.settings.subscription, dialect)
        async with read_model_connection(
            self.database,
            self.settings.database_url,
            retry_attempts=self.settings.database_retries,
            stop=self.stop,
        ) as connection:
            while not await self.lock.try_acquire(connection):
                if not self.settings.follow:
                    self.state.message = (
                        f"subscription {self.settings.subscription!r} is locked by "
                        f"{self.lock.holder}; this run applied nothing and exits"
                    )
                    log.info("locked", holder=self.lock.holder)
                    return self.state.summary(Outcome.LOCKED)
                log.info("waiting for the lock", holder=self.lock.holder)
                self.state.message = f"standby: waiting for the lock held by {self.lock.holder}"
                self._report()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), LOCK_POLL_SECONDS)
                if self.stop.is_set():
                    return self.state.summary(Outcome.PROGRESSED)
            self.state.message = ""
            heartbeat = asyncio.create_task(self._heartbeat()) if dialect == "sqlite" else None
            try:
                await self._prepare(connection)
                await self._read_and_apply(connection)
            finally:
                if heartbeat is not None:
                    heartbeat.cancel()
                    with contextlib.suppress(BaseException):
                        await heartbeat
                with contextlib.suppress(Exception):
                    await self.lock.release(connection)
        outcome = self.state.progress_outcome()
        if not self.state.message:
            lag = self.state.summary(outcome).lag
            self.state.message = (
                "caught up" if outcome is Outcome.CAUGHT_UP else f"stopped with lag {lag}"
            )
        return self.state.summary(outcome)

    async def _heartbeat(self) -> None:
        """SQLite: renew the lease while the run waits on the feed or a long batch."""
        while True:
            await asyncio.sleep(SQLITE_LEASE_SECONDS / 3)
            async with self.database.transaction() as connection:
                await self.lock.renew(connection)

    async def _prepare(self, connection: AsyncConnection) -> None:
        """Tables, the checkpoint, and a replay when the token changed."""
        settings = self.settings
        async with connection.begin():
            await create_subscriber_tables(connection)
            await self.projection.create_tables(connection)
        async with connection.begin():
            checkpoint = await self.checkpoints.read(connection)
        if checkpoint is None:
            position = await self._start_position()
            async with connection.begin():
                await self.checkpoints.create(
                    connection, Checkpoint(position, settings.replay_token)
                )
            log.info("new subscription", position=position)
        elif checkpoint.replay_token != settings.replay_token:
            position = settings.replay_from_sequence - 1
            async with connection.begin():
                await self.projection.reset(self._context(connection))
                await self.checkpoints.reset(
                    connection, Checkpoint(position, settings.replay_token)
                )
            log.info(
                "replay",
                from_position=checkpoint.position,
                to_position=position,
                replay_token=settings.replay_token,
            )
        else:
            position = checkpoint.position
        self.state.position = position

    async def _start_position(self) -> int:
        start = self.settings.start_position
        if start == "Beginning":
            return 0
        if start == "Head":
            return (await self.feed.fetch(1, 1)).head
        return int(start) - 1

    def _context(self, connection: AsyncConnection) -> ProjectionContext:
        return ProjectionContext(connection=connection, subscription=self.settings.subscription)

    def _limit(self) -> int:
        budget = self._budget_left()
        if budget is None:
            return self.settings.batch_size
        return max(min(self.settings.batch_size, budget), 1)

    def _budget_left(self) -> int | None:
        budget = self.settings.max_events_per_run
        return None if budget == 0 else budget - self.state.processed - self.state.dead_lettered

    async def _next_page(self, fetch: asyncio.Task[Page]) -> Page | None:
        """The fetched page, or None when asked to stop first (the fetch is dropped)."""
        stopping = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait({fetch, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if fetch.done():
            return fetch.result()
        fetch.cancel()
        with contextlib.suppress(BaseException):
            await fetch
        return None

    def _fetch(self, start: int, limit: int, wait: float = 0.0) -> _Fetch:
        return _Fetch(start, asyncio.create_task(self.feed.fetch(start, limit, wait=wait)))

    def _prefetch(self, pending: deque[_Fetch], head: int) -> None:
        """Catch-up: also ask for the page after the pending one before it arrives.

        Without a type filter a full page from S ends at S + limit - 1, so the
        next one starts at S + limit; while that is at or below the head, up to
        PREFETCH_PAGES pages are on their way at once, so the service prepares
        one while the other travels and is checked. A prefetched page is used
        only if it starts where the previous page's ``Link: next`` points (and
        is checked against its own start, as every page is); otherwise it is
        dropped and the right page is fetched.
        """
        if self.settings.event_types or self.settings.max_events_per_run:
            return  # where the next page starts, or how long it is, is not known ahead
        limit = self.settings.batch_size
        while pending and len(pending) < PREFETCH_PAGES:
            start = pending[-1].start + limit
            if start > head:
                return
            pending.append(self._fetch(start, limit))

    async def _read_and_apply(self, connection: AsyncConnection) -> None:
        settings = self.settings
        assert self.state.position is not None
        position = self.state.position
        wait = settings.feed_wait_seconds if settings.follow else 0.0
        # Pages asked for, oldest first; the first one starts at position + 1.
        pending: deque[_Fetch] = deque([self._fetch(position + 1, self._limit())])
        try:
            while pending:
                page = await self._next_page(pending.popleft().task)
                if page is None:
                    break
                events, new_position = page.events, page.next_start - 1
                budget = self._budget_left()
                if budget is not None and len(events) > budget:
                    events = events[:budget]
                    new_position = events[-1].sequence_number if events else position
                if not events and new_position == position and page.head > position:
                    raise FeedProtocolError(
                        f"the feed returned no events and no progress from start={position + 1} "
                        f"although Feed-Head is {page.head}"
                    )
                self.state.head = page.head
                caught_up = new_position >= page.head
                budget_done = budget is not None and len(events) >= budget
                if pending and pending[0].start != new_position + 1:
                    await _drop_all(pending)  # prefetched from the wrong place
                if (
                    not self.stop.is_set()
                    and not budget_done
                    and (settings.follow or not caught_up)
                ):
                    # Pipelining: the next pages travel while this one is written.
                    if not pending:
                        pending.append(
                            self._fetch(new_position + 1, self._limit(), wait if caught_up else 0.0)
                        )
                    self._prefetch(pending, page.head)
                else:
                    await _drop_all(pending)
                if new_position > position:
                    await self._apply(connection, events, position, new_position)
                    position = new_position
                    self.state.position = position
                self._report()
                if self.stop.is_set():
                    break
        finally:
            await _drop_all(pending)

    async def _apply(
        self, connection: AsyncConnection, events: Sequence[Event], old: int, new: int
    ) -> None:
        """Apply one page and move the checkpoint, in one transaction."""
        context = self._context(connection)
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
            log.warning(
                "batch failed; isolating the poison event",
                first=events[0].sequence_number,
                last=events[-1].sequence_number,
                error=describe(failed.error),
            )
            await self._apply_isolating(connection, events, old, new)

    async def _apply_isolating(
        self, connection: AsyncConnection, events: Sequence[Event], old: int, new: int
    ) -> None:
        """The slow path: bisect the batch in savepoints to find and handle poison events."""
        context = self._context(connection)
        halted: HaltedError | None = None
        counts = (self.state.processed, self.state.dead_lettered)
        try:
            async with connection.begin():
                await self.lock.fence(connection)
                try:
                    await self._apply_range(context, events)
                    await self.checkpoints.advance(connection, old, new)
                except HaltedError as exc:
                    halted = exc
                    poison = int(exc.args[1])
                    if poison - 1 > old:
                        await self.checkpoints.advance(connection, old, poison - 1)
        except BaseException:
            self.state.processed, self.state.dead_lettered = counts  # nothing was committed
            raise
        if halted is not None:
            self.state.position = max(old, int(halted.args[1]) - 1)
            raise HaltedError(halted.args[0])

    async def _apply_range(self, context: ProjectionContext, events: Sequence[Event]) -> None:
        if not events:
            return
        if len(events) > 1:
            try:
                async with context.connection.begin_nested():
                    await self.projection(events, context)
                self.state.processed += len(events)
                return
            except Exception:
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
        raise HaltedError(
            f"halted at event {event.sequence_number} ({event.name}) after {attempts} attempts: "
            f"{describe(error)}; the position stays at {event.sequence_number - 1}",
            event.sequence_number,
        )


async def run_subscription(
    settings: SubscriberSettings,
    *,
    stop: asyncio.Event | None = None,
    on_progress: Callable[[Summary], None] | None = None,
) -> Summary:
    """Run one subscriber pass (or follow, with ``settings.follow``) and return its summary."""
    started = time.monotonic()
    run = SubscriberRun(settings, stop=stop or asyncio.Event(), on_progress=on_progress)
    summary = await run.execute()
    log.info(
        "run finished",
        outcome=summary.outcome.value,
        position=summary.position,
        processed=summary.processed,
        seconds=round(time.monotonic() - started, 3),
    )
    return summary
