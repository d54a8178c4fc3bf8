"""Telemetry, the pure parts: `feedline dev`'s OTLP receiver (store and router), the
OTEL_* switch, the events' traceparent through render, feed parsing and gRPC, and the
subscriber's batch links."""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from feedline.chassis.eventstore import FeedPage, NewEvent, render_event
from feedline.chassis.grpc_feed import batches
from feedline.chassis.tracing import parse_traceparent
from feedline.dev.telemetry import SpanRecord, TelemetryStore, otlp_router
from feedline_contracts import telemetry
from feedline_subscriber import feed_client
from feedline_subscriber.batch_applier import batch_links
from feedline_subscriber.feed_client import Event, checked_events
from feedline_subscriber.grpc_feed_client import batch_page

pytestmark = pytest.mark.unit

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
OTHER_TRACE = "0af7651916cd43dd8448eb211c80319c"


def record(
    trace_id: str,
    span_id: str,
    *,
    parent: str | None = None,
    name: str = "span",
    service: str = "svc",
    start: int = 1_000,
    end: int = 2_000,
    links: tuple[tuple[str, str], ...] = (),
) -> SpanRecord:
    return SpanRecord(trace_id, span_id, parent, name, service, start, end, {}, links)


# --- the store -------------------------------------------------------------------


def test_traces_are_summarised_newest_first_and_limited() -> None:
    store = TelemetryStore()
    store.add(
        [
            record(TRACE, "a" * 16, name="POST /offers", service="special-offers", start=100),
            record(TRACE, "b" * 16, parent="a" * 16, name="eventstore.append", start=150),
            record(OTHER_TRACE, "c" * 16, name="subscriber.run", start=5_000, end=9_000_000),
        ]
    )
    newest, older = store.traces()
    assert newest.trace_id == OTHER_TRACE
    assert newest.duration_ms == pytest.approx((9_000_000 - 5_000) / 1e6)
    assert older.trace_id == TRACE
    assert older.root_name == "POST /offers"
    assert older.services == ("special-offers", "svc")
    assert older.span_count == 2
    assert older.start_unix_nano == 100
    assert [summary.trace_id for summary in store.traces(limit=1)] == [OTHER_TRACE]


def test_a_root_not_received_yet_is_the_earliest_span_whose_parent_is_missing() -> None:
    store = TelemetryStore()
    store.add(
        [
            record(TRACE, "b" * 16, parent="f" * 16, name="late child", start=300),
            record(TRACE, "c" * 16, parent="f" * 16, name="early child", start=200),
        ]
    )
    assert store.traces()[0].root_name == "early child"


def test_a_trace_includes_the_spans_of_other_traces_that_link_to_it() -> None:
    store = TelemetryStore()
    append = record(TRACE, "b" * 16, parent="a" * 16, name="eventstore.append", start=2)
    batch = record(
        OTHER_TRACE, "d" * 16, name="subscriber.batch", start=3, links=((TRACE, "b" * 16),)
    )
    unrelated = record(OTHER_TRACE, "e" * 16, name="subscriber.run", start=1)
    store.add([batch, unrelated, append, record(TRACE, "a" * 16, name="POST /offers", start=1)])
    assert [span.name for span in store.trace(TRACE)] == [
        "POST /offers",
        "eventstore.append",
        "subscriber.batch",
    ]
    assert store.trace(TRACE.upper())[1] == append
    assert store.trace("0" * 32) == []


def test_the_store_keeps_the_last_spans_and_a_span_once() -> None:
    store = TelemetryStore(capacity=3)
    store.add(record(TRACE, f"{number:016x}", start=number) for number in range(1, 6))
    assert [span.span_id for span in store.spans()] == [f"{n:016x}" for n in (3, 4, 5)]
    store.add([record(TRACE, f"{3:016x}", name="again")])
    assert len(store) == 3
    assert store.spans()[-1].name == "again"
    with pytest.raises(ValueError, match="capacity"):
        TelemetryStore(capacity=0)


# --- the router ------------------------------------------------------------------


def _attribute(key: str, value: AnyValue) -> KeyValue:
    return KeyValue(key=key, value=value)


