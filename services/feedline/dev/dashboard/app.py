"""The dashboard's web app: server-rendered HTML (Jinja2), htmx, server-sent events.

Pages: ``/`` (services and subscriptions, live; the request-rate chart; a
run-now button per CronJob subscription), ``/logs`` (the processes' log
lines, filtered, live), ``/traces`` and ``/traces/{trace_id}`` (the spans the
processes export to ``/v1/traces``, as a waterfall). Live parts are htmx's
SSE extension swapping fragments the server renders; the chart is uPlot fed
from ``/api/metrics``. Every page's data is also JSON under ``/api/``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from feedline.dev.dashboard.logs import (
    LEVELS,
    POLLING_ROUTES,
    LogFilter,
    LogRecord,
    LogTail,
    recent,
)
from feedline.dev.dashboard.services import ServiceWatch
from feedline.dev.plan import Layout
from feedline.dev.status import ServiceStatus, SubscriptionStatus
from feedline.dev.telemetry import SpanRecord, TelemetryStore, TraceSummary, otlp_router

HERE = Path(__file__).parent
LIVE_CHECK_SECONDS = 0.5  # how often a live view looks for changes
KEEPALIVE_SECONDS = 15.0
LOG_LIMIT = 500

ProcessQuery = Annotated[list[str] | None, Query()]  # ?process=A&process=B

# What `feedline dev` does with a run-now for a name: (HTTP status, message).
RunNow = Callable[[str], tuple[int, str]]


@dataclass
class DashboardState:
    """What the dashboard shows: filled by `feedline dev` as things start."""

    layout: Layout
    services: list[ServiceStatus]
    watch: ServiceWatch
    telemetry: TelemetryStore
    statuses: list[SubscriptionStatus] = field(default_factory=list)
    run_now: RunNow | None = None  # set once the subscriptions run
    document: Callable[[], dict[str, Any]] = dict
    closing: asyncio.Event = field(default_factory=asyncio.Event)

    def processes(self) -> list[str]:
        """Every process with a log: the services, then the subscriptions."""
        return [s.name for s in self.services] + [s.name for s in self.statuses]


def _clock(value: datetime | str | None) -> str:
    """A moment as local HH:MM:SS (the date too when not today)."""
    if value is None or value == "":
        return "-"
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return str(value)
    local = value.astimezone() if value.tzinfo else value.replace(tzinfo=UTC).astimezone()
    today = datetime.now().astimezone().date()
    return local.strftime("%H:%M:%S" if local.date() == today else "%Y-%m-%d %H:%M:%S")


def _nanos_clock(nanos: int) -> str:
    return _clock(datetime.fromtimestamp(nanos / 1e9, UTC))


def sse_message(event: str, html: str) -> str:
    """One server-sent event: ``event: NAME`` and the HTML as ``data:`` lines."""
    lines = html.splitlines() or [""]
    return f"event: {event}\n" + "".join(f"data: {line}\n" for line in lines) + "\n"


def _stream(chunks: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(
        chunks,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _log_filter(
    process: list[str] | None, level: str | None, text_id: str | None, polling: str | None
) -> LogFilter:
    return LogFilter(
        processes=frozenset(p for p in process or () if p),
        level=level if level in LEVELS else None,
        text_id=(text_id or "").strip(),
        polling=polling == "shown",
    )


def _is_polling_trace(summary: TraceSummary) -> bool:
    """A trace of one of `feedline dev`'s own requests (``GET /metrics``...)."""
    method, _, route = summary.root_name.partition(" ")
    return summary.span_count <= 2 and method == "GET" and route in POLLING_ROUTES


def _recent_traces(store: TelemetryStore, limit: int, polling: bool) -> list[TraceSummary]:
    limit = max(1, min(limit, 1000))
    if polling:
        return store.traces(limit)
    return [t for t in store.traces(limit * 20) if not _is_polling_trace(t)][:limit]


