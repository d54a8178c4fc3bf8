"""Network faults between a subscriber and the feed it reads (HTTP), through a real
fault proxy (toxiproxy-server): added latency with jitter (pages arriving out of
order), connections reset in the middle of a page (reset_peer), stalls (the
timeout toxic: data dropped, the connection closed seconds later), a bandwidth
limit. A CronJob-style run (catch up, exit) and a follower (Follow mode, long
polls) each end with the exactly-once oracle: every event of the feed applied
once, the read model equal to applying them one at a time.

Real processes: the special-offers service (`feedline serve`, PostgreSQL),
`feedline subscribe` dialling the proxy instead of the service, a SQLite read
model with the audited projection (one row per application: a duplicate shows).
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from feedline_subscriber.feed_client import PREFETCH_PAGES
from tests.faults.helpers import (
    assert_exactly_once,
    host_port,
    position,
    subscriber,
    wait_for_position,
)
from tests.support.services import running_service
from tests.support.subscriber_process import AUDITED, subscriber_env
from tests.support.subscriber_workload import append_padded_events, publish_commands, read_feed
from tests.support.toxiproxy import Proxy, Toxiproxy

pytestmark = pytest.mark.faults

EVENTS = 3_000
PADDING = 1_000  # characters per event: a page of 250 is about 300 kB
BATCH = "250"
FAULTS_PER_RUN = 3
# The bandwidth toxic's limit, KB/s. It holds per connection, and a catch-up has up
# to PREFETCH_PAGES requests travelling at once, each on a connection of its own.
BANDWIDTH_KB_S = 250


async def inject_at_thresholds(
    proxy: Proxy,
    read_model: str,
    subscription: str,
    process_alive: object,
    *,
    kind: str,
    window: float,
    **attributes: object,
) -> list[int]:
    """Add the toxic for ``window`` seconds each time the checkpoint passes another
    quarter of the feed (FAULTS_PER_RUN times); the positions it was added at."""
    injected: list[int] = []
    deadline = time.monotonic() + 120
    while len(injected) < FAULTS_PER_RUN and time.monotonic() < deadline:
        at = await position(read_model, subscription)
        if at >= (len(injected) + 1) * EVENTS // (FAULTS_PER_RUN + 1):
            with proxy.toxic(kind, **attributes):
                await asyncio.sleep(window)
            injected.append(at)
        await asyncio.sleep(0.02)
    return injected


@pytest.mark.parametrize("fault", ["latency", "reset_peer", "timeout", "bandwidth"])
async def test_a_cronjob_run_through_a_faulty_feed_link_applies_every_event_once(
    fault: str, postgres_url: str, tmp_path: Path, toxiproxy: Toxiproxy
) -> None:
    read_model = f"sqlite:///{tmp_path / 'read-model.db'}"
    with running_service("special-offers", postgres_url) as base_url:
        await append_padded_events(postgres_url, EVENTS, padding=PADDING)
        events = await read_feed(f"{base_url}/events")
        feed_bytes = sum(len(e["content"].get("description", "")) for e in events)
        proxy = toxiproxy.proxy("feed", host_port(base_url))
        environment = subscriber_env(
            "run",
            f"http://{proxy.listen}/events",
            read_model,
            AUDITED,
            FEEDLINE_BATCH_SIZE=BATCH,
        )
        injected: list[int] = []
        if fault == "latency":
            # Up to 400 ms each way, varying: the read-ahead's two requests can overtake.
            proxy.add("latency", latency=200, jitter=200)
            proxy.add("latency", stream="upstream", latency=50, jitter=50)
        elif fault == "bandwidth":
            proxy.add("bandwidth", rate=BANDWIDTH_KB_S)
        else:
            # A slow link, so a page is always on the wire when the fault comes.
            proxy.add("bandwidth", rate=1_000)
        started = time.monotonic()
        with subscriber(environment, tmp_path / "run") as run:
            if fault == "reset_peer":
                # timeout=0: the next chunk of a response is dropped and the
                # connection reset (RST): the page is cut in the middle.
                injected = await inject_at_thresholds(
                    proxy, read_model, "run", run, kind="reset_peer", window=0.5, timeout=0
                )
            elif fault == "timeout":
                # Nothing passes for 2 s, then the connection is closed: a stall.
                injected = await inject_at_thresholds(
                    proxy, read_model, "run", run, kind="timeout", window=2.5, timeout=2_000
                )
            returncode = run.wait(timeout=240)
            elapsed = time.monotonic() - started
        summary = run.summary()
        assert returncode == 0, run.stderr[-3000:]
        assert summary["outcome"] == "CaughtUp", summary
        assert summary["position"] == EVENTS, summary
        assert summary["deadLettered"] == 0, summary
        # The fault really was there.
        if fault in ("reset_peer", "timeout"):
            assert len(injected) == FAULTS_PER_RUN, f"the run ended before the faults: {injected}"
            assert max(injected) < EVENTS, injected
            # Each cut connection was opened again (keep-alive: one or two without faults).
            assert proxy.accepted() >= 1 + FAULTS_PER_RUN, proxy.accepted()
        elif fault == "bandwidth":
            # At least the descriptions' bytes over the read-ahead's connections at
            # the limit (a run without the toxic takes a fraction of it).
            fastest = feed_bytes / (BANDWIDTH_KB_S * 1_000 * PREFETCH_PAGES)
            assert elapsed >= 0.9 * fastest, (elapsed, feed_bytes, fastest)
        else:
            assert elapsed >= EVENTS / int(BATCH) / 2 * 0.05, elapsed
        await assert_exactly_once(read_model, "run", events)


async def test_a_follower_through_a_faulty_feed_link_applies_every_event_once(
    postgres_url: str, tmp_path: Path, toxiproxy: Toxiproxy
) -> None:
    """Follow mode: faults while the follower long-polls at the head, commands
    committed meanwhile; each phase ends with the follower at the head again."""
    read_model = f"sqlite:///{tmp_path / 'read-model.db'}"
    with running_service("special-offers", postgres_url) as base_url:
        await append_padded_events(postgres_url, 500, padding=PADDING)
        proxy = toxiproxy.proxy("feed", host_port(base_url))
        environment = subscriber_env(
            "follower",
            f"http://{proxy.listen}/events",
            read_model,
            AUDITED,
            FEEDLINE_BATCH_SIZE="100",
            FEEDLINE_FOLLOW="true",
            FEEDLINE_FEED_WAIT_SECONDS="5",
        )
        head = 500
        seed = 1

        async def commands(count: int) -> None:
            nonlocal head, seed
            await publish_commands(base_url, count, seed=seed, concurrency=4)
            head += count
            seed += 1

        with subscriber(environment, tmp_path / "follower") as follower:
            # Catch-up over a slow, jittery link.
            with proxy.toxic("latency", latency=100, jitter=100):
                await wait_for_position(read_model, "follower", head, 120, follower)
                await commands(50)
                await wait_for_position(read_model, "follower", head, 120, follower)
            # Resets while it waits in a long poll: the answer that would wake it is
            # dropped and the connection reset; commands go on meanwhile.
            before = proxy.accepted()
            with proxy.toxic("reset_peer", timeout=0):
                await commands(20)
                await asyncio.sleep(1)
                await commands(20)
            await wait_for_position(read_model, "follower", head, 120, follower)
            assert proxy.accepted() > before, "the resets cut no connection"
            # A stall: nothing passes for 3 s, then the connection is closed.
            before = proxy.accepted()
            with proxy.toxic("timeout", timeout=3_000):
                await commands(20)
                await asyncio.sleep(3.5)
            await commands(10)
            await wait_for_position(read_model, "follower", head, 120, follower)
            assert proxy.accepted() > before, "the stall closed no connection"
            # A narrow link while a burst of commands comes in.
            with proxy.toxic("bandwidth", rate=20):
                await commands(200)
                await wait_for_position(read_model, "follower", head, 120, follower)
            follower.process.send_signal(signal.SIGTERM)
            assert follower.wait(timeout=30) == 0, follower.stderr[-3000:]
        events = await read_feed(f"{base_url}/events")
    assert len(events) == head
    await assert_exactly_once(read_model, "follower", events)
