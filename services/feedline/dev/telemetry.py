"""`feedline dev` receives its children's telemetry itself: an OTLP/HTTP receiver.

Every process `feedline dev` starts (services, subscriber runs) exports its spans
over OTLP/HTTP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set (docs/architecture.md,
"Telemetry"). This module is the other end, so no collector is needed locally:

- ``otlp_router(store)``: ``POST /v1/traces`` (OTLP/HTTP, binary protobuf or
  JSON, optionally gzip-compressed) decodes each span into a ``SpanRecord`` and
  adds it to the store; ``POST /v1/metrics`` accepts and checks a body, keeping
  only a count (the services' Prometheus ``/metrics`` is the metrics source).
- ``TelemetryStore``: the last ``capacity`` spans (oldest dropped first), with
  the views the dashboard renders: recent traces, and one trace with the spans
  of other traces that LINK to it (a subscriber's batch span links to the
  requests whose events it applied).

Decoding uses ``opentelemetry-proto``'s generated messages. OTLP/JSON differs
from protobuf's canonical JSON mapping in one place, the ids (hex, not base64):
they are rewritten before ``json_format`` parses the body.
"""

from __future__ import annotations

import base64
import gzip
import json
import threading
import zlib
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request, Response
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

__all__ = [
    "SpanRecord",
    "TelemetryStore",
    "TraceSummary",
    "otlp_router",
    "spans_from_request",
]

DEFAULT_CAPACITY = 10_000
UNKNOWN_SERVICE = "unknown_service"
PROTOBUF = "application/x-protobuf"
JSON = "application/json"
# A body larger than this (after decompression) is refused: a local receiver, not a sink.
MAX_BODY_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class SpanRecord:
    """One finished span, as an OTLP exporter sent it. Ids are lowercase hex."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    service: str
    start_unix_nano: int
    end_unix_nano: int
    attributes: dict[str, Any]
    links: tuple[tuple[str, str], ...]  # (trace_id, span_id) of each linked span

    @property
    def duration_ms(self) -> float:
        return max(0, self.end_unix_nano - self.start_unix_nano) / 1e6


@dataclass(frozen=True)
class TraceSummary:
    trace_id: str
    root_name: str
    services: tuple[str, ...]
    span_count: int
    start_unix_nano: int
    duration_ms: float


class TelemetryStore:
    """The last ``capacity`` spans in memory; safe to use from threads and the event loop.

    Every method holds one lock for a short, non-blocking stretch (no I/O), so
    calling it from async code does not stall the loop noticeably. A span sent
    twice (same trace and span id) is kept once, the later copy winning.
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._lock = threading.Lock()
        self._spans: OrderedDict[tuple[str, str], SpanRecord] = OrderedDict()
        self.metrics_requests = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._spans)

    def add(self, spans: Iterable[SpanRecord]) -> None:
        with self._lock:
            for span in spans:
                key = (span.trace_id, span.span_id)
                self._spans.pop(key, None)
                self._spans[key] = span
                while len(self._spans) > self.capacity:
                    self._spans.popitem(last=False)

    def count_metrics_request(self) -> None:
        with self._lock:
            self.metrics_requests += 1

    def spans(self) -> list[SpanRecord]:
        """Every stored span, oldest received first."""
        with self._lock:
            return list(self._spans.values())

    def traces(self, limit: int = 50) -> list[TraceSummary]:
        """The ``limit`` most recent traces, newest (latest start) first."""
        by_trace: dict[str, list[SpanRecord]] = {}
        for span in self.spans():
            by_trace.setdefault(span.trace_id, []).append(span)
        summaries = [_summarize(trace_id, spans) for trace_id, spans in by_trace.items()]
        summaries.sort(key=lambda summary: summary.start_unix_nano, reverse=True)
        return summaries[: max(0, limit)]

    def trace(self, trace_id: str) -> list[SpanRecord]:
        """The trace's spans, plus the spans of other traces that link to one of them.

        Sorted by start time. A subscriber's batch span is in its own trace (the
        run's) and links to the request that raised each event: asking for the
        request's trace shows that batch span too.
        """
        trace_id = trace_id.lower()
        found = [
            span
            for span in self.spans()
            if span.trace_id == trace_id
            or any(linked_trace == trace_id for linked_trace, _ in span.links)
        ]
        found.sort(key=lambda span: (span.start_unix_nano, span.end_unix_nano))
        return found


def _summarize(trace_id: str, spans: list[SpanRecord]) -> TraceSummary:
    ids = {span.span_id for span in spans}
    start = min(span.start_unix_nano for span in spans)
    end = max(span.end_unix_nano for span in spans)
    # The root: a span without a parent; failing that (the root not received yet,
    # or evicted), the earliest span whose parent is not here.
    roots = [span for span in spans if span.parent_span_id is None]
    if not roots:
        roots = [span for span in spans if span.parent_span_id not in ids] or spans
    root = min(roots, key=lambda span: span.start_unix_nano)
    return TraceSummary(
        trace_id=trace_id,
        root_name=root.name,
        services=tuple(sorted({span.service for span in spans})),
        span_count=len(spans),
        start_unix_nano=start,
        duration_ms=max(0, end - start) / 1e6,
    )


