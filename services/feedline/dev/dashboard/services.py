"""The dashboard's view of each example service: its request rate and its feed's head.

Every ``interval`` seconds `feedline dev` scrapes each service's Prometheus
``/metrics`` (``feedline_http_requests_total``, the chassis' counter, less
`feedline dev`'s own polling: ``/metrics``, ``/events/head``, ``/health/*``)
and reads its feed's ``/events/head``. The rate is the counter's increase
over the interval; the last ``keep`` points are kept for the chart.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from feedline.dev.dashboard.logs import POLLING_ROUTES
from feedline.dev.heads import parse_head
from feedline.dev.status import ServiceStatus

REQUESTS_SAMPLE = "feedline_http_requests_total"
NOT_COUNTED_ROUTES = POLLING_ROUTES
SCRAPE_SECONDS = 2.0
KEEP_POINTS = 150  # five minutes at one point every 2 s


def request_count(exposition: str) -> float | None:
    """Requests answered, from a Prometheus exposition (none of /metrics and /health/*)."""
    total: float | None = None
    with contextlib.suppress(ValueError):
        for family in text_string_to_metric_families(exposition):
            for sample in family.samples:
                if sample.name == REQUESTS_SAMPLE:
                    if sample.labels.get("route") not in NOT_COUNTED_ROUTES:
                        total = (total or 0.0) + sample.value
                    elif total is None:
                        total = 0.0
    return total


class ServiceWatch:
    """The request rate and feed head of each service, scraped every ``interval`` seconds."""

    def __init__(
        self,
        services: Sequence[ServiceStatus],
        interval: float = SCRAPE_SECONDS,
        keep: int = KEEP_POINTS,
    ) -> None:
        self.services = services
        self.interval = interval
        self.times: deque[float] = deque(maxlen=keep)
        self.rates: dict[str, deque[float | None]] = {s.name: deque(maxlen=keep) for s in services}
        self.heads: dict[str, int | None] = {s.name: None for s in services}
        self._last: dict[str, tuple[float, float]] = {}  # name -> (monotonic time, count)

    def rate(self, name: str) -> float | None:
        """The last request rate (requests per second) of a service."""
        points = self.rates.get(name)
        return points[-1] if points else None

    async def _scrape(self, http: httpx.AsyncClient, service: ServiceStatus) -> float | None:
        with contextlib.suppress(httpx.HTTPError):
            self.heads[service.name] = parse_head(await http.get(f"{service.url}/events/head"))
        try:
            response = await http.get(f"{service.url}/metrics")
        except httpx.HTTPError:
            self._last.pop(service.name, None)
            return None
        count = request_count(response.text) if response.status_code == 200 else None
        now = time.monotonic()
        last = self._last.get(service.name)
        if count is None:
            self._last.pop(service.name, None)
            return None
        self._last[service.name] = (now, count)
        if last is None or count < last[1] or now <= last[0]:
            return None  # the first scrape, or the service was restarted (the counter reset)
        return (count - last[1]) / (now - last[0])

    async def scrape(self, http: httpx.AsyncClient) -> None:
        rates = await asyncio.gather(*(self._scrape(http, s) for s in self.services))
        self.times.append(time.time())
        for service, rate in zip(self.services, rates, strict=True):
            self.rates[service.name].append(None if rate is None else round(rate, 3))

    async def run(self, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(timeout=min(self.interval, 2.0)) as http:
            while not stop.is_set():
                await self.scrape(http)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.interval)

    def to_dict(self) -> dict[str, Any]:
        """For the chart: ``{"t": [unix seconds...], "series": {name: [req/s or null...]}}``."""
        return {
            "t": list(self.times),
            "series": {name: list(points) for name, points in self.rates.items()},
        }
