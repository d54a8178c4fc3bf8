"""The dashboard of `feedline dev`, over HTTP: real dev, real services, real subscriber runs.

Each test runs `feedline dev` on a copy of examples/local (CronJob mode, run
at start) with the dashboard on a free port (``--dashboard-port 0``: its URL
is read where a user reads it, the start-up output and status.json) and
checks one part of it: the head and lag refreshed between runs (table,
status.json, dashboard), the run-now endpoint, the logs (filters, live), the
traces the processes export to it, the request-rate scrape, the live
overview stream, and the flags (port in use, --no-dashboard).
"""

from __future__ import annotations

import json
import re
import secrets
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.test_dev_local_mode import (
    SUBSCRIPTION,
    Dev,
    copy_example,
    dev_starter,
    services_ready,
)
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration


def dashboard_url(dev: Dev) -> str:
    """The URL printed at start, checked against status.json's."""
    found = re.search(r"dashboard: (http://\S+)", dev.log())
    assert found, dev.log()
    document = json.loads((dev.folder / ".feedline-dev" / "status.json").read_text())
    assert document["dashboard"] == found.group(1), document
    return found.group(1)


def start_with_dashboard(start_dev: Callable[..., Dev], tmp_path: Path) -> tuple[Dev, str]:
    """`feedline dev --run-now --dashboard-port 0` on the example, after its first run."""
    dev = start_dev(copy_example(tmp_path), "--run-now", "--dashboard-port", "0")
    wait_for(lambda: services_ready(dev), what="the services", timeout=60)
    wait_for(lambda: (s := dev.status()) and s["runs"] >= 1, what="the first run", timeout=60)
    return dev, dashboard_url(dev)


def post_offer(dev: Dev, description: str, trace_id: str | None = None) -> httpx.Response:
    headers = {}
    if trace_id is not None:
        headers["traceparent"] = f"00-{trace_id}-{secrets.token_hex(8)}-01"
    response = httpx.post(
        f"{dev.url('special-offers')}/offers",
        json={"description": description},
        headers=headers,
        timeout=10,
    )
    assert response.status_code == 201, response.text
    return response


def subscription(dashboard: str) -> dict[str, Any]:
    document = httpx.get(f"{dashboard}/api/status", timeout=5).json()
    (found,) = [s for s in document["subscriptions"] if s["name"] == SUBSCRIPTION]
    result: dict[str, Any] = found
    return result


@pytest.fixture
def start_dev(tmp_path: Path) -> Iterator[Callable[..., Dev]]:
    with dev_starter(tmp_path) as start:
        yield start


@pytest.fixture
def dashboard_dev(start_dev: Callable[..., Dev], tmp_path: Path) -> tuple[Dev, str]:
    return start_with_dashboard(start_dev, tmp_path)


def test_head_and_lag_are_refreshed_between_runs_and_run_now_catches_up(
    dashboard_dev: tuple[Dev, str],
) -> None:
    dev, dashboard = dashboard_dev
    first = subscription(dashboard)
    assert (first["position"], first["head"], first["lag"]) == (0, 0, 0), first
    post_offer(dev, "10% off books")
    post_offer(dev, "2 for 1 coffee")
    # No run (the next is up to a minute away), yet the head and lag show the new events:
    # in the dashboard, in status.json and in the table (a line per change off a terminal).
    stale = wait_for(
        lambda: (s := subscription(dashboard))["head"] == 2 and s, what="head 2", timeout=15
    )
    assert (stale["position"], stale["lag"], stale["runs"]) == (0, 2, 1), stale
    status = dev.status()
    assert status is not None
    assert (status["position"], status["head"], status["lag"]) == (0, 2, 2), status
    wait_for(lambda: "position=0 head=2 lag=2" in dev.log(), what="the table's line")
    overview = httpx.get(f"{dashboard}/fragments/overview", timeout=5).text
    row = overview[overview.index(f'id="sub-{SUBSCRIPTION}"') :]
    assert re.search(r'class="num lag">2<', row), row[:2000]

    answer = httpx.post(f"{dashboard}/api/subscriptions/{SUBSCRIPTION}/run-now", timeout=5)
    assert answer.status_code == 202, answer.text
    assert answer.json()["message"].startswith(SUBSCRIPTION)
    caught_up = wait_for(
        lambda: (s := subscription(dashboard))["runs"] >= 2 and s["position"] == 2 and s,
        what="the run asked for",
        timeout=30,
    )
    assert (caught_up["head"], caught_up["lag"], caught_up["outcome"]) == (2, 0, "CaughtUp")
    assert "run-now (dashboard)" in dev.log()
    # The same path as `feedline dev run-now`: its refusals too.
    unknown = httpx.post(f"{dashboard}/api/subscriptions/nope/run-now", timeout=5)
    assert unknown.status_code == 404, unknown.text
    button = httpx.post(
        f"{dashboard}/api/subscriptions/nope/run-now", headers={"HX-Request": "true"}, timeout=5
    )
    assert button.status_code == 404
    assert "no subscription &#39;nope&#39;" in button.text
    assert button.headers["content-type"].startswith("text/html")


