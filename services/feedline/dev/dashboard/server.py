"""Serving the dashboard inside `feedline dev`'s own event loop (uvicorn, no thread).

The port is bound before anything starts (a port in use stops `feedline dev`
at once, as a service's port does), so the children can be given the
dashboard's URL as their OTLP endpoint. uvicorn's own signal handling is left
out: Ctrl-C and SIGTERM stay `feedline dev`'s, which stops the dashboard last.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Generator

import uvicorn

from feedline.dev.dashboard.app import DashboardState, create_app

SHUTDOWN_GRACE_SECONDS = 2


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # `feedline dev` handles SIGINT/SIGTERM


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (0: a free port); OSError when it is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class DashboardServer:
    def __init__(self, state: DashboardState, sock: socket.socket) -> None:
        self.state = state
        self.sock = sock
        host, port = sock.getsockname()[:2]
        netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.url = f"http://{netloc}"
        config = uvicorn.Config(
            create_app(state),
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
        )
        self.server = _Server(config)
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(self.server.serve(sockets=[self.sock]))
        while not self.server.started and not self.task.done():  # noqa: ASYNC110 - no event
            await asyncio.sleep(0.01)
        if self.task.done():
            self.task.result()  # its error

    async def close(self) -> None:
        self.state.closing.set()  # the live views end their streams
        self.server.should_exit = True
        if self.task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.task, SHUTDOWN_GRACE_SECONDS + 3)
        self.sock.close()