def _waterfall(spans: list[SpanRecord]) -> list[dict[str, Any]]:
    """Each span with its depth under its parent and its bar (percent of the trace)."""
    if not spans:
        return []
    start = min(s.start_unix_nano for s in spans)
    end = max(s.end_unix_nano for s in spans)
    total = max(end - start, 1)
    by_id = {s.span_id: s for s in spans}
    children: dict[str | None, list[SpanRecord]] = {}
    for span in spans:
        parent = span.parent_span_id if span.parent_span_id in by_id else None
        children.setdefault(parent, []).append(span)
    rows: list[dict[str, Any]] = []

    def visit(span: SpanRecord, depth: int) -> None:
        rows.append(
            {
                "span": span,
                "depth": depth,
                "left": 100 * (span.start_unix_nano - start) / total,
                "width": max(100 * (span.end_unix_nano - span.start_unix_nano) / total, 0.3),
                "links": [
                    {"trace_id": t, "span_id": s, "here": by_id.get(s)} for t, s in span.links
                ],
            }
        )
        for child in sorted(children.get(span.span_id, []), key=lambda c: c.start_unix_nano):
            visit(child, depth + 1)

    for root in sorted(children.get(None, []), key=lambda c: c.start_unix_nano):
        visit(root, 0)
    return rows


def _span_dict(span: SpanRecord) -> dict[str, Any]:
    return {
        "traceId": span.trace_id,
        "spanId": span.span_id,
        "parentSpanId": span.parent_span_id,
        "name": span.name,
        "service": span.service,
        "startUnixNano": span.start_unix_nano,
        "endUnixNano": span.end_unix_nano,
        "durationMs": span.duration_ms,
        "attributes": span.attributes,
        "links": [{"traceId": t, "spanId": s} for t, s in span.links],
    }