def test_logs_are_filtered_by_process_level_and_request_id_and_follow_live(
    dashboard_dev: tuple[Dev, str],
) -> None:
    dev, dashboard = dashboard_dev
    response = post_offer(dev, "free shipping")
    request_id = response.headers["x-request-id"]
    by_request = wait_for(
        lambda: httpx.get(f"{dashboard}/api/logs", params={"id": request_id}, timeout=5).json(),
        what="the request's access line",
    )
    assert {r["process"] for r in by_request} == {"special-offers"}, by_request
    assert all(r["request_id"] == request_id for r in by_request)
    assert any(r["event"] == "request" and r["path"] == "/offers" for r in by_request)
    # By process: the subscriber's own lines (its run's), structured.
    runs = httpx.get(
        f"{dashboard}/api/logs", params={"process": SUBSCRIPTION, "level": "info"}, timeout=5
    ).json()
    assert runs, "no line of the subscriber"
    assert {r["process"] for r in runs} == {SUBSCRIPTION}
    assert any(r["event"] == "run finished" and r["outcome"] == "CaughtUp" for r in runs), runs
    # By level: nothing below warning.
    warnings = httpx.get(f"{dashboard}/api/logs", params={"level": "warning"}, timeout=5).json()
    assert all(r["level"] in ("warning", "error", "critical") for r in warnings), warnings
    # dev's own polling (/metrics, /events/head) is left out unless asked for. Once a
    # scrape's line is there (every 2 s; the one before the service listened failed).
    wait_for(
        lambda: [
            r
            for r in httpx.get(
                f"{dashboard}/api/logs", params={"process": "special-offers", "polling": "shown"}
            ).json()
            if r.get("route") == "/metrics"
        ],
        what="a /metrics line of the scraper",
        timeout=15,
    )
    everything = httpx.get(f"{dashboard}/api/logs", params={"process": "special-offers"}).json()
    assert not [r for r in everything if r.get("route") in ("/metrics", "/events/head")]
    # Live: a line written after the stream opened arrives on it, as an HTML row.
    with (
        httpx.Client(timeout=httpx.Timeout(5, read=20)) as http,
        http.stream(
            "GET", f"{dashboard}/logs/stream", params={"process": "special-offers"}
        ) as stream,
    ):
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.iter_lines()
        assert next(lines) == ": connected"
        live = post_offer(dev, "live one").headers["x-request-id"]
        received = ""
        for line in lines:
            received += line + "\n"
            if f'data-request-id="{live}"' in line:
                break
    assert "event: log" in received, received
    page = httpx.get(f"{dashboard}/logs", params={"id": live}, timeout=5).text
    assert f'data-request-id="{live}"' in page
    assert f'sse-connect="/logs/stream?level=&amp;id={live}' in page


def test_traces_of_requests_are_collected_and_shown(dashboard_dev: tuple[Dev, str]) -> None:
    dev, dashboard = dashboard_dev
    trace_id = secrets.token_hex(16)
    post_offer(dev, "traced", trace_id=trace_id)
    spans = wait_for(
        lambda: (
            (r := httpx.get(f"{dashboard}/api/traces/{trace_id}", timeout=5)).status_code == 200
            and r.json()
        ),
        what="the request's spans",
        timeout=15,
    )
    assert any(s["name"] == "POST /offers" and s["service"] == "special-offers" for s in spans), (
        spans
    )
    # Its own spans, and those of other traces that link to it (a subscriber's batch).
    assert all(
        s["traceId"] == trace_id or any(link["traceId"] == trace_id for link in s["links"])
        for s in spans
    ), spans
    listed = httpx.get(f"{dashboard}/api/traces", timeout=5).json()
    assert trace_id in [t["traceId"] for t in listed]
    assert not [t for t in listed if t["rootName"] in ("GET /metrics", "GET /events/head")]
    page = httpx.get(f"{dashboard}/traces/{trace_id}", timeout=5).text
    assert 'id="waterfall"' in page
    assert "POST /offers" in page
    unknown = httpx.get(f"{dashboard}/traces/{secrets.token_hex(16)}", timeout=5)
    assert unknown.status_code == 404


def test_request_rate_is_scraped_and_the_overview_streams(dashboard_dev: tuple[Dev, str]) -> None:
    dev, dashboard = dashboard_dev

    def points() -> list[float]:
        series = httpx.get(f"{dashboard}/api/metrics", timeout=5).json()["series"]
        return [v for v in series["special-offers"] if v is not None]

    # A rate needs a scrape before the requests: the first one only sets the baseline
    # (a cold CI run posted before it: the service was not up at the scrape before).
    wait_for(points, what="a scrape of special-offers after its baseline", timeout=15)
    for number in range(10):
        post_offer(dev, f"offer {number}")
    assert wait_for(lambda: max(points()) > 0, what="a request rate", timeout=15) > 0
    # What dev asks itself (/metrics, /events/head) is not counted: the others stay at 0.
    series = httpx.get(f"{dashboard}/api/metrics", timeout=5).json()["series"]
    assert all(v in (None, 0) for v in series["product-catalog"]), series
    with (
        httpx.Client(timeout=httpx.Timeout(5, read=10)) as http,
        http.stream("GET", f"{dashboard}/stream/overview") as stream,
    ):
        event = ""
        for line in stream.iter_lines():
            if not line:
                break
            event += line + "\n"
    assert event.startswith("event: overview\n"), event
    assert f'id="sub-{SUBSCRIPTION}"' in event
    assert 'id="svc-special-offers"' in event
    home = httpx.get(dashboard, timeout=5).text
    for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', home):
        assert httpx.get(f"{dashboard}{asset}", timeout=5).status_code == 200, asset


def test_a_dashboard_port_in_use_stops_dev_and_no_dashboard_turns_it_off(
    start_dev: Callable[..., Dev], tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        dev = start_dev(copy_example(tmp_path), "--dashboard-port", str(port))
        assert dev.process.wait(timeout=30) == 1, dev.log()
    assert f"dashboard port {port} on 127.0.0.1" in dev.log()
    assert "--dashboard-port N" in dev.log()
    off = start_dev(copy_example(tmp_path / "off"), "--no-dashboard")
    wait_for(lambda: services_ready(off), what="the services", timeout=60)
    assert "dashboard:" not in off.log()
    document = json.loads((off.folder / ".feedline-dev" / "status.json").read_text())
    assert "dashboard" not in document
