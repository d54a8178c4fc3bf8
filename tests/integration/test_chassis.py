"""What every service gets from the chassis: health, metrics, ids, OpenAPI."""

from __future__ import annotations

import asyncpg
import httpx
import pytest

from tests.integration.conftest import StartService

pytestmark = pytest.mark.integration


async def test_health_live_and_ready(
    start_service: StartService, database_url: str, client: httpx.AsyncClient
) -> None:
    base = start_service("loyalty-program", database_url)
    assert (await client.get(f"{base}/health/live")).json() == {"status": "ok"}
    assert (await client.get(f"{base}/health/ready")).json() == {"status": "ready"}


async def test_ready_fails_when_the_database_is_gone(
    start_service: StartService,
    postgres_url: str,
    postgres_server_url: str,
    client: httpx.AsyncClient,
) -> None:
    base = start_service("special-offers", postgres_url)
    database = postgres_url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(postgres_server_url)
    try:
        await admin.execute(f'DROP DATABASE "{database}" WITH (FORCE)')
    finally:
        await admin.close()
    response = await client.get(f"{base}/health/ready")
    assert response.status_code == 503
    assert response.headers["Content-Type"] == "application/problem+json"
    assert "database check failed" in response.json()["detail"]
    assert (await client.get(f"{base}/health/live")).status_code == 200


async def test_metrics_count_requests_by_route_template(
    start_service: StartService, sqlite_url: str, client: httpx.AsyncClient
) -> None:
    base = start_service("special-offers", sqlite_url)
    await client.post(f"{base}/offers", json={"description": "a"})
    await client.get(f"{base}/offers/1")
    await client.get(f"{base}/offers/2")
    await client.get(f"{base}/events")
    text = (await client.get(f"{base}/metrics")).text
    assert (
        'feedline_http_requests_total{method="GET",route="/offers/{offer_id}",status="200"} 1.0'
        in text
    )
    assert (
        'feedline_http_requests_total{method="GET",route="/offers/{offer_id}",status="404"} 1.0'
        in text
    )
    assert "feedline_feed_events_served_total 1.0" in text
    assert "feedline_http_request_duration_seconds_bucket" in text


async def test_request_id_and_trace_context_are_propagated(
    start_service: StartService, sqlite_url: str, client: httpx.AsyncClient
) -> None:
    base = start_service("special-offers", sqlite_url)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    response = await client.get(
        f"{base}/health/live",
        headers={
            "X-Request-ID": "req-123",
            "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01",
        },
    )
    assert response.headers["X-Request-ID"] == "req-123"
    version, returned_trace, span, flags = response.headers["traceparent"].split("-")
    assert (version, returned_trace, flags) == ("00", trace_id, "01")
    assert span != "00f067aa0ba902b7", "the service's span is a child of the caller's"
    fresh = await client.get(f"{base}/health/live")
    assert len(fresh.headers["X-Request-ID"]) == 32


async def test_openapi_documents_the_feed_and_its_errors(
    start_service: StartService, sqlite_url: str, client: httpx.AsyncClient
) -> None:
    base = start_service("shopping-cart", sqlite_url)
    document = (await client.get(f"{base}/openapi.json")).json()
    feed = document["paths"]["/events"]["get"]
    assert {parameter["name"] for parameter in feed["parameters"]} == {
        "start",
        "end",
        "limit",
        "types",
        "wait",
    }
    assert {"200", "304", "400", "401"} <= set(feed["responses"])
    assert "/events/head" in document["paths"]
    assert "/shoppingcart/{user_id}/items" in document["paths"]