def export_request() -> ExportTraceServiceRequest:
    span = Span(
        trace_id=bytes.fromhex(OTHER_TRACE),
        span_id=bytes.fromhex("d" * 16),
        parent_span_id=bytes.fromhex("c" * 16),
        name="subscriber.batch",
        start_time_unix_nano=10,
        end_time_unix_nano=20,
        attributes=[
            _attribute("feedline.subscription", AnyValue(string_value="loyalty")),
            _attribute("feedline.events.count", AnyValue(int_value=3)),
            _attribute("ok", AnyValue(bool_value=True)),
            _attribute("ratio", AnyValue(double_value=0.5)),
            _attribute(
                "names",
                AnyValue(array_value=ArrayValue(values=[AnyValue(string_value="A")])),
            ),
        ],
        links=[Span.Link(trace_id=bytes.fromhex(TRACE), span_id=bytes.fromhex("b" * 16))],
    )
    return ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=Resource(
                    attributes=[
                        _attribute("service.name", AnyValue(string_value="feedline-subscriber"))
                    ]
                ),
                scope_spans=[ScopeSpans(spans=[span])],
            )
        ]
    )


EXPECTED = SpanRecord(
    trace_id=OTHER_TRACE,
    span_id="d" * 16,
    parent_span_id="c" * 16,
    name="subscriber.batch",
    service="feedline-subscriber",
    start_unix_nano=10,
    end_unix_nano=20,
    attributes={
        "feedline.subscription": "loyalty",
        "feedline.events.count": 3,
        "ok": True,
        "ratio": 0.5,
        "names": ["A"],
    },
    links=((TRACE, "b" * 16),),
)

# The same export as OTLP/JSON writes it: hex ids, camelCase, 64-bit integers as strings.
JSON_EXPORT: dict[str, Any] = {
    "resourceSpans": [
        {
            "resource": {
                "attributes": [
                    {"key": "service.name", "value": {"stringValue": "feedline-subscriber"}}
                ]
            },
            "scopeSpans": [
                {
                    "scope": {"name": "feedline"},
                    "spans": [
                        {
                            "traceId": OTHER_TRACE,
                            "spanId": "d" * 16,
                            "parentSpanId": "c" * 16,
                            "name": "subscriber.batch",
                            "kind": 1,
                            "startTimeUnixNano": "10",
                            "endTimeUnixNano": "20",
                            "attributes": [
                                {
                                    "key": "feedline.subscription",
                                    "value": {"stringValue": "loyalty"},
                                },
                                {"key": "feedline.events.count", "value": {"intValue": "3"}},
                                {"key": "ok", "value": {"boolValue": True}},
                                {"key": "ratio", "value": {"doubleValue": 0.5}},
                                {
                                    "key": "names",
                                    "value": {"arrayValue": {"values": [{"stringValue": "A"}]}},
                                },
                            ],
                            "links": [{"traceId": TRACE, "spanId": "b" * 16}],
                            "futureField": "ignored",
                        }
                    ],
                }
            ],
        }
    ]
}


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[httpx.AsyncClient, TelemetryStore]]:
    """The router in an app, called in memory (no server, no socket)."""
    store = TelemetryStore()
    app = FastAPI()
    app.include_router(otlp_router(store))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://dev") as client:
        yield client, store


