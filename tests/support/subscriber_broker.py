"""The RabbitMQ transport's tests: a service with its relay, its metrics, its stream.

A subscriber reads the stream with ``FEEDLINE_BROKER_URL`` and
``FEEDLINE_BROKER_STREAM`` (its ``--feed-url`` the service's HTTP feed). The
service's ``/metrics`` say how far its relay has published
(``feedline_broker_relay_confirmed_sequence``) and how many events its feeds
served (``feedline_feed_events_served_total``, HTTP and gRPC): what a
broker subscriber did not read from the stream, it read from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from feedline_contracts.broker import BROKER_URL_SETTING, stream_name
from feedline_contracts.subscriber_env import BROKER_STREAM
from tests.support.ports import free_port
from tests.support.processes import stop
from tests.support.rabbitmq import RabbitMQNode, delete_stream
from tests.support.services import FEEDLINE, wait_until_ready

SERVICE = "special-offers"
STREAM = stream_name(SERVICE)


def broker_env(node: RabbitMQNode, stream: str = STREAM) -> dict[str, str]:
    """What a subscriber needs to read ``stream`` (beside its HTTP ``--feed-url``)."""
    return {BROKER_URL_SETTING: node.stream_url, BROKER_STREAM: stream}


def run_async(work: Any) -> Any:
    """Run a coroutine to its end from sync or async code (in a thread of its own)."""
    result: list[Any] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(work))
        except BaseException as exc:  # handed to the caller
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


def fresh_stream(node: RabbitMQNode, stream: str = STREAM) -> None:
    """No stream left by an earlier test: the relay creates it afresh, fed from 1."""
    run_async(delete_stream(node, stream))


def metric(base_url: str, name: str) -> float:
    """One unlabelled sample of the service's /metrics (0 when it is not there yet)."""
    text = httpx.get(f"{base_url}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    return 0.0


def events_served(base_url: str) -> int:
    """Events the service's feeds (HTTP and gRPC) have answered, since it started."""
    return int(metric(base_url, "feedline_feed_events_served_total"))


def wait_relayed(base_url: str, head: int, *, within: float = 120) -> None:
    """Until the service's relay is connected and the broker has confirmed up to ``head``."""
    deadline = time.monotonic() + within
    while True:
        with contextlib.suppress(httpx.HTTPError):
            connected = metric(base_url, "feedline_broker_relay_connected") == 1
            confirmed = metric(base_url, "feedline_broker_relay_confirmed_sequence")
            if connected and confirmed >= head:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the relay of {base_url} did not reach {head} in {within:.0f}s")
        time.sleep(0.05)


@dataclass
class RelayingService:
    """``feedline serve special-offers`` with its relay, as a process on a port of its own.

    ``kill`` then ``start`` restart it on the same port and database (a
    subscriber's ``--feed-url`` stays valid).
    """

    database_url: str
    node: RabbitMQNode
    env: dict[str, str]
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def feed_url(self) -> str:
        return f"{self.base_url}/events"

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None
        if not self.port:
            self.port = free_port()
        folder = Path(tempfile.mkdtemp(prefix="feedline-relaying-"))
        self.log = folder / "service.log"
        environment = {
            **os.environ,
            **self.env,
            BROKER_URL_SETTING: self.node.stream_url,
            "FEEDLINE_HTTP_CACHE_DIR": str(folder),
        }
        argv = [FEEDLINE, "serve", SERVICE, "--port", str(self.port)]
        argv += ["--database-url", self.database_url]
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env=environment
            )
        wait_until_ready(self.base_url, self.process, self.log)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            stop(self.process, grace_seconds=10)


@contextlib.contextmanager
def relaying_service(
    database_url: str, node: RabbitMQNode, **env: str
) -> Iterator[RelayingService]:
    """special-offers relaying to ``node``, on a fresh stream; stopped after the block."""
    fresh_stream(node)
    service = RelayingService(database_url, node, env)
    service.start()
    try:
        yield service
    finally:
        service.stop()