def create_app(state: DashboardState) -> FastAPI:  # noqa: PLR0915 - one route after another
    app = FastAPI(title="feedline dev", docs_url=None, redoc_url=None, openapi_url=None)
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.filters["clock"] = _clock
    templates.env.filters["nanos_clock"] = _nanos_clock
    templates.env.globals["levels"] = LEVELS
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.include_router(otlp_router(state.telemetry))

    def render(template: str, **context: Any) -> str:
        rendered: str = templates.get_template(template).render(**context)
        return rendered

    def overview_context() -> dict[str, Any]:
        return {
            "services": state.services,
            "subscriptions": [s.to_dict() for s in state.statuses],
            "watch": state.watch,
            "layout": state.layout,
        }

    async def live(event: str, fragment: Callable[[], str]) -> AsyncIterator[str]:
        """The fragment at once, then again whenever it changes."""
        last, quiet = None, 0.0
        while not state.closing.is_set():
            html = fragment()
            if html != last:
                yield sse_message(event, html)
                last, quiet = html, 0.0
            elif quiet >= KEEPALIVE_SECONDS:
                yield ": keep-alive\n\n"
                quiet = 0.0
            try:
                await asyncio.wait_for(state.closing.wait(), LIVE_CHECK_SECONDS)
            except TimeoutError:
                quiet += LIVE_CHECK_SECONDS

    # --- overview ---------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse)
    async def index(request: Request) -> Response:
        return templates.TemplateResponse(
            request, "index.html", {"page": "overview", **overview_context()}
        )

    @app.get("/fragments/overview", response_class=HTMLResponse)
    async def overview_fragment() -> HTMLResponse:
        return HTMLResponse(render("_overview.html", **overview_context()))

    @app.get("/stream/overview")
    async def overview_stream() -> StreamingResponse:
        return _stream(live("overview", lambda: render("_overview.html", **overview_context())))

    @app.get("/api/status")
    async def status() -> JSONResponse:
        return JSONResponse(state.document())

    @app.get("/api/metrics")
    async def metrics() -> JSONResponse:
        return JSONResponse(state.watch.to_dict())

    @app.post("/api/subscriptions/{name}/run-now")
    async def run_now(request: Request, name: str) -> Response:
        if state.run_now is None:
            code, message = 503, "the subscriptions are not running yet"
        else:
            code, message = state.run_now(name)
        if request.headers.get("hx-request") == "true":
            html = render("_answer.html", code=code, message=message, name=name)
            return HTMLResponse(html, status_code=code)
        return JSONResponse({"message": message}, status_code=code)

    # --- logs -------------------------------------------------------------------

    @app.get("/logs", response_class=HTMLResponse)
    async def logs_page(
        request: Request,
        process: ProcessQuery = None,
        level: str | None = None,
        id: str | None = None,
        polling: str | None = None,
    ) -> Response:
        log_filter = _log_filter(process, level, id, polling)
        records = recent(state.layout.logs_dir(), state.processes(), log_filter, LOG_LIMIT)
        query = urlencode(
            [("process", p) for p in sorted(log_filter.processes)]
            + [("level", log_filter.level or ""), ("id", log_filter.text_id)]
            + [("polling", "shown" if log_filter.polling else "")]
        )
        return templates.TemplateResponse(
            request,
            "logs.html",
            {
                "page": "logs",
                "processes": state.processes(),
                "filter": log_filter,
                "records": records,
                "query": query,
            },
        )

    @app.get("/logs/stream")
    async def logs_stream(
        process: ProcessQuery = None,
        level: str | None = None,
        id: str | None = None,
        polling: str | None = None,
    ) -> StreamingResponse:
        log_filter = _log_filter(process, level, id, polling)
        tail = LogTail(state.layout.logs_dir(), state.processes(), log_filter)
        row = templates.get_template("_log_row.html")

        async def lines() -> AsyncIterator[str]:
            yield ": connected\n\n"
            quiet = 0.0
            while not state.closing.is_set():
                records = tail.read()
                if records:
                    yield sse_message("log", "".join(row.render(r=r) for r in records))
                    quiet = 0.0
                elif quiet >= KEEPALIVE_SECONDS:
                    yield ": keep-alive\n\n"
                    quiet = 0.0
                try:
                    await asyncio.wait_for(state.closing.wait(), LIVE_CHECK_SECONDS)
                except TimeoutError:
                    quiet += LIVE_CHECK_SECONDS

        return _stream(lines())

    @app.get("/api/logs")
    async def logs_json(
        process: ProcessQuery = None,
        level: str | None = None,
        id: str | None = None,
        polling: str | None = None,
        limit: int = LOG_LIMIT,
    ) -> JSONResponse:
        log_filter = _log_filter(process, level, id, polling)
        records: list[LogRecord] = recent(
            state.layout.logs_dir(), state.processes(), log_filter, max(1, min(limit, 5000))
        )
        return JSONResponse(json.loads(json.dumps([r.to_dict() for r in records], default=str)))

    # --- traces -----------------------------------------------------------------

    @app.get("/traces", response_class=HTMLResponse)
    async def traces_page(
        request: Request, limit: int = 100, polling: str | None = None
    ) -> Response:
        shown = polling == "shown"
        return templates.TemplateResponse(
            request,
            "traces.html",
            {
                "page": "traces",
                "traces": _recent_traces(state.telemetry, limit, shown),
                "polling": shown,
            },
        )

    @app.get("/traces/{trace_id}", response_class=HTMLResponse)
    async def trace_page(request: Request, trace_id: str) -> Response:
        spans = state.telemetry.trace(trace_id)
        in_trace = [s for s in spans if s.trace_id == trace_id.lower()]
        return templates.TemplateResponse(
            request,
            "trace.html",
            {
                "page": "traces",
                "trace_id": trace_id.lower(),
                "rows": _waterfall(in_trace),
                "linking": [s for s in spans if s.trace_id != trace_id.lower()],
            },
            status_code=200 if spans else 404,
        )

    @app.get("/api/traces")
    async def traces_json(limit: int = 100, polling: str | None = None) -> JSONResponse:
        return JSONResponse(
            [
                {
                    "traceId": t.trace_id,
                    "rootName": t.root_name,
                    "services": list(t.services),
                    "spanCount": t.span_count,
                    "startUnixNano": t.start_unix_nano,
                    "durationMs": t.duration_ms,
                }
                for t in _recent_traces(state.telemetry, limit, polling == "shown")
            ]
        )

    @app.get("/api/traces/{trace_id}")
    async def trace_json(trace_id: str) -> JSONResponse:
        spans = state.telemetry.trace(trace_id)
        return JSONResponse(
            json.loads(json.dumps([_span_dict(s) for s in spans], default=str)),
            status_code=200 if spans else 404,
        )

    return app
