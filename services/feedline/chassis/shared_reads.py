"""Feed readers woken together read the store once, not once each.

Both feeds (HTTP long polls, ``feed.py``; gRPC follow streams,
``grpc_feed.py``) read pages through the event store's one ``SharedReads``:
a thousand followers at the head, woken by one commit, cost one database read
of the new page, not a thousand; an HTTP poll and a gRPC stream at the same
position share it too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from feedline.chassis.notifications import CommitWatch

Page = TypeVar("Page")
PageKey = tuple[int, int | None, int, tuple[str, ...] | None]


class SharedReads(Generic[Page]):
    """Shares one read of a page (start, end, limit, types) among the readers that ask
    for it while it runs.

    A read begun while the commit signal stood where a reader's watch was taken
    is shared by that reader: whatever was committed after the read began fires
    the signal after it began, hence after the reader's watch was taken (the
    signal did not fire in between), and wakes the reader as its own read would
    have. A read begun before a later fire is not shared with readers watching
    from after it: they start a read of their own.
    """

    def __init__(
        self, read_page: Callable[[int, int | None, int, Sequence[str] | None], Awaitable[Page]]
    ) -> None:
        self._read_page = read_page
        self._reads: dict[PageKey, tuple[int, asyncio.Future[Page]]] = {}

    async def read(
        self,
        watch: CommitWatch,
        start: int,
        end: int | None,
        limit: int,
        types: Sequence[str] | None,
    ) -> Page:
        key: PageKey = (start, end, limit, tuple(types) if types else None)
        shared = self._reads.get(key)
        if shared is None or shared[0] != watch.generation:
            read = asyncio.ensure_future(self._read_page(start, end, limit, types))
            shared = (watch.generation, read)
            self._reads[key] = shared
            read.add_done_callback(lambda done: self._forget(key, shared, done))
        # One reader going away (its client gone) does not cancel the others' read.
        return await asyncio.shield(shared[1])

    def _forget(
        self, key: PageKey, shared: tuple[int, asyncio.Future[Page]], done: asyncio.Future[Page]
    ) -> None:
        if self._reads.get(key) is shared:
            del self._reads[key]
        if not done.cancelled():
            done.exception()  # retrieved: each sharer gets it from its own await
