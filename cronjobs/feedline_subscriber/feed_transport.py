"""How the subscriber reads a feed, whatever carries it: the transport interface.

Everything above the feed (the page stream, the runner, batching, poison
handling, replay, Follow mode, the summary) sees a :class:`FeedTransport`: it
asks for the page of up to ``limit`` events from ``start`` and gets a checked
:class:`Page` (its events, where the next read starts, the head). The URL's
scheme picks the implementation (:func:`open_feed`):

- ``http://`` / ``https://`` (the feed endpoint itself, e.g.
  ``http://special-offers/events``): :mod:`feedline_subscriber.feed_client`,
  the HTTP feed (protocol v1, docs/feed-protocol.md), a request per page.
- ``grpc://HOST[:PORT]`` / ``grpcs://`` (TLS): :mod:`feedline_subscriber.grpc_feed_client`,
  the gRPC feed ``feedline.feed.v1.EventFeed`` (docs/transports.md), one
  ``Subscribe`` stream whose batches are the pages.
- with ``--broker-url`` and ``--broker-stream`` (the feed URL then the HTTP
  feed): :mod:`feedline_subscriber.broker_feed_client`, the service's
  RabbitMQ stream, with the HTTP feed for the head and for what the stream
  no longer holds.

What every implementation owes the layers above:

- **Checked pages.** A page is handed out only after the checks of
  :func:`check_page` (sequence numbers, next start, head): a broken feed
  fails the run with a :class:`FeedProtocolError` and the checkpoint stays.
- **Resumable.** ``fetch(start, ...)`` starts exactly at ``start`` (the
  checkpoint + 1) whatever happened before: a transport keeps no
  acknowledgement of its own; the checkpoint, stored with the read model,
  is the only position.
- **Transient errors retried** with :func:`feed_retry` (``--feed-retry-attempts``),
  then :class:`FeedUnavailableError`; a refused credential is a
  :class:`FeedUnavailableError` at once (``refused the subscriber``).
- **Cancellable.** Cancelling a ``fetch`` (the run is stopping) ends it at
  once, even while it waits for new events.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol
from urllib.parse import urlsplit

from httpx_retries import Retry

from feedline_contracts.subscriber_env import GRPC_FEED_SCHEMES, HTTP_FEED_SCHEMES

if TYPE_CHECKING:
    from feedline_subscriber.settings import SubscriberSettings

# The feed's retry policy, one for every transport: exponential backoff from
# 0.5 s, full jitter, at most 10 s per wait, --feed-retry-attempts times.
FIRST_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 10.0


class FeedError(Exception):
    """The feed could not be read; the run fails and the checkpoint stays."""


class FeedProtocolError(FeedError):
    """A response that breaks the feed's protocol."""


class FeedUnavailableError(FeedError):
    """The feed kept failing transiently (or refused us) after every retry."""


class Event(NamedTuple):
    """One event of a page. A named tuple: a page makes 10,000 of them, and a
    tuple is built in C (a frozen dataclass's ``__init__`` runs Python code)."""

    sequence_number: int
    occurred_at: str
    name: str
    content: dict[str, Any]
    # The W3C trace context of the span that appended it (the feed's optional
    # ``traceparent``), as sent; None when the event has none. Not checked: a
    # value that does not parse only means the batch span has no link to it.
    traceparent: str | None = None


@dataclass(frozen=True, slots=True)
class Page:
    start: int  # the requested start
    events: list[Event]
    next_start: int  # every sequence below it has been scanned (HTTP: Link rel="next")
    head: int  # the highest committed sequence number when the page was read


class FeedTransport(Protocol):
    """What the page stream and the runner read a feed through."""

    @property
    def url(self) -> str:
        """The feed's URL as configured (``--feed-url``); error messages name it."""
        ...

    @property
    def pages_in_flight(self) -> int:
        """How many ``fetch`` calls the page stream may have under way at once.

        HTTP: 2 (a catch-up asks for the page after next while one travels).
        A stream already reads ahead of the reader (HTTP/2 flow control): 1.
        """
        ...

    async def fetch(self, start: int, limit: int, *, wait: float = 0) -> Page:
        """The checked page of up to ``limit`` events from ``start`` (>= 1).

        ``wait`` > 0 (Follow mode, caught up): when nothing at or after
        ``start`` exists yet, wait up to that long for it, then answer an
        empty page. Cancelling the call ends the wait at once.
        """
        ...

    async def head(self) -> int:
        """The feed's head (the highest committed sequence number; 0 when empty)."""
        ...

    async def aclose(self) -> None:
        """Close connections and streams (idempotent)."""
        ...


