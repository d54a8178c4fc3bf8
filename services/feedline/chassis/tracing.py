"""W3C trace context (``traceparent``) and spans: continue the caller's trace, pass it on.

Built on OpenTelemetry (docs/architecture.md, "Telemetry"). The caller's
``traceparent`` is parsed by OTel's W3C ``TraceContextTextMapPropagator``
(``feedline_contracts.telemetry``); each request runs in a span of its own,
the current OTel span, which logs (``trace_id``), responses (``traceparent``),
outgoing calls (``http_client.py``) and appended events (``eventstore.py``) read.

- Telemetry on (an ``OTEL_EXPORTER_OTLP_*`` endpoint set): that span is a real
  SDK server span, exported with the event store's append spans as children.
- Telemetry off (the default): no SDK is loaded. The request's span is a
  ``NonRecordingSpan`` whose ids this module makes (a new span id, in the
  caller's trace or a new one), so ids still flow exactly as before, at the
  cost of two random numbers per request.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    TraceFlags,
)

from feedline_contracts.telemetry import span_context_of, traceparent_of

__all__ = [
    "TraceContext",
    "continue_or_start",
    "current_trace_context",
    "outgoing_traceparent",
    "parse_traceparent",
    "server_span",
]


@dataclass(frozen=True)
class TraceContext:
    """A span's W3C ids, as lowercase hex."""

    trace_id: str
    span_id: str
    flags: str = "01"

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"

    @classmethod
    def of(cls, span_context: SpanContext) -> TraceContext:
        return cls(
            f"{span_context.trace_id:032x}",
            f"{span_context.span_id:016x}",
            f"{int(span_context.trace_flags):02x}",
        )


def parse_traceparent(header: str | None) -> TraceContext | None:
    """The caller's span, if ``header`` is a valid ``traceparent`` (OTel's W3C propagator)."""
    span_context = span_context_of(header.strip() if header else None)
    return None if span_context is None else TraceContext.of(span_context)


def _new_span_context(parent: SpanContext | None) -> SpanContext:
    """A fresh span id in the parent's trace, or the root of a new trace (telemetry off)."""
    if parent is None:
        return SpanContext(
            trace_id=int.from_bytes(secrets.token_bytes(16), "big") or 1,
            span_id=int.from_bytes(secrets.token_bytes(8), "big") or 1,
            is_remote=False,
            trace_flags=TraceFlags(TraceFlags.SAMPLED),
        )
    return SpanContext(
        trace_id=parent.trace_id,
        span_id=int.from_bytes(secrets.token_bytes(8), "big") or 1,
        is_remote=False,
        trace_flags=parent.trace_flags,
        trace_state=parent.trace_state,
    )


def continue_or_start(header: str | None) -> TraceContext:
    """This request's span ids: a child of the caller's, or the root of a new trace."""
    return TraceContext.of(_new_span_context(span_context_of(header.strip() if header else None)))


@contextmanager
def server_span(
    tracer: trace.Tracer | None,
    traceparent: str | None,
    name: str,
    attributes: Mapping[str, Any] | None = None,
) -> Iterator[Span]:
    """Run the body in this request's span (the current OTel span while it runs).

    ``tracer`` None (telemetry off): a non-recording span with fresh ids.
    Otherwise an SDK ``SERVER`` span, a child of the caller's ``traceparent``;
    it ends when the body does (the caller sets its status and attributes).
    """
    parent = span_context_of(traceparent.strip() if traceparent else None)
    if tracer is None:
        span: Span = NonRecordingSpan(_new_span_context(parent))
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            yield span
        finally:
            otel_context.detach(token)
        return
    parent_context = (
        trace.set_span_in_context(NonRecordingSpan(parent)) if parent is not None else None
    )
    with tracer.start_as_current_span(
        name,
        context=parent_context,
        kind=SpanKind.SERVER,
        attributes=dict(attributes or {}),
        record_exception=False,
        set_status_on_exception=True,
    ) as span:
        yield span


def current_trace_context() -> TraceContext | None:
    """The current span's ids (the request's, inside a request), if there is one."""
    span_context = trace.get_current_span().get_span_context()
    return TraceContext.of(span_context) if span_context.is_valid else None


def outgoing_traceparent() -> str | None:
    """The header for a call made while handling the current request.

    The current span (the request's server span, or an append span) is the
    callee's parent: no client span of its own is recorded, so the callee's
    server span hangs directly below the caller's in the trace.
    """
    return traceparent_of()
