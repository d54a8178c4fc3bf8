"""A fake event feed (protocol v1) on loopback, for subscriber tests that inject faults.

Real HTTP served by uvicorn in a thread. It serves ``FakeFeed.events`` like a
real service would (start, limit, types, wait, Link next, Feed-Head), unless
a test sets ``FakeFeed.fault``: a function from the request to a response,
or None to serve normally. Malformed responses are exactly such faults.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.support.services import serving_in_thread

Fault = Callable[[Request], Response | None]


def special_offer_event(sequence: int, name: str, content: dict[str, Any]) -> dict[str, Any]:
    return {
        "sequenceNumber": sequence,
        "occurredAt": "2026-11-29T10:00:00.000000Z",
        "name": name,
        "content": content,
    }


@dataclass
class FakeFeed:
    events: list[dict[str, Any]] = field(default_factory=list)
    fault: Fault | None = None
    requests: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def append(self, name: str, content: dict[str, Any]) -> int:
        with self.lock:
            sequence = len(self.events) + 1
            self.events.append(special_offer_event(sequence, name, content))
            return sequence

    def page(self, request: Request) -> Response:
        start = int(request.query_params.get("start", "1"))
        limit = int(request.query_params.get("limit", "1000"))
        types = request.query_params.get("types")
        with self.lock:
            head = len(self.events)
            selected = []
            scanned_to = head + 1
            for event in self.events[start - 1 :]:
                if types and event["name"] not in types.split(","):
                    continue
                selected.append(event)
                if len(selected) == limit:
                    scanned_to = event["sequenceNumber"] + 1
                    break
            scanned_to = max(scanned_to, start)
        next_url = request.url.include_query_params(start=scanned_to).remove_query_params("wait")
        return Response(
            orjson.dumps(selected),
            media_type="application/json",
            headers={"Link": f'<{next_url}>; rel="next"', "Feed-Head": str(head)},
        )

    async def endpoint(self, request: Request) -> Response:
        self.requests.append(str(request.url))
        if self.fault is not None:
            answer = self.fault(request)
            if answer is not None:
                return answer
        wait = float(request.query_params.get("wait", "0"))
        start = int(request.query_params.get("start", "1"))
        deadline = asyncio.get_running_loop().time() + wait
        while len(self.events) < start and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110 - events come from another thread
            await asyncio.sleep(0.02)
        return self.page(request)


@contextlib.contextmanager
def fake_feed(events: list[dict[str, Any]] | None = None) -> Iterator[FakeFeed]:
    feed = FakeFeed(events=list(events or []))
    app = Starlette(routes=[Route("/events", feed.endpoint)])
    with serving_in_thread(app) as base_url:
        feed.url = f"{base_url}/events"
        yield feed
