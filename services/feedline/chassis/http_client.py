"""Outgoing calls to other services: retries with backoff, and an HTTP cache.

Queries go through hishel's RFC 9111 cache, so a response with
``Cache-Control: max-age`` is reused without a request while fresh, and
revalidated with ``If-None-Match`` (a 304 refreshes it) once stale. Idempotent
requests are retried on connection errors and 502/503/504 with exponential
backoff and jitter (httpx-retries). Each call carries the current trace.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx
from hishel import AsyncSqliteStorage, CacheOptions
from hishel.httpx import AsyncCacheTransport
from httpx_retries import Retry, RetryTransport

from feedline.chassis.tracing import outgoing_traceparent


async def _add_traceparent(request: httpx.Request) -> None:
    traceparent = outgoing_traceparent()
    if traceparent and "traceparent" not in request.headers:
        request.headers["traceparent"] = traceparent


def service_client(
    base_url: str,
    *,
    cache_path: str | None = None,
    retries: int = 3,
    backoff_factor: float = 0.2,
    timeout: float = 10.0,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` for one service; ``cache_path`` turns the HTTP cache on."""
    network: httpx.AsyncBaseTransport = transport or httpx.AsyncHTTPTransport()
    retrying = RetryTransport(
        transport=network,
        retry=Retry(
            total=retries,
            backoff_factor=backoff_factor,
            status_forcelist=[502, 503, 504],
            allowed_methods=["GET", "HEAD", "PUT", "DELETE", "OPTIONS"],
        ),
    )
    stack: httpx.AsyncBaseTransport = retrying
    if cache_path is not None:
        stack = AsyncCacheTransport(
            next_transport=retrying,
            storage=AsyncSqliteStorage(database_path=cache_path),
            # A private cache: one service's view of another's responses.
            rfc=CacheOptions(shared=False),
        )
    hooks: dict[str, list[Callable[[httpx.Request], Awaitable[None]]]] = {
        "request": [_add_traceparent]
    }
    return httpx.AsyncClient(
        base_url=base_url,
        transport=stack,
        timeout=timeout,
        event_hooks=hooks,
    )
