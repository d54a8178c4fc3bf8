"""W3C trace context (``traceparent``): continue the caller's trace, pass it on.

Only propagation: the ids go into logs and outgoing calls, so one request can be
followed across services. Exporting spans is left to a collector setup.
"""

from __future__ import annotations

import re
import secrets
from contextvars import ContextVar
from dataclasses import dataclass

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


@dataclass(frozen=True)
class TraceContext:
    trace_id: str
    span_id: str
    flags: str = "01"

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"

    def child(self) -> TraceContext:
        return TraceContext(self.trace_id, secrets.token_hex(8), self.flags)


current_trace: ContextVar[TraceContext | None] = ContextVar("feedline_trace", default=None)


def parse_traceparent(header: str | None) -> TraceContext | None:
    match = _TRACEPARENT.match(header.strip().lower()) if header else None
    if not match or set(match.group(1)) == {"0"} or set(match.group(2)) == {"0"}:
        return None
    return TraceContext(match.group(1), match.group(2), match.group(3))


def continue_or_start(header: str | None) -> TraceContext:
    """This request's span: a child of the caller's, or the root of a new trace."""
    parent = parse_traceparent(header)
    if parent is None:
        return TraceContext(secrets.token_hex(16), secrets.token_hex(8))
    return parent.child()


def outgoing_traceparent() -> str | None:
    """The header for a call made while handling the current request."""
    context = current_trace.get()
    return context.child().traceparent if context else None
