"""ASGI middleware: request id, trace context and span, access log and request metrics.

Plain ASGI rather than BaseHTTPMiddleware: it adds no task per request and does
not buffer long-polled responses. The chassis keeps this middleware rather
than OTel's ASGI/FastAPI instrumentation: it already knows the route template,
status and timing it records for Prometheus, and it needs the trace ids in the
log context and the response's ``traceparent`` with telemetry off as well. Each
request runs in a span (``tracing.server_span``): an exported SERVER span named
``METHOD /route/{template}`` when telemetry is on, ids only when it is off.
"""

from __future__ import annotations

import logging
import time
import uuid

import structlog
from opentelemetry.trace import Span, Status, StatusCode
from starlette.datastructures import MutableHeaders
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from feedline.chassis.metrics import ServiceMetrics, route_template
from feedline.chassis.tracing import TraceContext, server_span
from feedline_contracts.telemetry import Telemetry

access_log = structlog.get_logger("feedline.access")

UNTRACED_PATHS = ("/health/", "/metrics")


class RequestContextMiddleware:
    def __init__(
        self, app: ASGIApp, metrics: ServiceMetrics, telemetry: Telemetry | None = None
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.tracer = telemetry.tracer if telemetry is not None else None
        self.duration = (
            telemetry.meter.create_histogram(
                "http.server.request.duration",
                unit="s",
                description="Duration of HTTP server requests.",
            )
            if telemetry is not None and telemetry.meter is not None
            else None
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        connection = HTTPConnection(scope)
        # Probes and scrapes come every few seconds: they keep their ids, but no exported span.
        quiet = scope["path"].startswith(UNTRACED_PATHS)
        with server_span(
            None if quiet else self.tracer,
            connection.headers.get("traceparent"),
            f"{scope['method']} {scope['path']}",
            {"http.request.method": scope["method"], "url.path": scope["path"]},
        ) as span:
            await self._handle(scope, receive, send, connection, span)

    async def _handle(
        self, scope: Scope, receive: Receive, send: Send, connection: HTTPConnection, span: Span
    ) -> None:
        request_id = connection.headers.get("x-request-id") or uuid.uuid4().hex
        trace = TraceContext.of(span.get_span_context())
        structlog.contextvars.bind_contextvars(request_id=request_id, trace_id=trace.trace_id)
        started = time.perf_counter()
        status = 500

        async def send_with_ids(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers["X-Request-ID"] = request_id
                headers["traceparent"] = trace.traceparent
            await send(message)

        try:
            await self.app(scope, receive, send_with_ids)
        finally:
            elapsed = time.perf_counter() - started
            route = route_template(scope)
            method = scope["method"]
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(elapsed)
            if span.is_recording():
                span.update_name(f"{method} {route}")
                span.set_attribute("http.route", route)
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
            if self.duration is not None:
                self.duration.record(
                    elapsed,
                    {
                        "http.request.method": method,
                        "http.route": route,
                        "http.response.status_code": status,
                    },
                )
            # The level says who must act: 5xx the service's operators (an upstream 502
            # too), 4xx the caller, the rest nobody.
            level = (
                logging.ERROR
                if status >= 500
                else logging.WARNING
                if status >= 400
                else logging.INFO
            )
            access_log.log(
                level,
                "request",
                method=method,
                path=scope["path"],
                route=route,
                status=status,
                duration_ms=round(elapsed * 1000, 2),
            )
            structlog.contextvars.unbind_contextvars("request_id", "trace_id")
