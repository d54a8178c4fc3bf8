"""The service SIGKILLed and started again on the same ports while real subscribers read
it, over gRPC (one Subscribe stream per run) and over HTTP (pages and long polls).

Per transport, one special-offers service (`feedline serve`, PostgreSQL) with 3,000
events, and two `feedline subscribe` processes: a follower (Follow mode) and a
CronJob-style run (catch up, exit), each with a slow audited projection so the kill
lands mid-stream. The service is killed while both are catching up, then (the run
having finished) again while the follower waits at the head on its follow stream or
long poll; each time events are committed while it is down and it comes back on the
same ports. Both subscribers must reconnect by themselves and end with every event
applied exactly once and the read model equal to the oracle.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.support.ports import free_port
from tests.support.services import ServiceProcess, restartable_service
from tests.support.subscriber_oracle import applied_counts, checkpoint_position, oracle, read_offers
from tests.support.subscriber_process import FEEDLINE, subscriber_env
from tests.support.subscriber_workload import append_padded_events, publish_commands, read_feed

pytestmark = pytest.mark.integration

TRANSPORTS = ["http", "grpc"]
CATCH_UP = 3_000  # events before the subscribers start
BATCH = 100
# Each batch's projection sleeps this long: a catch-up takes at least 30 x 0.2 = 6 s,
# so the first kill comes while both subscribers are in the middle of the feed.
PROJECTION_DELAY = "0.2"
KILL_AFTER = 200  # both checkpoints at least here: both are reading, neither done
# Each event carries this much text: the catch-up (about 15 MB) is far more than the
# transport buffers (a gRPC reader's HTTP/2 window grows to a few MB on loopback), so
# the kill cuts a stream that still owes most of the feed instead of one whose
# batches all sit in the subscriber's buffers already.
PADDING = 5_000
WHILE_DOWN = 100  # events committed straight to the database while the service is down


def feed_url(service: ServiceProcess, transport: str) -> str:
    if transport == "grpc":
        return f"grpc://{service.grpc_target}"
    return f"{service.base_url}/events"


@contextmanager
def subscriber(environment: dict[str, str], logs: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`feedline subscribe` with its output in files (a pipe nobody reads could fill
    and stall it while the test waits); killed at the end if still running."""
    logs.mkdir(parents=True)
    with (
        open(logs / "stdout", "wb") as stdout,
        open(logs / "stderr", "wb") as stderr,
    ):
        process = subprocess.Popen(
            [FEEDLINE, "subscribe"], env=environment, stdout=stdout, stderr=stderr
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def summary_of(logs: Path) -> dict[str, object]:
    lines = [line for line in (logs / "stdout").read_text().splitlines() if line.strip()]
    assert lines, f"no summary on stdout; stderr:\n{(logs / 'stderr').read_text()[-3000:]}"
    summary: dict[str, object] = orjson.loads(lines[-1])
    return summary


async def wait_until(
    condition: Callable[[], Awaitable[bool]], seconds: float, what: str, logs: Path
) -> None:
    deadline = time.monotonic() + seconds
    while not await condition():
        if time.monotonic() > deadline:
            stderr = (logs / "stderr").read_text()[-3000:]
            raise AssertionError(f"not within {seconds:.0f}s: {what}; stderr:\n{stderr}")
        await asyncio.sleep(0.05)


async def position(read_model: str, subscription: str) -> int:
    return await checkpoint_position(read_model, subscription) or 0


async def assert_exactly_once(
    read_model: str, subscription: str, events: list[dict[str, Any]]
) -> None:
    applied = await applied_counts(read_model, subscription)
    twice = sorted(n for n, count in applied.items() if count > 1)
    missing = sorted({e["sequenceNumber"] for e in events} - set(applied))
    assert not twice, f"{subscription}: applied more than once: {twice[:20]}"
    assert not missing, f"{subscription}: never applied: {missing[:20]}"
    assert set(applied) == {e["sequenceNumber"] for e in events}
    assert await read_offers(read_model) == oracle(events)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_subscribers_reconnect_after_the_service_is_killed_and_apply_every_event_once(
    transport: str, postgres_url: str, tmp_path: Path
) -> None:
    follower_model = f"sqlite:///{tmp_path / 'follower.db'}"
    run_model = f"sqlite:///{tmp_path / 'run.db'}"
    follower_logs, run_logs = tmp_path / "follower", tmp_path / "run"
    common = {
        "FEEDLINE_BATCH_SIZE": str(BATCH),
        "FEEDLINE_TEST_PROJECTION_DELAY": PROJECTION_DELAY,
        # The restart must not run out the retries (their waits are random): plenty.
        "FEEDLINE_FEED_RETRY_ATTEMPTS": "30",
    }
    with restartable_service("special-offers", postgres_url) as service:
        await append_padded_events(postgres_url, CATCH_UP, first_offer=1_000_000, padding=PADDING)
        url = feed_url(service, transport)
        status = f"http://127.0.0.1:{free_port()}"
        follower_env = subscriber_env(
            "follower",
            url,
            follower_model,
            **common,
            FEEDLINE_FOLLOW="true",
            FEEDLINE_STATUS_PORT=status.rsplit(":", 1)[1],
            FEEDLINE_FEED_WAIT_SECONDS="20",
        )
        with (
            subscriber(follower_env, follower_logs) as follower,
            subscriber(subscriber_env("run", url, run_model, **common), run_logs) as run,
        ):

            async def both_reading() -> bool:
                return (
                    await position(follower_model, "follower") >= KILL_AFTER
                    and await position(run_model, "run") >= KILL_AFTER
                )

            await wait_until(both_reading, 60, f"both subscribers past {KILL_AFTER}", run_logs)

            # 1. Killed mid-stream: both are part-way through the 3,000 events.
            service.kill()
            await append_padded_events(
                postgres_url, WHILE_DOWN, first_offer=2_000_000, padding=PADDING
            )
            await asyncio.sleep(1.5)  # both find it gone and retry
            assert run.poll() is None, "the run ended while the service was down"
            assert follower.poll() is None, "the follower ended while the service was down"
            cut_at = {
                "follower": await position(follower_model, "follower"),
                "run": await position(run_model, "run"),
            }
            # Far from done: more pages than HTTP fetches ahead (2) are still to come.
            assert max(cut_at.values()) < CATCH_UP - 5 * BATCH, f"not mid-stream: {cut_at}"
            service.start()

            # The run reconnects by itself and finishes: everything up to the head, once.
            total = CATCH_UP + WHILE_DOWN
            exit_code = await asyncio.to_thread(run.wait, 120)
            assert exit_code == 0, (run_logs / "stderr").read_text()[-3000:]
            summary = summary_of(run_logs)
            assert summary["outcome"] == "CaughtUp", summary
            assert summary["position"] == summary["head"] == total, summary
            assert summary["processed"] == total, summary
            if transport == "grpc":
                # Its stream was cut, not read to the end before the kill: it retried.
                assert "feed call failed; retrying" in (run_logs / "stderr").read_text()

            # 2. Killed while the follower waits at the head (its follow stream or
            # long poll open), events committed while it is down and after it is back.
            def follower_at(target: int) -> Callable[[], Awaitable[bool]]:
                async def reached() -> bool:
                    return await position(follower_model, "follower") >= target

                return reached

            await wait_until(follower_at(total), 60, f"follower at {total}", follower_logs)
            await asyncio.sleep(1)  # waiting on the feed now
            service.kill()
            await append_padded_events(
                postgres_url, WHILE_DOWN, first_offer=3_000_000, padding=PADDING
            )
            await asyncio.sleep(1)
            assert follower.poll() is None, "the follower ended while the service was down"
            service.start()
            await publish_commands(service.base_url, 50)
            total += WHILE_DOWN + 50
            await wait_until(follower_at(total), 60, f"follower at {total}", follower_logs)
            async with httpx.AsyncClient(timeout=10) as client:
                live = (await client.get(f"{status}/summary")).json()
            assert (live["position"], live["head"], live["lag"]) == (total, total, 0), live

            follower.send_signal(signal.SIGTERM)
            exit_code = await asyncio.to_thread(follower.wait, 15)
            assert exit_code == 0, (follower_logs / "stderr").read_text()[-3000:]
            summary = summary_of(follower_logs)
            assert summary["outcome"] == "CaughtUp", summary
            assert (summary["position"], summary["processed"]) == (total, total), summary

        events = await read_feed(f"{service.base_url}/events")
        assert service.starts == 3
    assert len(events) == total
    assert [e["sequenceNumber"] for e in events] == list(range(1, total + 1))
    await assert_exactly_once(run_model, "run", events[: CATCH_UP + WHILE_DOWN])
    await assert_exactly_once(follower_model, "follower", events)