def feed_retry(attempts: int, *, status_forcelist: Sequence[int] = ()) -> Retry:
    """The feed's retry policy (``--feed-retry-attempts``): every transport uses this one.

    ``status_forcelist``: the HTTP statuses retried (HTTP only); a transport
    that is not httpx uses the policy's waits (``increment``, ``asleep``).
    """
    return Retry(
        total=attempts,
        backoff_factor=FIRST_BACKOFF_SECONDS,
        max_backoff_wait=MAX_BACKOFF_SECONDS,
        backoff_jitter=1.0,
        status_forcelist=status_forcelist,
    )


def read_token(token_file: Path | None) -> str | None:
    """The bearer token, read again for every request (projected tokens are rotated on disk)."""
    if token_file is None:
        return None
    try:
        return token_file.read_text().strip()
    except OSError as exc:
        raise FeedUnavailableError(f"cannot read the feed token file: {exc}") from exc


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a page is decoded and checked.

    Decoding a page of 10,000 events allocates ~40,000 containers (dicts, lists,
    tuples), none of them in a reference cycle, so each collection the
    allocations would trigger (dozens per page, some traversing everything
    alive) frees nothing: measured at 0.3-0.7 s of CPU per 200,000 events.
    Reference counting still frees everything; the collector resumes after.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# Event(*fields) without the Python-level __new__ of a named tuple: built in C.
# Always all five fields: a shorter tuple would lack ``traceparent`` (no default applies).
new_event: Callable[[tuple[int, str, str, dict[str, Any], str | None]], Event] = partial(
    tuple.__new__, Event
)


def optional_text(value: object) -> str | None:
    """An optional text field as a reader keeps it: a string, else None (ignored, not an error)."""
    return value if isinstance(value, str) and value else None


class PageWords(NamedTuple):
    """How a transport's error messages name what its pages carry."""

    page: str  # "page", "batch"
    next: str  # 'Link rel="next"', "next_start"
    next_value: str  # how a next start is shown: "start={}", "{}"
    head: str  # "Feed-Head", "head"


HTTP_WORDS = PageWords("page", 'Link rel="next"', "start={}", "Feed-Head")


def check_sequence(events: Sequence[Event], start: int, filtered: bool) -> None:
    """Sequence numbers from ``start``, increasing; one apart unless ``filtered``.

    Event by event, naming the first that is wrong (transports call it once a
    faster whole-page check has failed, or for small pages).
    """
    expected = start
    for event in events:
        number = event.sequence_number
        if number < expected or (not filtered and number != expected):
            what = "not increasing" if number < expected else "has a gap"
            raise FeedProtocolError(
                f"sequence numbers {what}: expected {expected}"
                f"{' or more' if filtered else ''}, got {number} (page start {start})"
            )
        expected = number + 1


def sequence_is_valid(numbers: list[int], start: int, filtered: bool) -> bool:
    """:func:`check_sequence` over a whole column at C speed (True: nothing to name)."""
    if not numbers:
        return True
    if filtered:
        # Strictly increasing from at least `start` (>= 1): gaps are allowed.
        return numbers[0] >= max(start, 1) and all(map(int.__lt__, numbers, numbers[1:]))
    return start >= 1 and numbers == list(range(start, start + len(numbers)))