async def test_the_router_takes_protobuf_traces(
    receiver: tuple[httpx.AsyncClient, TelemetryStore],
) -> None:
    client, store = receiver
    response = await client.post(
        "/v1/traces",
        content=export_request().SerializeToString(),
        headers={"Content-Type": "application/x-protobuf"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-protobuf"
    ExportTraceServiceResponse().ParseFromString(response.content)  # a valid reply
    assert store.spans() == [EXPECTED]


async def test_the_router_takes_gzipped_protobuf(
    receiver: tuple[httpx.AsyncClient, TelemetryStore],
) -> None:
    client, store = receiver
    response = await client.post(
        "/v1/traces",
        content=gzip.compress(export_request().SerializeToString()),
        headers={"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"},
    )
    assert response.status_code == 200
    assert store.spans() == [EXPECTED]


async def test_the_router_takes_otlp_json_with_hex_ids(
    receiver: tuple[httpx.AsyncClient, TelemetryStore],
) -> None:
    client, store = receiver
    response = await client.post("/v1/traces", json=JSON_EXPORT)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert store.spans() == [EXPECTED]


@pytest.mark.parametrize(
    ("content_type", "body", "status"),
    [
        ("text/plain", b"hello", 415),
        ("application/x-protobuf", b"\xff\xff\xff", 400),
        ("application/json", b"{not json", 400),
        (
            "application/json",
            b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": 5}]}]}]}',
            400,
        ),
    ],
)
async def test_the_router_refuses_what_is_not_otlp(
    receiver: tuple[httpx.AsyncClient, TelemetryStore], content_type: str, body: bytes, status: int
) -> None:
    client, store = receiver
    response = await client.post("/v1/traces", content=body, headers={"Content-Type": content_type})
    assert response.status_code == status
    assert store.spans() == []


async def test_the_router_accepts_metrics_and_only_counts_them(
    receiver: tuple[httpx.AsyncClient, TelemetryStore],
) -> None:
    client, store = receiver
    protobuf = await client.post(
        "/v1/metrics",
        content=ExportMetricsServiceRequest().SerializeToString(),
        headers={"Content-Type": "application/x-protobuf"},
    )
    as_json = await client.post("/v1/metrics", json={"resourceMetrics": []})
    assert (protobuf.status_code, as_json.status_code) == (200, 200)
    assert store.metrics_requests == 2
    assert store.spans() == []


# --- the OTEL_* switch -----------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "traces", "metrics"),
    [
        ({}, False, False),
        ({"OTEL_SERVICE_NAME": "x", "OTEL_BSP_SCHEDULE_DELAY": "1"}, False, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "  "}, False, False),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, True, False),
        ({"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://c:4318/v1/metrics"}, False, True),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"},
            False,
            False,
        ),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "TRUE"},
            False,
            False,
        ),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "false"},
            True,
            True,
        ),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"},
            False,
            True,
        ),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_METRICS_EXPORTER": "none"},
            True,
            False,
        ),
    ],
)
def test_telemetry_is_on_only_when_the_otel_env_names_an_endpoint(
    environ: dict[str, str], traces: bool, metrics: bool
) -> None:
    assert telemetry.traces_enabled(environ) is traces
    assert telemetry.metrics_enabled(environ) is metrics


@pytest.fixture
def clean_otel_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    import os

    for key in list(os.environ):
        if key.startswith("OTEL_"):
            monkeypatch.delenv(key)
    return monkeypatch


def test_off_there_are_no_providers(clean_otel_env: pytest.MonkeyPatch) -> None:
    assert telemetry.telemetry_from_env("special-offers") is None
    clean_otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    clean_otel_env.setenv("OTEL_SDK_DISABLED", "true")
    assert telemetry.telemetry_from_env("special-offers") is None


def test_the_service_name_defaults_to_the_process_and_the_env_overrides_it(
    clean_otel_env: pytest.MonkeyPatch,
) -> None:
    clean_otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    clean_otel_env.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test")
    default = telemetry.telemetry_from_env("feedline-subscriber", {"feedline.subscription": "s"})
    assert default is not None
    assert default.tracer_provider is not None
    assert default.tracer is not None
    assert default.meter is not None
    attributes = default.tracer_provider.resource.attributes
    assert attributes["service.name"] == "feedline-subscriber"
    assert attributes["feedline.subscription"] == "s"
    assert attributes["deployment.environment"] == "test"
    default.shutdown()
    default.shutdown()  # idempotent
    clean_otel_env.setenv("OTEL_SERVICE_NAME", "renamed")
    renamed = telemetry.telemetry_from_env("feedline-subscriber")
    assert renamed is not None
    assert renamed.tracer_provider is not None
    assert renamed.tracer_provider.resource.attributes["service.name"] == "renamed"
    renamed.shutdown()


# --- traceparent: parsing, the event, both feeds ---------------------------------


