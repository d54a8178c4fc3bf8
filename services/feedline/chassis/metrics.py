"""Prometheus metrics, one registry per app (tests create many apps in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.routing import Match


class ServiceMetrics:
    def __init__(self, service: str) -> None:
        self.registry = CollectorRegistry()
        labels = ["method", "route", "status"]
        self.requests = Counter(
            "feedline_http_requests", "HTTP requests answered", labels, registry=self.registry
        )
        self.latency = Histogram(
            "feedline_http_request_duration_seconds",
            "Time to answer an HTTP request",
            ["method", "route"],
            registry=self.registry,
        )
        self.events_served = Counter(
            "feedline_feed_events_served", "Events returned by the feed", registry=self.registry
        )
        self.service = service

    def render(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


def route_template(request: HTTPConnection) -> str:
    """The route's path template, so metrics don't get one series per id."""
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match is Match.FULL:
            return str(getattr(route, "path", request.url.path))
    return "unmatched"
