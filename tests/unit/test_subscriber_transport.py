"""The subscriber's transports: the URL's scheme picks one (the flag and the CRD agree on
what is accepted), a gRPC batch is checked as an HTTP page is, and the page stream asks
each transport for as many pages at once as it says it takes."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from importlib import resources
from typing import Any

import orjson
import pytest
import yaml

from feedline.dev import schema
from feedline_contracts.eventsubscription import EventSubscription
from feedline_contracts.eventsubscription.model import FEED_URL_MESSAGE, FEED_URL_RULE
from feedline_contracts.feed_v1 import feed_pb2
from feedline_operator import builders
from feedline_operator.builders import ChildDefaults
from feedline_subscriber.feed_client import HttpFeedClient
from feedline_subscriber.feed_transport import (
    Event,
    FeedProtocolError,
    FeedTransport,
    Page,
    feed_url_problem,
    open_feed,
    transport_of,
)
from feedline_subscriber.grpc_feed_client import GrpcFeedClient, batch_page, grpc_target
from feedline_subscriber.page_stream import PageStream
from feedline_subscriber.settings import SettingsError, load_settings
from tests.support.operator_fixtures import sample
from tests.support.subscriber_process import LOYALTY

pytestmark = pytest.mark.unit


def settings(feed_url: str, **values: Any) -> Any:
    return load_settings(
        subscription="s",
        feed_url=feed_url,
        database_url="sqlite:///rm.db",
        projection=LOYALTY,
        **values,
    )


@pytest.mark.parametrize(
    ("url", "transport", "kind"),
    [
        ("http://special-offers/events", "http", HttpFeedClient),
        ("https://feeds.example:8443/events", "http", HttpFeedClient),
        ("grpc://special-offers:9090", "grpc", GrpcFeedClient),
        ("grpcs://feeds.example", "grpc", GrpcFeedClient),
        ("GRPC://special-offers:9090/", "grpc", GrpcFeedClient),
    ],
)
async def test_the_scheme_picks_the_transport(url: str, transport: str, kind: type[Any]) -> None:
    assert transport_of(url) == transport
    feed = open_feed(settings(url, feed_retry_attempts=3))
    try:
        assert isinstance(feed, kind)
        assert feed.url == url
    finally:
        await feed.aclose()


async def test_the_grpc_transport_takes_the_run_s_settings(tmp_path: Any) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    feed = open_feed(
        settings(
            "grpc://offers:7000",
            follow=True,
            event_types="A,B",
            feed_auth="Token",
            feed_token_file=str(token),
            feed_retry_attempts=5,
        )
    )
    assert isinstance(feed, GrpcFeedClient)
    assert (feed.follow, feed.event_types, feed.retry_attempts) == (True, ("A", "B"), 5)
    assert feed._metadata() == (("authorization", "Bearer s3cret"),)
    assert (feed.pages_in_flight, HttpFeedClient.pages_in_flight) == (1, 2)
    await feed.aclose()


@pytest.mark.parametrize(
    ("url", "target", "secure"),
    [
        ("grpc://special-offers:9090", "special-offers:9090", False),
        ("grpc://special-offers", "special-offers:9090", False),  # the port a pod gives it
        ("grpcs://feeds.example", "feeds.example:443", True),
        ("grpcs://feeds.example:8443/", "feeds.example:8443", True),
        ("grpc://[::1]:7000", "[::1]:7000", False),
        ("grpc://127.0.0.1:7000", "127.0.0.1:7000", False),
    ],
)
def test_where_a_grpc_url_dials(url: str, target: str, secure: bool) -> None:
    assert grpc_target(url) == (target, secure)


# URL -> accepted by the subscriber (--feed-url) and by the CRD (spec.feed.url).
URLS = [
    "http://special-offers/events",
    "https://feeds.example:8443/events",
    "grpc://special-offers:9090",
    "grpc://special-offers",
    "grpcs://feeds.example:443/",
    "grpc://[::1]:9090",
]
REFUSED_URLS = [
    ("grpc://special-offers:9090/events", "no path, query, fragment or user"),
    ("grpc://special-offers:9090?x=1", "no path, query, fragment or user"),
    ("grpc://reader@special-offers:9090", "no path, query, fragment or user"),
    ("grpc://special-offers:9090#top", "no path, query, fragment or user"),
    ("grpc:///special-offers", "a grpc:// URL needs a host"),
    ("grpc://special-offers:port", "must be an http:// or https:// URL"),
    ("ftp://feeds/events", "or a grpc:// or grpcs:// URL of a gRPC feed"),
    ("amqp://broker/feed", "must be an http:// or https:// URL"),
    ("special-offers/events", "must be an http:// or https:// URL"),
    ("http:///events", "must be an http:// or https:// URL"),
]


@pytest.mark.parametrize("url", URLS)
def test_accepted_feed_urls(url: str) -> None:
    assert feed_url_problem(url) is None
    assert settings(url).feed_url == url
    assert schema.evaluate_rule(FEED_URL_RULE, url) is True


@pytest.mark.parametrize(("url", "words"), REFUSED_URLS)
def test_refused_feed_urls_name_the_flag_and_what_is_accepted(url: str, words: str) -> None:
    with pytest.raises(SettingsError) as refused:
        settings(url)
    message = str(refused.value)
    assert message.startswith("--feed-url (FEEDLINE_FEED_URL): "), message
    assert words in message
    assert repr(url) in message
    # The API server refuses the same URLs (what `feedline dev` checks with the CRD).
    assert schema.evaluate_rule(FEED_URL_RULE, url) is not True


def test_the_crd_names_the_field_and_the_accepted_schemes() -> None:
    crd = yaml.safe_load(
        resources.files("feedline_contracts.eventsubscription").joinpath("crd.yaml").read_text()
    )
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    (validation,) = spec["properties"]["feed"]["properties"]["url"]["x-kubernetes-validations"]
    assert validation == {
        "rule": FEED_URL_RULE,
        "message": FEED_URL_MESSAGE,
        "reason": "FieldValueInvalid",
    }
    for words in ("feed.url", "http://", "https://", "grpc://HOST[:PORT]", "grpcs://HOST[:PORT]"):
        assert words in FEED_URL_MESSAGE
    # Its first words are the ones the API server said before gRPC (tests/data cases keep them).
    assert FEED_URL_MESSAGE.startswith(
        "feed.url must be an absolute http:// or https:// URL with a host"
    )


# --- a gRPC batch is checked as an HTTP page is --------------------------------------------


def grpc_event(number: int, name: str = "SpecialOfferCreated", **fields: Any) -> feed_pb2.Event:
    values: dict[str, Any] = {
        "sequence_number": number,
        "occurred_at": "2026-01-01T00:00:00.000000Z",
        "name": name,
        "content": orjson.dumps({"offerId": number, "description": "d"}).decode(),
    }
    values.update(fields)
    return feed_pb2.Event(**values)


def batch(events: Sequence[feed_pb2.Event], next_start: int, head: int) -> feed_pb2.EventBatch:
    return feed_pb2.EventBatch(events=events, next_start=next_start, head=head)


def test_a_good_batch_is_a_page() -> None:
    page = batch_page(
        batch([grpc_event(4), grpc_event(5), grpc_event(6)], 7, 9),
        start=4,
        limit=3,
        filtered=False,
    )
    assert [e.sequence_number for e in page.events] == [4, 5, 6]
    assert page.events[0].content == {"offerId": 4, "description": "d"}
    assert page.events[0].occurred_at == "2026-01-01T00:00:00.000000Z"
    assert (page.start, page.next_start, page.head) == (4, 7, 9)


def test_big_integers_in_content_stay_exact() -> None:
    big = 2**62 + 1
    page = batch_page(
        batch([grpc_event(1, content=f'{{"offerId": {big}}}')], 2, 1),
        start=1,
        limit=10,
        filtered=False,
    )
    assert page.events[0].content == {"offerId": big}


def test_an_empty_batch_at_the_head_and_a_filtered_one_that_scanned_past() -> None:
    assert batch_page(batch([], 10, 9), start=10, limit=3, filtered=False).events == []
    page = batch_page(
        batch([grpc_event(5), grpc_event(9)], 12, 20), start=4, limit=3, filtered=True
    )
    assert ([e.sequence_number for e in page.events], page.next_start) == ([5, 9], 12)


@pytest.mark.parametrize(
    ("events", "next_start", "head", "message"),
    [
        ([grpc_event(4), grpc_event(6)], 7, 9, "has a gap"),
        ([grpc_event(4), grpc_event(4)], 5, 9, "not increasing"),
        ([grpc_event(3)], 4, 9, "not increasing"),
        (
            [grpc_event(4)],
            4,
            9,
            "the batch's next_start goes backwards: 4, but the batch ends at 4",
        ),
        ([grpc_event(4)], 6, 9, "the batch's next_start (6) does not follow the last event 4"),
        ([grpc_event(4)], 11, 9, "skips past the batch's head 9"),
        ([grpc_event(4), grpc_event(5)], 6, 4, "event 5 is above the batch's head 4"),
        ([grpc_event(4, content="[1]")], 5, 9, "event 4: content must be a JSON object"),
        ([grpc_event(4, content="{oops")], 5, 9, "event 4: content is not JSON"),
        ([grpc_event(4, content="")], 5, 9, "event 4: content is not JSON"),
        ([grpc_event(4, name="")], 5, 9, "event 4: name must be a non-empty string"),
        ([grpc_event(4, occurred_at="")], 5, 9, "event 4: occurred_at must be set"),
        ([grpc_event(0)], 1, 9, "sequence_number must be >= 1"),
        ([grpc_event(n) for n in range(4, 8)], 8, 9, "batch has 4 events, more than the limit 3"),
        ([], 4, -1, "the batch's head is negative"),
    ],
)
def test_protocol_violations_of_a_batch(
    events: list[feed_pb2.Event], next_start: int, head: int, message: str
) -> None:
    with pytest.raises(FeedProtocolError) as broken:
        batch_page(batch(events, next_start, head), start=4, limit=3, filtered=False)
    assert message in str(broken.value)


# --- the page stream asks a transport for as many pages as it takes -------------------------


class ScriptedFeed:
    """A FeedTransport over ``total`` events; records each fetch (start, limit, wait)."""

    def __init__(self, total: int, pages_in_flight: int) -> None:
        self.total = total
        self.pages_in_flight = pages_in_flight
        self.url = "scripted://feed"
        self.fetches: list[tuple[int, int, float]] = []
        self.in_flight = 0
        self.most_in_flight = 0

    async def fetch(self, start: int, limit: int, *, wait: float = 0) -> Page:
        self.fetches.append((start, limit, wait))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.01)
        finally:
            self.in_flight -= 1
        numbers = range(start, min(start + limit, self.total + 1))
        events = [Event(number, "t", "SpecialOfferCreated", {}) for number in numbers]
        return Page(start, events, start + len(events), self.total)

    async def head(self) -> int:
        return self.total

    async def aclose(self) -> None:
        return None


@pytest.mark.parametrize("pages_in_flight", [1, 2])
async def test_the_page_stream_asks_as_many_pages_at_once_as_the_transport_takes(
    pages_in_flight: int,
) -> None:
    feed = ScriptedFeed(total=95, pages_in_flight=pages_in_flight)
    transport: FeedTransport = feed
    stream = PageStream(
        transport, settings("http://f/events", batch_size=10), position=0, stop=asyncio.Event()
    )
    ends = []
    async with stream as pages:
        async for taken in pages:
            await asyncio.sleep(0.02)  # applying it, while the next pages travel
            ends.append(taken.new)
    assert ends == [*range(10, 100, 10), 95]
    assert feed.most_in_flight == pages_in_flight
    assert sorted({start for start, _, _ in feed.fetches}) == list(range(1, 92, 10))


@pytest.mark.parametrize("name", ["subscription-cronjob", "subscription-follow"])
def test_the_operator_passes_a_grpc_feed_url_through_unchanged(name: str) -> None:
    """No operator change for gRPC: the URL reaches the subscriber as FEEDLINE_FEED_URL."""
    body = sample(name)
    body["spec"]["feed"]["url"] = "grpc://special-offers:9090"
    child = builders.build_child(EventSubscription.from_body(body), ChildDefaults())
    template = child["spec"]["jobTemplate"]["spec"] if child["kind"] == "CronJob" else child["spec"]
    (container,) = template["template"]["spec"]["containers"]
    rendered = {e["name"]: e.get("value") for e in container["env"]}
    assert rendered["FEEDLINE_FEED_URL"] == "grpc://special-offers:9090"


async def test_a_broker_picks_the_rabbitmq_transport_with_the_http_feed_beside_it(
    tmp_path: Any,
) -> None:
    from feedline_subscriber.broker_feed_client import BrokerFeedClient

    token = tmp_path / "token"
    token.write_text("s3cret\n")
    feed = open_feed(
        settings(
            "http://special-offers/events",
            broker_url="rabbitmq-stream://reader:pw@broker/%2F",
            broker_stream="feedline.events.special-offers",
            event_types="A,B",
            feed_auth="Token",
            feed_token_file=str(token),
            feed_retry_attempts=3,
            follow=True,
        )
    )
    try:
        assert isinstance(feed, BrokerFeedClient)
        assert feed.url == "http://special-offers/events"
        assert feed.pages_in_flight == 1
        assert (feed.broker.host, feed.broker.port, feed.broker.password) == ("broker", 5552, "pw")
        assert feed.stream == "feedline.events.special-offers"
        assert feed.event_types == {"A", "B"}
        assert feed.follow
        # The HTTP feed beside it: the same URL, filter, token and retries.
        assert isinstance(feed.http, HttpFeedClient)
        assert (feed.http.url, feed.http.event_types) == (
            "http://special-offers/events",
            ("A", "B"),
        )
        assert feed.http.token_file == token
        assert feed.http.retry.total == 3
    finally:
        await feed.aclose()
        await feed.aclose()  # idempotent


def test_a_run_over_http_or_grpc_never_imports_rstream() -> None:
    """The broker's client library loads only for a broker run (as gRPC only for gRPC)."""
    import subprocess
    import sys

    script = (
        "import sys, asyncio\n"
        "from feedline_subscriber import command, runner\n"
        "from feedline_subscriber.feed_transport import open_feed\n"
        "from feedline_subscriber.settings import load_settings\n"
        "for url in ('http://offers/events', 'grpc://offers:9090'):\n"
        "    feed = open_feed(load_settings(subscription='s', feed_url=url,\n"
        "        database_url='sqlite:///x.db', projection='a:b'))\n"
        "    asyncio.run(feed.aclose())\n"
        "assert 'rstream' not in sys.modules, 'rstream imported'\n"
        "open_feed(load_settings(subscription='s', feed_url='http://offers/events',\n"
        "    database_url='sqlite:///x.db', projection='a:b',\n"
        "    broker_url='rabbitmq-stream://u:p@b/%2F', broker_stream='feedline.events.offers'))\n"
        "assert 'rstream' in sys.modules\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
