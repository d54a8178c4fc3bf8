"""Each subscription's head (and so its lag) kept fresh between runs.

A CronJob run reports the feed's head as of the run; until the next one, new
events would not show (position 2, head 2, lag 0 while the feed's head is 3).
So `feedline dev` reads every subscription's feed head every few seconds, with
``GET <feed>/head`` (the feed's ``/events/head``: ``{"head": N}``, also in
``Feed-Head``), and shows it, with the lag from it, in the table, status.json
and the dashboard (``SubscriptionStatus.set_feed_head``). A gRPC feed of an
example service is read at that service's HTTP ``/events/head``. A feed that
does not answer (down, or it wants a token) keeps the head of the last run.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit, urlunsplit

import httpx

from feedline.dev.plan import Layout
from feedline.dev.status import SubscriptionStatus
from feedline_contracts.feed import HEAD_HEADER

HEAD_REFRESH_SECONDS = 2.0


def head_url(feed_url: str, layout: Layout) -> str | None:
    """Where a feed's head is read: ``<feed>/head`` for http(s), an example service's
    HTTP ``/events/head`` for its gRPC feed; None when there is no such URL."""
    parts = urlsplit(feed_url)
    if parts.scheme in ("http", "https"):
        return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/head", query=""))
    if parts.scheme == "grpc":
        for service in layout.grpc_ports:
            grpc_url = layout.service_grpc_url(service)
            if grpc_url is not None and urlsplit(grpc_url).netloc == parts.netloc:
                return f"{layout.service_url(service)}/events/head"
    return None


def parse_head(response: httpx.Response) -> int | None:
    """The head in an answer of ``/events/head`` (its body, else ``Feed-Head``)."""
    if response.status_code != 200:
        return None
    with contextlib.suppress(ValueError, TypeError, KeyError):
        head = response.json()["head"]
        if isinstance(head, int) and not isinstance(head, bool) and head >= 0:
            return head
    with contextlib.suppress(ValueError, TypeError):
        head = int(response.headers.get(HEAD_HEADER, ""))
        if head >= 0:
            return head
    return None


class HeadRefresher:
    """Reads each (not suspended) subscription's feed head every ``interval`` seconds."""

    def __init__(
        self,
        statuses: Sequence[SubscriptionStatus],
        layout: Layout,
        changed: Callable[[SubscriptionStatus], None],
        interval: float = HEAD_REFRESH_SECONDS,
    ) -> None:
        self.statuses = statuses
        self.layout = layout
        self.changed = changed
        self.interval = interval

    async def _refresh(self, http: httpx.AsyncClient, status: SubscriptionStatus) -> None:
        url = head_url(status.feed, self.layout)
        if url is None or status.suspended:
            return
        try:
            head = parse_head(await http.get(url))
        except httpx.HTTPError:
            return
        if head is not None and status.set_feed_head(head):
            self.changed(status)

    async def refresh(self, http: httpx.AsyncClient) -> None:
        await asyncio.gather(*(self._refresh(http, s) for s in self.statuses))

    async def run(self, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(timeout=min(self.interval, 2.0)) as http:
            while not stop.is_set():
                await self.refresh(http)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.interval)
