"""OpenTelemetry end to end: real `feedline serve` and `feedline subscribe` processes
exporting over OTLP/HTTP to `feedline dev`'s own receiver (feedline.dev.telemetry).

- The trace test: a command's traceparent is followed through the request's
  server span, the event store's append span and the event (its
  ``traceparent`` on the HTTP and gRPC feeds) to the subscriber's batch span,
  which links to the append span (one subscriber over HTTP, one over gRPC).
- Off by default: with no ``OTEL_*`` endpoint nothing is exported (a receiver
  on the exporters' default endpoint, localhost:4318, gets nothing), the SDK
  is not even imported, and the W3C ids still flow (response, event).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan
from sqlalchemy import text

from feedline.chassis.app import create_tables
from feedline.chassis.eventstore import EventStore, NewEvent, render_event
from feedline.dev.telemetry import SpanRecord, TelemetryStore, otlp_router
from feedline_contracts.database import connect_database
from feedline_contracts.feed_v1 import feed_pb2, feed_pb2_grpc
from feedline_contracts.telemetry import span_context_of
from tests.support.ports import free_port
from tests.support.services import restartable_service
from tests.support.subscriber_process import run_subscriber, subscriber_env
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CALLER_SPAN}-01"
DEFAULT_OTLP_PORT = 4318  # where an OTLP/HTTP exporter sends when no endpoint is set


def _without_otel() -> dict[str, str]:
    return {key: "" for key in os.environ if key.startswith("OTEL_")}


@contextlib.contextmanager
def otlp_receiver(port: int | None = None) -> Iterator[tuple[str, TelemetryStore]]:
    """`feedline dev`'s receiver in a uvicorn thread on loopback: (its URL, its store)."""
    store = TelemetryStore()
    app = FastAPI()
    app.include_router(otlp_router(store))
    port = port or free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
    )
    thread = threading.Thread(target=server.run, name=f"otlp-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the OTLP receiver did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}", store
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def _otel_env(endpoint: str) -> dict[str, str]:
    return {
        **_without_otel(),
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
    }


def _grpc_events(target: str) -> list[feed_pb2.Event]:
    with grpc.insecure_channel(target) as channel:
        stub = feed_pb2_grpc.EventFeedStub(channel)
        events: list[feed_pb2.Event] = []
        for batch in stub.Subscribe(feed_pb2.SubscribeRequest(start=1), timeout=10):
            events.extend(batch.events)
        return events


def _one(spans: list[SpanRecord], name: str, service: str) -> SpanRecord:
    found = [span for span in spans if span.name == name and span.service == service]
    assert len(found) == 1, f"{name} of {service}: {found!r:.2000}"
    return found[0]


def test_a_trace_id_is_followed_from_the_command_through_the_event_to_the_read_model_write(
    tmp_path: Path,
) -> None:
    with (
        otlp_receiver() as (endpoint, store),
        restartable_service(
            "special-offers",
            f"sqlite:///{tmp_path / 'offers.db'}",
            grpc=True,
            **_otel_env(endpoint),
        ) as service,
    ):
        response = httpx.post(
            f"{service.base_url}/offers",
            json={"description": "traced"},
            headers={"traceparent": TRACEPARENT},
            timeout=10,
        )
        assert response.status_code == 201, response.text
        assert response.headers["traceparent"].startswith(f"00-{TRACE_ID}-")

        # The event carries the trace context on both feeds.
        feed = httpx.get(f"{service.base_url}/events", timeout=10).json()
        assert len(feed) == 1
        event_traceparent = feed[0]["traceparent"]
        assert event_traceparent.startswith(f"00-{TRACE_ID}-")
        assert event_traceparent.endswith("-01")
        (grpc_event,) = _grpc_events(service.grpc_target)
        assert grpc_event.HasField("traceparent")
        assert grpc_event.traceparent == event_traceparent

        # Two subscribers, one per transport, each one run.
        for subscription, feed_url in (
            ("traced-http", f"{service.base_url}/events"),
            ("traced-grpc", f"grpc://{service.grpc_target}"),
        ):
            finished = run_subscriber(
                subscriber_env(
                    subscription,
                    feed_url,
                    f"sqlite:///{tmp_path / (subscription + '.db')}",
                    **_otel_env(endpoint),
                )
            )
            assert finished.returncode == 0, finished.stderr[-3000:]
            assert finished.summary["processed"] == 1

        def complete() -> list[SpanRecord] | None:
            spans = store.trace(TRACE_ID)
            batches = [span for span in spans if span.name == "subscriber.batch"]
            return spans if len(batches) == 2 else None

        spans = wait_for(complete, timeout=20, what="the trace's spans at the receiver")

    server = _one([s for s in spans if s.trace_id == TRACE_ID], "POST /offers", "special-offers")
    assert server.parent_span_id == CALLER_SPAN, "the server span continues the caller's trace"
    assert server.attributes["http.route"] == "/offers"
    assert server.attributes["http.response.status_code"] == 201
    append = _one(spans, "eventstore.append", "special-offers")
    assert (append.trace_id, append.parent_span_id) == (TRACE_ID, server.span_id)
    assert append.attributes["feedline.sequence_number.first"] == 1
    # The event records the append span's context: the batch spans link to it.
    assert event_traceparent == f"00-{TRACE_ID}-{append.span_id}-01"

    batches = [span for span in spans if span.name == "subscriber.batch"]
    assert {span.attributes["feedline.subscription"] for span in batches} == {
        "traced-http",
        "traced-grpc",
    }
    for batch in batches:
        assert batch.service == "feedline-subscriber"
        assert batch.trace_id != TRACE_ID, "a subscriber run is a trace of its own"
        assert batch.links == ((TRACE_ID, append.span_id),)
        assert batch.attributes["feedline.sequence_number.first"] == 1
        run_spans = [
            span
            for span in store.spans()
            if span.trace_id == batch.trace_id and span.name == "subscriber.run"
        ]
        assert [span.span_id for span in run_spans] == [batch.parent_span_id]
        assert run_spans[0].parent_span_id is None
    # Metrics were exported too (request duration, events appended and applied).
    assert store.metrics_requests > 0


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_telemetry_is_off_without_otel_env_and_the_ids_still_flow(tmp_path: Path) -> None:
    if not _port_is_free(DEFAULT_OTLP_PORT):
        pytest.skip(f"port {DEFAULT_OTLP_PORT} is taken: the default OTLP endpoint is in use")
    # A receiver where an exporter would send by default: telemetry on by mistake shows here.
    with (
        otlp_receiver(DEFAULT_OTLP_PORT) as (_, store),
        restartable_service(
            "special-offers",
            f"sqlite:///{tmp_path / 'offers.db'}",
            grpc=False,
            **{
                **_without_otel(),
                "OTEL_SERVICE_NAME": "would-be-exported",
                "OTEL_BSP_SCHEDULE_DELAY": "100",
            },
        ) as service,
    ):
        response = httpx.post(
            f"{service.base_url}/offers",
            json={"description": "untraced"},
            headers={"traceparent": TRACEPARENT},
            timeout=10,
        )
        assert response.status_code == 201
        own_span = response.headers["traceparent"]
        assert own_span.startswith(f"00-{TRACE_ID}-")
        assert own_span != TRACEPARENT, "the service's span is a child of the caller's"
        (event,) = httpx.get(f"{service.base_url}/events", timeout=10).json()
        assert event["traceparent"] == own_span, "no append span: the request's context"
        finished = run_subscriber(
            subscriber_env(
                "untraced",
                f"{service.base_url}/events",
                f"sqlite:///{tmp_path / 'read-model.db'}",
                **{**_without_otel(), "OTEL_BSP_SCHEDULE_DELAY": "100"},
            )
        )
        assert finished.returncode == 0, finished.stderr[-3000:]
        time.sleep(1.5)  # ten export intervals, had anything been exported
        assert store.spans() == []
        assert store.metrics_requests == 0


def test_a_service_with_telemetry_off_never_loads_the_sdk(sqlite_url: str) -> None:
    """The off path is the API alone: building and serving a request imports no SDK."""
    script = f"""
import sys
from fastapi.testclient import TestClient
from feedline.chassis.app import create_app
from feedline.chassis.settings import ServiceSettings
from feedline.services.registry import SERVICES
app = create_app(SERVICES["special-offers"], ServiceSettings(database_url={sqlite_url!r}))
with TestClient(app) as client:
    assert client.post("/offers", json={{"description": "x"}}).status_code == 201
    assert "traceparent" in client.get("/events").json()[0]
loaded = sorted(name for name in sys.modules if name.startswith("opentelemetry.sdk"))
assert not loaded, loaded
print("ok")
"""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        env=environment,
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    assert done.stdout.decode().strip().endswith("ok")


async def test_an_events_table_made_before_the_traceparent_column_gets_it_at_start_up(
    database_url: str,
) -> None:
    database = connect_database(database_url)
    try:
        async with database.engine.begin() as connection:  # the table as older versions made it
            await connection.execute(
                text(
                    "CREATE TABLE events (sequence_number BIGINT PRIMARY KEY, "
                    "occurred_at TIMESTAMP WITH TIME ZONE NOT NULL, name TEXT NOT NULL, "
                    "event_json TEXT NOT NULL)"
                )
            )
            await connection.execute(
                text("INSERT INTO events VALUES (1, :at, 'Old', :json)"),
                {
                    "at": datetime(2026, 1, 1, tzinfo=UTC),
                    "json": render_event(1, "2026-01-01T00:00:00.000000Z", NewEvent("Old")),
                },
            )
        await create_tables(database, [])
        await create_tables(database, [])  # every start-up runs it: a no-op the second time
        store = EventStore(database)
        request_span = NonRecordingSpan(span_context_of(TRACEPARENT))  # type: ignore[arg-type]
        token = otel_context.attach(trace.set_span_in_context(request_span))
        try:
            async with store.transaction() as connection:
                await store.append(connection, [NewEvent("New")])
        finally:
            otel_context.detach(token)
        async with store.transaction() as connection:  # outside any span: none
            await store.append(connection, [NewEvent("Unattributed")])
        old, new, unattributed = (await store.read_page(1, None, 10, None)).events
        assert "traceparent" not in old
        assert new["traceparent"] == TRACEPARENT
        assert "traceparent" not in unattributed
        async with database.engine.connect() as connection:
            column = (
                await connection.execute(
                    text("SELECT traceparent FROM events ORDER BY sequence_number")
                )
            ).scalars()
            assert list(column) == [None, TRACEPARENT, None]
    finally:
        await database.dispose()
