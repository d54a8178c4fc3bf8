"""Pure parts of the subscriber: feed pages, projection folds, the summary; no fault switch."""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import re
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from feedline.services.loyalty_program.projection import (
    InvalidSpecialOfferEventError,
    fold_special_offer_events,
)
from feedline_contracts.database import DatabaseUnavailableError
from feedline_subscriber.batch_applier import BatchApplier, PoisonEventHaltError
from feedline_subscriber.feed_client import Event, FeedProtocolError, parse_page
from feedline_subscriber.page_stream import PageStream
from feedline_subscriber.projections.upsert import InvalidDocumentEventError, fold_documents
from feedline_subscriber.read_model import connect_with_retries
from feedline_subscriber.runner import SubscriberRun, run_subscription
from feedline_subscriber.summary import TERMINATION_MESSAGE_LIMIT, Outcome, Summary
from tests.support.flaky import FlakyAttempt
from tests.support.subscriber_faults import parse_fault_plan

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


def test_the_halt_error_carries_the_poison_event() -> None:
    error = PoisonEventHaltError(7, "SpecialOfferCreated", 3, "ValueError: bad offer")
    assert error.sequence_number == 7
    assert (error.event_name, error.attempts) == ("SpecialOfferCreated", 3)
    assert error.position == 6  # where the checkpoint stays
    assert str(error) == (
        "halted at event 7 (SpecialOfferCreated) after 3 attempts: ValueError: bad offer; "
        "the position stays at 6"
    )


def test_fault_plans_of_the_crash_tests() -> None:
    plan = parse_fault_plan("during-commit@3:1.5")
    assert (plan.point, plan.batch, plan.delay_ms) == ("during-commit", 3, 1.5)
    with pytest.raises(ValueError, match="POINT@BATCH"):
        parse_fault_plan("sometime@x")


def test_no_fault_injection_ships() -> None:
    """Fault injection is the tests' own (tests/support/subscriber_faults.py): no module,
    parameter, variable or hook of it is in the shipped packages."""
    assert importlib.util.find_spec("feedline_subscriber.faults") is None
    assert "fault" not in inspect.signature(run_subscription).parameters
    for shipped_class in (SubscriberRun, PageStream, BatchApplier):
        assert "fault" not in inspect.signature(shipped_class).parameters
    repo = Path(__file__).resolve().parents[2]
    shipped = [repo / folder for folder in ("contracts", "services", "cronjobs", "operator")]
    mention = re.compile(r"(?<!de)fault|sitecustomize", re.IGNORECASE)
    offenders = [
        f"{path.relative_to(repo)}:{number}: {line.strip()}"
        for folder in shipped
        for path in sorted(folder.rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if mention.search(line)
    ]
    assert offenders == []


DOWN = "postgresql://reader:s3cret@db.example:5432/read_models"


async def test_a_read_model_database_that_refuses_connections_is_retried() -> None:
    connect = FlakyAttempt(
        2, ConnectionRefusedError(111, "Connect call failed"), result="connection"
    )
    got = await connect_with_retries(connect, DOWN, retry_attempts=3, first_backoff=0.001)
    assert (got, connect.calls) == ("connection", 3)


async def test_the_retries_end_naming_the_database_without_its_password() -> None:
    connect = FlakyAttempt(
        10, ConnectionRefusedError(111, "Connect call failed"), result="connection"
    )
    with pytest.raises(DatabaseUnavailableError) as raised:
        await connect_with_retries(connect, DOWN, retry_attempts=2, first_backoff=0.001)
    assert connect.calls == 3
    message = str(raised.value)
    assert message.startswith(
        "cannot use the read-model database postgresql://reader:***@db.example:5432/read_models: "
        "connection refused at db.example:5432"
    )
    assert message.endswith(
        "(gave up after 2 retries; --database-retries (FEEDLINE_DATABASE_RETRIES))"
    )
    assert "s3cret" not in message


async def test_what_waiting_cannot_fix_is_not_retried(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'missing' / 'rm.db'}"
    connect = FlakyAttempt(
        10, sqlite3.OperationalError("unable to open database file"), result="connection"
    )
    with pytest.raises(DatabaseUnavailableError, match=r"folder .*missing does not exist"):
        await connect_with_retries(connect, url, retry_attempts=5, first_backoff=0.001)
    assert connect.calls == 1


async def test_a_stop_ends_the_wait_between_retries() -> None:
    stop = asyncio.Event()
    stop.set()
    connect = FlakyAttempt(
        10, ConnectionRefusedError(111, "Connect call failed"), result="connection"
    )
    with pytest.raises(DatabaseUnavailableError, match="stopped while waiting to retry"):
        await connect_with_retries(connect, DOWN, retry_attempts=5, stop=stop, first_backoff=30)
    assert connect.calls == 1
