"""Prometheus metrics, one registry per app (tests create many apps in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.responses import Response
from starlette.types import Scope


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


def route_template(scope: Scope) -> str:
    """The matched route's path template, so metrics don't get one series per id.

    The router records the route it matched in the (shared) scope.
    """
    route = scope.get("route")
    return str(getattr(route, "path", "unmatched"))
