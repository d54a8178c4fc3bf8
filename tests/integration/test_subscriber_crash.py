"""Crash safety: subscriber processes SIGKILLed at chosen points; nothing lost, nothing twice.

Each run is a real `feedline subscribe` process reading the real special-offers
service. The tests' own fault injection (tests/support/subscriber_faults.py,
loaded through a sitecustomize on the process's PYTHONPATH; nothing of it
ships) makes it SIGKILL itself after a fetch, while the projection writes,
before COMMIT, while COMMIT is in flight, or after it, at a random batch. Each
kill writes down where it landed, and the checkpoint read back from the
database after it must agree (the batch committed, or not). After the crashes
one clean run finishes; the audit table (one row per application, no unique
key) must hold every sequence number exactly once and the read model must
equal the oracle.
"""

from __future__ import annotations

import random
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.support.services import running_service
from tests.support.subscriber_databases import read_model_database
from tests.support.subscriber_faults import POINTS, crash_env, read_landings
from tests.support.subscriber_oracle import applied_counts, checkpoint_position, oracle, read_offers
from tests.support.subscriber_process import LOYALTY, run_subscriber, subscriber_env
from tests.support.subscriber_workload import append_events_directly, read_feed

pytestmark = pytest.mark.integration

BATCH_SIZES = (20, 37, 50)
MAX_BATCH = 3  # a plan kills at batch 1, 2 or 3


def where_it_landed(plan: str, landing: dict[str, Any], position: int) -> str:
    """Check where a kill landed against the checkpoint read back after it; name the point.

    ``landing`` is what the dying process wrote down at the kill; ``position``
    the checkpoint in the database afterwards. Every point but during-commit
    knows whether the batch's transaction had committed; during-commit may go
    either way (PostgreSQL commits what it was sent), and says which.
    """
    point, batch = plan.split(":", 1)[0].split("@")
    assert (landing["point"], landing["batch"]) == (point, int(batch)), landing
    old, end = landing["old"], landing["end"]
    assert old is not None, landing
    assert end is not None, landing
    assert end > old, landing
    committed = position == end
    assert committed or position == old, f"{plan}: checkpoint {position}, batch {old + 1}..{end}"
    if point == "during-commit":
        assert landing["commitSent"], landing
        assert not landing["answerRead"], landing
        assert landing["unsentBytes"] in (0, None), landing
        return f"during-commit ({'committed' if committed else 'not committed'})"
    if point == "after-commit":
        assert committed, f"{plan}: killed after COMMIT but the checkpoint is {position}"
        return point
    assert not committed, f"{plan}: the batch committed although the kill came before COMMIT"
    if point == "during-write":
        rows = landing["rows"]
        assert rows, f"{plan}: rows not readable: {landing}"
        assert sum(rows.values()) > 0, f"{plan}: no rows written yet: {landing}"
        assert landing["statement"].split()[0] in ("INSERT", "UPDATE"), landing
    if point == "before-commit":
        assert landing["checkpoint"] == end, f"{plan}: checkpoint not written: {landing}"
    return point


async def crash_many_times(
    dialect: str, server: str | None, service_url: str, tmp_path: Path, *, crashes: int, seed: int
) -> None:
    rng = random.Random(seed)
    # A killed run commits at most MAX_BATCH batches, so the feed never runs out
    # before the planned batch: every run must die where it was told to.
    total_events = crashes * MAX_BATCH * max(BATCH_SIZES)
    async with read_model_database(dialect, server, tmp_path) as read_model:
        with running_service("special-offers", service_url) as base_url:
            await append_events_directly(service_url, total_events, first_offer=1)
            feed_url = f"{base_url}/events"
            landed: list[str] = []
            positions = [0]
            for attempt in range(crashes):
                point = POINTS[attempt % len(POINTS)]
                plan = f"{point}@{rng.randint(1, MAX_BATCH)}:{rng.uniform(0, 4):.2f}"
                record = tmp_path / f"kill-{attempt}.jsonl"
                finished = run_subscriber(
                    subscriber_env(
                        "crashy",
                        feed_url,
                        read_model,
                        FEEDLINE_BATCH_SIZE=str(rng.choice(BATCH_SIZES)),
                        **crash_env(plan, record),
                    )
                )
                assert finished.returncode == -signal.SIGKILL, (
                    f"{plan}: exit {finished.returncode}, not killed\n{finished.stderr[-3000:]}"
                )
                (landing,) = read_landings(record)
                position = await checkpoint_position(read_model, "crashy") or 0
                landed.append(where_it_landed(plan, landing, position))
                assert position >= positions[-1], "the checkpoint went backwards"
                positions.append(position)
                # Effectively once after every crash: exactly the events up to the checkpoint.
                counts = await applied_counts(read_model, "crashy")
                assert counts == {n: 1 for n in range(1, position + 1)}, f"after {plan}"

            final = run_subscriber(subscriber_env("crashy", feed_url, read_model))
            assert final.returncode == 0, final.stderr[-3000:]
            assert final.summary["outcome"] == "CaughtUp"
            events = await read_feed(feed_url)
        print(f"{dialect}: where the {crashes} kills landed: {dict(Counter(landed))}")
        assert {label.split(" ")[0] for label in landed} == set(POINTS), landed
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
                    **crash_env("before-commit@2", tmp_path / "kill.jsonl"),
                )
            )
            assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
            (landing,) = read_landings(tmp_path / "kill.jsonl")
            assert (landing["old"], landing["end"], landing["checkpoint"]) == (100, 200, 200)
            assert await checkpoint_position(read_model, "bulk") == 100
            events = await read_feed(f"{base_url}/events")
            assert await read_offers(read_model) == oracle(events[:100])


async def test_the_shipped_subscriber_has_no_fault_switch(tmp_path: Path) -> None:
    """Fault injection lives in the tests only: the variable that used to make a production
    subscriber SIGKILL itself (FEEDLINE_SUBSCRIBER_FAULT) does nothing without them."""
    service_url = f"sqlite:///{tmp_path / 'special-offers.db'}"
    read_model = f"sqlite:///{tmp_path / 'read-model.db'}"
    with running_service("special-offers", service_url) as base_url:
        await append_events_directly(service_url, 60, first_offer=1)
        environment = subscriber_env(
            "no-faults",
            f"{base_url}/events",
            read_model,
            FEEDLINE_BATCH_SIZE="20",
            FEEDLINE_SUBSCRIBER_FAULT="after-fetch@1",
        )
        finished = run_subscriber(environment)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert finished.summary["outcome"] == "CaughtUp"
    assert finished.summary["processed"] == 60
    assert await applied_counts(read_model, "no-faults") == {n: 1 for n in range(1, 61)}
