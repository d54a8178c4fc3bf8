"""The run's pages of the feed, in order, as batches to apply: fetching, read-ahead, stopping.

From the checkpoint on, :class:`PageStream` hands out one :class:`Batch` per
page: its events and the position the checkpoint moves to. It fetches the
next page while the current one is written (and, during a catch-up, more
ahead, as many as the transport's ``pages_in_flight``), keeps the run within
``--max-events-per-run``, checks that every page makes progress, and ends at
the head (CronJob mode), when the budget is spent, or when asked to stop (an
in-flight fetch or a wait for new events is dropped).

It knows the feed only as a :class:`~feedline_subscriber.feed_transport.FeedTransport`:
the same code reads HTTP and gRPC.

The consumer applies each batch before it asks for the next one: a batch
taken counts as applied (its events against the budget, its end as the
position the next page starts after).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import NamedTuple

from feedline_subscriber.feed_transport import Event, FeedProtocolError, FeedTransport, Page
from feedline_subscriber.settings import SubscriberSettings


class Batch(NamedTuple):
    """One page's worth of work: apply ``events`` and move the checkpoint ``old`` -> ``new``."""

    events: Sequence[Event]
    old: int  # the position before the page
    new: int  # the last sequence number applied or scanned past
    head: int  # the page's Feed-Head


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


class PageStream:
    """``async with PageStream(...) as pages: async for batch in pages: ...``"""

    def __init__(
        self,
        feed: FeedTransport,
        settings: SubscriberSettings,
        *,
        position: int,
        stop: asyncio.Event,
    ) -> None:
        self.feed = feed
        self.settings = settings
        self.stop = stop
        self.position = position  # where the next page starts after
        self._wait = settings.feed_wait_seconds if settings.follow else 0.0
        self._taken = 0  # events of the batches already applied (the budget spent)
        self._last: Batch | None = None  # the batch handed out last, being applied
        # Pages asked for, oldest first; the first one starts at position + 1.
        self._pending: deque[_Fetch] = deque()

    async def __aenter__(self) -> PageStream:
        self._pending.append(self._fetch(self.position + 1, self._limit()))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await _drop_all(self._pending)

    def __aiter__(self) -> PageStream:
        return self

    async def __anext__(self) -> Batch:
        batch = await self._next_batch()
        if batch is None:
            raise StopAsyncIteration
        return batch

    async def _next_batch(self) -> Batch | None:
        last = self._last
        if last is not None:  # applied by now
            self._taken += len(last.events)
            self.position = max(self.position, last.new)
            if self.stop.is_set():
                return None
        if not self._pending:
            return None
        page = await self._next_page(self._pending.popleft().task)
        if page is None:
            return None
        position = self.position
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
        budget_done = budget is not None and len(events) >= budget
        await self._read_ahead(page.head, new_position, budget_done)
        self._last = Batch(events, position, new_position, page.head)
        return self._last

    async def _read_ahead(self, head: int, new_position: int, budget_done: bool) -> None:
        """Pipelining: the next pages travel while this one is written, unless the run ends."""
        pending = self._pending
        caught_up = new_position >= head
        if pending and pending[0].start != new_position + 1:
            await _drop_all(pending)  # prefetched from the wrong place
        if not self.stop.is_set() and not budget_done and (self.settings.follow or not caught_up):
            if not pending:
                pending.append(
                    self._fetch(new_position + 1, self._limit(), self._wait if caught_up else 0.0)
                )
            self._prefetch(head)
        else:
            await _drop_all(pending)

    def _limit(self) -> int:
        budget = self._budget_left()
        if budget is None:
            return self.settings.batch_size
        return max(min(self.settings.batch_size, budget), 1)

    def _budget_left(self) -> int | None:
        budget = self.settings.max_events_per_run
        return None if budget == 0 else budget - self._taken

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

    def _prefetch(self, head: int) -> None:
        """Catch-up: also ask for the page after the pending one before it arrives.

        Without a type filter a full page from S ends at S + limit - 1, so the
        next one starts at S + limit; while that is at or below the head, up to
        the transport's ``pages_in_flight`` pages are on their way at once, so
        the service prepares one while the other travels and is checked (a
        stream, which reads ahead by itself, says 1: no page ahead). A
        prefetched page is used only if it starts where the previous page's
        next start points (and is checked against its own start, as every page
        is); otherwise it is dropped and the right page is fetched.
        """
        if self.settings.event_types or self.settings.max_events_per_run:
            return  # where the next page starts, or how long it is, is not known ahead
        pending = self._pending
        limit = self.settings.batch_size
        while pending and len(pending) < self.feed.pages_in_flight:
            start = pending[-1].start + limit
            if start > head:
                return
            pending.append(self._fetch(start, limit))
