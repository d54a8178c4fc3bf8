"""A feed that breaks protocol v1 fails the run with a message saying what was wrong.

Each case serves one bad response from a fake feed (real HTTP on loopback) after
a first good page has been applied; the checkpoint must stay where the good page
left it and nothing of the bad page may reach the read model. Transient errors
(5xx, a dropped connection) are retried and the run then succeeds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from starlette.requests import Request
from starlette.responses import Response

from feedline_subscriber.runner import run_subscription
from feedline_subscriber.settings import load_settings
from feedline_subscriber.summary import Outcome
from tests.support.ports import free_port
from tests.support.subscriber_feed import FakeFeed, fake_feed, special_offer_event
from tests.support.subscriber_oracle import checkpoint_position, read_offers
from tests.support.subscriber_process import LOYALTY

pytestmark = pytest.mark.integration

GOOD_EVENTS = [
    special_offer_event(n, "SpecialOfferCreated", {"offerId": n, "description": f"offer {n}"})
    for n in range(1, 21)
]


@pytest.fixture
def feed() -> Iterator[FakeFeed]:
    with fake_feed(GOOD_EVENTS) as served:
        yield served


def from_second_page(answer: Callable[[Request], Response]) -> Callable[[Request], Response | None]:
    """Serve the first page (start=1) normally and the bad answer after it."""

    def fault(request: Request) -> Response | None:
        return None if request.query_params.get("start") == "1" else answer(request)

    return fault


def page_response(
    body: Any, *, next_start: int | None = 21, head: str | None = "20", raw: bytes | None = None
) -> Response:
    headers = {}
    if next_start is not None:
        headers["Link"] = f'<http://feed/events?start={next_start}&limit=10>; rel="next"'
    if head is not None:
        headers["Feed-Head"] = head
    content = raw if raw is not None else orjson.dumps(body)
    return Response(content, media_type="application/json", headers=headers)


def events(*numbers: int, **overrides: Any) -> list[dict[str, Any]]:
    result = []
    for number in numbers:
        event = special_offer_event(
            number, "SpecialOfferCreated", {"offerId": number, "description": "x"}
        )
        event.update(overrides)
        result.append(event)
    return result


MALFORMED: dict[str, tuple[Callable[[Request], Response], str]] = {
    "not JSON": (lambda r: page_response(None, raw=b"<html>oops</html>"), "body is not JSON"),
    "not an array": (lambda r: page_response({"events": []}), "body is not a JSON array"),
    "event not an object": (lambda r: page_response([11]), "is not a JSON object"),
    "missing sequenceNumber": (
        lambda r: page_response(
            [{k: v for k, v in events(11)[0].items() if k != "sequenceNumber"}]
        ),
        "sequenceNumber must be an integer",
    ),
    "sequenceNumber not an integer": (
        lambda r: page_response(events(11, sequenceNumber="11")),
        "sequenceNumber must be an integer",
    ),
    "missing name": (
        lambda r: page_response([{k: v for k, v in events(11)[0].items() if k != "name"}]),
        "name must be a non-empty string",
    ),
    "missing content": (
        lambda r: page_response([{k: v for k, v in events(11)[0].items() if k != "content"}]),
        "content must be a JSON object",
    ),
    "missing occurredAt": (
        lambda r: page_response([{k: v for k, v in events(11)[0].items() if k != "occurredAt"}]),
        "occurredAt must be a string",
    ),
    "sequence numbers not increasing": (
        lambda r: page_response(events(11, 12, 12, 13)),
        "sequence numbers not increasing",
    ),
    "sequence numbers going back": (
        lambda r: page_response(events(11, 12, 5)),
        "sequence numbers not increasing",
    ),
    "a gap without a types filter": (
        lambda r: page_response(events(11, 13)),
        "sequence numbers has a gap",
    ),
    "page starting before start": (lambda r: page_response(events(10, 11)), "not increasing"),
    "next goes backwards": (
        lambda r: page_response(events(11, 12), next_start=5),
        'rel="next" goes backwards',
    ),
    "next does not move on an empty page below the head": (
        lambda r: page_response([], next_start=11),
        "no events and no progress",
    ),
    "next skips past the head": (
        lambda r: page_response(events(11, 12), next_start=40),
        "skips past Feed-Head",
    ),
    "no Link header": (lambda r: page_response(events(11), next_start=None), "no Link header"),
    "no Feed-Head header": (lambda r: page_response(events(11), head=None), "no Feed-Head"),
    "Feed-Head not a number": (
        lambda r: page_response(events(11), head="many"),
        "Feed-Head is not",
    ),
    "event above the head": (
        lambda r: page_response(events(11, 12), head="11", next_start=13),
        "above Feed-Head",
    ),
    "more events than the limit": (
        lambda r: page_response(events(*range(11, 23)), next_start=23, head="30"),
        "more than the limit",
    ),
    "404": (lambda r: Response(b"nope", status_code=404), "answered 404"),
    "400 problem": (
        lambda r: Response(
            orjson.dumps({"title": "Invalid request", "detail": "query parameter 'start'"}),
            status_code=400,
            media_type="application/problem+json",
        ),
        "query parameter 'start'",
    ),
    "401": (lambda r: Response(b"{}", status_code=401), "refused the subscriber (401)"),
}


def settings_for(feed: FakeFeed, database_url: str, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "subscription": "malformed",
        "feed_url": feed.url,
        "database_url": database_url,
        "projection": LOYALTY,
        "batch_size": 10,
        "feed_retry_attempts": 2,
        **overrides,
    }
    return load_settings(**values)


@pytest.mark.parametrize("case", sorted(MALFORMED))
async def test_a_malformed_page_fails_the_run_and_the_checkpoint_stays(
    case: str, feed: FakeFeed, sqlite_url: str
) -> None:
    answer, expected = MALFORMED[case]
    feed.fault = from_second_page(answer)

    summary = await run_subscription(settings_for(feed, sqlite_url))

    assert summary.outcome is Outcome.FAILED
    assert expected in summary.message, summary.message
    assert summary.exit_code != 0
    assert summary.position == 10
    assert await checkpoint_position(sqlite_url, "malformed") == 10
    assert sorted(await read_offers(sqlite_url)) == list(range(1, 11))


async def test_a_types_filter_allows_gaps_and_moves_past_skipped_events(sqlite_url: str) -> None:
    mixed = [
        special_offer_event(
            n,
            "SpecialOfferCreated" if n % 3 else "SomethingElse",
            {"offerId": n, "description": "x"},
        )
        for n in range(1, 31)
    ]
    with fake_feed(mixed) as feed:
        summary = await run_subscription(
            settings_for(feed, sqlite_url, event_types="SpecialOfferCreated", batch_size=7)
        )
    assert summary.outcome is Outcome.CAUGHT_UP, summary.message
    assert summary.position == 30
    assert sorted(await read_offers(sqlite_url)) == [n for n in range(1, 31) if n % 3]
    assert all("types=SpecialOfferCreated" in url for url in feed.requests)


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429])
async def test_transient_errors_are_retried_then_the_run_succeeds(
    status: int, feed: FakeFeed, sqlite_url: str
) -> None:
    failures = {"left": 2}

    def flaky(request: Request) -> Response | None:
        if failures["left"] > 0 and request.query_params.get("start") == "11":
            failures["left"] -= 1
            return Response(b"try later", status_code=status)
        return None

    feed.fault = flaky
    summary = await run_subscription(settings_for(feed, sqlite_url, feed_retry_attempts=4))
    assert summary.outcome is Outcome.CAUGHT_UP, summary.message
    assert failures["left"] == 0
    assert summary.position == 20


async def test_a_feed_that_keeps_failing_fails_the_run_without_moving(
    feed: FakeFeed, sqlite_url: str
) -> None:
    feed.fault = from_second_page(lambda r: Response(b"down", status_code=503))
    summary = await run_subscription(settings_for(feed, sqlite_url, feed_retry_attempts=1))
    assert summary.outcome is Outcome.FAILED
    assert "answered 503 after 1 retries" in summary.message
    assert await checkpoint_position(sqlite_url, "malformed") == 10


async def test_connection_refused_is_retried_then_fails(sqlite_url: str) -> None:
    url = f"http://127.0.0.1:{free_port()}/events"
    settings = load_settings(
        subscription="refused",
        feed_url=url,
        database_url=sqlite_url,
        projection=LOYALTY,
        feed_retry_attempts=2,
    )
    summary = await run_subscription(settings)
    assert summary.outcome is Outcome.FAILED
    assert "unreachable after 2 retries" in summary.message
    assert "ConnectError" in summary.message
    assert await checkpoint_position(sqlite_url, "refused") == 0
