"""One subscriber run: lock, checkpoint, then each page of the feed applied; the summary.

The orchestration only: the lock is :mod:`feedline_subscriber.lock`, the pages
(fetching, read-ahead, the event budget, stopping) come from
:mod:`feedline_subscriber.page_stream`, and each is applied by
:mod:`feedline_subscriber.batch_applier`.

Effectively-once: each batch's read-model writes and the new checkpoint are
committed in one transaction, on the one connection that also holds the
subscription's lock. A crash at any point leaves either the old checkpoint
and none of the batch, or the new checkpoint and all of it; the next run
starts after the checkpoint.

A lost read-model connection (the database restarted, the network dropped it)
does not end the run: it reconnects (with the start-up retries and backoff),
takes the lock again, reads the checkpoint back and goes on from there, up
to ``--database-retries`` losses in a row without progress.

Throughput: the next page is fetched while the current one is written, so
the feed's latency and the database's overlap; pages are large and the
built-in projections write a batch in one or two statements.

Telemetry (on when the ``OTEL_*`` env says so; docs/subscriber.md): a run is
a ``subscriber.run`` span, each applied batch a ``subscriber.batch`` span
below it that links to the requests that raised its events. A follower's run
never ends, so under ``--follow`` there is no run span: each batch span is
the root of a trace of its own. The spans are flushed when the run ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import traceback
from collections.abc import Callable

import structlog
from opentelemetry.trace import Status, StatusCode
from sqlalchemy.ext.asyncio import AsyncConnection

from feedline_contracts.database import (
    Database,
    DatabaseUnavailableError,
    connect_database,
    connection_lost,
)
from feedline_contracts.telemetry import Telemetry, telemetry_from_env
from feedline_subscriber.batch_applier import BatchApplier, PoisonEventHaltError, describe
from feedline_subscriber.checkpoint import Checkpoint, CheckpointStore, create_subscriber_tables
from feedline_subscriber.feed_transport import open_feed
from feedline_subscriber.lock import SubscriptionLock
from feedline_subscriber.page_stream import PageStream
from feedline_subscriber.projection import Projection, ProjectionContext, load_projection
from feedline_subscriber.read_model import read_model_connection
from feedline_subscriber.settings import SubscriberSettings
from feedline_subscriber.summary import Outcome, RunState, Summary

log = structlog.get_logger("feedline.subscriber")

SERVICE_NAME = "feedline-subscriber"  # the default service.name of its spans and metrics
LOCK_POLL_SECONDS = 1.0  # follow mode: how often a standby follower tries the lock


class SubscriberRun:
    """One pass: take the lock, prepare the checkpoint, apply the page stream, summarise."""

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
        # HTTP, gRPC or RabbitMQ (settings.transport): nothing below depends on which.
        self.feed = open_feed(settings)
        # None (off) unless the OTEL_* env asks for it; service.name feedline-subscriber.
        self.telemetry: Telemetry | None = telemetry_from_env(
            SERVICE_NAME, {"feedline.subscription": settings.subscription}
        )

    def _report(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.state.summary(self.state.progress_outcome(), finished=False))

    async def execute(self) -> Summary:
        """The whole run; never raises (the summary says what happened)."""
        telemetry = self.telemetry
        if telemetry is None:
            return await self._execute()
        try:
            if telemetry.tracer is None or self.settings.follow:
                return await self._execute()
            with telemetry.tracer.start_as_current_span(
                "subscriber.run",
                attributes={
                    "feedline.subscription": self.settings.subscription,
                    "feedline.transport": self.settings.transport,
                },
            ) as span:
                summary = await self._execute()
                span.set_attribute("feedline.outcome", summary.outcome.value)
                span.set_attribute("feedline.processed", summary.processed)
                if summary.outcome in {Outcome.FAILED, Outcome.HALTED}:
                    span.set_status(Status(StatusCode.ERROR, summary.message))
                return summary
        finally:
            # Off the event loop: a slow or absent collector does not hold up the loop.
            await asyncio.to_thread(telemetry.shutdown)

    async def _execute(self) -> Summary:
        settings = self.settings
        broker = settings.broker_address()
        log.info(
            "run starting",
            subscription=settings.subscription,
            transport=settings.transport,
            feed=settings.feed_url,
            follow=settings.follow,
            **({} if broker is None else {"broker": broker.redacted()}),
            **({} if settings.broker_stream is None else {"stream": settings.broker_stream}),
        )
        try:
            self.projection = load_projection(self.settings.projection)
            self.database = connect_database(self.settings.database_url, pool_size=2)
        except Exception as exc:
            self.state.message = f"{describe(exc)} (--projection / --database-url)"
            await self.feed.aclose()
            return self.state.summary(Outcome.FAILED)
        try:
            return await self._locked_run()
        except PoisonEventHaltError as exc:
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
        self.lock = SubscriptionLock(self.settings.subscription, self.database.dialect)
        losses = 0
        while True:
            position = self.state.position
            try:
                refused = await self._connected_pass()
                break
            except Exception as exc:
                if self.state.position != position:
                    losses = 0  # it got somewhere since the last loss
                # Connecting again already waited its --database-retries: a database
                # that stays away fails the run now (its cause, a refused connection,
                # is not a connection lost mid-run to reconnect from once more).
                if isinstance(exc, DatabaseUnavailableError) or not connection_lost(exc):
                    raise
                if self.stop.is_set():
                    raise
                if losses >= self.settings.database_retries:
                    raise
                losses += 1
                log.warning(
                    "read-model database connection lost; reconnecting",
                    error=describe(exc),
                    position=self.state.position,
                    loss=losses,
                    losses_allowed=self.settings.database_retries,
                )
        if refused is not None:
            return refused
        outcome = self.state.progress_outcome()
        if not self.state.message:
            lag = self.state.summary(outcome).lag
            self.state.message = (
                "caught up" if outcome is Outcome.CAUGHT_UP else f"stopped with lag {lag}"
            )
        return self.state.summary(outcome)

    async def _connected_pass(self) -> Summary | None:
        """Connect, lock, prepare and apply until done; a summary if the lock was refused."""
        async with read_model_connection(
            self.database,
            self.settings.database_url,
            # A follower waits for its database as long as it takes.
            retry_attempts=None if self.settings.follow else self.settings.database_retries,
            stop=self.stop,
        ) as connection:
            refused = await self._acquire(connection)
            if refused is not None:
                return refused
            self.state.message = ""
            async with self.lock.held(connection, self.database):
                await self._prepare(connection)
                await self._read_and_apply(connection)
        return None

    async def _acquire(self, connection: AsyncConnection) -> Summary | None:
        """Take the lock; or the run's summary when it ends without it (locked, or stopped)."""
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
        return None

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
                await self.projection.reset(
                    ProjectionContext(connection=connection, subscription=settings.subscription)
                )
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
            return await self.feed.head()
        return int(start) - 1

    async def _read_and_apply(self, connection: AsyncConnection) -> None:
        """Each page, in order, applied with its checkpoint before the next is taken."""
        assert self.state.position is not None
        applier = BatchApplier(
            connection,
            settings=self.settings,
            projection=self.projection,
            checkpoints=self.checkpoints,
            lock=self.lock,
            state=self.state,
            telemetry=self.telemetry,
        )
        stream = PageStream(self.feed, self.settings, position=self.state.position, stop=self.stop)
        async with stream as pages:
            async for batch in pages:
                self.state.head = batch.head
                if batch.new > batch.old:
                    await applier.apply(batch.events, batch.old, batch.new)
                    self.state.position = batch.new
                self._report()


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