def check_page(
    events: list[Event],
    *,
    start: int,
    filtered: bool,
    next_start: int,
    head: int,
    words: PageWords = HTTP_WORDS,
) -> Page:
    """A page whose events passed their own checks: check where it says the feed goes on.

    The next start may not go backwards, skip past the head (events committed
    later would be lost) or, without a types filter, leave a gap after the
    last event; no event may lie above the head.
    """
    shown = words.next_value.format(next_start)
    expected = events[-1].sequence_number + 1 if events else start
    if next_start < expected:
        raise FeedProtocolError(
            f"{words.next} goes backwards: {shown}, but the {words.page} "
            f"{'ends at ' + str(expected - 1) if events else 'was requested from ' + str(start)}"
        )
    if events and events[-1].sequence_number > head:
        raise FeedProtocolError(f"event {events[-1].sequence_number} is above {words.head} {head}")
    if next_start > head + 1:
        raise FeedProtocolError(
            f"{words.next} ({shown}) skips past {words.head} {head}: "
            "events committed later would be lost"
        )
    if not filtered and next_start != expected and events:
        raise FeedProtocolError(
            f"{words.next} ({shown}) does not follow the last event {expected - 1}"
        )
    return Page(start=start, events=events, next_start=next_start, head=head)


ACCEPTED_URLS = (
    "must be an http:// or https:// URL of a feed endpoint (e.g. http://special-offers/events), "
    "or a grpc:// or grpcs:// URL of a gRPC feed (e.g. grpc://special-offers:9090)"
)


def feed_url_problem(feed_url: str) -> str | None:
    """What is wrong with a feed URL, in words for ``--feed-url``; None when it is usable.

    HTTP: the feed endpoint itself, with a host, without a query or fragment
    (the subscriber adds ``start``, ``limit``, ...). gRPC: ``HOST[:PORT]``
    only (the service is ``feedline.feed.v1.EventFeed``): no path, query,
    fragment or user.
    """
    try:
        parts = urlsplit(feed_url)
        _ = parts.port  # a port that is not a number is an error
    except ValueError as exc:
        return f"{ACCEPTED_URLS}; got {feed_url!r} ({exc})"
    scheme = parts.scheme.lower()
    if scheme in GRPC_FEED_SCHEMES:
        if not parts.hostname:
            return f"a {scheme}:// URL needs a host, {scheme}://HOST[:PORT]; got {feed_url!r}"
        if parts.path not in ("", "/") or parts.query or parts.fragment or "@" in parts.netloc:
            return (
                f"a {scheme}:// URL is {scheme}://HOST[:PORT] only (no path, query, fragment "
                f"or user: the service is feedline.feed.v1.EventFeed); got {feed_url!r}"
            )
    elif scheme not in HTTP_FEED_SCHEMES or not parts.netloc:
        return f"{ACCEPTED_URLS}; got {feed_url!r}"
    elif parts.query or parts.fragment:
        return f"must not carry a query or fragment; got {feed_url!r}"
    return None


def transport_of(feed_url: str) -> str:
    """``http`` or ``grpc``: which transport a feed URL's scheme names."""
    scheme = urlsplit(feed_url).scheme.lower()
    if scheme in GRPC_FEED_SCHEMES:
        return "grpc"
    if scheme in HTTP_FEED_SCHEMES:
        return "http"
    raise ValueError(f"no feed transport for the URL scheme {scheme!r}: {feed_url!r}")


def open_feed(settings: SubscriberSettings) -> FeedTransport:
    """The transport the settings name, configured from the run's settings.

    A broker (``--broker-url``) picks RabbitMQ; else the feed URL's scheme
    picks HTTP or gRPC. Each transport's client library is imported here,
    when chosen: a run over HTTP never loads gRPC nor rstream.
    """
    common: dict[str, Any] = {
        "event_types": settings.event_types,
        "token_file": settings.token_file(),
        "retry_attempts": settings.feed_retry_attempts,
    }
    broker = settings.broker_address()
    if broker is not None:
        from feedline_subscriber.broker_feed_client import BrokerFeedClient

        assert settings.broker_stream is not None  # the settings check they go together
        return BrokerFeedClient(
            settings.feed_url,
            broker=broker,
            stream=settings.broker_stream,
            follow=settings.follow,
            **common,
        )
    if transport_of(settings.feed_url) == "grpc":
        from feedline_subscriber.grpc_feed_client import GrpcFeedClient

        return GrpcFeedClient(settings.feed_url, follow=settings.follow, **common)
    from feedline_subscriber.feed_client import HttpFeedClient

    return HttpFeedClient(settings.feed_url, **common)
