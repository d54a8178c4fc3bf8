"""Crash safety: subscriber processes SIGKILLed at random points; nothing lost, nothing twice.

Each run is a real `feedline subscribe` process reading the real special-offers
service. The test-only fault hook (FEEDLINE_SUBSCRIBER_FAULT) makes it SIGKILL
itself after a fetch, while the projection writes, before COMMIT, while COMMIT
is in flight, or after it, at a random batch and with a random delay. After
the crashes one clean run finishes; the audit table (one row per application,
no unique key) must hold every sequence number exactly once and the read model
must equal the oracle.
"""

from __future__ import annotations

import random
import signal
from pathlib import Path

import pytest

from feedline_subscriber.faults import POINTS
from tests.support.services import running_service
from tests.support.subscriber_databases import read_model_database
from tests.support.subscriber_oracle import applied_counts, checkpoint_position, oracle, read_offers
from tests.support.subscriber_process import LOYALTY, run_subscriber, subscriber_env
from tests.support.subscriber_workload import append_events_directly, read_feed

pytestmark = pytest.mark.integration


async def crash_many_times(
    dialect: str, server: str | None, service_url: str, tmp_path: Path, *, crashes: int, seed: int
) -> None:
    rng = random.Random(seed)
    total_events = crashes * 60
    async with read_model_database(dialect, server, tmp_path) as read_model:
        with running_service("special-offers", service_url) as base_url:
            await append_events_directly(service_url, total_events, first_offer=1)
            feed_url = f"{base_url}/events"
            killed: list[str] = []
            positions = [0]
            for attempt in range(crashes):
                point = POINTS[attempt % len(POINTS)]
                fault = f"{point}@{rng.randint(1, 3)}:{rng.uniform(0, 4):.2f}"
                finished = run_subscriber(
                    subscriber_env(
                        "crashy",
                        feed_url,
                        read_model,
                        FEEDLINE_BATCH_SIZE=str(rng.choice([20, 37, 50])),
                        FEEDLINE_SUBSCRIBER_FAULT=fault,
                    )
                )
                assert finished.returncode in (-signal.SIGKILL, 0), finished.stderr[-3000:]
                if finished.returncode == -signal.SIGKILL:
                    killed.append(fault)
                position = await checkpoint_position(read_model, "crashy") or 0
                assert position >= positions[-1], "the checkpoint went backwards"
                positions.append(position)
                # Effectively once after every crash: exactly the events up to the checkpoint.
                counts = await applied_counts(read_model, "crashy")
                assert counts == {n: 1 for n in range(1, position + 1)}, f"after {fault}"

            final = run_subscriber(subscriber_env("crashy", feed_url, read_model))
            assert final.returncode == 0, final.stderr[-3000:]
            assert final.summary["outcome"] == "CaughtUp"
            events = await read_feed(feed_url)
        assert len(killed) >= crashes - 2, f"only {len(killed)} runs were killed: {killed}"
        assert {fault.split("@")[0] for fault in killed} == set(POINTS)
        assert await applied_counts(read_model, "crashy") == {
            n: 1 for n in range(1, total_events + 1)
        }
        assert await read_offers(read_model) == oracle(events)


async def test_thirty_two_sigkills_on_postgresql(
    postgres_server_url: str, postgres_url: str, tmp_path: Path
) -> None:
    await crash_many_times(
        "postgresql", postgres_server_url, postgres_url, tmp_path, crashes=32, seed=4
    )


async def test_twelve_sigkills_on_sqlite(tmp_path: Path) -> None:
    """SQLite's lease lock is taken over from a killed holder at once (its pid is gone)."""
    await crash_many_times(
        "sqlite", None, f"sqlite:///{tmp_path / 'special-offers.db'}", tmp_path, crashes=12, seed=5
    )


async def test_bulk_writes_of_a_killed_batch_are_not_committed(
    postgres_server_url: str, postgres_url: str, tmp_path: Path
) -> None:
    """The loyalty projection writes through the raw asyncpg connection (COPY): those
    writes must belong to the batch's transaction, so a kill before COMMIT leaves nothing."""
    async with read_model_database("postgresql", postgres_server_url, tmp_path) as read_model:
        with running_service("special-offers", postgres_url) as base_url:
            await append_events_directly(postgres_url, 500, first_offer=1)
            killed = run_subscriber(
                subscriber_env(
                    "bulk",
                    f"{base_url}/events",
                    read_model,
                    LOYALTY,
                    FEEDLINE_BATCH_SIZE="100",
                    FEEDLINE_SUBSCRIBER_FAULT="before-commit@2",
                )
            )
            assert killed.returncode == -signal.SIGKILL
            assert await checkpoint_position(read_model, "bulk") == 100
            events = await read_feed(f"{base_url}/events")
            assert await read_offers(read_model) == oracle(events[:100])
