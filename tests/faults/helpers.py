"""What the fault tests share: subscriber processes with their output in files,
waiting on checkpoints, the exactly-once oracle, events with bulk."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from tests.support.subscriber_oracle import applied_counts, checkpoint_position, oracle, read_offers
from tests.support.subscriber_process import FEEDLINE


@dataclass
class Subscriber:
    """A `feedline subscribe` process whose stdout and stderr go to files (a pipe
    nobody reads could fill and stall it while the test waits)."""

    process: subprocess.Popen[bytes]
    logs: Path

    @property
    def stderr(self) -> str:
        return (self.logs / "stderr").read_text(errors="replace")

    def summary(self) -> dict[str, Any]:
        lines = [line for line in (self.logs / "stdout").read_text().splitlines() if line.strip()]
        assert lines, f"no summary on stdout; stderr:\n{self.stderr[-3000:]}"
        summary: dict[str, Any] = orjson.loads(lines[-1])
        return summary

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"the subscriber did not finish within {timeout:.0f}s; stderr:\n"
                f"{self.stderr[-3000:]}"
            ) from None


@contextmanager
def subscriber(environment: dict[str, str], logs: Path) -> Iterator[Subscriber]:
    """`feedline subscribe` with ``environment``; killed at the end if still running."""
    logs.mkdir(parents=True)
    with open(logs / "stdout", "wb") as stdout, open(logs / "stderr", "wb") as stderr:
        process = subprocess.Popen(
            [FEEDLINE, "subscribe"], env=environment, stdout=stdout, stderr=stderr
        )
    try:
        yield Subscriber(process, logs)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def position(read_model: str, subscription: str) -> int:
    return await checkpoint_position(read_model, subscription) or 0


async def wait_until(
    condition: Callable[[], Awaitable[bool]],
    seconds: float,
    what: str,
    subscriber: Subscriber | None = None,
) -> None:
    deadline = time.monotonic() + seconds
    while not await condition():
        if time.monotonic() > deadline:
            log = subscriber.stderr[-3000:] if subscriber else ""
            raise AssertionError(f"not within {seconds:.0f}s: {what}\n{log}")
        await asyncio.sleep(0.05)


async def wait_for_position(
    read_model: str, subscription: str, wanted: int, seconds: float, process: Subscriber
) -> None:
    async def reached() -> bool:
        assert process.process.poll() is None or wanted == 0, (
            f"the subscriber exited ({process.process.returncode}):\n{process.stderr[-3000:]}"
        )
        return await position(read_model, subscription) >= wanted

    await wait_until(reached, seconds, f"{subscription} at {wanted}", process)


async def assert_exactly_once(
    read_model: str, subscription: str, events: list[dict[str, Any]]
) -> None:
    """The oracle: every event of the feed applied once (none lost, none twice), and
    the read model what applying them one at a time gives."""
    assert events, "no events: nothing was tested"
    applied = await applied_counts(read_model, subscription)
    wanted = {e["sequenceNumber"] for e in events}
    twice = sorted(n for n, count in applied.items() if count > 1)
    missing = sorted(wanted - set(applied))
    extra = sorted(set(applied) - wanted)
    assert not twice, f"{subscription}: applied more than once: {twice[:20]}"
    assert not missing, f"{subscription}: never applied: {missing[:20]}"
    assert not extra, f"{subscription}: applied but not in the feed: {extra[:20]}"
    assert await read_offers(read_model) == oracle(events)


def host_port(url: str) -> str:
    """``host:port`` of a URL."""
    parts = urlsplit(url)
    assert parts.hostname is not None, url
    assert parts.port is not None, url
    return f"{parts.hostname}:{parts.port}"


def through(url: str, port: int) -> str:
    """``url`` with its port replaced (to dial a proxy on 127.0.0.1:port instead)."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@127.0.0.1:{port}" if userinfo else f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc))
