"""Reading pages of an HTTP event feed (protocol v1, docs/feed-protocol.md).

The HTTP implementation of :class:`~feedline_subscriber.feed_transport.FeedTransport`:
one ``GET`` per page (``wait=`` long-polls in Follow mode). The client retries
what is transient (connection errors, timeouts, 429 and 5xx) with the feed's
retry policy, and refuses what breaks the protocol: every page is checked
before the subscriber may apply it, so a broken feed fails the run with a
message saying what was wrong and the checkpoint never moves.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import repeat
from operator import itemgetter
from pathlib import Path
from types import NoneType
from typing import Any

import httpx
import orjson
from httpx_retries import aretry_request

from feedline_contracts.feed import HEAD_HEADER
from feedline_subscriber.feed_transport import (
    Event,
    FeedError,
    FeedProtocolError,
    FeedUnavailableError,
    Page,
    check_page,
    check_sequence,
    collector_paused,
    feed_retry,
    new_event,
    optional_text,
    read_token,
    sequence_is_valid,
)

__all__ = [
    "Event",
    "FeedError",
    "FeedProtocolError",
    "FeedUnavailableError",
    "HttpFeedClient",
    "Page",
    "checked_events",
    "parse_page",
]

RETRYABLE_STATUS = (429, 500, 502, 503, 504)
# A catch-up asks for the page after next while one travels (PageStream._prefetch).
PREFETCH_PAGES = 2


def _next_start(response: httpx.Response) -> int:
    link = response.links.get("next")
    if link is None or "url" not in link:
        raise FeedProtocolError('no Link header with rel="next"')
    url = httpx.URL(link["url"])
    raw = url.params.get("start")
    if raw is None:
        raise FeedProtocolError(f'Link rel="next" has no start parameter: {link["url"]!r}')
    try:
        return int(raw)
    except ValueError:
        raise FeedProtocolError(f'Link rel="next" has a non-integer start {raw!r}') from None


def _head(response: httpx.Response) -> int:
    raw = response.headers.get(HEAD_HEADER)
    if raw is None:
        raise FeedProtocolError(f"no {HEAD_HEADER} header")
    try:
        head = int(raw)
    except ValueError:
        raise FeedProtocolError(f"Feed-Head is not an integer: {raw!r}") from None
    if head < 0:
        raise FeedProtocolError(f"Feed-Head is negative: {head}")
    return head


def _event(index: int, item: Any) -> Event:
    if not isinstance(item, dict):
        raise FeedProtocolError(f"event #{index} is not a JSON object: {item!r:.100}")
    number = item.get("sequenceNumber")
    if not isinstance(number, int) or isinstance(number, bool) or number < 1:
        raise FeedProtocolError(
            f"event #{index}: sequenceNumber must be an integer >= 1, got {number!r:.50}"
        )
    occurred_at, name, content = item.get("occurredAt"), item.get("name"), item.get("content")
    if not isinstance(occurred_at, str):
        raise FeedProtocolError(
            f"event {number}: occurredAt must be a string, got {occurred_at!r:.50}"
        )
    if not isinstance(name, str) or not name:
        raise FeedProtocolError(
            f"event {number}: name must be a non-empty string, got {name!r:.50}"
        )
    if not isinstance(content, dict):
        raise FeedProtocolError(
            f"event {number}: content must be a JSON object, got {content!r:.50}"
        )
    return Event(number, occurred_at, name, content, optional_text(item.get("traceparent")))


_SEQUENCE_NUMBER = itemgetter("sequenceNumber")
_OCCURRED_AT = itemgetter("occurredAt")
_NAME = itemgetter("name")
_CONTENT = itemgetter("content")


def _checked_events(body: list[Any], start: int, filtered: bool) -> list[Event] | None:
    """The events of a page that passes every per-event check, else None.

    The fast path for well-formed pages: each check runs over a whole column
    in C (``map``, ``set``, list comparison) instead of a Python function call
    and several ``isinstance`` calls per event. It accepts only what
    :func:`_event` and the sequence check in :func:`parse_page` accept; on
    anything else it returns None and the caller runs those to say what is wrong.
    """
    try:
        numbers = list(map(_SEQUENCE_NUMBER, body))
        occurred_at = list(map(_OCCURRED_AT, body))
        names = list(map(_NAME, body))
        contents = list(map(_CONTENT, body))
        # Optional (protocol v1 readers ignore fields they do not know; this one is known).
        traceparents = list(map(dict.get, body, repeat("traceparent")))
    except (KeyError, TypeError):  # an event that is not an object, or lacks a field
        return None
    if not body:
        return []
    if (
        set(map(type, numbers)) != {int}  # exactly int: bool is not a sequence number
        or set(map(type, occurred_at)) != {str}
        or set(map(type, names)) != {str}
        or "" in names
        or set(map(type, contents)) != {dict}
    ):
        return None
    if not sequence_is_valid(numbers, start, filtered):
        return None
    if set(map(type, traceparents)) - {str, NoneType}:
        traceparents = list(map(optional_text, traceparents))
    return list(
        map(new_event, zip(numbers, occurred_at, names, contents, traceparents, strict=True))
    )


def _checked_events_slowly(body: list[Any], start: int, filtered: bool) -> list[Event]:
    """Every per-event check, one event at a time; raises saying what is wrong."""
    events = [_event(index, item) for index, item in enumerate(body)]
    check_sequence(events, start, filtered)
    return events


def checked_events(body: list[Any], start: int, filtered: bool) -> list[Event]:
    """A page's events as decoded JSON objects, every per-event and sequence check passed.

    Raises :class:`FeedProtocolError` naming the first event that is wrong
    (the broker transport checks its messages' bodies with it too).
    """
    events = _checked_events(body, start, filtered)
    return events if events is not None else _checked_events_slowly(body, start, filtered)


def parse_page(response: httpx.Response, *, start: int, limit: int, filtered: bool) -> Page:
    """Check a 200 response against protocol v1 and turn it into a Page.

    ``filtered``: the request carried a ``types`` filter, so gaps between the
    returned sequence numbers are expected (the server skipped other events).
    """
    head = _head(response)
    next_start = _next_start(response)
    content = response.content
    with collector_paused():
        try:
            body = orjson.loads(content)
        except orjson.JSONDecodeError as exc:
            raise FeedProtocolError(f"body is not JSON ({exc}): {content[:100]!r}") from None
        if not isinstance(body, list):
            raise FeedProtocolError(f"body is not a JSON array: {content[:100]!r}")
        if len(body) > limit:
            raise FeedProtocolError(f"page has {len(body)} events, more than the limit {limit}")
        events = checked_events(body, start, filtered)
    return check_page(events, start=start, filtered=filtered, next_start=next_start, head=head)


def _problem_detail(response: httpx.Response) -> str:
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return response.text[:200]
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("title") or body)[:200]
    return response.text[:200]


class HttpFeedClient:
    """Reads pages from one feed endpoint, e.g. ``http://special-offers/events``."""

    pages_in_flight = PREFETCH_PAGES

    def __init__(
        self,
        feed_url: str,
        *,
        event_types: Sequence[str] = (),
        token_file: Path | None = None,
        retry_attempts: int = 8,
        timeout_seconds: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = feed_url
        self.event_types = tuple(event_types)
        self.token_file = token_file
        self.timeout_seconds = timeout_seconds
        self.retry = feed_retry(retry_attempts, status_forcelist=RETRYABLE_STATUS)
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_seconds, connect=10.0),
            transport=transport,
            limits=httpx.Limits(max_connections=4, max_keepalive_connections=4),
            headers={"Accept": "application/json", "User-Agent": "feedline-subscriber"},
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    def _headers(self) -> dict[str, str]:
        token = read_token(self.token_file)
        return {} if token is None else {"Authorization": f"Bearer {token}"}

    async def head(self) -> int:
        """The head, from the ``Feed-Head`` of a one-event page."""
        return (await self.fetch(1, 1)).head

    async def fetch(self, start: int, limit: int, *, wait: float = 0) -> Page:
        """The page of up to ``limit`` events from ``start``; long-polls ``wait`` seconds."""
        params: dict[str, str | int | float] = {"start": start, "limit": limit}
        if self.event_types:
            params["types"] = ",".join(self.event_types)
        if wait > 0:
            params["wait"] = wait
        timeout = httpx.Timeout(self.timeout_seconds + wait, connect=10.0)
        try:
            response = await aretry_request(
                self.client,
                "GET",
                self.url,
                params=params,
                headers=self._headers(),
                timeout=timeout,
                retry=self.retry,
            )
        except httpx.HTTPError as exc:
            raise FeedUnavailableError(
                f"feed {self.url} unreachable after {self.retry.total} retries: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if response.status_code == 200:
            return parse_page(response, start=start, limit=limit, filtered=bool(self.event_types))
        detail = _problem_detail(response)
        if response.status_code in RETRYABLE_STATUS:
            raise FeedUnavailableError(
                f"feed {self.url} answered {response.status_code} after "
                f"{self.retry.total} retries: {detail}"
            )
        if response.status_code in (401, 403):
            raise FeedUnavailableError(
                f"feed {self.url} refused the subscriber ({response.status_code}): {detail}"
            )
        raise FeedProtocolError(
            f"feed {self.url} answered {response.status_code} to start={start}: {detail}"
        )
