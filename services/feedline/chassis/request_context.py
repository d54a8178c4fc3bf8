"""ASGI middleware: request id, trace context, access log and request metrics.

Plain ASGI rather than BaseHTTPMiddleware: it adds no task per request and does
not buffer long-polled responses.
"""

from __future__ import annotations

import logging
import time
import uuid

import structlog
from starlette.datastructures import MutableHeaders
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from feedline.chassis.metrics import ServiceMetrics, route_template
from feedline.chassis.tracing import continue_or_start, current_trace

access_log = structlog.get_logger("feedline.access")


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        connection = HTTPConnection(scope)
        request_id = connection.headers.get("x-request-id") or uuid.uuid4().hex
        trace = continue_or_start(connection.headers.get("traceparent"))
        trace_token = current_trace.set(trace)
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
            current_trace.reset(trace_token)
