"""Pure parts of the subscriber: feed pages, projection folds, the summary, fault plans."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from feedline_subscriber.faults import parse_fault_plan
from feedline_subscriber.feed_client import Event, FeedProtocolError, parse_page
from feedline_subscriber.projections.loyalty import (
    InvalidSpecialOfferEventError,
    fold_special_offer_events,
)
from feedline_subscriber.projections.upsert import InvalidDocumentEventError, fold_documents
from feedline_subscriber.summary import TERMINATION_MESSAGE_LIMIT, Outcome, Summary

pytestmark = pytest.mark.unit


def response(body: Any, next_start: int, head: int) -> httpx.Response:
    return httpx.Response(
        200,
        content=orjson.dumps(body),
        headers={
            "Link": f'<http://feed/events?limit=3&start={next_start}>; rel="next"',
            "Feed-Head": str(head),
        },
        request=httpx.Request("GET", "http://feed/events"),
    )


def raw(number: int, name: str = "SpecialOfferCreated") -> dict[str, Any]:
    return {
        "sequenceNumber": number,
        "occurredAt": "2026-01-01T00:00:00Z",
        "name": name,
        "content": {"offerId": number, "description": "d"},
    }


def event(number: int, name: str, **content: Any) -> Event:
    return Event(number, "2026-01-01T00:00:00Z", name, content)


def test_a_good_page() -> None:
    page = parse_page(response([raw(4), raw(5), raw(6)], 7, 9), start=4, limit=3, filtered=False)
    assert [e.sequence_number for e in page.events] == [4, 5, 6]
    assert (page.next_start, page.head) == (7, 9)


def test_an_empty_page_at_the_head() -> None:
    page = parse_page(response([], 10, 9), start=10, limit=3, filtered=False)
    assert page.events == []
    assert page.next_start == 10


def test_a_filtered_page_may_skip_and_scan_past() -> None:
    page = parse_page(response([raw(5), raw(9)], 12, 20), start=4, limit=3, filtered=True)
    assert [e.sequence_number for e in page.events] == [5, 9]
    assert page.next_start == 12


@pytest.mark.parametrize(
    ("body", "next_start", "head", "message"),
    [
        ([raw(4), raw(6)], 7, 9, "has a gap"),
        ([raw(4), raw(4)], 5, 9, "not increasing"),
        ([raw(4)], 4, 9, "goes backwards"),
        ([raw(4)], 6, 9, "does not follow the last event"),
        ([raw(4)], 11, 9, "skips past Feed-Head"),
        ([{**raw(4), "content": []}], 5, 9, "content must be a JSON object"),
        ([{**raw(4), "sequenceNumber": True}], 5, 9, "sequenceNumber must be an integer"),
        ([{**raw(4), "name": ""}], 5, 9, "name must be a non-empty string"),
    ],
)
def test_protocol_violations(body: Any, next_start: int, head: int, message: str) -> None:
    with pytest.raises(FeedProtocolError, match=message):
        parse_page(response(body, next_start, head), start=4, limit=3, filtered=False)


def test_the_loyalty_fold_keeps_the_last_change_per_offer() -> None:
    changes = fold_special_offer_events(
        [
            event(1, "SpecialOfferCreated", offerId=1, description="a"),
            event(2, "SpecialOfferCreated", offerId=2, description="b"),
            event(3, "SpecialOfferUpdated", offerId=1, description="a2"),
            event(4, "SpecialOfferRemoved", offerId=2),
            event(5, "SomethingElse", offerId=9),
            event(6, "SpecialOfferRemoved", offerId=3),
            event(7, "SpecialOfferCreated", offerId=3, description="c"),
        ]
    )
    assert changes == {1: ("a2", 3), 2: None, 3: ("c", 7)}


@pytest.mark.parametrize(
    "bad",
    [
        event(1, "SpecialOfferCreated", description="no id"),
        event(1, "SpecialOfferCreated", offerId="1", description="x"),
        event(1, "SpecialOfferCreated", offerId=True, description="x"),
        event(1, "SpecialOfferUpdated", offerId=1, description=None),
        event(1, "SpecialOfferRemoved", offerId=2**63),
    ],
)
def test_the_loyalty_fold_refuses_poison(bad: Event) -> None:
    with pytest.raises(InvalidSpecialOfferEventError):
        fold_special_offer_events([bad])


def test_the_upsert_fold() -> None:
    changes = fold_documents(
        [event(1, "Added", sku="a", n=1), event(2, "Added", sku="b"), event(3, "Gone", sku="a")],
        "sku",
        frozenset({"Gone"}),
    )
    assert changes == {"a": None, "b": ("Added", '{"sku":"b"}', 2)}
    with pytest.raises(InvalidDocumentEventError, match="'sku'"):
        fold_documents([event(1, "Added", other=1)], "sku", frozenset())


def test_the_summary_line_and_its_termination_message_limit() -> None:
    summary = Summary(
        subscription="s",
        position=5,
        head=9,
        processed=5,
        deadLettered=0,
        outcome=Outcome.PROGRESSED,
        message="x" * 10_000,
        startTime="t0",
        completionTime="t1",
    )
    data = orjson.loads(summary.to_json())
    assert data["lag"] == 4
    assert data["outcome"] == "Progressed"
    assert set(data) == {
        "subscription",
        "position",
        "head",
        "lag",
        "processed",
        "deadLettered",
        "outcome",
        "message",
        "startTime",
        "completionTime",
    }
    short = summary.to_json(TERMINATION_MESSAGE_LIMIT)
    assert len(short) <= TERMINATION_MESSAGE_LIMIT
    assert orjson.loads(short)["message"].endswith("...")
    assert summary.exit_code == 0
    assert Summary(**{**vars(summary), "outcome": Outcome.HALTED}).exit_code == 3


def test_fault_plans() -> None:
    plan = parse_fault_plan("during-commit@3:1.5")
    assert (plan.point, plan.batch, plan.delay_ms) == ("during-commit", 3, 1.5)
    with pytest.raises(ValueError, match="POINT@BATCH"):
        parse_fault_plan("sometime@x")
