"""Follow mode's status port: the latest summary and a health check, over plain HTTP.

``GET /summary`` (also ``/``) answers the latest summary as JSON, the same
document a CronJob run leaves as its termination message; ``GET /healthz``
answers 200 while the follower works and 503 once it has failed. The paths
and the port are contracts (`feedline_contracts.follower`): the operator
and `feedline dev` read them, the rendered probes point at them. A tiny asyncio server keeps the
subscriber free of a web framework.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import orjson

from feedline_contracts.follower import HEALTH_PATH, STATUS_PORT, SUMMARY_PATH
from feedline_subscriber.summary import Outcome, Summary

REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class StatusServer:
    def __init__(
        self,
        latest: Callable[[], Summary],
        host: str = "0.0.0.0",  # noqa: S104 - the pod's port, read by the operator
        port: int = STATUS_PORT,
    ) -> None:
        self.latest = latest
        self.host = host
        self.port = port
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = int(self.server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)

    def _answer(self, method: str, path: str) -> tuple[int, bytes]:
        path = path.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return 405, b'{"error":"only GET"}'
        summary = self.latest()
        if path in ("/", SUMMARY_PATH):
            return 200, summary.to_json()
        if path == HEALTH_PATH:
            healthy = summary.outcome not in (Outcome.FAILED, Outcome.HALTED)
            return (
                (200, b'{"status":"ok"}')
                if healthy
                else (
                    503,
                    orjson.dumps({"status": "failed", "message": summary.message}),
                )
            )
        return 404, b'{"error":"not found"}'

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), 10)
            while (await asyncio.wait_for(reader.readline(), 10)) not in (b"\r\n", b"\n", b""):
                pass
            parts = request_line.decode("latin-1").split()
            method, path = (parts[0], parts[1]) if len(parts) >= 2 else ("GET", "/")
            status, body = self._answer(method, path)
            head = (
                f"HTTP/1.1 {status} {REASONS.get(status, '')}\r\n"
                "Content-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n"
                "Cache-Control: no-cache\r\nConnection: close\r\n\r\n"
            ).encode()
            writer.write(head + (b"" if method == "HEAD" else body))
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