def test_traceparent_is_parsed_by_the_w3c_propagator() -> None:
    parsed = parse_traceparent(f"00-{TRACE}-00f067aa0ba902b7-01")
    assert parsed is not None
    assert (parsed.trace_id, parsed.span_id, parsed.flags) == (TRACE, "00f067aa0ba902b7", "01")
    assert parse_traceparent(f"ff-{TRACE}-00f067aa0ba902b7-01") is None  # version ff: invalid
    assert telemetry.span_context_of("garbage") is None
    context = telemetry.span_context_of(f"00-{TRACE}-00f067aa0ba902b7-00")
    assert telemetry.traceparent_of(context) == f"00-{TRACE}-00f067aa0ba902b7-00"


TRACEPARENT = f"00-{TRACE}-00f067aa0ba902b7-01"


def test_an_event_with_a_traceparent_renders_it_as_an_optional_last_field() -> None:
    rendered = orjson.loads(
        render_event(7, "2026-01-01T00:00:00.000000Z", NewEvent("A"), TRACEPARENT)
    )
    assert rendered == {
        "sequenceNumber": 7,
        "occurredAt": "2026-01-01T00:00:00.000000Z",
        "name": "A",
        "content": {},
        "traceparent": TRACEPARENT,
    }
    assert "traceparent" not in orjson.loads(render_event(7, "t", NewEvent("A")))


def _raw(number: int, traceparent: Any = None) -> dict[str, Any]:
    event: dict[str, Any] = {
        "sequenceNumber": number,
        "occurredAt": "t",
        "name": "A",
        "content": {},
    }
    if traceparent is not None:
        event["traceparent"] = traceparent
    return event


def test_the_http_reader_keeps_the_traceparent_and_ignores_a_bad_one() -> None:
    good = checked_events([_raw(1, TRACEPARENT), _raw(2)], 1, filtered=False)
    assert [event.traceparent for event in good] == [TRACEPARENT, None]
    # Not text: ignored, not a protocol error (both the fast and the slow path).
    odd = checked_events([_raw(1, 5), _raw(2, TRACEPARENT)], 1, filtered=False)
    assert [event.traceparent for event in odd] == [None, TRACEPARENT]
    # The one-event-at-a-time path (run when a page fails the column checks) agrees.
    assert feed_client._event(0, _raw(1, TRACEPARENT)).traceparent == TRACEPARENT
    assert feed_client._event(0, _raw(1, ["x"])).traceparent is None


def test_the_grpc_feed_and_reader_carry_the_traceparent() -> None:
    body = (
        b"["
        + b",".join(orjson.dumps(_raw(n, TRACEPARENT if n == 1 else None)) for n in (1, 2))
        + b"]"
    )
    (batch,) = batches(FeedPage(body=body, count=2, head=2, scanned_to=3))
    assert batch.events[0].traceparent == TRACEPARENT
    assert not batch.events[1].HasField("traceparent")
    page = batch_page(batch, start=1, limit=10, filtered=False)
    assert [event.traceparent for event in page.events] == [TRACEPARENT, None]


# --- the subscriber's links --------------------------------------------------------


def _event(number: int, traceparent: str | None) -> Event:
    return Event(number, "t", "A", {}, traceparent)


def test_a_batch_links_to_each_distinct_valid_trace_context_up_to_the_cap() -> None:
    events = [
        _event(1, f"00-{TRACE}-{1:016x}-01"),
        _event(2, f"00-{TRACE}-{1:016x}-01"),  # the same append: one link
        _event(3, None),
        _event(4, "not a traceparent"),
        *(_event(number, f"00-{OTHER_TRACE}-{number:016x}-01") for number in range(5, 10)),
    ]
    links, dropped = batch_links(events, max_links=3)
    assert [
        (f"{link.context.trace_id:032x}", f"{link.context.span_id:016x}") for link in links
    ] == [(TRACE, f"{1:016x}"), (OTHER_TRACE, f"{5:016x}"), (OTHER_TRACE, f"{6:016x}")]
    assert links[0].attributes == {"feedline.sequence_number": 1}
    assert dropped == 3
    assert telemetry.MAX_LINKS_PER_SPAN == 128
    assert batch_links([_event(1, None)]) == ([], 0)


def test_the_feed_response_still_parses_with_unknown_fields() -> None:
    # Protocol v1 readers ignore fields they do not know.
    assert checked_events([{**_raw(1), "future": 1}], 1, filtered=False)[0].sequence_number == 1
