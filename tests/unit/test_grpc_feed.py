"""The gRPC feed's pure pieces: argument checks, batching, settings, the shared auth check,
and generated code that matches proto/ (regenerated into a temp folder and compared)."""

from __future__ import annotations

import itertools
from pathlib import Path

import orjson
import pytest
from pydantic import ValidationError

from feedline.chassis.auth import AllowAnyone, FeedAuthError, StaticToken, bearer_token
from feedline.chassis.eventstore import FeedPage, NewEvent, render_event
from feedline.chassis.grpc_feed import InvalidArgumentError, batches, subscription_from
from feedline.chassis.settings import ServiceSettings
from feedline_contracts.feed import DEFAULT_LIMIT, GRPC_SERVICE, MAX_LIMIT
from feedline_contracts.feed_v1 import feed_pb2
from feedline_contracts.feed_v1.generate import MODULES, PACKAGE_DIR, generate

pytestmark = pytest.mark.unit


def test_generated_code_matches_the_proto(tmp_path: Path) -> None:
    """Regenerate with the pinned grpcio-tools and mypy-protobuf: the committed files must match."""
    generate(tmp_path)
    stale = [
        name
        for name in MODULES
        if (tmp_path / name).read_bytes() != (PACKAGE_DIR / name).read_bytes()
    ]
    assert not stale, f"{stale} are stale: run `make proto` and commit the result"


def test_the_generated_service_is_the_contracts_name() -> None:
    assert feed_pb2.DESCRIPTOR.services_by_name["EventFeed"].full_name == GRPC_SERVICE
    assert feed_pb2.DESCRIPTOR.name == "feedline/feed/v1/feed.proto"


def test_left_out_start_and_limit_take_the_http_defaults() -> None:
    subscription = subscription_from(feed_pb2.SubscribeRequest())
    assert (subscription.start, subscription.limit) == (1, DEFAULT_LIMIT)
    assert subscription.types is None
    assert subscription.follow is False
    subscription = subscription_from(
        feed_pb2.SubscribeRequest(start=7, limit=MAX_LIMIT, types=["A", "B", "A"], follow=True)
    )
    assert (subscription.start, subscription.limit, subscription.types) == (
        7,
        MAX_LIMIT,
        ("A", "B"),
    )
    assert subscription.follow is True


@pytest.mark.parametrize(
    ("request_fields", "message"),
    [
        ({"start": 0}, "field 'start': Input should be greater than or equal to 1"),
        ({"start": -5}, "field 'start': Input should be greater than or equal to 1"),
        ({"limit": 0}, "field 'limit': Input should be greater than or equal to 1"),
        ({"limit": -1}, "field 'limit': Input should be greater than or equal to 1"),
        ({"limit": 10_001}, "field 'limit': Input should be less than or equal to 10000"),
        (
            {"types": ["SpecialOfferCreated", "has space"]},
            "field 'types': 'has space' is not an event name: use 1 to 200 letters, digits, "
            "'_', '.', ':' or '-'",
        ),
        ({"types": [""]}, "field 'types': '' is not an event name"),
        ({"types": ["x" * 201]}, "field 'types': 'xxxx"),
    ],
)
def test_bad_arguments_name_the_field_and_what_is_accepted(
    request_fields: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidArgumentError) as error:
        subscription_from(feed_pb2.SubscribeRequest(**request_fields))  # type: ignore[arg-type]
    assert str(error.value).startswith(message)


def page_of(count: int, *, pad: int = 0, scanned_to: int | None = None) -> FeedPage:
    rendered = [
        render_event(
            number,
            "2026-11-29T10:59:03.309376Z",
            NewEvent("SpecialOfferCreated", {"offerId": number, "big": 2**62, "pad": "x" * pad}),
        )
        for number in range(1, count + 1)
    ]
    body = ("[" + ",".join(rendered) + "]").encode()
    return FeedPage(body=body, count=count, head=count, scanned_to=scanned_to or count + 1)


def test_a_page_is_one_batch_with_the_http_feeds_text() -> None:
    page = page_of(3, scanned_to=9)
    [batch] = batches(page)
    assert [event.sequence_number for event in batch.events] == [1, 2, 3]
    assert (batch.head, batch.next_start) == (3, 9)
    event = batch.events[0]
    assert event.occurred_at == "2026-11-29T10:59:03.309376Z"
    assert event.name == "SpecialOfferCreated"
    # The content is the appended JSON, numbers exact (2**62 is past a double's 53 bits).
    assert event.content == '{"offerId":1,"big":4611686018427387904,"pad":""}'
    assert orjson.loads(event.content)["big"] == 2**62
    http_event = page.events[0]
    assert orjson.loads(event.content) == http_event["content"]


def test_an_empty_page_is_one_empty_batch_that_says_where_to_resume() -> None:
    [batch] = batches(FeedPage(body=b"[]", count=0, head=4, scanned_to=5))
    assert list(batch.events) == []
    assert (batch.head, batch.next_start) == (4, 5)


def test_a_page_past_the_byte_budget_is_split_at_event_boundaries() -> None:
    page = page_of(10, pad=300, scanned_to=20)
    split = list(batches(page, max_bytes=1000))
    assert len(split) > 1
    assert all(sum(e.ByteSize() for e in batch.events) <= 1000 for batch in split)
    numbers = [event.sequence_number for batch in split for event in batch.events]
    assert numbers == list(range(1, 11))
    for batch, after in itertools.pairwise(split):
        assert batch.next_start == after.events[0].sequence_number
    assert split[-1].next_start == 20
    # An event bigger than the budget still goes, alone.
    alone = list(batches(page_of(2, pad=5000), max_bytes=1000))
    assert [len(batch.events) for batch in alone] == [1, 1]


def test_the_grpc_port_is_an_optional_bounded_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ServiceSettings().grpc_port is None
    monkeypatch.setenv("FEEDLINE_GRPC_PORT", "9090")
    assert ServiceSettings().grpc_port == 9090
    for bad in ("-1", "65536", "grpc"):
        monkeypatch.setenv("FEEDLINE_GRPC_PORT", bad)
        with pytest.raises(ValidationError, match="grpc_port"):
            ServiceSettings()


@pytest.mark.parametrize(
    ("authorization", "token"),
    [("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("BEARER x.y-z", "x.y-z")],
)
def test_bearer_token_reads_an_authorization_value(authorization: str, token: str) -> None:
    assert bearer_token(authorization) == token


async def test_one_check_serves_both_transports() -> None:
    """The value of an HTTP header or of gRPC metadata: the same check, FeedAuthError if not."""
    check = StaticToken("s3cret")
    await check.check("Bearer s3cret")
    for bad in (None, "", "Bearer other", "Basic s3cret", "Bearer "):
        with pytest.raises(FeedAuthError) as error:
            await check.check(bad)
        assert error.value.unavailable is False
    await AllowAnyone().check(None)