# --- decoding -----------------------------------------------------------------


def _hex(raw: bytes) -> str:
    return raw.hex()


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    if kind == "bytes_value":
        return value.bytes_value.hex()
    return getattr(value, kind)


def _attributes(pairs: Iterable[KeyValue]) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


def spans_from_request(request: ExportTraceServiceRequest) -> list[SpanRecord]:
    """Flatten an OTLP export request into records; spans with invalid ids are skipped."""
    records: list[SpanRecord] = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        service = str(resource.get("service.name") or UNKNOWN_SERVICE)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                if len(span.trace_id) != 16 or len(span.span_id) != 8:
                    continue
                records.append(
                    SpanRecord(
                        trace_id=_hex(span.trace_id),
                        span_id=_hex(span.span_id),
                        parent_span_id=_hex(span.parent_span_id) if span.parent_span_id else None,
                        name=span.name,
                        service=service,
                        start_unix_nano=span.start_time_unix_nano,
                        end_unix_nano=span.end_time_unix_nano,
                        attributes=_attributes(span.attributes),
                        links=tuple(
                            (_hex(link.trace_id), _hex(link.span_id))
                            for link in span.links
                            if len(link.trace_id) == 16 and len(link.span_id) == 8
                        ),
                    )
                )
    return records


_ID_FIELDS = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")


def _hex_ids_to_base64(node: Any) -> Any:
    """OTLP/JSON writes ids as hex; protobuf's JSON mapping wants base64 for bytes."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in _ID_FIELDS and isinstance(value, str):
                out[key] = base64.b64encode(bytes.fromhex(value)).decode() if value else ""
            else:
                out[key] = _hex_ids_to_base64(value)
        return out
    if isinstance(node, list):
        return [_hex_ids_to_base64(item) for item in node]
    return node


class BadBodyError(ValueError):
    """The body is not an OTLP message of the expected type."""


def _decompress(body: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    try:
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        elif encoding not in {"", "identity"}:
            raise BadBodyError(f"unsupported Content-Encoding {encoding!r}")
    except (OSError, EOFError, zlib.error) as error:
        raise BadBodyError(f"the body is not valid {encoding}") from error
    if len(body) > MAX_BODY_BYTES:
        raise BadBodyError("the body is too large")
    return body


def _parse(message: Message, body: bytes, media_type: str) -> None:
    try:
        if media_type == JSON:
            document = json.loads(body or b"{}")
            json_format.ParseDict(_hex_ids_to_base64(document), message, ignore_unknown_fields=True)
        else:
            message.ParseFromString(body)
    except (DecodeError, json_format.ParseError, ValueError, TypeError) as error:
        raise BadBodyError(f"the body is not a valid {type(message).__name__}") from error


def _media_type(request: Request) -> str | None:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in {PROTOBUF, "application/protobuf"}:
        return PROTOBUF
    if content_type == JSON:
        return JSON
    return None


def _reply(message: Message, media_type: str) -> Response:
    if media_type == JSON:
        return Response(json_format.MessageToJson(message), media_type=JSON)
    return Response(message.SerializeToString(), media_type=PROTOBUF)


def _problem(status: int, detail: str) -> Response:
    return Response(
        json.dumps({"title": "bad OTLP request", "status": status, "detail": detail}),
        status_code=status,
        media_type="application/problem+json",
    )


def otlp_router(store: TelemetryStore) -> APIRouter:
    """``POST /v1/traces`` and ``POST /v1/metrics``: OTLP/HTTP, into ``store``.

    Mount it at the root of the server whose URL is given to the children as
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` (the exporters append ``/v1/traces``).
    """
    router = APIRouter(tags=["telemetry"])

    async def _read(request: Request) -> tuple[bytes, str] | Response:
        media_type = _media_type(request)
        if media_type is None:
            return _problem(415, f"Content-Type must be {PROTOBUF} or {JSON}")
        body = await request.body()
        try:
            return _decompress(body, request.headers.get("content-encoding", "")), media_type
        except BadBodyError as error:
            return _problem(400, str(error))

    @router.post("/v1/traces", include_in_schema=False)
    async def receive_traces(request: Request) -> Response:
        read = await _read(request)
        if isinstance(read, Response):
            return read
        body, media_type = read
        export = ExportTraceServiceRequest()
        try:
            _parse(export, body, media_type)
        except BadBodyError as error:
            return _problem(400, str(error))
        store.add(spans_from_request(export))
        return _reply(ExportTraceServiceResponse(), media_type)

    @router.post("/v1/metrics", include_in_schema=False)
    async def receive_metrics(request: Request) -> Response:
        read = await _read(request)
        if isinstance(read, Response):
            return read
        body, media_type = read
        export = ExportMetricsServiceRequest()
        try:
            _parse(export, body, media_type)
        except BadBodyError as error:
            return _problem(400, str(error))
        store.count_metrics_request()
        return _reply(ExportMetricsServiceResponse(), media_type)

    return router
